//! Differential property test: random clusters and policies, written as YAML text (so the
//! frontend is exercised too), compiled, and random packets biased toward the interesting
//! values of each policy (pod addresses, set edges, rule ports +-1, ICMP types, flows aimed at
//! one rule and then nudged by one). For every packet the reference evaluator and the programs
//! compiled at -O0 and -O2, each under rbpf and in the kernel, must agree on the verdict and
//! the deciding rule.
//!
//! Seeds are fixed so CI is reproducible. `POLC_PROPTEST_SETS=N` runs N policy sets (default
//! 200); `POLC_PROPTEST_SEED=S` runs only set S (decimal or 0x-hex, as a failure prints it).

mod common;

use common::{Engines, Rng, OPT_LEVELS};
use polc_ir::{
    evaluate, proto, Direction, EndMatch, EndpointPolicy, Family, Flow, Ir, NamedPort, PortMatch,
    Prefix, Rule, TraceStep, Verdict,
};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

const DEFAULT_SETS: u64 = 200;
const PACKETS_PER_SET: usize = 100;
/// Set `i` of a run uses seed `SEED_BASE + i`.
const SEED_BASE: u64 = 0x9011_c0de_0000;

// ------------------------------------------------------------------------- the cluster ----

/// Label keys and values pods carry (and selectors ask about).
const POD_LABELS: &[(&str, &[&str])] =
    &[("app", &["web", "db", "api"]), ("tier", &["front", "back"]), ("role", &["x", "y"])];
/// What Calico selectors ask about pods: their labels and Calico's automatic namespace label.
const CALICO_POD_KEYS: &[(&str, &[&str])] = &[
    ("app", &["web", "db", "api"]),
    ("tier", &["front", "back"]),
    ("role", &["x", "y"]),
    ("projectcalico.org/namespace", NAMESPACES),
];
const NS_LABELS: &[(&str, &[&str])] = &[("team", &["a", "b"]), ("env", &["prod", "dev"])];
const SA_LABELS: &[(&str, &[&str])] = &[("role", &["tester", "admin"])];
const SET_LABELS: &[(&str, &[&str])] = &[("set", &["s1", "s2"])];
const NAMESPACES: &[&str] = &["shop", "billing", "ops", "dev"];
const SERVICE_ACCOUNTS: &[&str] = &["default", "sa-a", "sa-b"];
/// (name, port choices, protocol) of container ports.
const CONTAINER_PORTS: &[(&str, &[u16], &str)] = &[
    ("http", &[80, 8080], "TCP"),
    ("metrics", &[9090, 9100], "TCP"),
    ("dns", &[53, 5353], "UDP"),
    ("grpc", &[50051], "TCP"),
    ("sig", &[3868], "SCTP"),
];
/// Named ports rules may ask for: the container ones and one no pod has.
const PORT_NAMES: &[&str] = &["http", "metrics", "dns", "grpc", "sig", "nosuch"];
const NUMERIC_PORTS: &[&str] =
    &["53", "80", "443", "5432", "8080", "9090", "\"1000:2000\"", "\"8000:8100\"", "1", "65535"];
/// Networks outside the pod ranges, for rules and network sets.
const NETS4: &[&str] = &[
    "192.0.2.0/24",
    "192.0.2.0/25",
    "192.0.2.128/26",
    "198.51.100.7/32",
    "203.0.113.0/24",
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.0.0.0/16",
    "10.0.1.0/24",
    "10.0.0.64/26",
];
const NETS6: &[&str] = &["2001:db8::/32", "2001:db8:1::/48", "fd00::/16", "fd00::3:0/112", "::/0"];

struct Pod {
    ns: &'static str,
    sa: &'static str,
    v4: Ipv4Addr,
    v6: Option<Ipv6Addr>,
}

/// What the policy generator needs to know about the cluster it writes policy for.
struct World {
    namespaces: Vec<&'static str>,
    pods: Vec<Pod>,
    /// Non-default tiers.
    tiers: Vec<String>,
}

fn labels_yaml(labels: &[(&str, &str)]) -> String {
    let items: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{{}}}", items.join(", "))
}

