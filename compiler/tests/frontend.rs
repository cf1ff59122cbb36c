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

/// A GlobalNetworkPolicy whose first ingress rule is `rule` (YAML at 2-space indent under
/// `- `), for the strictness tests.
fn gnp_with_rule(rule: &str) -> String {
    let rule = rule.trim_end().replace('\n', "\n    ");
    format!(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: p\n\
         spec:\n  ingress:\n  - {rule}\n"
    )
}

fn load_err(name: &str, text: &str) -> String {
    match frontend::load_str(name, text) {
        Ok(_) => panic!("{name} loaded without error:\n{text}"),
        Err(e) => {
            assert_eq!(e.exit_code(), 2, "{name}: bad input is exit 2: {e}");
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg}");
            msg
        }
    }
}

/// Every field of the Calico v3 and Kubernetes v1 policy schemas loads: strict decoding must
/// not refuse a real field.
#[test]
fn every_real_policy_field_is_accepted() {
    let calico = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  \
                  name: all-fields\n  annotations: {a: b}\n  resourceVersion: '5'\n  \
                  managedFields: [{manager: kubectl}]\n  creationTimestamp: null\nspec:\n  \
                  order: 10\n  tier: default\n  selector: app == 'x'\n  \
                  namespaceSelector: has(team)\n  serviceAccountSelector: role == 'a'\n  \
                  types: [Ingress, Egress]\n  doNotTrack: false\n  preDNAT: false\n  \
                  applyOnForward: true\n  performanceHints: [AssumeNeededOnEveryNode]\n  \
                  ingress:\n  - action: Allow\n    ipVersion: 4\n    protocol: TCP\n    \
                  notProtocol: UDP\n    metadata:\n      annotations: {why: test}\n    \
                  source:\n      nets: [10.0.0.0/8]\n      notNets: [10.1.0.0/16]\n      \
                  selector: app == 'y'\n      notSelector: app == 'z'\n      \
                  namespaceSelector: all()\n      ports: [1000]\n      notPorts: [1001]\n      \
                  serviceAccounts:\n        names: [a]\n        selector: x == 'y'\n    \
                  destination:\n      nets: [10.2.0.0/16]\n      ports: ['80:90']\n      \
                  notPorts: [85]\n  - action: Deny\n    protocol: ICMP\n    \
                  icmp: {type: 8, code: 0}\n    notICMP: {type: 3}\n  egress:\n  \
                  - action: Log\n    destination:\n      services: {name: kubernetes, \
                  namespace: default}\n    http:\n      methods: [GET]\n      \
                  paths: [{exact: /a}, {prefix: /b}]\nstatus: {anything: [1]}\nextraTopLevel: 1\n\
                  ---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t}\n\
                  spec: {order: 100, defaultAction: Pass}\n---\napiVersion: projectcalico.org/v3\n\
                  kind: GlobalNetworkSet\nmetadata: {name: s, labels: {a: b}}\nspec:\n  \
                  nets: [192.0.2.0/24]\n---\napiVersion: projectcalico.org/v3\nkind: NetworkSet\n\
                  metadata: {name: s, namespace: n}\nspec:\n  nets: [192.0.2.0/24]\n";
    let c = frontend::load_str("calico.yaml", calico).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.calico_policies.len(), 1);
    assert_eq!(c.calico_policies[0].ingress.len(), 2);
    assert_eq!(c.calico_policies[0].ingress[0].destination.not_ports.len(), 1);
    // Only the ignored match (a Log rule's services and http) is worth a warning: metadata,
    // applyOnForward, performanceHints and doNotTrack/preDNAT false are not.
    assert_eq!(c.warnings.len(), 2, "{:#?}", c.warnings);
    assert!(c.warnings.iter().all(|w| w.contains("spec.egress[0].")), "{:#?}", c.warnings);

    let k8s = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: k\n  \
               namespace: n\n  generation: 3\n  uid: abc\nspec:\n  podSelector:\n    \
               matchLabels: {app: a}\n    matchExpressions:\n    - {key: t, operator: In, \
               values: [x]}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from:\n    \
               - podSelector: {}\n      namespaceSelector: {matchLabels: {a: b}}\n    \
               - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n    ports:\n    \
               - {protocol: TCP, port: 80, endPort: 90}\n  egress:\n  - to: []\n    \
               ports: [{port: dns, protocol: UDP}]\nstatus: {}\n";
    let c = frontend::load_str("k8s.yaml", k8s).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.k8s_policies.len(), 1);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    // Objects that are not policy keep every field kubectl prints (status, managedFields...).
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: n, ownerReferences: \
               []}\nspec:\n  nodeName: x\n  containers:\n  - name: c\n    image: i\n    \
               ports: [{containerPort: 80, name: http, hostPort: 8080}]\nstatus:\n  \
               podIP: 10.0.0.1\n  hostIP: 1.2.3.4\n  conditions: []\n";
    frontend::load_str("pod.yaml", pod).unwrap_or_else(|e| panic!("{e}"));
}

