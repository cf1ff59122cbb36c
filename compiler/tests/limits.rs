//! The input limits of docs/limits.md, each at its edge: the largest accepted input loads, one
//! step past it is refused with one clear line (exit 2 through the binary), quickly and without
//! building what the input would expand to.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use polc::frontend::limits::*;
use polc::frontend::load_str;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("polc-limits-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `polc compile -f ARGS...`: exit code 2 and the one stderr line.
fn polc_refuses(files: &[&Path]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_polc"));
    cmd.arg("compile");
    for f in files {
        cmd.arg("-f").arg(f);
    }
    let out = cmd.output().expect("run polc");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr.trim_end().to_owned()
}

fn refused(name: &str, text: &str) -> String {
    match load_str(name, text) {
        Ok(_) => panic!("{name}: loaded although past a limit"),
        Err(e) => {
            assert_eq!(e.exit_code(), 2, "{e}");
            e.to_string()
        }
    }
}

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";

/// A Namespace document padded with comment lines to exactly `len` bytes.
fn padded(len: usize) -> String {
    let mut text = String::from(NAMESPACE);
    let line = format!("#{}\n", "x".repeat(1022));
    while text.len() + line.len() <= len {
        text.push_str(&line);
    }
    let rest = len - text.len();
    if rest > 0 {
        text.push('#');
        text.push_str(&"x".repeat(rest - 1));
    }
    assert_eq!(text.len(), len);
    text
}

#[test]
fn file_size_limit() {
    let dir = scratch("size");
    let at = dir.join("at-limit.yaml");
    std::fs::write(&at, padded(MAX_FILE_BYTES as usize)).expect("write");
    let c = polc::frontend::load(std::slice::from_ref(&at)).expect("a file at the limit loads");
    assert_eq!(c.namespaces.len(), 1);

    let over = dir.join("over-limit.yaml");
    std::fs::write(&over, padded(MAX_FILE_BYTES as usize + 1)).expect("write");
    let line = polc_refuses(&[&over]);
    assert!(line.ends_with("over-limit.yaml: file is larger than 16 MiB (limit)"), "{line}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn endless_file_is_refused_not_read_forever() {
    let start = Instant::now();
    let line = polc_refuses(&[Path::new("/dev/zero")]);
    assert_eq!(line, "polc: /dev/zero: file is larger than 16 MiB (limit)");
    assert!(start.elapsed() < Duration::from_secs(20));
}

#[test]
fn total_size_limit() {
    let dir = scratch("total");
    // Five files of 15 MiB (75 MiB): refused, naming the file that crossed 64 MiB, before
    // any of them is parsed.
    let mut files = Vec::new();
    for i in 0..5 {
        let f = dir.join(format!("part{i}.yaml"));
        let text = padded(15 << 20).replace("name: shop", &format!("name: shop{i}"));
        std::fs::write(&f, text).expect("write");
        files.push(f);
    }
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let start = Instant::now();
    let line = polc_refuses(&refs);
    assert!(
        line.ends_with("part4.yaml: the input files together are larger than 64 MiB (limit)"),
        "{line}"
    );
    assert!(start.elapsed() < Duration::from_secs(10), "parsed first? {:?}", start.elapsed());
    std::fs::remove_dir_all(&dir).ok();
}

/// One List of `items` objects, then `docs` object documents (both count).
fn objects(items: usize, docs: usize) -> String {
    let mut text = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for i in 0..items {
        text.push_str(&format!(
            "- {{apiVersion: v1, kind: ConfigMap, metadata: {{name: l{i}}}}}\n"
        ));
    }
    for i in 0..docs {
        text.push_str(&format!(
            "---\n{{apiVersion: v1, kind: ConfigMap, metadata: {{name: d{i}}}}}\n"
        ));
    }
    text
}

#[test]
fn object_count_limit() {
    let c = load_str("at.yaml", &objects(MAX_OBJECTS - 2, 2)).expect("the limit loads");
    assert_eq!(c.notes.len(), MAX_OBJECTS, "every skipped ConfigMap is noted");
    let e = refused("over.yaml", &objects(MAX_OBJECTS - 2, 3));
    assert_eq!(e, "over.yaml: document 4: more than 100000 objects in the input (limit)");
}

fn policy_with_rules(n: usize) -> String {
    let mut text = String::from(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: big\n\
         spec:\n  selector: all()\n  egress:\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "  - {{action: Allow, protocol: TCP, destination: {{ports: [{}]}}}}\n",
            i % 65535 + 1
        ));
    }
    text
}

#[test]
fn rules_per_policy_limit() {
    let c = load_str("at.yaml", &policy_with_rules(MAX_RULES_PER_POLICY)).expect("limit loads");
    assert_eq!(c.calico_policies[0].egress.len(), MAX_RULES_PER_POLICY);
    let e = refused("over.yaml", &policy_with_rules(MAX_RULES_PER_POLICY + 1));
    assert_eq!(
        e,
        "over.yaml: document 1 (GlobalNetworkPolicy big): spec.egress: 10001 rules, more than \
         10000 in one policy (limit; split the policy)"
    );
    let k8s = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: big, namespace: a}}\n\
         spec:\n  podSelector: {{}}\n  ingress:\n{}",
        "  - {}\n".repeat(MAX_RULES_PER_POLICY + 1)
    );
    let e = refused("k8s.yaml", &k8s);
    assert!(e.contains("(NetworkPolicy a/big): spec.ingress: 10001 rules"), "{e}");
}

