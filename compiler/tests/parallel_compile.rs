//! Programs are generated on several threads, ahead of the compile loop: this must change
//! nothing. Every program (bytes, maps, endpoints, level) and every rule id equals what one
//! thread produces, for any thread count.

use polc::compile::{compile_ir_with, Compiled, Options};

fn compile(yaml: &str, opt_level: u8, threads: usize) -> Compiled {
    let cluster = polc::frontend::load_str("synth.yaml", yaml).expect("valid synthetic cluster");
    let ir = polc::lower::lower(&cluster);
    compile_ir_with(ir, Options { opt_level, threads, ..Options::default() }).expect("compiles")
}

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

#[test]
fn more_threads_give_the_programs_and_rule_ids_of_one() {
    // Several distinct shapes per cluster (and replicas sharing them), so that helpers
    // generate programs ahead of the loop, some from a rule table the loop has since grown.
    for (rules, pods, seed, replicas) in [(60, 40, 1, 1), (400, 90, 7, 3), (1500, 60, 3, 10)] {
        let yaml = polc::synth::cluster_yaml(polc::synth::Spec {
            rules,
            pods,
            seed,
            replicas,
            ..Default::default()
        });
        for level in [0, 1, 2] {
            let one = summary(&compile(&yaml, level, 1));
            assert!(one.len() > 2, "{rules} rules: expected programs and rule ids");
            for threads in [2, 4] {
                for run in 0..2 {
                    assert_eq!(
                        summary(&compile(&yaml, level, threads)),
                        one,
                        "{rules} rules, {pods} pods, -O{level}, {threads} threads (run {run})"
                    );
                }
            }
        }
    }
}

#[test]
fn more_threads_compile_every_case_the_same() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata");
    let mut files = vec![std::path::PathBuf::from(format!("{root}/demo"))];
    let mut cases: Vec<_> = std::fs::read_dir(format!("{root}/cases"))
        .expect("testdata/cases")
        .map(|e| e.expect("entry").path())
        .collect();
    cases.sort();
    files.extend(cases);
    for path in files {
        let cluster = polc::frontend::load(std::slice::from_ref(&path)).expect("loads");
        let ir = polc::lower::lower(&cluster);
        let with = |threads| {
            let options = Options { threads, ..Options::default() };
            summary(&compile_ir_with(ir.clone(), options).expect("compiles"))
        };
        assert_eq!(with(3), with(1), "{}", path.display());
    }
}