/// A typo in a policy field is an error naming the path, not an ignored field that widens the
/// rule (calicoctl and the API server decode strictly for this reason).
#[test]
fn unknown_policy_fields_are_errors_naming_the_path() {
    let cases = [
        (
            "action: Allow\nprotocol: TCP\ndestination: {port: [5432]}",
            "spec.ingress[0].destination",
            "port",
        ),
        ("action: Allow\nsource: {selecter: app == 'a'}", "spec.ingress[0].source", "selecter"),
        ("action: Allow\nprotocol: TCP\nnotPorts: [22]", "spec.ingress[0]", "notPorts"),
        ("action: Deny\nprotocol: ICMP\nicmp: {type: 8, cod: 0}", "spec.ingress[0].icmp", "cod"),
        (
            "action: Allow\nsource: {serviceAccounts: {name: [a]}}",
            "spec.ingress[0].source.serviceAccounts",
            "name",
        ),
    ];
    for (rule, path, field) in cases {
        let msg = load_err("strict.yaml", &gnp_with_rule(rule));
        assert!(msg.contains(&format!("{path}: unknown field `{field}`")), "{rule:?} -> {msg}");
        assert!(msg.starts_with("strict.yaml: document 1 (GlobalNetworkPolicy p): "), "{msg}");
    }
    let spec_typo = "apiVersion: crd.projectcalico.org/v1\nkind: NetworkPolicy\nmetadata: \
                     {name: p, namespace: n}\nspec:\n  ingres:\n  - action: Deny\n";
    let msg = load_err("spec.yaml", spec_typo);
    assert!(msg.contains("(NetworkPolicy n/p): spec: unknown field `ingres`"), "{msg}");

    let k8s = |body: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: k, \
             namespace: n}}\nspec:\n{body}"
        )
    };
    for (body, expect) in [
        ("  podSelecter: {}\n", "spec: unknown field `podSelecter`"),
        ("  podSelector: {matchLabel: {a: b}}\n", "spec.podSelector: unknown field `matchLabel`"),
        ("  ingress:\n  - form: [{podSelector: {}}]\n", "spec.ingress[0]: unknown field `form`"),
        ("  egress:\n  - from: [{podSelector: {}}]\n", "spec.egress[0]: unknown field `from`"),
        (
            "  ingress:\n  - from: [{podSelector: {}, namespaceSelektor: {}}]\n",
            "spec.ingress[0].from[0]: unknown field `namespaceSelektor`",
        ),
        (
            "  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, exept: [10.1.0.0/16]}}]\n",
            "spec.ingress[0].from[0].ipBlock: unknown field `exept`",
        ),
        (
            "  ingress:\n  - ports: [{port: 80, endport: 90}]\n",
            "spec.ingress[0].ports[0]: unknown field `endport`",
        ),
        (
            "  podSelector:\n    matchExpressions: [{key: a, operator: In, value: [b]}]\n",
            "spec.podSelector.matchExpressions[0]: unknown field `value`",
        ),
    ] {
        let msg = load_err("k8s.yaml", &k8s(body));
        assert!(msg.contains(expect), "{body:?} -> {msg}");
    }
    let tier = "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t}\nspec: \
                {order: 1, defaultActon: Pass}\n";
    assert!(load_err("t.yaml", tier).contains("spec: unknown field `defaultActon`"));
    let set = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {name: s}\n\
               spec: {net: [10.0.0.0/8]}\n";
    assert!(load_err("s.yaml", set).contains("spec: unknown field `net`"));
}

