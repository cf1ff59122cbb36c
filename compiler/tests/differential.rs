//! Differential tests: every compiled program, run in the kernel (real verifier,
//! BPF_PROG_TEST_RUN) and under rbpf (the vm engine) on many flows, must reach the reference
//! evaluator's verdict AND the same deciding rule (or default). Inputs: testdata/demo and every file in testdata/cases.
//! Flows are built from the policy itself (set members and their edges, port range edges,
//! every endpoint address, ICMP types) plus deterministic pseudo-random ones.

mod common;

use common::{expected_key, Rng};
use polc::codegen::Limits;
use polc::compile::{compile_files_with, compile_ir_with, Compiled, Options};
use polc::engine::KernelEngine;
use polc_ir::{evaluate, proto, Direction, Family, Flow};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

fn testdata(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata").join(p)
}

fn offset(addr: IpAddr, delta: i128) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from((u32::from(a) as i128 + delta) as u32)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from((u128::from(a) as i128 + delta) as u128)),
    }
}

/// Interesting addresses of `family`: endpoint addresses, set members, their neighbours.
fn addresses(c: &Compiled, family: Family) -> Vec<IpAddr> {
    let mut out = BTreeSet::new();
    for ep in &c.ir.endpoints {
        out.extend(ep.addresses.iter().copied());
    }
    for set in &c.ir.ip_sets {
        for p in &set.members {
            out.insert(p.addr());
            out.insert(offset(p.addr(), -1));
            out.insert(offset(p.addr(), 1));
            let size = 1i128 << (p.family().bits() - p.len()).min(100);
            out.insert(offset(p.addr(), size - 1));
            out.insert(offset(p.addr(), size));
        }
    }
    out.insert("10.99.1.2".parse().unwrap());
    out.insert("fd00:99::1".parse().unwrap());
    out.into_iter().filter(|a| Family::of(a) == family).collect()
}

fn ports(c: &Compiled) -> Vec<u16> {
    let mut out = BTreeSet::from([0u16, 1, 53, 80, 443, 8080, 65535]);
    let mut add_match = |pm: &polc_ir::PortMatch| {
        for r in &pm.ranges {
            for p in [r.lo.saturating_sub(1), r.lo, r.hi, r.hi.saturating_add(1)] {
                out.insert(p);
            }
        }
    };
    for ep in &c.ir.endpoints {
        for t in ep.tiers.iter() {
            for p in &t.policies {
                for r in &p.rules {
                    for end in [&r.matches.src, &r.matches.dst] {
                        end.ports.iter().for_each(&mut add_match);
                        end.not_ports.iter().for_each(&mut add_match);
                    }
                }
            }
        }
    }
    for s in &c.ir.port_sets {
        out.extend(s.members.iter().map(|m| m.port));
    }
    out.into_iter().collect()
}

/// Check every program of `dir_or_file` in the kernel against the evaluator; returns the
/// number of flows checked.
fn check(input: &str, engines: &mut usize) -> usize {
    let mut n = 0;
    // -O0, -O1, -O2, -O2 with every pair table in the pair grid (arrays) or in a hash map
    // instead of code (that one with IPv4 classes in the LPM map instead of the class trie),
    // and -O2 with every port class found through the port array instead of a branch tree.
    let (pairs, ports) = (polc::opt::MAX_CODE_PAIRS, polc::opt::MAX_CODE_PORT_LEAVES);
    let cells = polc::opt::MAX_PAIR_CELLS;
    for (opt_level, max_code_pairs, max_code_port_leaves, max_pair_cells, class_trie) in [
        (0, 0, 0, 0, true),
        (1, 0, 0, 0, true),
        (2, pairs, ports, cells, true),
        (2, 0, ports, cells, true),
        (2, 0, ports, 0, false),
        (2, pairs, 0, cells, true),
    ] {
        let tuning = polc::opt::Tuning {
            max_code_pairs,
            max_code_port_leaves,
            max_pair_cells,
            class_trie,
            ..Default::default()
        };
        let options = Options { opt_level, tuning, ..Options::default() };
        let compiled = compile_files_with(&[testdata(input)], options).unwrap();
        let label = format!(
            "{input} -O{opt_level} (pairs in code up to {max_code_pairs}, port leaves in code \
             up to {max_code_port_leaves}, pair grid up to {max_pair_cells} cells, class trie \
             {class_trie})"
        );
        n += check_compiled(&label, &compiled, engines);
    }
    n
}

