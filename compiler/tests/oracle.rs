//! The independent oracle (scripts/oracle/oracle.py): random Kubernetes clusters from a fixed
//! seed set, network-config-analyzer's verdicts against `polc explain` on the ir and vm engines
//! and, as root, the kernel engine. Needs `nca` (`pip install network-config-analyzer==2.1.0`)
//! and python3; without them it prints `SKIP:` and passes, unless POLC_REQUIRE_ORACLE=1.
//! Large runs: docs/security.md ("independent oracle") and scripts/oracle/oracle.py --help.

use std::path::Path;
use std::process::Command;

/// A missing tool: a visible skip, or a failure when the oracle is required.
fn skip(reason: &str) {
    if std::env::var("POLC_REQUIRE_ORACLE").as_deref() == Ok("1") {
        panic!("POLC_REQUIRE_ORACLE=1 but {reason}");
    }
    eprintln!("SKIP: oracle: {reason}");
}

#[test]
fn network_config_analyzer_agrees_on_fixed_seeds() {
    let nca = Command::new("nca").arg("--version").output();
    if !nca.is_ok_and(|o| o.status.success()) {
        return skip("nca is not installed");
    }
    // The kernel engine needs bpf(2): root here, skipped (visibly) elsewhere.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let engines = if root {
        "ir,vm,kernel"
    } else if std::env::var("POLC_REQUIRE_KERNEL").as_deref() == Ok("1") {
        panic!("POLC_REQUIRE_KERNEL=1 but not root: the kernel engine cannot run");
    } else {
        eprintln!("SKIP: oracle: kernel engine (not root); comparing ir and vm only");
        "ir,vm"
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/oracle/oracle.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--polc", env!("CARGO_BIN_EXE_polc"), "--seeds", "1-3", "--quick"])
        .args(["--engines", engines])
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => return skip(&format!("python3: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "oracle disagrees or failed:\n{stdout}\n{stderr}");
    // "oracle: N verdicts compared (...; nca allows A, denies D), 0 disagree"
    let summary = stdout.lines().last().unwrap_or_default();
    let number_after = |word: &str| -> u64 {
        let rest = summary.split(word).nth(1).unwrap_or_default().trim_start();
        rest.split(|c: char| !c.is_ascii_digit()).next().unwrap_or_default().parse().unwrap_or(0)
    };
    assert!(summary.ends_with(", 0 disagree"), "{summary}");
    assert!(number_after("oracle:") >= 300, "too few verdicts compared: {summary}");
    assert!(number_after("allows") > 0 && number_after("denies") > 0, "one-sided: {summary}");
}