/// `http` and `services` cannot be enforced: refused where ignoring them would allow more
/// (Allow, Pass), a warning where it makes the rule match more (Deny, Log).
#[test]
fn unenforceable_matches_are_errors_on_allow_and_pass_and_warnings_on_deny_and_log() {
    let services = "destination:\n  services: {name: db, namespace: shop}";
    let http = "http: {methods: [GET]}";
    for (action, expect) in [
        ("Allow", "would allow more than the policy says"),
        ("Pass", "would pass more to the next tier than the policy says"),
    ] {
        let msg = load_err("svc.yaml", &gnp_with_rule(&format!("action: {action}\n{services}")));
        assert!(
            msg.contains(
                "spec.ingress[0].destination.services: polc cannot enforce service matches"
            ),
            "{msg}"
        );
        assert!(msg.contains(expect), "{msg}");
        let msg = load_err("http.yaml", &gnp_with_rule(&format!("action: {action}\n{http}")));
        assert!(msg.contains("spec.ingress[0].http: polc cannot enforce HTTP"), "{msg}");
    }
    let source_services = gnp_with_rule("action: Allow\nsource:\n  services: {name: db}");
    assert!(load_err("s.yaml", &source_services).contains("spec.ingress[0].source.services:"));
    // Empty values set nothing.
    let empty = gnp_with_rule("action: Allow\nhttp: {}\ndestination: {services: null}");
    let c = frontend::load_str("e.yaml", &empty).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    for action in ["Deny", "Log"] {
        let text = gnp_with_rule(&format!("action: {action}\n{http}\n{services}"));
        let c = frontend::load_str("w.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.calico_policies[0].ingress.len(), 1, "the rule is kept");
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(
            c.warnings[0].starts_with("w.yaml doc 1 (GlobalNetworkPolicy p): spec.ingress[0].http"),
            "{}",
            c.warnings[0]
        );
        assert!(c.warnings[1].contains("spec.ingress[0].destination.services"));
        assert!(c.warnings[1].contains(&format!("this {action} rule")), "{}", c.warnings[1]);
    }
    // Rule metadata is not a match: no warning.
    let meta = gnp_with_rule("action: Allow\nmetadata: {annotations: {a: b}}");
    let c = frontend::load_str("m.yaml", &meta).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

/// doNotTrack and preDNAT policies apply only to host endpoints: skipped, with a warning.
#[test]
fn host_endpoint_only_policies_are_skipped() {
    let policy = |field: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: \
             raw}}\nspec:\n  {field}\n  applyOnForward: true\n  ingress:\n  - action: Deny\n"
        )
    };
    for (field, why) in [("doNotTrack: true", "untracked"), ("preDNAT: true", "before DNAT")] {
        let c = frontend::load_str("h.yaml", &policy(field)).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.calico_policies.is_empty(), "{field}: the policy is skipped");
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let w = &c.warnings[0];
        assert!(w.starts_with("h.yaml doc 1 (GlobalNetworkPolicy raw): spec."), "{w}");
        assert!(w.contains(why) && w.ends_with("never to pods: the policy is skipped"), "{w}");
    }
    // Even an Allow rule with http is no error in a policy that is skipped.
    let skipped = policy("doNotTrack: true")
        .replace("- action: Deny", "- action: Allow\n    http: {methods: [GET]}");
    let c = frontend::load_str("h.yaml", &skipped).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.calico_policies.is_empty());
    let c = frontend::load_str("h.yaml", &policy("doNotTrack: false")).unwrap();
    assert_eq!(c.calico_policies.len(), 1);
    assert!(c.warnings.is_empty(), "applyOnForward is no warning: {:?}", c.warnings);
    // A non-boolean is a type error, not a silently ignored value.
    let msg = load_err("h.yaml", &policy("doNotTrack: 'yes'"));
    assert!(
        msg.contains("spec.doNotTrack: invalid type: string \"yes\", expected a boolean"),
        "{msg}"
    );
}

