//! The annotated listing of every testdata case and the demo, at -O2 then -O0 (and the demo
//! at -O1), as insta snapshots under snapshots/listing_*.snap. Each is a spec to review: the comments must name the tier,
//! policy and rule (with file and document) that produced each block, and the code must do
//! what the comment says.

use std::path::Path;

fn listing_of(rel: &str) -> String {
    listing_at(rel, &[2, 0])
}

fn listing_at(rel: &str, levels: &[u8]) -> String {
    // Relative to the package directory (cargo test's working directory), so the file names
    // in the listing's comments are the same on every machine.
    let path = Path::new("../testdata").join(rel);
    let mut out = String::new();
    for &opt_level in levels {
        let options = polc::compile::Options { opt_level, ..Default::default() };
        let compiled =
            polc::compile::compile_files_with(std::slice::from_ref(&path), options).unwrap();
        out.push_str(&format!("; ===== -O{opt_level} =====\n"));
        for p in &compiled.programs {
            out.push_str(&polc::compile::listing(&compiled, p));
            if let Some(why) = &p.fallback {
                out.push_str(&format!("; (-O2 fell back to -O{}: {why})\n", p.opt_level));
            }
            out.push('\n');
        }
    }
    out
}

fn snapshot(name: &str, text: &str) {
    insta::with_settings!({
        snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots"),
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_snapshot!(name, text);
    });
}

#[test]
fn every_case_has_a_reviewed_listing() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/cases");
    let mut cases: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 20);
    for case in cases {
        let stem = case.trim_end_matches(".yaml").replace('-', "_");
        snapshot(&format!("listing_{stem}"), &listing_of(&format!("cases/{case}")));
    }
}

#[test]
fn demo_listing() {
    snapshot("listing_demo", &listing_of("demo"));
}

/// -O1: the -O0 code with every peer-side set test a bit test on one bitmap.
#[test]
fn demo_listing_at_o1() {
    snapshot("listing_demo_o1", &listing_at("demo", &[1]));
}
