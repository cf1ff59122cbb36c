//! Verifier acceptance of large -O0 programs (linear evaluation): synthetic policy sets of 1k and 10k rules on
//! one endpoint (polc::synth) compile, split into tail-called parts, load into the kernel,
//! and decide like the evaluator. `POLC_LARGE_RULES=20000,30000` tries more sizes.

use polc::compile::{compile_ir_with, Options};
use polc::engine::KernelEngine;
use polc::synth::{cluster_yaml, Spec, TARGET, TARGET_IP};
use polc_ir::{evaluate, proto, Direction, Family, Flow};
use std::net::IpAddr;

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
        let yaml = cluster_yaml(Spec { rules, pods: 200, seed: 42, replicas: 1 });
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
        let index = compiled
            .programs
            .iter()
            .position(|p| {
                p.direction == Direction::Ingress && p.endpoints.iter().any(|e| e == TARGET)
            })
            .unwrap();
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