/// Some distinct labels from `pool`.
fn random_labels(
    rng: &mut Rng,
    pool: &[(&'static str, &'static [&'static str])],
    percent: u64,
) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    for (k, vs) in pool {
        if rng.chance(percent) {
            out.push((*k, *rng.pick(vs)));
        }
    }
    out
}

fn cluster(rng: &mut Rng, out: &mut String) -> World {
    let namespaces: Vec<&'static str> = NAMESPACES[..2 + rng.below(3)].to_vec();
    for ns in &namespaces {
        let labels = random_labels(rng, NS_LABELS, 70);
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {}}}\n",
            labels_yaml(&labels)
        );
    }
    let mut pods = Vec::new();
    for i in 0..3 + rng.below(6) {
        let ns = *rng.pick(&namespaces);
        let labels = random_labels(rng, POD_LABELS, 60);
        let sa = *rng.pick(SERVICE_ACCOUNTS);
        let v4 = Ipv4Addr::new(10, 0, (i % 2) as u8, (16 * i + 1 + rng.below(14)) as u8);
        let v6 = rng.chance(40).then(|| {
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, i as u16 + 1, 1 + rng.below(0xfffe) as u16)
        });
        let mut ports = String::new();
        for (name, numbers, protocol) in CONTAINER_PORTS {
            if rng.chance(35) {
                let _ = write!(
                    ports,
                    "\n    - {{name: {name}, containerPort: {}, protocol: {protocol}}}",
                    rng.pick(numbers)
                );
            }
        }
        let ports = if ports.is_empty() { String::new() } else { format!("\n    ports:{ports}") };
        let ips = match v6 {
            Some(v6) => format!("[{{ip: {v4}}}, {{ip: \"{v6}\"}}]"),
            None => format!("[{{ip: {v4}}}]"),
        };
        let name = format!("p{i}");
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {}}}\n\
             spec:\n  serviceAccountName: {sa}\n  containers:\n  - name: c\n    image: busybox{ports}\n\
             status:\n  phase: Running\n  podIP: {v4}\n  podIPs: {ips}\n",
            labels_yaml(&labels)
        );
        pods.push(Pod { ns, sa, v4, v6 });
    }
    let mut accounts = BTreeSet::new();
    for p in &pods {
        if p.sa != "default" && rng.chance(70) {
            accounts.insert((p.ns, p.sa));
        }
    }
    for (ns, sa) in accounts {
        let labels = random_labels(rng, SA_LABELS, 80);
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {ns}, labels: {}}}\n",
            labels_yaml(&labels)
        );
    }
    for i in 0..rng.below(3) {
        let labels = random_labels(rng, SET_LABELS, 90);
        let mut nets = vec![format!("{}", rng.pick(NETS4))];
        if rng.chance(40) {
            nets.push(format!("\"{}\"", rng.pick(NETS6)));
        }
        if rng.chance(30) {
            nets.push(format!("{}/32", rng.pick(&pods).v4));
        }
        let nets = nets.join(", ");
        if rng.chance(50) {
            let _ = write!(
                out,
                "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\n\
                 metadata: {{name: gset{i}, labels: {}}}\nspec: {{nets: [{nets}]}}\n",
                labels_yaml(&labels)
            );
        } else {
            let _ = write!(
                out,
                "---\napiVersion: projectcalico.org/v3\nkind: NetworkSet\n\
                 metadata: {{name: set{i}, namespace: {}, labels: {}}}\nspec: {{nets: [{nets}]}}\n",
                rng.pick(&namespaces),
                labels_yaml(&labels)
            );
        }
    }
    let mut tiers = Vec::new();
    for j in 0..rng.below(3) {
        let name = format!("t{j}");
        // Ties (20, 20) are ordered by name; a tier without order comes after the default tier.
        let order = match rng.below(4) {
            0 => "order: 10, ".to_string(),
            1 | 2 => "order: 20, ".to_string(),
            _ => String::new(),
        };
        let action = if rng.chance(30) { "defaultAction: Pass" } else { "defaultAction: Deny" };
        let _ = write!(
            out,
            "---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: {name}}}\n\
             spec: {{{order}{action}}}\n"
        );
        tiers.push(name);
    }
    World { namespaces, pods, tiers }
}

// ---------------------------------------------------------------------------- selectors ----

/// A Calico selector over `pool`, up to `depth` levels of `&&`, `||`, `!`.
fn calico_selector(rng: &mut Rng, pool: &[(&str, &[&str])], depth: u32) -> String {
    let (k, vs) = rng.pick(pool);
    let v = rng.pick(vs);
    let choices = if depth > 0 { 13 } else { 10 };
    match rng.below(choices) {
        0 => format!("{k} == '{v}'"),
        7 => format!("{k} {} '{}'", rng.pick(&["contains", "starts with", "ends with"]), {
            // A piece of a real value, so the string operators sometimes match.
            let cut = rng.below(v.len());
            if rng.chance(50) {
                &v[..=cut]
            } else {
                &v[cut..]
            }
        }),
        8 | 9 => format!("{k} == '{v}'"),
        1 => format!("{k} != '{v}'"),
        2 => format!("{k} in {{'{v}', '{}'}}", rng.pick(vs)),
        3 => format!("{k} not in {{'{v}'}}"),
        4 => format!("has({k})"),
        5 => format!("!has({k})"),
        6 => "all()".to_string(),
        10 => format!(
            "({}) && ({})",
            calico_selector(rng, pool, depth - 1),
            calico_selector(rng, pool, depth - 1)
        ),
        11 => format!(
            "({}) || ({})",
            calico_selector(rng, pool, depth - 1),
            calico_selector(rng, pool, depth - 1)
        ),
        _ => format!("!({})", calico_selector(rng, pool, depth - 1)),
    }
}

