//! `polc explain` through the built binary: JSON shape, text trace, exit codes, one-line errors.

use std::process::{Command, Output};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/demo");
const FRONTEND: &str = "shop/frontend-7d9f8b6c5d-x2k4q";
const CART: &str = "shop/cart-5c6b9d7f4-8hj2m";

fn polc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_polc"))
        .arg("explain")
        .args(["-f", DEMO])
        .args(args)
        .output()
        .expect("run polc")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

/// Demo: shop/cart takes TCP 9090 from the frontend (k8s allow-cart-from-frontend), after the
/// security tier passes it.
#[test]
fn allow_json_has_verdict_and_both_traces() {
    let o = polc(&[
        "--from",
        FRONTEND,
        "--to",
        CART,
        "--protocol",
        "tcp",
        "--port",
        "9090",
        "--output",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["verdict"], "allow");
    assert_eq!(v["engine"], "ir");
    assert_eq!(v["flow"]["protocol"], "tcp");
    assert_eq!(v["flow"]["dst_port"], 9090);
    assert_eq!(v["from"]["endpoint"], FRONTEND);
    assert_eq!(v["to"]["ip"], "10.244.1.11");
    // Egress of the frontend: the security tier passes, nothing else selects it -> profile.
    let eg = &v["egress"];
    assert_eq!(eg["verdict"], "allow");
    assert_eq!(eg["trace"][0]["step"], "pass");
    assert_eq!(eg["trace"][0]["tier"], "security");
    assert_eq!(eg["trace"][0]["policy"], "security.block-known-bad");
    assert_eq!(eg["decided_by"]["step"], "profile_after_pass");
    // Ingress of the cart: pass, then the k8s rule 0 allows.
    let ing = &v["ingress"];
    assert_eq!(ing["verdict"], "allow");
    assert_eq!(ing["decided_by"]["step"], "rule");
    assert_eq!(ing["decided_by"]["tier"], "default");
    assert_eq!(ing["decided_by"]["policy"], "shop/allow-cart-from-frontend");
    assert_eq!(ing["decided_by"]["rule_index"], 0);
    assert_eq!(ing["decided_by"]["action"], "allow");
    assert_eq!(ing["decided_by"]["kind"], "k8s/NetworkPolicy");
    assert!(ing["decided_by"]["file"].as_str().is_some_and(|f| f.ends_with("k8s/shop.yaml")));
}

#[test]
fn deny_exits_zero_and_names_the_tier_default() {
    let o = polc(&[
        "--from",
        FRONTEND,
        "--to",
        CART,
        "--protocol",
        "tcp",
        "--port",
        "8080",
        "--output",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["ingress"]["decided_by"]["step"], "tier_default");
    assert_eq!(v["ingress"]["decided_by"]["tier"], "default");
    assert_eq!(v["ingress"]["decided_by"]["action"], "deny");
}

/// An outside address is not a pod: its side is null, only the pod's side decides.
#[test]
fn external_source_has_null_egress() {
    // 203.0.113.7 is in the threat-feed GlobalNetworkSet: the security tier denies it.
    let o = polc(&[
        "--from",
        "203.0.113.7",
        "--to",
        FRONTEND,
        "--protocol",
        "tcp",
        "--port",
        "8080",
        "--output",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let v = json(&o);
    assert!(v["egress"].is_null());
    assert!(v["from"]["endpoint"].is_null());
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["ingress"]["decided_by"]["step"], "rule");
    assert_eq!(v["ingress"]["decided_by"]["tier"], "security");
    assert_eq!(v["ingress"]["decided_by"]["rule_index"], 0);
}

/// A pod's IP means the pod.
#[test]
fn pod_ip_means_the_pod() {
    let o = polc(&[
        "--from",
        "10.244.1.10",
        "--to",
        "10.244.1.11",
        "--protocol",
        "tcp",
        "--port",
        "9090",
        "--output",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["from"]["endpoint"], FRONTEND);
    assert_eq!(v["to"]["endpoint"], CART);
    assert_eq!(v["verdict"], "allow");
}

#[test]
fn text_output_is_a_readable_trace() {
    let o = polc(&["--from", FRONTEND, "--to", CART, "--protocol", "tcp", "--port", "9090"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let text = stdout(&o).replace(concat!(env!("CARGO_MANIFEST_DIR"), "/../"), "");
    insta::with_settings!({
        snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots"),
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_snapshot!("explain_text_allow", text);
    });
}

fn assert_input_error(args: &[&str], needle: &str) {
    let o = polc(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "args {args:?}: stderr {err}");
    assert!(o.stdout.is_empty(), "args {args:?}: stdout {}", stdout(&o));
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "args {args:?}: {err:?} should mention {needle:?}");
}

#[test]
fn bad_input_exits_two_with_one_line() {
    assert_input_error(
        &["--from", "shop/nope", "--to", CART, "--protocol", "tcp", "--port", "1"],
        "unknown pod",
    );
    assert_input_error(
        &["--from", "10.0.0.300", "--to", CART, "--protocol", "tcp", "--port", "1"],
        "expected namespace/pod or an IP",
    );
    assert_input_error(
        &["--from", FRONTEND, "--to", CART, "--protocol", "icmp", "--port", "80"],
        "--port",
    );
    assert_input_error(
        &["--from", FRONTEND, "--to", CART, "--protocol", "tcp"],
        "--port is required",
    );
    assert_input_error(
        &["--from", FRONTEND, "--to", CART, "--protocol", "tcp", "--port", "1", "--icmp-type", "8"],
        "--icmp-type",
    );
    assert_input_error(&["--from", FRONTEND, "--to", CART, "--protocol", "bogus"], "--protocol");
    assert_input_error(
        &["--from", FRONTEND, "--to", "fd00::1", "--protocol", "tcp", "--port", "1"],
        "no IP family in common",
    );
    assert_input_error(&["--from", FRONTEND, "--to", CART, "--protocol", "icmpv6"], "use icmp");
    assert_input_error(
        &["--from", FRONTEND, "--to", "10.0.0.0/8", "--protocol", "tcp", "--port", "1"],
        "not a CIDR",
    );
    // A flag's value the parser refuses: one line too (clap prints usage and tips).
    assert_input_error(
        &["--from", FRONTEND, "--to", CART, "--protocol", "tcp", "--port", "70000"],
        "invalid value '70000' for '--port",
    );
    assert_input_error(
        &[
            "--from",
            "monitoring/node-exporter-7xkq2",
            "--to",
            CART,
            "--protocol",
            "udp",
            "--port",
            "1",
        ],
        "hostNetwork pod",
    );
}

#[test]
fn vm_and_kernel_engines_agree_with_ir() {
    let kernel = polc_loader::kernel_test_guard().is_ok();
    let queries: [&[&str]; 4] = [
        &["--from", FRONTEND, "--to", CART, "--protocol", "tcp", "--port", "9090"],
        &[
            "--from",
            "10.1.2.3",
            "--to",
            "payments/payments-api-84c5d6b7f-tt5zl",
            "--protocol",
            "tcp",
            "--port",
            "22",
        ],
        &[
            "--from",
            CART,
            "--to",
            "payments/payments-api-84c5d6b7f-tt5zl",
            "--protocol",
            "tcp",
            "--port",
            "8443",
        ],
        // Through service NAT to the payments backend (denied by its ingress).
        &["--from", FRONTEND, "--to", "10.96.20.20", "--protocol", "tcp", "--port", "443"],
    ];
    for q in queries {
        let run = |engine: &str| {
            let mut args = q.to_vec();
            args.extend(["--engine", engine, "--output", "json"]);
            let o = polc(&args);
            assert_eq!(o.status.code(), Some(0), "{engine} {q:?}: {}", stderr(&o));
            let j = json(&o);
            let side = |d: &str| j[d]["decided_by"].clone();
            (j["verdict"].clone(), side("egress"), side("ingress"))
        };
        let ir = run("ir");
        assert_eq!(run("vm"), ir, "vm vs ir for {q:?}");
        if kernel {
            assert_eq!(run("kernel"), ir, "kernel vs ir for {q:?}");
        }
    }
}

#[test]
fn icmp_defaults_to_echo_request() {
    let o = polc(&[
        "--from",
        FRONTEND,
        "--to",
        "payments/payments-api-84c5d6b7f-tt5zl",
        "--protocol",
        "icmp",
        "--output",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["flow"]["icmp_type"], 8);
    assert_eq!(v["flow"]["icmp_code"], 0);
    assert!(v["flow"]["dst_port"].is_null());
}

// ---------------------------------------------------------------- services

/// testdata/demo/30-services.yaml: shop/cart is 10.96.10.11:9090 -> targetPort `grpc`
/// (9090 on the cart pod, found through the service's selector).
#[test]
fn a_cluster_ip_is_followed_to_its_backend_like_the_runtime_nat() {
    let o = polc(&[
        "--from",
        FRONTEND,
        "--to",
        "10.96.10.11",
        "--protocol",
        "tcp",
        "--port",
        "9090",
        "--output",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["verdict"], "allow");
    let svc = &v["service"];
    assert_eq!(svc["name"], "shop/cart");
    assert_eq!(svc["cluster_ip"], "10.96.10.11");
    assert_eq!(svc["backends"][0]["ip"], "10.244.1.11");
    assert_eq!(svc["backends"][0]["endpoint"], CART);
    assert_eq!(svc["backends"][0]["verdict"], "allow");
    // Policy saw the backend: the flow and the ingress trace are the cart pod's.
    assert_eq!(v["flow"]["dst"], "10.244.1.11");
    assert_eq!(v["to"]["endpoint"], CART);
    assert_eq!(v["ingress"]["decided_by"]["policy"], "shop/allow-cart-from-frontend");

    // The service by name is the same query.
    let by_name = polc(&[
        "--from",
        FRONTEND,
        "--to",
        "shop/cart",
        "--protocol",
        "tcp",
        "--port",
        "9090",
        "--output",
        "json",
    ]);
    assert_eq!(json(&by_name), v);

    // A port the service does not have is not translated: a plain, unknown address.
    let o = polc(&[
        "--from",
        FRONTEND,
        "--to",
        "10.96.10.11",
        "--protocol",
        "tcp",
        "--port",
        "80",
        "--output",
        "json",
    ]);
    let v = json(&o);
    assert_eq!(v["service"], serde_json::Value::Null);
    assert_eq!(v["ingress"], serde_json::Value::Null);
    assert_eq!(v["flow"]["dst"], "10.96.10.11");
}

#[test]
fn a_service_without_backends_is_denied_and_says_so() {
    let dir = std::env::temp_dir().join(format!("polc_explain_svc_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("svc.yaml");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: Service\nmetadata: {name: gone, namespace: shop}\n\
         spec: {clusterIP: 10.96.10.99, selector: {app: nothing}, ports: [{port: 80}]}\n",
    )
    .unwrap();
    let path = f.display().to_string();
    let o = polc(&[
        "-f",
        &path,
        "--from",
        FRONTEND,
        "--to",
        "shop/gone",
        "--protocol",
        "tcp",
        "--port",
        "80",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("verdict: deny\n"), "{text}");
    assert!(text.contains("service shop/gone 10.96.10.99:80/TCP: 0 backend(s)"), "{text}");
    assert!(text.contains("no_backend"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
