//! Replicas compile once: an endpoint whose policy has the shape of one already compiled
//! gets that program with its own address put in. This must change nothing: every program,
//! byte for byte, with the endpoints that share it and its maps, equals a fresh compile.

use polc::compile::{compile_ir_with, Compiled, Options};

fn compile(yaml: &str, opt_level: u8, share_shapes: bool) -> Compiled {
    let cluster = polc::frontend::load_str("synth.yaml", yaml).expect("valid synthetic cluster");
    let ir = polc::lower::lower(&cluster);
    compile_ir_with(ir, Options { opt_level, share_shapes, ..Options::default() })
        .expect("compiles")
}

fn summary(c: &Compiled) -> Vec<String> {
    c.programs
        .iter()
        .map(|p| {
            format!(
                "{:?} {:?} {:?} parts={:?} maps={:?} level={} fallback={:?}",
                p.endpoints,
                p.direction,
                p.family,
                p.parts.iter().map(|x| x.bytes.clone()).collect::<Vec<_>>(),
                p.local_maps,
                p.opt_level,
                p.fallback
            )
        })
        .collect()
}

#[test]
fn sharing_shapes_gives_the_programs_a_fresh_compile_gives() {
    // Replicas share labels and ports: the sharing is exercised (and counted below).
    for (rules, pods, seed, replicas) in [(60, 40, 1, 1), (300, 80, 7, 4), (1200, 30, 3, 10)] {
        let yaml = polc::synth::cluster_yaml(polc::synth::Spec {
            rules,
            pods,
            seed,
            replicas,
            ..Default::default()
        });
        for level in [0, 1, 2] {
            let shared = compile(&yaml, level, true);
            let fresh = compile(&yaml, level, false);
            assert_eq!(
                summary(&shared),
                summary(&fresh),
                "{rules} rules, {pods} pods, -O{level}: sharing changed a program"
            );
            assert_eq!(shared.rules.len(), fresh.rules.len());
            assert_eq!(shared.programs.len(), fresh.programs.len());
        }
    }
}

#[test]
fn the_demo_and_every_case_compile_the_same_with_and_without_sharing() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata");
    let mut dirs = vec![std::path::PathBuf::from(format!("{root}/demo"))];
    for e in std::fs::read_dir(format!("{root}/cases")).expect("cases") {
        dirs.push(e.expect("entry").path());
    }
    for dir in dirs {
        let cluster = polc::frontend::load(std::slice::from_ref(&dir)).expect("loads");
        for level in [0, 1, 2] {
            let run = |share_shapes| {
                let ir = polc::lower::lower(&cluster);
                compile_ir_with(
                    ir,
                    Options { opt_level: level, share_shapes, ..Options::default() },
                )
                .expect("compiles")
            };
            assert_eq!(summary(&run(true)), summary(&run(false)), "{} -O{level}", dir.display());
        }
    }
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
