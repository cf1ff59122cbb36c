//! Frontend tests: the demo cluster, List and multi-document files, directory recursion,
//! skipped kinds, one error per file in testdata/bad (snapshot), and no panics on any input.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use polc::frontend::{
    self, Action, Cidr, Cluster, K8sPeer, PolicyType, PortSpec, Protocol, TierDefaultAction,
};
use proptest::prelude::*;

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata").join(rel)
}

fn load(rel: &str) -> Cluster {
    match frontend::load(&[testdata(rel)]) {
        Ok(c) => c,
        Err(e) => panic!("loading {rel}: {e}"),
    }
}

fn cidr(text: &str) -> Cidr {
    let (addr, len) = text.split_once('/').unwrap();
    Cidr { addr: addr.parse().unwrap(), prefix_len: len.parse().unwrap() }
}

/// Sorted `.yaml` files directly in a testdata directory.
fn yaml_files(rel: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(testdata(rel))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn demo_cluster_loads_with_expected_objects() {
    let c = load("demo");
    let names: Vec<&str> = c.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["monitoring", "payments", "shop"]);
    assert!(c.namespaces.iter().all(|n| !n.implicit));
    assert_eq!(c.pods.len(), 6, "hostNetwork node-exporter is not an endpoint");
    assert_eq!(c.service_accounts.len(), 4);
    assert_eq!(c.k8s_policies.len(), 7);
    assert_eq!(c.calico_policies.len(), 2);
    assert_eq!(c.tiers.len(), 1);
    assert_eq!(c.network_sets.len(), 2);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.notes.len(), 2, "{:?}", c.notes);
    assert!(c.notes[0].contains("node-exporter") && c.notes[0].contains("hostNetwork"));
    assert!(c.notes[1].contains("kube-system/kube-dns): headless service"), "{}", c.notes[1]);
    let services: Vec<String> =
        c.services.iter().map(|s| format!("{}/{}", s.namespace, s.name)).collect();
    assert_eq!(services, ["shop/cart", "payments/payments-api", "shop/catalog"]);
    let catalog_svc = &c.services[2];
    assert_eq!(catalog_svc.cluster_ips.len(), 2, "dual-stack clusterIPs");
    assert_eq!(c.services[1].affinity_timeout_s, Some(10800));
    assert_eq!(c.endpoint_slices.len(), 1);
    assert_eq!(c.endpoint_slices[0].service.as_deref(), Some("payments-api"));

    let shop = c.namespaces.iter().find(|n| n.name == "shop").unwrap();
    assert_eq!(shop.labels.get("team").map(String::as_str), Some("storefront"));
    assert_eq!(shop.labels.get(frontend::NAMESPACE_NAME_LABEL).map(String::as_str), Some("shop"));

    let catalog = c.pods.iter().find(|p| p.name.starts_with("catalog")).unwrap();
    let ips: Vec<IpAddr> =
        vec!["10.244.2.14".parse().unwrap(), "fd00:10:244:2::e".parse().unwrap()];
    assert_eq!(catalog.ips, ips, "dual-stack pod keeps both addresses, podIP not repeated");
    assert_eq!(catalog.service_account, "default", "no serviceAccountName -> default");
    assert_eq!(catalog.ports.len(), 2);
    assert_eq!(catalog.ports[1].name.as_deref(), Some("metrics"));
    assert_eq!(catalog.ports[1].port, 9102);
    assert_eq!(catalog.ports[1].protocol, Protocol::TCP, "protocol defaults to TCP");
    let cart = c.pods.iter().find(|p| p.name.starts_with("cart")).unwrap();
    assert_eq!((cart.namespace.as_str(), cart.service_account.as_str()), ("shop", "cart"));
    assert_eq!(cart.labels.get("app").map(String::as_str), Some("cart"));

    let web = c.k8s_policies.iter().find(|p| p.name == "allow-web-ingress").unwrap();
    assert_eq!(web.namespace, "shop");
    assert_eq!(web.pod_selector.match_labels.get("app").map(String::as_str), Some("frontend"));
    let K8sPeer::IpBlock(block) = &web.ingress[0].peers[0] else { panic!("ipBlock peer") };
    assert_eq!(block.cidr, cidr("0.0.0.0/0"));
    assert_eq!(block.except, [cidr("169.254.0.0/16"), cidr("10.96.0.0/12")]);
    assert_eq!(web.ingress[0].ports[0].port, Some(PortSpec::Named("http".into())));

    let ledger = c.k8s_policies.iter().find(|p| p.name == "ledger").unwrap();
    let port = &ledger.egress[0].ports[0];
    assert_eq!(port.port, Some(PortSpec::Range { start: 30000, end: 32767 }), "endPort");
    let scrape = c.k8s_policies.iter().find(|p| p.name == "allow-metrics-scrape").unwrap();
    assert_eq!(scrape.policy_types, None, "policyTypes kept as written");
    assert_eq!(scrape.effective_policy_types(), [PolicyType::Ingress]);
    assert!(matches!(
        &scrape.ingress[0].peers[0],
        K8sPeer::Pods { namespace_selector: Some(_), pod_selector: Some(_) }
    ));

    let gnp = c.calico_policies.iter().find(|p| p.namespace.is_none()).unwrap();
    assert_eq!(gnp.name, "security.block-known-bad");
    assert_eq!((gnp.tier.as_str(), gnp.order), ("security", Some(10.0)));
    assert_eq!(gnp.source.item, Some(0), "read from a GlobalNetworkPolicyList");
    assert_eq!(gnp.types, Some(vec![PolicyType::Ingress, PolicyType::Egress]));
    let actions: Vec<Action> = gnp.ingress.iter().map(|r| r.action).collect();
    assert_eq!(actions, [Action::Deny, Action::Deny, Action::Pass]);
    assert_eq!(gnp.ingress[0].source.selector, polc::selector::parse("feed == 'known-bad'").ok());
    assert_eq!(gnp.ingress[1].source.nets, [cidr("100.64.0.0/10")]);

    let np = c.calico_policies.iter().find(|p| p.namespace.as_deref() == Some("payments")).unwrap();
    assert_eq!(np.tier, "default");
    assert_eq!(np.order, Some(500.0));
    let r = &np.ingress[1];
    assert_eq!((r.action, r.protocol), (Action::Deny, Some(Protocol::TCP)));
    assert_eq!(
        r.destination.ports,
        [PortSpec::Range { start: 22, end: 22 }, PortSpec::Range { start: 2375, end: 2376 }]
    );
    let icmp = &np.ingress[2];
    assert_eq!(icmp.protocol, Some(Protocol::ICMP));
    assert_eq!(icmp.icmp.map(|i| (i.icmp_type, i.code)), Some((8, Some(0))));
    let sa = np.ingress[3].source.service_accounts.as_ref().unwrap();
    assert!(sa.names.is_empty() && sa.selector.is_some());
    assert_eq!(np.ingress[0].source.not_nets, [cidr("10.244.0.0/16")]);

    assert_eq!(c.tiers[0].name, "security");
    assert_eq!(c.tiers[0].order, Some(100.0));
    assert_eq!(c.tiers[0].default_action, TierDefaultAction::Deny);
    let feed = c.network_sets.iter().find(|s| s.name == "threat-feed").unwrap();
    assert_eq!(feed.namespace, None);
    assert_eq!(feed.nets.len(), 3);
    assert_eq!(feed.nets[2], cidr("2001:db8:bad::/48"));
    let processors = c.network_sets.iter().find(|s| s.name == "payment-processors").unwrap();
    assert_eq!(processors.namespace.as_deref(), Some("payments"));
}