/// A Kubernetes label selector over `pool` (possibly `{}`, which selects everything).
fn k8s_selector(rng: &mut Rng, pool: &[(&str, &[&str])]) -> String {
    let mut parts = Vec::new();
    if rng.chance(50) {
        let (k, vs) = rng.pick(pool);
        parts.push(format!("matchLabels: {{{k}: {}}}", rng.pick(vs)));
    }
    if rng.chance(40) {
        let (k, vs) = rng.pick(pool);
        let expr = match rng.below(4) {
            0 => {
                format!("{{key: {k}, operator: In, values: [{}, {}]}}", rng.pick(vs), rng.pick(vs))
            }
            1 => format!("{{key: {k}, operator: NotIn, values: [{}]}}", rng.pick(vs)),
            2 => format!("{{key: {k}, operator: Exists}}"),
            _ => format!("{{key: {k}, operator: DoesNotExist}}"),
        };
        parts.push(format!("matchExpressions: [{expr}]"));
    }
    format!("{{{}}}", parts.join(", "))
}

fn ns_pool(world: &World) -> Vec<(&'static str, &'static [&'static str])> {
    let mut pool = NS_LABELS.to_vec();
    // The automatic name label, with the names of this cluster.
    let names: &'static [&'static str] = match world.namespaces.len() {
        2 => &NAMESPACES[..2],
        3 => &NAMESPACES[..3],
        _ => NAMESPACES,
    };
    pool.push(("kubernetes.io/metadata.name", names));
    pool
}

// ---------------------------------------------------------------------------- networks ----

/// A network for a rule: a pod's /32 (or /128), a wider CIDR around a pod, or a fixed one.
fn net(rng: &mut Rng, world: &World, family: Family) -> String {
    let pod = rng.pick(&world.pods);
    match family {
        Family::V4 => match rng.below(4) {
            0 => format!("{}/32", pod.v4),
            1 => {
                let len = 24 + rng.below(8) as u32;
                let masked = u32::from(pod.v4) & (u32::MAX << (32 - len));
                format!("{}/{len}", Ipv4Addr::from(masked))
            }
            _ => rng.pick(NETS4).to_string(),
        },
        Family::V6 => match (pod.v6, rng.below(3)) {
            (Some(v6), 0) => format!("\"{v6}/128\""),
            _ => format!("\"{}\"", rng.pick(NETS6)),
        },
    }
}

/// A K8s ipBlock: a CIDR and maybe an `except` strictly inside it.
fn ip_block(rng: &mut Rng, world: &World) -> String {
    if rng.chance(20) {
        let (cidr, except) = *rng.pick(&[
            ("2001:db8::/32", "2001:db8:1::/48"),
            ("fd00::/16", "fd00::3:0/112"),
            ("::/0", "fd00::/16"),
        ]);
        return format!("{{cidr: \"{cidr}\", except: [\"{except}\"]}}");
    }
    let base = match rng.below(3) {
        0 => u32::from(rng.pick(&world.pods).v4),
        1 => u32::from(Ipv4Addr::new(192, 0, 2, rng.below(256) as u8)),
        _ => u32::from(Ipv4Addr::new(10, 0, 0, 0)),
    };
    let len = 8 + rng.below(24) as u32;
    let mask = |l: u32| u32::MAX << (32 - l);
    let cidr = base & mask(len);
    let mut out = format!("{{cidr: {}/{len}", Ipv4Addr::from(cidr));
    if rng.chance(50) {
        // A strictly longer prefix somewhere inside the block.
        let sub = len + 1 + rng.below((32 - len) as usize) as u32;
        let inside = (cidr | (rng.next() as u32 & !mask(len))) & mask(sub);
        let _ = write!(out, ", except: [{}/{sub}]", Ipv4Addr::from(inside));
    }
    out.push('}');
    out
}

// ----------------------------------------------------------------------------- policies ----

fn ports_list(rng: &mut Rng, numeric: bool) -> String {
    let mut items = Vec::new();
    for _ in 0..1 + rng.below(3) {
        if numeric && rng.chance(70) {
            items.push(rng.pick(NUMERIC_PORTS).to_string());
        } else {
            items.push(rng.pick(PORT_NAMES).to_string());
        }
    }
    format!("[{}]", items.join(", "))
}

