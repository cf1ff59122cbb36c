//! Large synthetic policy sets on one endpoint (polc::synth) in the kernel:
//! - -O0 (linear evaluation): 1k and 10k rules compile, split into tail-called parts, load,
//!   and decide like the evaluator (`POLC_LARGE_RULES=20000,30000` tries more sizes);
//! - -O2 (class tables): thousands of rules stay at -O2 with a small constant worst case,
//!   and decide like the evaluator, deciding rule included, on flows aimed at the edges of
//!   every set and port range.

use polc::compile::{compile_ir_with, Options};
use polc::engine::KernelEngine;
mod common;

use common::{expected_key, Rng};
use polc::synth::{cluster_yaml, PortMix, Spec, TARGET, TARGET_IP};
use polc_ir::{evaluate, proto, Direction, Family, Flow};
use std::net::IpAddr;

/// Index of the target's ingress program.
fn target_program(compiled: &polc::compile::Compiled) -> usize {
    compiled
        .program_index(TARGET, Direction::Ingress, Family::V4)
        .expect("a program for the target")
}

fn sizes() -> Vec<usize> {
    match std::env::var("POLC_LARGE_RULES") {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => vec![1_000, 10_000],
    }
}

#[test]
fn large_policy_sets_load_and_agree_with_the_evaluator() {
    polc_loader::require_kernel!();
    for rules in sizes() {
        let yaml = cluster_yaml(Spec { rules, pods: 200, seed: 42, ..Spec::default() });
        let cluster = polc::frontend::load_str("synth.yaml", &yaml).unwrap();
        let ir = polc::lower::lower(&cluster);
        // -O0: this test is about linear programs, their splitting and the verifier.
        let options = Options { opt_level: 0, ..Options::default() };
        let compiled = match compile_ir_with(ir, options) {
            Ok(c) => c,
            Err(e) => {
                // Past the -O0 size limit compile must say so clearly (endpoint, direction,
                // rule count), never emit a program the kernel refuses.
                let msg = e.to_string();
                assert!(msg.contains(TARGET) && msg.contains("ingress") && msg.contains("rules"));
                eprintln!("{rules} rules: compile refuses: {msg}");
                continue;
            }
        };
        let index = target_program(&compiled);
        let p = &compiled.programs[index];
        let start = std::time::Instant::now();
        let engine = KernelEngine::new(&compiled, Family::V4)
            .unwrap_or_else(|e| panic!("{rules} rules: kernel refuses: {e}"));
        eprintln!(
            "{rules} rules: {} parts, {} insns, worst case {} insns / {} lookups; \
             loaded {} programs in {:?}",
            p.parts.len(),
            p.insns(),
            p.worst_case.insns,
            p.worst_case.map_lookups,
            compiled.programs.len(),
            start.elapsed()
        );
        if rules >= 10_000 {
            assert!(p.parts.len() > 1, "a 10k-rule -O0 program should need parts");
        }
        let ep = compiled.ir.endpoint(TARGET, Direction::Ingress).unwrap();
        let dst: IpAddr = TARGET_IP.parse().unwrap();
        let mut checked = 0;
        let mut allowed = 0;
        for (i, src) in
            ["10.200.1.1", "10.200.1.7", "172.16.5.9", "192.168.1.1", "10.9.9.9"].iter().enumerate()
        {
            let src: IpAddr = src.parse().unwrap();
            for (protocol, port) in
                [(proto::TCP, 8080u16), (proto::TCP, 3050), (proto::UDP, 5353), (proto::SCTP, 99)]
            {
                let flow = Flow::ports(src, dst, protocol, 40000 + i as u16, port);
                let want = evaluate(ep, &flow);
                let got = engine.run(&compiled, index, &flow).unwrap();
                assert_eq!(got.verdict, want.verdict, "{rules} rules: {flow}");
                allowed += (got.verdict == polc_ir::Verdict::Allow) as usize;
                if rules <= 1_000 {
                    let vm = polc::engine::vm_run(&compiled, index, &flow).unwrap();
                    assert_eq!(vm, got, "{rules} rules: {flow}: vm and kernel differ");
                }
                checked += 1;
            }
            let flow = Flow::icmp(src, dst, 8, 0);
            assert_eq!(
                engine.run(&compiled, index, &flow).unwrap().verdict,
                evaluate(ep, &flow).verdict,
                "{rules} rules: {flow}"
            );
        }
        assert!(allowed > 0 && allowed < checked, "{rules} rules: flows all decided alike");
    }
}