#[test]
fn sources_name_file_document_and_item() {
    let c = load("demo");
    let ledger = c.pods.iter().find(|p| p.name == "ledger-0").unwrap();
    assert!(ledger.source.file.ends_with("demo/10-pods.yaml"));
    assert_eq!((ledger.source.doc, ledger.source.item), (5, None));
    assert!(ledger.source.to_string().ends_with("10-pods.yaml doc 5 (Pod payments/ledger-0)"));
    let monitoring = c.namespaces.iter().find(|n| n.name == "monitoring").unwrap();
    assert_eq!((monitoring.source.doc, monitoring.source.item), (1, Some(2)));
    assert!(monitoring.source.to_string().ends_with("doc 1 item 2 (Namespace monitoring)"));
}

#[test]
fn directories_are_searched_recursively_in_sorted_order() {
    let c = load("demo");
    let files: Vec<String> = c
        .k8s_policies
        .iter()
        .map(|p| p.source.file.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // demo/k8s/payments.yaml sorts before demo/k8s/shop.yaml.
    assert_eq!(files.first().map(String::as_str), Some("payments.yaml"));
    assert_eq!(files.last().map(String::as_str), Some("shop.yaml"));
    // A single file and the directory holding it give the same objects for that file.
    let alone = load("demo/k8s/shop.yaml");
    assert_eq!(alone.k8s_policies.len(), 4);
    assert_eq!(alone.k8s_policies, c.k8s_policies[3..].to_vec());
}

#[test]
fn multi_document_file_with_empty_and_unknown_documents() {
    let text =
        "---\n# only a comment\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n\
                ---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  \
                namespace: a\nspec:\n  replicas: 3\n---\napiVersion: v1\nkind: Namespace\n\
                metadata:\n  name: b\n...\n";
    let c = frontend::load_str("multi.yaml", text).unwrap();
    let names: Vec<&str> = c.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(c.namespaces[1].source.doc, 5, "empty documents still count");
    assert_eq!(c.notes.len(), 1);
    assert!(
        c.notes[0].contains("multi.yaml: document 4: skipped apps/v1 Deployment a/web"),
        "{}",
        c.notes[0]
    );
}

#[test]
fn list_items_are_read_with_their_own_kinds() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  \
                metadata: {name: web, namespace: shop}\n- apiVersion: v1\n  kind: Pod\n  \
                metadata: {name: web-0, namespace: shop, labels: {app: web}}\n  status:\n    \
                podIP: 10.1.0.5\n- apiVersion: projectcalico.org/v3\n  kind: NetworkPolicy\n  \
                metadata: {name: p, namespace: shop}\n  spec:\n    ingress:\n    - action: \
                Allow\nmetadata:\n  resourceVersion: \"\"\n";
    let c = frontend::load_str("list.yaml", text).unwrap();
    assert_eq!(c.pods.len(), 1);
    assert_eq!(c.pods[0].source.item, Some(1));
    assert_eq!(c.pods[0].ips, ["10.1.0.5".parse::<IpAddr>().unwrap()]);
    assert_eq!(c.calico_policies.len(), 1);
    assert_eq!(c.calico_policies[0].selector, None, "absent selector = all()");
    assert_eq!(c.calico_policies[0].types, None, "types default is resolution's business");
    // A Service without a cluster IP has nothing to translate.
    assert!(
        c.notes.iter().any(|n| n.contains("item 0 (Service shop/web): service has no cluster IP")),
        "{:?}",
        c.notes
    );
    // `shop` was never declared: it exists implicitly with the automatic label.
    assert_eq!(c.namespaces.len(), 1);
    assert!(c.namespaces[0].implicit);
    assert_eq!(
        c.namespaces[0].labels,
        BTreeMap::from([(frontend::NAMESPACE_NAME_LABEL.to_string(), "shop".to_string())])
    );
}