/// One side (`source` or `destination`) of a Calico rule, as indented YAML lines (may be empty).
/// `peer` is the side of the other party (source of an ingress rule, destination of an
/// egress rule); address conditions on the endpoint's own side are rarer, as in real policy.
fn entity(
    rng: &mut Rng,
    world: &World,
    namespaced: bool,
    peer: bool,
    family: Family,
    ports: Option<bool>,
) -> String {
    let mut lines = Vec::new();
    let peer_pool: Vec<(&str, &[&str])> =
        CALICO_POD_KEYS.iter().chain(SET_LABELS).copied().collect();
    let often = |percent: u64| if peer { percent } else { percent / 4 };
    if rng.chance(often(25)) {
        let nets: Vec<String> = (0..1 + rng.below(2)).map(|_| net(rng, world, family)).collect();
        lines.push(format!("nets: [{}]", nets.join(", ")));
    }
    if rng.chance(often(12)) {
        lines.push(format!("notNets: [{}]", net(rng, world, family)));
    }
    if rng.chance(often(35)) {
        lines.push(format!("selector: \"{}\"", calico_selector(rng, &peer_pool, 2)));
    }
    if rng.chance(often(10)) {
        lines.push(format!("notSelector: \"{}\"", calico_selector(rng, &peer_pool, 1)));
    }
    if rng.chance(often(if namespaced { 25 } else { 10 })) {
        let sel = match rng.below(5) {
            0 => "global()".to_string(),
            1 => "all()".to_string(),
            _ => calico_selector(rng, &ns_pool(world), 1),
        };
        lines.push(format!("namespaceSelector: \"{sel}\""));
    }
    if let Some(numeric) = ports {
        if rng.chance(35) {
            lines.push(format!("ports: {}", ports_list(rng, numeric)));
        }
        if rng.chance(12) {
            lines.push(format!("notPorts: {}", ports_list(rng, numeric)));
        }
    }
    if rng.chance(often(10)) {
        let mut sa = Vec::new();
        if rng.chance(60) {
            sa.push(format!("names: [{}]", rng.pick(SERVICE_ACCOUNTS)));
        }
        if sa.is_empty() || rng.chance(50) {
            sa.push(format!("selector: \"{}\"", calico_selector(rng, SA_LABELS, 1)));
        }
        lines.push(format!("serviceAccounts: {{{}}}", sa.join(", ")));
    }
    lines.iter().map(|l| format!("\n      {l}")).collect()
}

fn calico_rule(rng: &mut Rng, world: &World, namespaced: bool, direction: &str) -> String {
    let action = *rng.pick(&["Allow", "Allow", "Deny", "Deny", "Pass", "Log"]);
    let mut out = format!("\n  - action: {action}");
    let family = if rng.chance(75) { Family::V4 } else { Family::V6 };
    let protocol = *rng.pick(&[
        None,
        None,
        None,
        Some("TCP"),
        Some("TCP"),
        Some("UDP"),
        Some("SCTP"),
        Some("ICMP"),
        Some("ICMPv6"),
        Some("47"),
    ]);
    if rng.chance(12) {
        let v = match (protocol, family) {
            (Some("ICMP"), _) => 4,
            (Some("ICMPv6"), _) => 6,
            (_, Family::V4) => 4,
            (_, Family::V6) => 6,
        };
        let _ = write!(out, "\n    ipVersion: {v}");
    }
    // ICMP with ipVersion is checked above; nets of the other family would be rejected.
    let family = match protocol {
        Some("ICMP") if out.contains("ipVersion") => Family::V4,
        Some("ICMPv6") if out.contains("ipVersion") => Family::V6,
        _ => family,
    };
    if let Some(p) = protocol {
        let _ = write!(out, "\n    protocol: {p}");
    }
    if rng.chance(10) {
        let _ = write!(out, "\n    notProtocol: {}", rng.pick(&["TCP", "UDP", "ICMP", "47"]));
    }
    if matches!(protocol, Some("ICMP") | Some("ICMPv6")) {
        for field in ["icmp", "notICMP"] {
            if rng.chance(40) {
                let t = rng.pick(&[0u8, 3, 8, 11, 128, 129, 135]);
                match rng.below(2) {
                    0 => {
                        let _ = write!(out, "\n    {field}: {{type: {t}}}");
                    }
                    _ => {
                        let _ = write!(out, "\n    {field}: {{type: {t}, code: {}}}", rng.below(3));
                    }
                }
            }
        }
    }
    // Numeric ports need TCP/UDP/SCTP; named ports also go without a protocol.
    let ports = match protocol {
        Some("TCP" | "UDP" | "SCTP") => Some(true),
        None => Some(false),
        _ => None,
    };
    for side in ["source", "destination"] {
        let peer = (side == "source") == (direction == "ingress");
        let body = entity(rng, world, namespaced, peer, family, ports);
        if !body.is_empty() {
            let _ = write!(out, "\n    {side}:{body}");
        }
    }
    out
}

fn k8s_rule(rng: &mut Rng, world: &World, peer_key: &str) -> String {
    let mut out = "\n  -".to_string();
    let mut fields = Vec::new();
    if rng.chance(70) {
        let mut peers = Vec::new();
        for _ in 0..1 + rng.below(2) {
            let peer = match rng.below(4) {
                0 => format!("{{podSelector: {}}}", k8s_selector(rng, POD_LABELS)),
                1 => format!("{{namespaceSelector: {}}}", k8s_selector(rng, &ns_pool(world))),
                2 => format!(
                    "{{namespaceSelector: {}, podSelector: {}}}",
                    k8s_selector(rng, &ns_pool(world)),
                    k8s_selector(rng, POD_LABELS)
                ),
                _ => format!("{{ipBlock: {}}}", ip_block(rng, world)),
            };
            peers.push(peer);
        }
        fields.push(format!("{peer_key}: [{}]", peers.join(", ")));
    }
    if rng.chance(60) {
        let mut ports = Vec::new();
        for _ in 0..1 + rng.below(2) {
            let protocol =
                *rng.pick(&["", "protocol: TCP, ", "protocol: UDP, ", "protocol: SCTP, "]);
            let port = match rng.below(5) {
                0 => String::new(),
                1 => format!("port: {}", rng.pick(PORT_NAMES)),
                2 => {
                    let start = *rng.pick(&[53u16, 80, 1000, 8000, 9090]);
                    format!("port: {start}, endPort: {}", start + rng.below(200) as u16)
                }
                _ => format!("port: {}", rng.pick(&[53, 80, 443, 5432, 8080, 9090, 3868])),
            };
            ports.push(format!("{{{protocol}{port}}}").replace(", }", "}"));
        }
        fields.push(format!("ports: [{}]", ports.join(", ")));
    }
    if fields.is_empty() {
        out.push_str(" {}");
    } else {
        out.push_str(&format!(" {{{}}}", fields.join(", ")));
    }
    out
}

