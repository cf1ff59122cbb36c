//! `polc compile -o DIR` through the built binary: DIR ends up holding exactly the current
//! programs (earlier polc outputs removed, other files kept).

use std::process::Command;

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/demo");

#[test]
fn output_dir_holds_exactly_the_current_programs() {
    let dir = std::env::temp_dir().join(format!("polc-compile-output-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // An earlier compile's program that this policy no longer has, and a user's file.
    for stale in ["ingress-v4-gone-pod.txt", "ingress-v4-gone-pod.o", "egress-v6-gone.part1.o"] {
        std::fs::write(dir.join(stale), "old").unwrap();
    }
    std::fs::write(dir.join("README.notes"), "mine").unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_polc"))
        .args(["compile", "-f", DEMO, "--output", "json", "-o"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut expected: Vec<String> = (summary["programs"].as_array().unwrap().iter())
        .flat_map(|p| {
            let file = p["file"].as_str().unwrap();
            [format!("{file}.txt"), format!("{file}.o")]
        })
        .collect();
    expected.push("README.notes".into());
    expected.sort();
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, expected);
    let _ = std::fs::remove_dir_all(&dir);
}