fn gnp_with_selector(selector: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: s\n\
         spec:\n  selector: \"{selector}\"\n"
    )
}

/// `has(a) || has(a) || ...` exactly `len` bytes long.
fn selector_of_len(len: usize) -> String {
    let mut s = String::from("has(a)");
    while s.len() + " || has(a)".len() <= len {
        s.push_str(" || has(a)");
    }
    s.push_str(&" ".repeat(len - s.len()));
    s
}

#[test]
fn selector_length_limit() {
    let at = selector_of_len(MAX_SELECTOR_BYTES);
    load_str("at.yaml", &gnp_with_selector(&at)).expect("a selector at the limit loads");
    let e = refused("over.yaml", &gnp_with_selector(&selector_of_len(MAX_SELECTOR_BYTES + 1)));
    assert!(
        e.contains("spec.selector: selector is 8193 bytes long, more than 8192 (limit)"),
        "{e}"
    );
}

#[test]
fn selector_depth_limit() {
    let nested = |depth: usize| format!("{}has(a){}", "(".repeat(depth), ")".repeat(depth));
    load_str("at.yaml", &gnp_with_selector(&nested(MAX_SELECTOR_DEPTH)))
        .expect("a selector nested to the limit loads");
    let e = refused("over.yaml", &gnp_with_selector(&nested(MAX_SELECTOR_DEPTH + 1)));
    assert!(e.contains("selector nests deeper than 256 levels"), "{e}");
    // The error quotes only the start of a long selector.
    assert!(e.len() < 300, "{} bytes: {e}", e.len());
}

#[test]
fn yaml_depth_limit() {
    // Nesting in a field polc ignores still counts: the parser sees it first.
    let flow = |depth: usize| format!("{NAMESPACE}x: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    load_str("ok.yaml", &flow(MAX_YAML_DEPTH - 2)).expect("deep but under the limit loads");
    let e = refused("flow.yaml", &flow(MAX_YAML_DEPTH + 1));
    assert!(
        e.starts_with("flow.yaml: document 1: YAML nests deeper than 128 levels (limit)"),
        "{e}"
    );
    // Flow nesting far past the limit is refused up front, in linear time.
    let start = Instant::now();
    let e = refused("flow.yaml", &flow(1_000_000));
    assert!(e.contains("YAML nests deeper than 128 levels"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    // Block nesting is stopped by the parser's own limit.
    let block: String = (0..200).map(|i| format!("{}k{i}:\n", "  ".repeat(i + 1))).collect();
    let e = refused("block.yaml", &format!("{NAMESPACE}spec:\n{block}"));
    assert!(e.contains("YAML nests deeper than 128 levels (limit)"), "{e}");
    // An apostrophe inside a plain scalar does not hide what follows.
    let e = refused("plain.yaml", &format!("{NAMESPACE}x: don't\ny: {}\n", "[".repeat(100_000)));
    assert!(e.contains("YAML nests deeper than 128 levels (limit) at line 6"), "{e}");
    // A quoted bracket or one in a comment is not nesting.
    let quoted = format!("{NAMESPACE}x: \"{}\"\n# {}\n", "[".repeat(500), "{".repeat(500));
    load_str("quoted.yaml", &quoted).expect("brackets in strings and comments are text");
}

#[test]
fn yaml_node_and_alias_limits() {
    // Ordinary alias use works: labels shared through an anchor.
    let shared = "apiVersion: v1\nkind: List\nitems:\n\
                  - {apiVersion: v1, kind: Namespace, metadata: {name: a, labels: &l {team: x}}}\n\
                  - {apiVersion: v1, kind: Namespace, metadata: {name: b, labels: *l}}\n";
    let c = load_str("shared.yaml", shared).expect("aliases load");
    assert_eq!(c.namespaces[1].labels.get("team").map(String::as_str), Some("x"));

    // A quadratic bomb: 1,100 uses of a 1,000-item list is 1.1 million nodes from 8 KB.
    let list = vec!["x"; 1000].join(",");
    let uses = vec!["*l"; 1100].join(",");
    let start = Instant::now();
    let e = refused("quad.yaml", &format!("{NAMESPACE}l: &l [{list}]\nuses: [{uses}]\n"));
    assert!(e.contains("the file expands to more than 1000000 YAML nodes (limit"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(20), "{:?}", start.elapsed());

    // The same number of plain nodes without aliases counts the same.
    let many = vec!["x"; MAX_YAML_NODES_PER_FILE as usize].join(",");
    let e = refused("many.yaml", &format!("{NAMESPACE}l: [{many}]\n"));
    assert!(e.contains("more than 1000000 YAML nodes"), "{e}");

    // An exponential bomb trips the parser's repetition limit first.
    let mut bomb = format!("{NAMESPACE}a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        bomb.push_str(&format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 9].join(", ")));
    }
    let e = refused("bomb.yaml", &bomb);
    assert!(
        e.contains("YAML aliases are used too often") || e.contains("YAML nodes (limit"),
        "{e}"
    );
}

#[test]
fn long_values_are_cut_in_messages() {
    let long = "x".repeat(300_000);
    let text = format!(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {{name: x}}\n\
         spec:\n  nets: [\"{long}\"]\n"
    );
    let e = refused("long.yaml", &text);
    let quoted = format!("\"{}...\"", "x".repeat(80));
    assert!(e.contains(&format!("spec.nets[0]: invalid CIDR {quoted} at line 5 column 10")), "{e}");
}