fn k8s_policy(rng: &mut Rng, world: &World, i: usize, out: &mut String) {
    let ns = rng.pick(&world.namespaces);
    let _ = write!(
        out,
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: pol{i}, namespace: {ns}}}\n\
         spec:\n  podSelector: {}\n",
        k8s_selector(rng, POD_LABELS)
    );
    let types = *rng.pick(&["", "", "[Ingress]", "[Egress]", "[Ingress, Egress]"]);
    if !types.is_empty() {
        let _ = writeln!(out, "  policyTypes: {types}");
    }
    for (key, peer_key) in [("ingress", "from"), ("egress", "to")] {
        let n = rng.below(4);
        if n > 0 {
            let _ = write!(out, "  {key}:");
            for _ in 0..n {
                out.push_str(&k8s_rule(rng, world, peer_key));
            }
            out.push('\n');
        }
    }
}

fn calico_policy(rng: &mut Rng, world: &World, i: usize, out: &mut String) {
    let global = rng.chance(40);
    let tier = if world.tiers.is_empty() || rng.chance(40) {
        "default".to_string()
    } else {
        rng.pick(&world.tiers).clone()
    };
    let name = if tier == "default" { format!("pol{i}") } else { format!("{tier}.pol{i}") };
    let (kind, meta) = if global {
        ("GlobalNetworkPolicy", format!("{{name: {name}}}"))
    } else {
        ("NetworkPolicy", format!("{{name: {name}, namespace: {}}}", rng.pick(&world.namespaces)))
    };
    let _ = write!(
        out,
        "---\napiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata: {meta}\nspec:\n"
    );
    if tier != "default" {
        let _ = writeln!(out, "  tier: {tier}");
    }
    // Ties with each other and with Kubernetes policies (order 1000) are ordered by name.
    if let Some(order) =
        rng.pick(&[None, Some("1"), Some("5"), Some("5"), Some("100"), Some("1000"), Some("2.5")])
    {
        let _ = writeln!(out, "  order: {order}");
    }
    if rng.chance(75) {
        let _ = writeln!(out, "  selector: \"{}\"", calico_selector(rng, CALICO_POD_KEYS, 1));
    }
    if global && rng.chance(20) {
        let _ =
            writeln!(out, "  namespaceSelector: \"{}\"", calico_selector(rng, &ns_pool(world), 1));
    }
    if rng.chance(10) {
        let _ =
            writeln!(out, "  serviceAccountSelector: \"{}\"", calico_selector(rng, SA_LABELS, 0));
    }
    let types = *rng.pick(&["", "", "", "[Ingress]", "[Egress]", "[Ingress, Egress]"]);
    if !types.is_empty() {
        let _ = writeln!(out, "  types: {types}");
    }
    for key in ["ingress", "egress"] {
        let n = rng.below(5);
        if n > 0 {
            let _ = write!(out, "  {key}:");
            for _ in 0..n {
                // Mostly rules with some condition: a bare rule ends the policy's evaluation.
                let mut rule = calico_rule(rng, world, !global, key);
                for _ in 0..3 {
                    if rule.contains("\n    ") || rng.chance(25) {
                        break;
                    }
                    rule = calico_rule(rng, world, !global, key);
                }
                out.push_str(&rule);
            }
            out.push('\n');
        }
    }
}

/// A whole random input: cluster, tiers, sets and 1-6 policies.
fn policy_set(seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut out = format!("# polc property test, seed {seed:#x}\n");
    let world = cluster(&mut rng, &mut out);
    for i in 0..1 + rng.below(6) {
        if rng.chance(35) {
            k8s_policy(&mut rng, &world, i, &mut out);
        } else {
            calico_policy(&mut rng, &world, i, &mut out);
        }
    }
    out
}

// ------------------------------------------------------------------------------ packets ----

fn offset(addr: IpAddr, delta: i128) -> IpAddr {
    match addr {
        // Wrapping: the neighbours of 0.0.0.0/0 and of the top of the space wrap around.
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(delta as u32))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(delta as u128))),
    }
}

