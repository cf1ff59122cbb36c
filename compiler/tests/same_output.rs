//! Ways of compiling that must change no output. Replicas compile once (an endpoint whose
//! policy has the shape of one already compiled gets that program), programs are generated
//! on several threads ahead of the compile loop, and lowering reuses what it lowered: every
//! program (bytes, maps, endpoints, level, worst case) and every rule id must equal a plain
//! one-thread compile without sharing.

use polc::compile::{compile_ir_with, Compiled, Options};
use std::path::PathBuf;

/// Everything a compile produces that a user or the loader sees, one line per program and
/// per rule id.
fn summary(c: &Compiled) -> Vec<String> {
    let mut out: Vec<String> = c
        .programs
        .iter()
        .map(|p| {
            format!(
                "{:?} {:?} {:?} parts={:?} maps={:?} level={} fallback={:?} worst={:?}",
                p.endpoints,
                p.direction,
                p.family,
                p.parts.iter().map(|x| x.bytes.clone()).collect::<Vec<_>>(),
                p.local_maps,
                p.opt_level,
                p.fallback,
                p.worst_case
            )
        })
        .collect();
    out.extend((0..c.rules.len() as u32).map(|id| format!("rule {id}: {:?}", c.rules.key(id))));
    out
}

/// Synthetic clusters with several distinct shapes and replicas sharing them (so shapes are
/// shared, and helper threads generate some programs from a rule table the loop has since
/// grown).
fn synthetic() -> Vec<(String, polc::frontend::Cluster)> {
    [(60, 40, 1, 1), (400, 90, 7, 3), (1500, 60, 3, 10)]
        .into_iter()
        .map(|(rules, pods, seed, replicas)| {
            let spec = polc::synth::Spec { rules, pods, seed, replicas, ..Default::default() };
            let yaml = polc::synth::cluster_yaml(spec);
            let cluster = polc::frontend::load_str("synth.yaml", &yaml).expect("synthetic");
            (format!("{rules} rules, {pods} pods, {replicas} replicas"), cluster)
        })
        .collect()
}

/// The demo and every case of testdata.
fn testdata() -> Vec<(String, polc::frontend::Cluster)> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata");
    let mut dirs = vec![PathBuf::from(format!("{root}/demo"))];
    let mut cases: Vec<PathBuf> = std::fs::read_dir(format!("{root}/cases"))
        .expect("testdata/cases")
        .map(|e| e.expect("entry").path())
        .collect();
    cases.sort();
    dirs.extend(cases);
    dirs.into_iter()
        .map(|d| {
            let cluster = polc::frontend::load(std::slice::from_ref(&d)).expect("loads");
            (d.display().to_string(), cluster)
        })
        .collect()
}

/// Asserts that compiling each input at each level with every option set in `variants`
/// gives what one thread without shape sharing gives.
fn assert_same_output(inputs: &[(String, polc::frontend::Cluster)], variants: &[Options]) {
    for (name, cluster) in inputs {
        let ir = polc::lower::lower(cluster);
        for opt_level in [0, 1, 2] {
            let run = |o: &Options| {
                let options = Options { opt_level, ..*o };
                summary(&compile_ir_with(ir.clone(), options).expect("compiles"))
            };
            let plain = run(&Options { share_shapes: false, threads: 1, ..Options::default() });
            assert!(plain.len() > 2, "{name}: expected programs and rule ids");
            for v in variants {
                assert_eq!(
                    run(v),
                    plain,
                    "{name} -O{opt_level}: sharing {} with {} threads changed the output",
                    v.share_shapes,
                    v.threads
                );
            }
        }
    }
}

/// Options with (share_shapes, threads) from `list`.
fn variants(list: &[(bool, usize)]) -> Vec<Options> {
    list.iter()
        .map(|&(share_shapes, threads)| Options { share_shapes, threads, ..Options::default() })
        .collect()
}

#[test]
fn sharing_shapes_and_threads_change_no_synthetic_program() {
    // Shape sharing alone, then with 2 threads (twice: thread timing varies) and 4.
    assert_same_output(&synthetic(), &variants(&[(true, 1), (true, 2), (true, 2), (true, 4)]));
}

#[test]
fn sharing_shapes_and_threads_change_no_testdata_program() {
    assert_same_output(&testdata(), &variants(&[(true, 1), (true, 3)]));
}

/// Lowering reuses a replica's rules (same namespace, labels, service account and ports):
/// every endpoint must equal what lowering that pod on its own gives.
#[test]
fn lowering_replicas_once_gives_what_lowering_each_pod_gives() {
    let yaml = polc::synth::cluster_yaml(polc::synth::Spec {
        rules: 400,
        pods: 60,
        seed: 5,
        replicas: 6,
        ..Default::default()
    });
    let mut inputs = vec![polc::frontend::load_str("synth.yaml", &yaml).expect("loads")];
    let demo = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/demo"));
    inputs.push(polc::frontend::load(&[demo]).expect("demo loads"));
    for cluster in &inputs {
        let ir = polc::lower::lower(cluster);
        let resolver = polc::resolve::Resolver::new(cluster);
        let mut sets = polc::lower::SetTable::default();
        let mut i = 0;
        for pod in resolver.endpoints() {
            for dir in [polc_ir::Direction::Ingress, polc_ir::Direction::Egress] {
                let alone = polc::lower::lower_endpoint(&resolver, &mut sets, pod, dir);
                assert_eq!(Some(&alone), ir.endpoints.get(i), "{}", alone.endpoint);
                i += 1;
            }
        }
        assert_eq!(i, ir.endpoints.len());
    }
}
