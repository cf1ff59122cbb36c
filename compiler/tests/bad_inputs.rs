//! Every file in testdata/bad, through the real binary (`polc compile -f FILE -o DIR`): exit
//! code 2, exactly one line on stderr naming the file (and the document and field where there
//! is one), no panic, nothing on stdout, and nothing written into the output directory. The
//! lines are a snapshot (snapshots/bad_inputs.snap), reviewed as the spec of the messages.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every file in testdata/bad (any extension: `-f FILE` reads a named file whatever its name).
fn bad_files() -> Vec<String> {
    let dir = root().join("testdata/bad");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Files whose problem is the file itself (bytes, size), before any YAML document exists.
fn file_level(message: &str) -> bool {
    message.contains(": not UTF-8 text") || message.contains(" MiB (limit)")
}

/// Runs `polc compile -f <rel> -o <fresh empty dir>` from the repository root; checks the CLI
/// contract for bad input and returns the error line.
pub fn compile_must_fail(rel: &str, scratch: &Path) -> String {
    compile_must_fail_in(&root(), rel, scratch)
}

/// [`compile_must_fail`] with `rel` relative to `cwd`.
fn compile_must_fail_in(cwd: &Path, rel: &str, scratch: &Path) -> String {
    let out_dir = scratch.join("out");
    std::fs::create_dir_all(&out_dir).expect("create output dir");
    let output = Command::new(env!("CARGO_BIN_EXE_polc"))
        .current_dir(cwd)
        .args(["compile", "-f", rel, "-o"])
        .arg(&out_dir)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run polc");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{rel}: exit code; stderr: {stderr}");
    assert!(output.stdout.is_empty(), "{rel}: wrote to stdout");
    assert!(!stderr.contains("panicked"), "{rel}: panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{rel}: expected one stderr line, got {stderr:?}");
    let line = lines[0].to_owned();
    assert!(line.starts_with(&format!("polc: {rel}: ")), "{rel}: does not name the file: {line}");
    if !file_level(&line) {
        assert!(line.starts_with(&format!("polc: {rel}: document ")), "{rel}: no document: {line}");
    }
    let written: Vec<_> = std::fs::read_dir(&out_dir).expect("read output dir").collect();
    assert!(written.is_empty(), "{rel}: wrote into the output directory: {written:?}");
    std::fs::remove_dir_all(&out_dir).expect("clean output dir");
    line
}

/// Bad inputs written here rather than in testdata/bad: policies that polc once read by
/// ignoring a field, which widened what they allow (each must now be refused).
const INLINE_BAD: &[(&str, &str)] = &[
    (
        "strict-calico-destination-port",
        concat!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: p\n",
            "spec:\n  egress:\n  - action: Allow\n    protocol: TCP\n    destination:\n",
            "      port: [5432]\n"
        ),
    ),
    (
        "strict-calico-source-selecter",
        concat!(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\n",
            "spec:\n  ingress:\n  - action: Allow\n    source:\n      selecter: app == 'web'\n"
        ),
    ),
    (
        "strict-calico-rule-not-ports",
        concat!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: p\n",
            "spec:\n  ingress:\n  - action: Allow\n    protocol: TCP\n    notPorts: [22]\n"
        ),
    ),
    (
        "strict-calico-crd-spec-typo",
        concat!(
            "apiVersion: crd.projectcalico.org/v1\nkind: GlobalNetworkPolicy\nmetadata:\n  name: p\n",
            "spec:\n  selector: all()\n  egres:\n  - action: Deny\n"
        ),
    ),
    (
        "strict-calico-service-accounts-typo",
        concat!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: p\n",
            "spec:\n  ingress:\n  - action: Allow\n    source:\n      serviceAccounts:\n",
            "        name: [api]\n"
        ),
    ),
    (
        "strict-k8s-peer-typo",
        concat!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: k, namespace: shop}\n",
            "spec:\n  podSelector: {}\n  ingress:\n  - from:\n    - podSelektor: {matchLabels: {a: b}}\n"
        ),
    ),
    (
        "strict-k8s-port-typo",
        concat!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: k, namespace: shop}\n",
            "spec:\n  podSelector: {}\n  egress:\n  - ports:\n    - port: 53\n      protocl: UDP\n"
        ),
    ),
    (
        "strict-tier-typo",
        "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t}\nspec:\n  order: 1\n  defaultActon: Pass\n",
    ),
    (
        "strict-network-set-typo",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {name: s}\nspec:\n  net: [10.0.0.0/8]\n",
    ),
    (
        "services-in-allow-rule",
        concat!(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\n",
            "spec:\n  egress:\n  - action: Allow\n    destination:\n      services:\n",
            "        name: db\n        namespace: shop\n"
        ),
    ),
    (
        "http-in-pass-rule",
        concat!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: p\n",
            "spec:\n  ingress:\n  - action: Pass\n    http:\n      methods: [GET]\n"
        ),
    ),
    (
        "do-not-track-not-a-boolean",
        concat!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: p\n",
            "spec:\n  doNotTrack: 'true'\n  ingress:\n  - action: Allow\n"
        ),
    ),
];

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("polc-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn every_bad_input_is_one_located_line_and_exit_2() {
    let files = bad_files();
    assert!(files.len() >= 60, "only {} bad inputs", files.len());
    let dir = scratch("bad-inputs");
    let mut lines = Vec::new();
    for name in &files {
        let line = compile_must_fail(&format!("testdata/bad/{name}"), &dir);
        lines.push(line);
    }
    // Then the inline inputs, as files named `inline/NAME.yaml` in the scratch directory.
    std::fs::create_dir_all(dir.join("inline")).expect("inline dir");
    for (name, text) in INLINE_BAD {
        let rel = format!("inline/{name}.yaml");
        std::fs::write(dir.join(&rel), text).expect("write inline input");
        lines.push(compile_must_fail_in(&dir, &rel, &dir));
    }
    std::fs::remove_dir_all(&dir).ok();
    insta::with_settings!({
        snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots"),
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_snapshot!("bad_inputs", lines.join("\n"));
    });
}

#[test]
fn bad_inputs_cover_the_issue_list() {
    let files = bad_files().join(" ");
    for needle in [
        "yaml-syntax",
        "wrong-type",
        "cidr",
        "port",
        "range",
        "unknown-protocol",
        "selector",
        "duplicate",
        "undefined-tier",
        "alias-bomb",
        "deep-",
        "binary-garbage",
        "invalid-utf8",
    ] {
        assert!(files.contains(needle), "no bad input named like {needle:?}");
    }
}

/// The same bad file through `explain` fails the same way (bad input is exit 2 everywhere).
#[test]
fn explain_refuses_bad_input_with_the_same_line() {
    let dir = scratch("bad-explain");
    let rel = "testdata/bad/alias-bomb.yml";
    let compile_line = compile_must_fail(rel, &dir);
    let output = Command::new(env!("CARGO_BIN_EXE_polc"))
        .current_dir(root())
        .args(["explain", "-f", rel, "--from", "a/b", "--to", "c/d", "--protocol", "tcp"])
        .output()
        .expect("run polc");
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&output.stderr).trim_end(), compile_line);
    std::fs::remove_dir_all(&dir).ok();
}