/// Addresses worth trying as the peer: endpoints, set members and the addresses just inside
/// and just outside each member.
fn addresses(ir: &Ir, family: Family) -> Vec<IpAddr> {
    let mut out = BTreeSet::new();
    for ep in &ir.endpoints {
        out.extend(ep.addresses.iter().copied());
    }
    for set in &ir.ip_sets {
        for p in &set.members {
            let size = 1i128 << (p.family().bits() - p.len()).min(100);
            for d in [-1, 0, 1, size - 1, size] {
                out.insert(offset(p.addr(), d));
            }
        }
    }
    out.into_iter().filter(|a| Family::of(a) == family).collect()
}

/// Ports worth trying: every rule's range edges +-1 and every named port's number.
fn ports(ir: &Ir) -> Vec<u16> {
    let mut out = BTreeSet::from([0u16, 1, 53, 80, 443, 8080, 65535]);
    for ep in &ir.endpoints {
        for t in ep.tiers.iter() {
            for p in &t.policies {
                for r in &p.rules {
                    for end in [&r.matches.src, &r.matches.dst] {
                        for pm in end.ports.iter().chain(end.not_ports.iter()) {
                            for range in &pm.ranges {
                                out.extend([
                                    range.lo.saturating_sub(1),
                                    range.lo,
                                    range.hi,
                                    range.hi.saturating_add(1),
                                ]);
                            }
                        }
                    }
                }
            }
        }
    }
    for s in &ir.port_sets {
        out.extend(s.members.iter().map(|m| m.port));
    }
    out.into_iter().collect()
}

fn random_address(rng: &mut Rng, family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(rng.next() as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(((rng.next() as u128) << 64) | rng.next() as u128)),
    }
}

/// An address inside `prefix`: its first, last or a random one.
fn inside(rng: &mut Rng, prefix: &Prefix) -> IpAddr {
    let host_bits = u32::from(prefix.family().bits() - prefix.len());
    let span = if host_bits >= 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
    let pick = match rng.below(3) {
        0 => 0,
        1 => span,
        _ => (((rng.next() as u128) << 64) | rng.next() as u128) & span,
    };
    match prefix.addr() {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) | pick as u32)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) | pick)),
    }
}

/// A port the match asks for: inside one of its ranges, or a named port's number (with the
/// address it belongs to).
fn wanted_port(
    rng: &mut Rng,
    ep: &EndpointPolicy,
    pm: &PortMatch,
    family: Family,
) -> Option<(u16, Option<IpAddr>)> {
    let named: Vec<&NamedPort> = pm
        .named
        .iter()
        .filter_map(|id| ep.port_set(*id))
        .flat_map(|s| &s.members)
        .filter(|m| Family::of(&m.addr) == family)
        .collect();
    if !named.is_empty() && (pm.ranges.is_empty() || rng.chance(50)) {
        let m = rng.pick(&named);
        return Some((m.port, Some(m.addr)));
    }
    let r = rng.pick(pm.ranges.get(..).filter(|r| !r.is_empty())?);
    Some((*rng.pick(&[r.lo, r.hi, r.lo + (r.hi - r.lo) / 2]), None))
}

/// A flow aimed at one random rule of `ep`: its protocol, ICMP type, an address of its peer
/// set and a port it names, so that rules (not only defaults) decide many packets.
fn aimed(rng: &mut Rng, ep: &EndpointPolicy, family: Family, me: IpAddr) -> Option<Flow> {
    let rules: Vec<&Rule> =
        ep.tiers.iter().flat_map(|t| &t.policies).flat_map(|p| &p.rules).collect();
    let m = &rng.pick(rules.get(..).filter(|r| !r.is_empty())?).matches;
    let icmp = if family == Family::V4 { proto::ICMP } else { proto::ICMPV6 };
    // The family's ICMP: a v4 ICMP rule is probed with ICMPv6 on an IPv6 program.
    let protocol = match m.protocol {
        Some(proto::ICMP | proto::ICMPV6) => icmp,
        Some(p) => p,
        None => *rng.pick(&[proto::TCP, proto::UDP, proto::SCTP, icmp]),
    };
    let ingress = ep.direction == Direction::Ingress;
    let (peer_end, own_end) = if ingress { (&m.src, &m.dst) } else { (&m.dst, &m.src) };
    let members: Vec<&Prefix> = peer_end
        .in_sets
        .iter()
        .filter_map(|id| ep.ip_set(*id))
        .flat_map(|s| &s.members)
        .filter(|p| p.family() == family)
        .collect();
    let mut peer = match members.is_empty() {
        true => random_address(rng, family),
        false => {
            let p = *rng.pick(&members);
            inside(rng, p)
        }
    };
    let mut port_of = |rng: &mut Rng, end: &EndMatch, is_peer: bool| match &end.ports {
        Some(pm) => match wanted_port(rng, ep, pm, family) {
            Some((port, Some(addr))) if is_peer => {
                peer = addr;
                port
            }
            Some((port, _)) => port,
            None => rng.next() as u16,
        },
        None => rng.next() as u16,
    };
    let peer_port = port_of(rng, peer_end, true);
    let own_port = port_of(rng, own_end, false);
    let (src, dst, sport, dport) =
        if ingress { (peer, me, peer_port, own_port) } else { (me, peer, own_port, peer_port) };
    Some(if protocol == proto::ICMP || protocol == proto::ICMPV6 {
        let (t, c) = match m.icmp.or(m.not_icmp) {
            Some(i) => (i.icmp_type, i.code.unwrap_or(rng.below(3) as u8)),
            None => (rng.next() as u8, rng.below(3) as u8),
        };
        Flow::icmp(src, dst, t, c)
    } else if proto::has_ports(protocol) {
        Flow::ports(src, dst, protocol, sport, dport)
    } else {
        Flow::ports(src, dst, protocol, 0, 0)
    })
}