#[test]
fn calico_values_are_normalised() {
    let text = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  \
                name: n\nspec:\n  order: 1.5\n  selector: ''\n  ingress:\n  - action: Allow\n    \
                protocol: udplite\n  - action: Deny\n    protocol: '47'\n    notProtocol: tcp\n  \
                - action: Allow\n    protocol: TCP\n    destination:\n      nets: [10.1.2.3/16]\n      \
                ports: ['8080', 9000, '1:1024', http]\n  - action: Allow\n    destination:\n      \
                ports: [http]\n  - action: Log\n    ipVersion: 6\n    protocol: icmpv6\n    \
                notICMP: {type: 128}\n    source:\n      nets: ['2001:db8::1']\n";
    let c = frontend::load_str("n.yaml", text).unwrap();
    let p = &c.calico_policies[0];
    assert_eq!(p.order, Some(1.5));
    assert_eq!(p.selector, None);
    assert_eq!(p.ingress[0].protocol, Some(Protocol::UDPLITE));
    assert_eq!(p.ingress[1].protocol, Some(Protocol(47)));
    assert_eq!(p.ingress[1].not_protocol, Some(Protocol::TCP));
    assert_eq!(p.ingress[2].destination.nets, [cidr("10.1.0.0/16")], "host bits cleared");
    assert_eq!(
        p.ingress[2].destination.ports,
        [
            PortSpec::Range { start: 8080, end: 8080 },
            PortSpec::Range { start: 9000, end: 9000 },
            PortSpec::Range { start: 1, end: 1024 },
            PortSpec::Named("http".into()),
        ]
    );
    assert_eq!(p.ingress[3].protocol, None, "named ports without protocol are allowed");
    let log = &p.ingress[4];
    assert_eq!(
        (log.action, log.ip_version, log.protocol),
        (Action::Log, Some(6), Some(Protocol::ICMPV6))
    );
    assert_eq!(log.not_icmp.map(|i| (i.icmp_type, i.code)), Some((128, None)));
    assert_eq!(log.source.nets, [cidr("2001:db8::1/128")], "a bare address is a host network");
}