/// crd.projectcalico.org/v1 (kubectl without the Calico API server) reads like v3.
#[test]
fn calico_crd_api_version_reads_like_v3() {
    let files = ["tiers.yaml", "security.yaml", "threat-feed.yaml", "payments.yaml"];
    let v3: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(testdata(&format!("demo/calico/{f}"))).unwrap())
        .collect();
    let v3 = v3.join("\n---\n");
    let crd = v3.replace("projectcalico.org/v3", "crd.projectcalico.org/v1");
    assert_ne!(v3, crd);
    let a = frontend::load_str("x.yaml", &v3).unwrap();
    let b = frontend::load_str("x.yaml", &crd).unwrap();
    assert!(!b.calico_policies.is_empty() && !b.tiers.is_empty() && !b.network_sets.is_empty());
    assert!(b.warnings.is_empty(), "{:?}", b.warnings);
    assert!(!b.notes.iter().any(|n| n.contains("skipped")), "{:?}", b.notes);
    assert_eq!(a, b);
    // The same object under both versions is one object given twice.
    let both = format!("{v3}\n---\n{crd}");
    assert!(load_err("x.yaml", &both).contains("duplicate object"));
}

/// Skipped kinds that carry policy get one warning per kind and apiVersion, with a count;
/// other kinds stay silent (notes only).
#[test]
fn skipped_policy_kinds_are_counted_in_warnings() {
    let obj = |api: &str, kind: &str, name: &str| {
        format!("---\napiVersion: {api}\nkind: {kind}\nmetadata: {{name: {name}, namespace: n}}\nspec: {{}}\n")
    };
    let mut text = String::new();
    for name in ["a", "b", "c"] {
        text += &obj("projectcalico.org/v3", "StagedNetworkPolicy", name);
    }
    text += &obj("crd.projectcalico.org/v1", "StagedGlobalNetworkPolicy", "g");
    text += &obj("projectcalico.org/v3", "HostEndpoint", "h");
    text += &obj("projectcalico.org/v3", "Profile", "p");
    text += &obj("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy", "a");
    text += &obj("policy.networking.k8s.io/v1alpha1", "BaselineAdminNetworkPolicy", "default");
    text += &obj("networking.k8s.io/v1beta1", "NetworkPolicy", "old");
    text += &obj("extensions/v1beta1", "NetworkPolicy", "older");
    text += &obj("projectcalico.org/v1", "policy", "v1");
    text += &obj("cilium.io/v2", "CiliumNetworkPolicy", "c");
    text += &obj("v1", "ConfigMap", "cm");
    text += &obj("apps/v1", "Deployment", "d");
    text += &obj("crd.projectcalico.org/v1", "IPPool", "pool");
    let c = frontend::load_str("k.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.notes.iter().filter(|n| n.contains("skipped")).count(), 15, "{:#?}", c.notes);
    let w = &c.warnings;
    assert_eq!(w.len(), 10, "{w:#?}");
    assert!(
        w.contains(
            &"skipped 3 objects of kind StagedNetworkPolicy (projectcalico.org/v3): \
                         polc does not enforce them (the first: k.yaml: document 1)"
                .to_string()
        ),
        "{w:#?}"
    );
    for needle in [
        "skipped 1 object of kind StagedGlobalNetworkPolicy (crd.projectcalico.org/v1)",
        "kind HostEndpoint (projectcalico.org/v3)",
        "kind Profile (projectcalico.org/v3)",
        "kind AdminNetworkPolicy (policy.networking.k8s.io/v1alpha1)",
        "kind BaselineAdminNetworkPolicy (policy.networking.k8s.io/v1alpha1)",
        "kind NetworkPolicy (networking.k8s.io/v1beta1)",
        "kind NetworkPolicy (extensions/v1beta1)",
        "kind policy (projectcalico.org/v1)",
        "kind CiliumNetworkPolicy (cilium.io/v2)",
    ] {
        assert!(w.iter().any(|x| x.contains(needle)), "{needle}: {w:#?}");
    }
    for silent in ["ConfigMap", "Deployment", "IPPool"] {
        assert!(!w.iter().any(|x| x.contains(silent)), "{silent}: {w:#?}");
    }
    // List items count too.
    let list = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: projectcalico.org/v3, kind: \
                StagedNetworkPolicy, metadata: {name: a}}\n- {apiVersion: projectcalico.org/v3, \
                kind: StagedNetworkPolicy, metadata: {name: b}}\n";
    let c = frontend::load_str("l.yaml", list).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].starts_with("skipped 2 objects")
            && c.warnings[0].ends_with("l.yaml: document 1 item 0)"),
        "{}",
        c.warnings[0]
    );
}