/// Nudge one field of a flow by one (a port, the peer's address, the ICMP code or type), to
/// probe the edges of what a rule matches. The endpoint's own address stays: its program only
/// ever sees its own traffic, and -O2 specialises on that.
fn nudge(rng: &mut Rng, mut flow: Flow, direction: Direction) -> Flow {
    let step = if rng.chance(50) { 1 } else { u16::MAX };
    match rng.below(4) {
        0 if proto::has_ports(flow.protocol) => flow.dst_port = flow.dst_port.wrapping_add(step),
        1 if proto::has_ports(flow.protocol) => flow.src_port = flow.src_port.wrapping_add(step),
        2 => {
            let d = if rng.chance(50) { 1 } else { -1 };
            match direction {
                Direction::Ingress => flow.src = offset(flow.src, d),
                Direction::Egress => flow.dst = offset(flow.dst, d),
            }
        }
        _ => {
            if let (Some(t), Some(c)) = (flow.icmp_type, flow.icmp_code) {
                flow.icmp_code = Some(c.wrapping_add(1));
                if rng.chance(50) {
                    flow.icmp_type = Some(t.wrapping_add(1));
                }
            }
        }
    }
    flow
}

/// One packet for program `index`: its endpoint's own address on its side; either aimed at a
/// rule (then sometimes nudged) or built from the policy's interesting values.
fn packet(
    rng: &mut Rng,
    engines: &Engines,
    index: usize,
    peers: &[IpAddr],
    port_list: &[u16],
) -> Option<(String, Flow)> {
    let program = engines.compiled.programs.get(index)?;
    let endpoint = rng.pick(&program.endpoints).clone();
    let ep = engines.compiled.ir.endpoint(&endpoint, program.direction)?;
    let own: Vec<IpAddr> =
        ep.addresses.iter().copied().filter(|a| Family::of(a) == program.family).collect();
    let me = *own.first()?;
    if rng.chance(55) {
        if let Some(flow) = aimed(rng, ep, program.family, me) {
            let flow = if rng.chance(30) { nudge(rng, flow, ep.direction) } else { flow };
            return Some((endpoint, flow));
        }
    }
    let peer = if peers.is_empty() || rng.chance(15) {
        random_address(rng, program.family)
    } else {
        *rng.pick(peers)
    };
    let (src, dst) = match program.direction {
        Direction::Ingress => (peer, me),
        Direction::Egress => (me, peer),
    };
    let icmp = if program.family == Family::V4 { proto::ICMP } else { proto::ICMPV6 };
    let protocol =
        *rng.pick(&[proto::TCP, proto::TCP, proto::UDP, proto::SCTP, icmp, icmp, 47, 50]);
    let port = |rng: &mut Rng| {
        if rng.chance(80) {
            *rng.pick(port_list)
        } else {
            rng.next() as u16
        }
    };
    let flow = if protocol == icmp {
        let t = *rng.pick(&[0u8, 3, 7, 8, 9, 11, 127, 128, 129, 130, 135, 255]);
        Flow::icmp(src, dst, t, rng.below(4) as u8)
    } else if proto::has_ports(protocol) {
        Flow::ports(src, dst, protocol, port(rng), port(rng))
    } else {
        Flow::ports(src, dst, protocol, 0, 0)
    };
    Some((endpoint, flow))
}

// -------------------------------------------------------------------------------- tests ----

#[derive(Default)]
struct Totals {
    sets: usize,
    packets: usize,
    programs: usize,
    /// Packet x optimisation level.
    checks: usize,
    /// Of the packets (by the evaluator).
    denied: usize,
    /// Packets decided by a rule (not a tier default or the profile).
    by_rule: usize,
}