#[test]
fn unsupported_fields_are_warnings_with_location() {
    let text = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  \
                name: raw\nspec:\n  doNotTrack: true\n  applyOnForward: false\n  ingress:\n  \
                - action: Allow\n    http:\n      methods: [GET]\n  - action: Allow\n    \
                destination:\n      services:\n        name: kubernetes\n        namespace: default\n";
    let c = frontend::load_str("raw.yaml", text).unwrap();
    assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
    assert!(c.warnings[0].starts_with("raw.yaml doc 1 (GlobalNetworkPolicy raw): spec.doNotTrack"));
    assert!(c.warnings[1].contains("spec.ingress[0].http is set"));
    assert!(c.warnings[2].contains("spec.ingress[1].destination.services is set"));
}

#[test]
fn host_network_and_finished_pods_are_not_endpoints() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: n}\nspec:\n  \
                hostNetwork: true\nstatus: {podIP: 172.18.0.2}\n---\napiVersion: v1\nkind: Pod\n\
                metadata: {name: b, namespace: n}\nstatus: {phase: Succeeded, podIP: 10.0.0.9}\n\
                ---\napiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: n}\n\
                status: {phase: Running, podIP: 10.0.0.9}\n---\napiVersion: v1\nkind: Pod\n\
                metadata: {name: d, namespace: n}\nstatus: {phase: Pending, podIP: ''}\n";
    let c = frontend::load_str("pods.yaml", text).unwrap();
    let names: Vec<&str> = c.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["c", "d"], "finished pod b's IP may be reused by c");
    assert!(c.pods[1].ips.is_empty());
    assert_eq!(c.notes.iter().filter(|n| n.contains("skipped")).count(), 2, "{:?}", c.notes);
}