/// Flows to the target from addresses at the edges of every set member and to ports at the
/// edges of every port range, drawn at random from those lists.
fn edge_flows(ep: &polc_ir::EndpointPolicy, n: usize, rng: &mut Rng) -> Vec<Flow> {
    let mut addrs = vec![u32::from(std::net::Ipv4Addr::new(10, 9, 9, 9))];
    for set in &ep.ip_sets {
        for p in &set.members {
            if let IpAddr::V4(a) = p.addr() {
                let (a, size) = (u32::from(a), 1u64 << (32 - p.len()));
                let last = (a as u64 + size - 1) as u32;
                addrs.extend([a.wrapping_sub(1), a, last, last.wrapping_add(1)]);
            }
        }
    }
    let mut ports = vec![0u16, 80, 8080, 9090, 5353, 65535];
    for t in ep.tiers.iter() {
        for pol in &t.policies {
            for r in &pol.rules {
                for pm in [&r.matches.dst.ports, &r.matches.dst.not_ports].into_iter().flatten() {
                    for range in &pm.ranges {
                        ports.extend([range.lo.saturating_sub(1), range.lo, range.hi]);
                        ports.push(range.hi.saturating_add(1));
                    }
                }
            }
        }
    }
    let dst: IpAddr = TARGET_IP.parse().unwrap();
    (0..n)
        .map(|i| {
            let src = IpAddr::from(std::net::Ipv4Addr::from(*rng.pick(&addrs)));
            match rng.below(8) {
                0 => Flow::icmp(src, dst, *rng.pick(&[0u8, 3, 8, 11]), *rng.pick(&[0u8, 1])),
                1 => Flow::ports(src, dst, 47, 0, 0),
                k => {
                    let protocol = [proto::TCP, proto::UDP, proto::SCTP][k % 3];
                    Flow::ports(src, dst, protocol, 30000 + i as u16 % 1000, *rng.pick(&ports))
                }
            }
        })
        .collect()
}

#[test]
fn large_sets_stay_optimised_and_agree_with_the_evaluator() {
    polc_loader::require_kernel!();
    for (ports, rules) in [(PortMix::Services, 10_000), (PortMix::Random, 1_000)] {
        let yaml = cluster_yaml(Spec { rules, pods: 50, seed: 42, ports, ..Spec::default() });
        let cluster = polc::frontend::load_str("synth.yaml", &yaml).unwrap();
        let mut ir = polc::lower::lower(&cluster);
        // The target and one other pod (whose programs have only the security and
        // platform tiers, with their pair table in code): all the others are alike.
        ir.endpoints.retain(|e| e.endpoint == TARGET || e.endpoint == "bench/pod-0");
        let compiled = compile_ir_with(ir, Options::default()).unwrap();
        let index = target_program(&compiled);
        let p = &compiled.programs[index];
        let label = format!("{rules} rules, {ports:?} ports");
        assert_eq!(p.opt_level, 2, "{label}: fell back: {:?}", p.fallback);
        assert!(p.worst_case.insns <= 200, "{label}: worst case {} insns", p.worst_case.insns);
        let engine = KernelEngine::new(&compiled, Family::V4)
            .unwrap_or_else(|e| panic!("{label}: kernel refuses: {e}"));
        let ep = compiled.ir.endpoint(TARGET, Direction::Ingress).unwrap();
        let mut rng = Rng::new(rules as u64);
        let mut allowed = 0;
        let flows = edge_flows(ep, 3_000, &mut rng);
        for flow in &flows {
            let want = evaluate(ep, flow);
            let got = engine.run(&compiled, index, flow).unwrap();
            assert_eq!(got.verdict, want.verdict, "{label}: {flow}");
            let key = expected_key(ep, &want.trace);
            assert_eq!(compiled.rules.key(got.rule_id), Some(&key), "{label}: {flow}: rule");
            allowed += (got.verdict == polc_ir::Verdict::Allow) as usize;
        }
        eprintln!(
            "{label}: -O2, {} insns, worst case {} insns / {} lookups; {allowed} of {} flows allowed",
            p.insns(),
            p.worst_case.insns,
            p.worst_case.map_lookups,
            flows.len()
        );
        assert!(allowed > 0 && allowed < flows.len(), "{label}: flows all decided alike");
    }
}