fn check_compiled(input: &str, compiled: &Compiled, engines: &mut usize) -> usize {
    let mut rng = Rng::new(0x9e3779b97f4a7c15);
    let mut checked = 0;
    let port_list = ports(compiled);
    for family in [Family::V4, Family::V6] {
        if !compiled.programs.iter().any(|p| p.family == family) {
            continue;
        }
        let engine = KernelEngine::new(compiled, family)
            .unwrap_or_else(|e| panic!("{input}: loading IPv{} programs: {e}", family.number()));
        *engines += 1;
        let addrs = addresses(compiled, family);
        let icmp = if family == Family::V4 { proto::ICMP } else { proto::ICMPV6 };
        let protos = [proto::TCP, proto::UDP, proto::SCTP, icmp, 47];
        for (index, p) in compiled.programs.iter().enumerate() {
            if p.family != family {
                continue;
            }
            for name in &p.endpoints {
                let ep = compiled.ir.endpoint(name, p.direction).unwrap();
                let own: Vec<IpAddr> =
                    ep.addresses.iter().copied().filter(|a| Family::of(a) == family).collect();
                for peer in &addrs {
                    // The endpoint's own address on its side: the runtime drops every other
                    // flow before policy (runtime_fastpath.rs tests that), so programs are
                    // only ever run on their endpoint's own traffic.
                    for _ in 0..6 {
                        let me = *rng.pick(&own);
                        let (src, dst) = match p.direction {
                            Direction::Ingress => (*peer, me),
                            Direction::Egress => (me, *peer),
                        };
                        let protocol = *rng.pick(&protos);
                        let flow = if protocol == icmp {
                            let t = *rng.pick(&[0u8, 3, 8, 128, 129]);
                            let code = *rng.pick(&[0u8, 1, 4]);
                            Flow::icmp(src, dst, t, code)
                        } else if proto::has_ports(protocol) {
                            let sport = *rng.pick(&port_list);
                            Flow::ports(src, dst, protocol, sport, *rng.pick(&port_list))
                        } else {
                            Flow::ports(src, dst, protocol, 0, 0)
                        };
                        let want = evaluate(ep, &flow);
                        let got = engine.run(compiled, index, &flow).unwrap();
                        let key = expected_key(ep, &want.trace);
                        assert_eq!(
                            got.verdict,
                            want.verdict,
                            "{input}: {name} {}: {flow}: kernel says {:?} by {:?}, evaluator {:?} by {key:?}",
                            p.direction.as_str(),
                            got.verdict,
                            compiled.rules.key(got.rule_id),
                            want.verdict
                        );
                        assert_eq!(
                            compiled.rules.key(got.rule_id),
                            Some(&key),
                            "{input}: {name}: {flow}: deciding rule differs"
                        );
                        let vm = polc::engine::vm_run(compiled, index, &flow).unwrap();
                        assert_eq!(vm, got, "{input}: {name}: {flow}: vm and kernel differ");
                        checked += 1;
                    }
                }
            }
        }
    }
    checked
}