#[test]
fn every_bad_file_fails_with_one_line_naming_file_document_and_field() {
    let mut lines = Vec::new();
    for path in yaml_files("bad") {
        let name = format!("testdata/bad/{}", path.file_name().unwrap().to_string_lossy());
        let text = std::fs::read_to_string(&path).unwrap();
        let err = match frontend::load_str(&name, &text) {
            Ok(_) => panic!("{name} loaded without error"),
            Err(e) => e,
        };
        assert_eq!(err.exit_code(), 2, "{name}: bad input is exit 2");
        let msg = err.to_string();
        assert!(!msg.contains('\n'));
        assert!(msg.starts_with(&format!("{name}: document ")), "{msg}");
        // Through the real file path too: same message apart from the file name.
        let via_path = frontend::load(std::slice::from_ref(&path)).unwrap_err().to_string();
        assert_eq!(via_path.replace(&path.display().to_string(), &name), msg);
        lines.push(msg);
    }
    assert!(lines.len() >= 40);
    insta::with_settings!({
        snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots"),
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_snapshot!("frontend_errors", lines.join("\n"));
    });
}

#[test]
fn path_errors_are_clear() {
    let missing = frontend::load(&[testdata("no-such-dir")]).unwrap_err();
    assert_eq!(missing.exit_code(), 2);
    assert!(missing.to_string().contains("no-such-dir: No such file or directory"), "{missing}");

    let dir = std::env::temp_dir().join(format!("polc-frontend-empty-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("README.md"), "not policy").unwrap();
    let empty = frontend::load(std::slice::from_ref(&dir)).unwrap_err();
    assert!(empty.to_string().ends_with("no .yaml, .yml or .json files in this directory"));
    std::fs::write(
        dir.join("sub/ns.yml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("sub/ns2.json"),
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"y"}}"#,
    )
    .unwrap();
    let c = frontend::load(std::slice::from_ref(&dir)).unwrap();
    assert_eq!(c.namespaces.len(), 2, ".yml and .json in a subdirectory, README ignored");
    // The same object given twice (two -f) is a duplicate naming both places.
    let dup = frontend::load(&[dir.clone(), dir.join("sub/ns.yml")]).unwrap_err().to_string();
    assert!(dup.contains("duplicate object: already defined in"), "{dup}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn test_case_files_all_load() {
    let files = yaml_files("cases");
    assert!(files.len() >= 15, "{}", files.len());
    for file in files {
        if let Err(e) = frontend::load(&[file]) {
            panic!("{e}");
        }
    }
}

/// Valid YAML to mutate: every demo and case file.
fn seeds() -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["demo", "demo/k8s", "demo/calico", "cases"] {
        for f in yaml_files(dir) {
            out.push(std::fs::read_to_string(f).unwrap());
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = frontend::load_str("fuzz.yaml", &text);
    }

    #[test]
    fn yaml_like_text_never_panics(text in "([a-zA-Z:{}\\[\\],'\" \n-]|apiVersion: |kind: |items:|metadata:|spec:){0,60}") {
        let _ = frontend::load_str("fuzz.yaml", &text);
    }

    #[test]
    fn mutated_valid_yaml_never_panics(
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0usize..4, "\\PC{0,8}"), 1..6),
    ) {
        let seeds = seeds();
        let mut text = seed.get(&seeds).clone();
        for (at, op, insert) in edits {
            let chars: Vec<char> = text.chars().collect();
            let i = at.index(chars.len() + 1);
            let j = (i + insert.chars().count().max(1)).min(chars.len());
            let (head, tail) = (chars[..i].iter().collect::<String>(), chars[i..].iter().collect::<String>());
            text = match op {
                0 => format!("{head}{insert}{tail}"),                                   // insert
                1 => format!("{head}{}", chars[j..].iter().collect::<String>()),        // delete
                2 => format!("{head}{insert}{}", chars[j..].iter().collect::<String>()), // replace
                _ => format!("{head}\n{insert}{tail}"),                                 // new line
            };
        }
        let _ = frontend::load_str("fuzz.yaml", &text);
    }
}