/// Generate, compile (at every level) and check policy set `seed`; mismatch reports go to
/// `failures`.
fn check_set(seed: u64, totals: &mut Totals, failures: &mut Vec<String>) {
    let yaml = policy_set(seed);
    let cluster = match polc::frontend::load_str(&format!("seed-{seed:#x}.yaml"), &yaml) {
        Ok(c) => c,
        // The generator only writes valid input: a rejection is a generator or frontend bug.
        Err(e) => panic!("seed {seed:#x}: the frontend rejects generated YAML: {e}\n{yaml}"),
    };
    let ir = polc::lower::lower(&cluster);
    let mut levels = Vec::new();
    for opt_level in OPT_LEVELS {
        match common::compile(ir.clone(), opt_level).and_then(Engines::new) {
            Ok(engines) => levels.push((opt_level, engines)),
            Err(e) => {
                failures.push(format!("seed {seed:#x}: {e}\n--- YAML ---\n{yaml}"));
                return;
            }
        }
    }
    totals.sets += 1;
    totals.programs += levels.iter().map(|(_, e)| e.compiled.programs.len()).sum::<usize>();
    // Packets are chosen from the -O0 programs (any level has the same endpoints) and checked
    // at every level.
    let Some((_, reference)) = levels.first() else { return };
    let programs = reference.compiled.programs.len();
    if programs == 0 {
        return;
    }
    let port_list = ports(&ir);
    let peers4 = addresses(&ir, Family::V4);
    let peers6 = addresses(&ir, Family::V6);
    let mut rng = Rng::new(seed ^ 0xfeed_f00d);
    let mut mismatches = Vec::new();
    // Most packets go to programs that have rules; a few to the default-profile ones.
    let with_rules: Vec<usize> = (0..programs)
        .filter(|&i| {
            let p = &reference.compiled.programs[i];
            p.endpoints
                .iter()
                .any(|e| ir.endpoint(e, p.direction).is_some_and(|ep| !ep.tiers.is_empty()))
        })
        .collect();
    for _ in 0..PACKETS_PER_SET {
        let index = if with_rules.is_empty() || rng.chance(10) {
            rng.below(programs)
        } else {
            *rng.pick(&with_rules)
        };
        let program = &reference.compiled.programs[index];
        let peers = if program.family == Family::V4 { &peers4 } else { &peers6 };
        let Some((endpoint, flow)) = packet(&mut rng, reference, index, peers, &port_list) else {
            continue;
        };
        let direction = program.direction;
        totals.packets += 1;
        if let Some(ep) = ir.endpoint(&endpoint, direction) {
            let decision = evaluate(ep, &flow);
            totals.denied += usize::from(decision.verdict == Verdict::Deny);
            totals.by_rule +=
                usize::from(matches!(decision.trace.last(), Some(TraceStep::Rule(_))));
        }
        for (opt_level, engines) in &levels {
            totals.checks += 1;
            if let Err(e) = engines.check(&endpoint, direction, &flow) {
                mismatches.push(format!("-O{opt_level}: {e}"));
            }
        }
    }
    if !mismatches.is_empty() {
        failures.push(format!(
            "seed {seed:#x}: {} of {} checks disagree; first:\n{}\n\
             reproduce: POLC_PROPTEST_SEED={seed:#x} cargo test -p polc --test property\n\
             --- YAML ---\n{yaml}",
            mismatches.len(),
            PACKETS_PER_SET * levels.len(),
            mismatches[0]
        ));
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[test]
fn random_policies_agree_on_ir_vm_and_kernel() {
    polc_loader::require_kernel!();
    let start = Instant::now();
    let seeds: Vec<u64> = match env_u64("POLC_PROPTEST_SEED") {
        Some(seed) => vec![seed],
        None => {
            let sets = env_u64("POLC_PROPTEST_SETS").unwrap_or(DEFAULT_SETS);
            (0..sets).map(|i| SEED_BASE + i).collect()
        }
    };
    let mut totals = Totals::default();
    let mut failures = Vec::new();
    for &seed in &seeds {
        check_set(seed, &mut totals, &mut failures);
    }
    eprintln!(
        "property: {} policy sets, {} programs, {} packets ({} denied, {} decided by a rule) x \
         -O0/-O2 = {} checks on 3 engines in {:.1?}; {} sets disagree",
        totals.sets,
        totals.programs,
        totals.packets,
        totals.denied,
        totals.by_rule,
        totals.checks,
        start.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} policy sets disagree:\n\n{}",
        failures.len(),
        seeds.len(),
        failures.iter().take(3).cloned().collect::<Vec<_>>().join("\n\n")
    );
    if seeds.len() as u64 >= DEFAULT_SETS {
        assert!(totals.packets >= 10_000, "only {} packets checked", totals.packets);
    }
}

/// The generator is deterministic (so a printed seed reproduces) and varied.
#[test]
fn generator_is_deterministic_and_varied() {
    assert_eq!(policy_set(SEED_BASE), policy_set(SEED_BASE));
    let distinct: BTreeSet<String> = (0..20).map(|i| policy_set(SEED_BASE + i)).collect();
    assert_eq!(distinct.len(), 20);
    let all: String = (0..50).map(|i| policy_set(SEED_BASE + i)).collect();
    for feature in [
        "kind: NetworkPolicy\nmetadata",
        "GlobalNetworkPolicy",
        "kind: Tier",
        "NetworkSet",
        "action: Pass",
        "action: Log",
        "notNets",
        "notPorts",
        "notSelector",
        "namespaceSelector",
        "serviceAccounts",
        "icmp: {type",
        "notICMP",
        "endPort",
        "ipBlock",
        "except",
        " in {",
        "not in {",
        "!has(",
        "&&",
        "||",
        "fd00::",
        "contains '",
        "starts with '",
        "ends with '",
        "projectcalico.org/namespace",
    ] {
        assert!(all.contains(feature), "50 generated sets never contain {feature:?}");
    }
}