fn inputs() -> Vec<String> {
    let mut inputs = vec!["demo".to_string()];
    let mut cases: Vec<String> = std::fs::read_dir(testdata("cases"))
        .unwrap()
        .map(|e| format!("cases/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    cases.sort();
    inputs.extend(cases);
    inputs
}

#[test]
fn kernel_agrees_with_the_evaluator_on_every_testdata_policy() {
    polc_loader::require_kernel!();
    let inputs = inputs();
    let mut total = 0;
    let mut engines = 0;
    for input in &inputs {
        total += check(input, &mut engines);
    }
    eprintln!("differential: {total} flows over {} inputs, {engines} map sets", inputs.len());
    assert!(total > 2000, "only {total} flows checked");
}

/// The same check with programs split into many tiny parts, so every testdata policy runs
/// through part hops, Pass across parts and the entry dispatch, in the kernel and the vm.
#[test]
fn split_programs_agree_with_the_evaluator() {
    polc_loader::require_kernel!();
    let mut total = 0;
    let mut engines = 0;
    let mut split = 0;
    // -O1 re-reads the peer's set bitmap in every part: split it as much as -O0.
    for (input, opt_level) in inputs().into_iter().flat_map(|i| [(i.clone(), 0), (i, 1)]) {
        let cluster = polc::frontend::load(&[testdata(&input)]).unwrap();
        let ir = polc::lower::lower(&cluster);
        // Smallest part size that fits the tail-call budget for this input.
        let mut part_insns = 10;
        let compiled = loop {
            let limits = Limits { part_insns, max_parts: 31 };
            match compile_ir_with(ir.clone(), Options { limits, opt_level, ..Options::default() }) {
                Ok(c) => break c,
                Err(e) if e.to_string().contains("tail-called parts") => part_insns *= 2,
                Err(e) => panic!("{input}: {e}"),
            }
        };
        split += compiled.programs.iter().filter(|p| p.parts.len() > 1).count();
        total += check_compiled(&format!("{input} -O{opt_level}"), &compiled, &mut engines);
    }
    eprintln!("split differential: {total} flows, {split} split programs");
    assert!(split >= 20, "only {split} programs were split");
}

/// Protocol guards (one protocol test skipping a run of rules that all need it) crossing
/// part boundaries: long same-protocol runs, Pass and Log inside them, split into tiny
/// parts at -O0 and -O1, against the evaluator in the kernel and the vm.
#[test]
fn protocol_runs_split_across_parts_agree_with_the_evaluator() {
    polc_loader::require_kernel!();
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: app, labels: {app: web}}\n\
         status: {podIP: 10.1.0.5}\n---\napiVersion: v1\nkind: Pod\n\
         metadata: {name: cli, namespace: app, labels: {app: cli}}\nstatus: {podIP: 10.1.0.6}\n\
         ---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\n\
         metadata: {name: runs, namespace: app}\nspec:\n  selector: app == 'web'\n  \
         types: [Ingress]\n  ingress:\n",
    );
    // Runs of 7 TCP, 5 UDP, 4 TCP rules (ports that the flows below hit and miss), a Log
    // and a Pass inside runs, then an allow for the client on UDP 53.
    let mut port = 1000;
    for (protocol, n) in [("TCP", 7), ("UDP", 5), ("TCP", 4)] {
        for i in 0..n {
            let action = if i == 2 {
                "Log"
            } else if i == 4 {
                "Pass"
            } else {
                "Deny"
            };
            port += 1;
            yaml.push_str(&format!(
                "  - action: {action}\n    protocol: {protocol}\n    source: {{selector: \
                 app == 'cli'}}\n    destination: {{ports: [{port}]}}\n"
            ));
        }
    }
    yaml.push_str("  - action: Allow\n    protocol: UDP\n    destination: {ports: [53]}\n");
    let cluster = polc::frontend::load_str("runs.yaml", &yaml).expect("valid yaml");
    let mut engines = 0;
    let mut total = 0;
    for opt_level in [0, 1] {
        for part_insns in [16, 40, 16_384] {
            let limits = Limits { part_insns, max_parts: 31 };
            let ir = polc::lower::lower(&cluster);
            let compiled = compile_ir_with(ir, Options { limits, opt_level, ..Options::default() })
                .expect("compiles");
            let listing: String =
                compiled.programs.iter().map(|p| polc::compile::listing(&compiled, p)).collect();
            assert!(listing.contains("rules all need protocol tcp"), "a guard was emitted");
            total += check_compiled(
                &format!("runs -O{opt_level} parts of {part_insns}"),
                &compiled,
                &mut engines,
            );
        }
    }
    assert!(total > 500, "only {total} flows checked");
}