#[test]
fn a_byte_order_mark_is_ignored() {
    let text = "\u{feff}apiVersion: v1\nkind: Namespace\nmetadata: {name: bom}\n";
    let c = frontend::load_str("bom.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.namespaces[0].name, "bom");
    let json = "\u{feff}{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"j\"}}";
    frontend::load_str("bom.json", json).unwrap_or_else(|e| panic!("{e}"));
    // Through a file too.
    let dir = scratch_dir("bom");
    std::fs::write(dir.join("ns.yaml"), text.as_bytes()).unwrap();
    let c = frontend::load(&[dir.join("ns.yaml")]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.namespaces.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("polc-frontend-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A directory mounted from a ConfigMap: `..data` and `..<timestamp>` hold the files a second
/// time; hidden entries are skipped. What polc cannot read is a warning, not silence.
#[test]
fn directory_walk_skips_hidden_entries_and_warns_about_unreadable_ones() {
    use std::os::unix::fs::symlink;
    let dir = scratch_dir("configmap");
    let stamp = dir.join("..2024_05_01_10_00_00.123456789");
    std::fs::create_dir(&stamp).unwrap();
    std::fs::write(
        stamp.join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: cm}\n",
    )
    .unwrap();
    symlink("..2024_05_01_10_00_00.123456789", dir.join("..data")).unwrap();
    symlink("..data/ns.yaml", dir.join("ns.yaml")).unwrap();
    std::fs::write(dir.join(".hidden.yaml"), "not: [valid").unwrap();
    let c = frontend::load(std::slice::from_ref(&dir)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.namespaces.len(), 1, "read once, through the visible symlink");
    assert!(c.namespaces[0].source.file.ends_with("ns.yaml"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    symlink("missing.yaml", dir.join("dangling.yaml")).unwrap();
    symlink(&stamp, dir.join("linked-dir")).unwrap();
    let socket = std::os::unix::net::UnixListener::bind(dir.join("polc.sock")).unwrap();
    let c = frontend::load(std::slice::from_ref(&dir)).unwrap_or_else(|e| panic!("{e}"));
    drop(socket);
    assert_eq!(c.namespaces.len(), 1);
    let d = dir.display();
    assert_eq!(
        c.warnings,
        [
            format!("{d}/dangling.yaml: a symlink to nothing (dangling): skipped"),
            format!("{d}/linked-dir: a symlink to a directory (not followed): skipped"),
            format!("{d}/polc.sock: not a regular file or directory: skipped"),
        ],
        "sorted by name"
    );
    // A hidden directory given by name is read: only entries inside a directory are skipped.
    let c = frontend::load(std::slice::from_ref(&dir.join("..data"))).unwrap();
    assert_eq!(c.namespaces.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `-f -` reads standard input (kubectl get ... -o yaml | polc compile -f -).
#[test]
fn dash_reads_standard_input() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let run = |args: &[&str], input: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_polc"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let demo = std::fs::read_to_string(testdata("demo/10-pods.yaml")).unwrap();
    let out = run(&["compile", "-f", "-", "--output", "json"], &demo);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"unique_programs\""), "{stdout}");

    let bad = gnp_with_rule("action: Allow\nsource: {selecter: a == 'b'}");
    let out = run(&["compile", "-f", "-"], &bad);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("polc: <stdin>: document 1 (GlobalNetworkPolicy p): spec.ingress[0].source: unknown field `selecter`"),
        "{stderr}"
    );
    let out = run(&["compile", "-f", "-", "-f", "-"], &demo);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("standard input was already read"));
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
