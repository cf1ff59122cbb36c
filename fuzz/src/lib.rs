//! Shared by the fuzz targets: a small random cluster (namespaces, pods, Kubernetes and Calico
//! policies, tiers, network sets) built from fuzz bytes, and the check that the compiled
//! programs, run under rbpf, decide a few flows exactly as the reference evaluator does.

use std::fmt::Write;
use std::net::IpAddr;

use arbitrary::{Result, Unstructured};
use polc::codegen::RuleKey;
use polc::compile::{compile_ir_with, Compiled, Options};
use polc::engine::vm_run;
use polc_ir::{evaluate, proto, EndpointPolicy, Family, Flow, TraceStep};

const LABEL_KEYS: [&str; 3] = ["app", "tier", "env"];
const LABEL_VALUES: [&str; 3] = ["web", "db", "prod"];
const NAMESPACES: [&str; 2] = ["shop", "ops"];
const PORTS: [u16; 5] = [53, 80, 443, 8080, 9000];
const CIDRS: [&str; 7] = [
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.3/32",
    "0.0.0.0/0",
    "fd00::/8",
    "fd00:1::/64",
];

fn pick<'a, T>(u: &mut Unstructured, items: &'a [T]) -> Result<&'a T> {
    u.choose(items)
}

fn labels(u: &mut Unstructured, indent: &str) -> Result<String> {
    let mut out = String::new();
    for key in LABEL_KEYS {
        if u.ratio(1, 2)? {
            let _ = writeln!(out, "{indent}{key}: {}", pick(u, &LABEL_VALUES)?);
        }
    }
    Ok(out)
}

/// A Calico selector over the small label alphabet.
fn calico_selector(u: &mut Unstructured) -> Result<String> {
    let key = pick(u, &LABEL_KEYS)?;
    let value = pick(u, &LABEL_VALUES)?;
    Ok(match u.int_in_range(0..=6)? {
        0 => "all()".to_owned(),
        1 => format!("{key} == '{value}'"),
        2 => format!("{key} != '{value}'"),
        3 => format!("has({key})"),
        4 => format!("!has({key})"),
        5 => format!("{key} in {{'{value}', 'db'}}"),
        _ => format!("{key} == '{value}' || {} starts with 'w'", pick(u, &LABEL_KEYS)?),
    })
}

fn k8s_peer(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=3)? {
        0 => format!(
            "    - podSelector:\n        matchLabels:\n          {}: {}\n",
            pick(u, &LABEL_KEYS)?,
            pick(u, &LABEL_VALUES)?
        ),
        1 => format!(
            "    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: {}\n",
            pick(u, &NAMESPACES)?
        ),
        2 => "    - ipBlock:\n        cidr: 10.0.0.0/8\n        except: [10.1.2.0/24]\n".to_owned(),
        _ => format!("    - ipBlock:\n        cidr: {}\n", pick(u, &CIDRS)?),
    })
}

fn k8s_policy(u: &mut Unstructured, n: usize) -> Result<String> {
    let namespace = pick(u, &NAMESPACES)?;
    let match_labels = match labels(u, "      ")? {
        l if l.is_empty() => " {}\n".to_owned(),
        l => format!("\n{l}"),
    };
    let mut y = format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: np{n}\n  \
         namespace: {namespace}\nspec:\n  podSelector:\n    matchLabels:{match_labels}"
    );
    let ingress = u.ratio(2, 3)?;
    let egress = u.ratio(1, 3)?;
    let types: Vec<&str> =
        [(ingress, "Ingress"), (egress, "Egress")].iter().filter(|t| t.0).map(|t| t.1).collect();
    let _ = writeln!(y, "  policyTypes: [{}]", types.join(", "));
    for (on, dir, peers) in [(ingress, "ingress", "from"), (egress, "egress", "to")] {
        if !on {
            continue;
        }
        let _ = writeln!(y, "  {dir}:");
        for _ in 0..u.int_in_range(0..=2)? {
            y.push_str("  - ");
            let mut first = true;
            if u.ratio(2, 3)? {
                let _ = writeln!(y, "{peers}:");
                first = false;
                for _ in 0..u.int_in_range(1..=2)? {
                    y.push_str(&k8s_peer(u)?);
                }
            }
            if u.ratio(1, 2)? {
                y.push_str(if first { "ports:\n" } else { "    ports:\n" });
                first = false;
                let protocol = pick(u, &["TCP", "UDP"])?;
                let port = pick(u, &PORTS)?;
                if u.ratio(1, 4)? {
                    let _ = writeln!(
                        y,
                        "    - protocol: {protocol}\n      port: {port}\n      endPort: {}",
                        port + 100
                    );
                } else if u.ratio(1, 4)? {
                    let _ = writeln!(y, "    - protocol: {protocol}\n      port: http");
                } else {
                    let _ = writeln!(y, "    - protocol: {protocol}\n      port: {port}");
                }
            }
            if first {
                y.push_str("{}\n");
            }
        }
        if y.ends_with(&format!("  {dir}:\n")) {
            y = y.replace(&format!("  {dir}:\n"), &format!("  {dir}: []\n"));
        }
    }
    Ok(y)
}

fn calico_entity(u: &mut Unstructured, indent: &str) -> Result<String> {
    let mut y = String::new();
    if u.ratio(1, 2)? {
        let _ = writeln!(y, "{indent}selector: \"{}\"", calico_selector(u)?);
    }
    if u.ratio(1, 3)? {
        let v4: Vec<&str> = CIDRS.iter().copied().filter(|c| !c.contains(':')).collect();
        let field = pick(u, &["nets", "notNets"])?;
        let _ = writeln!(y, "{indent}{field}: [{}]", pick(u, &v4)?);
    }
    if u.ratio(1, 3)? {
        let field = pick(u, &["ports", "notPorts"])?;
        let port = pick(u, &PORTS)?;
        let range =
            if u.ratio(1, 3)? { format!("\"{port}:{}\"", port + 50) } else { port.to_string() };
        let _ = writeln!(y, "{indent}{field}: [{range}]");
    }
    Ok(y)
}

fn calico_policy(u: &mut Unstructured, n: usize, tiers: &[String]) -> Result<String> {
    let global = u.ratio(1, 2)?;
    let tier = pick(u, tiers)?;
    let name = if tier == "default" { format!("cp{n}") } else { format!("{tier}.cp{n}") };
    let mut y = if global {
        format!("---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: {name}\nspec:\n")
    } else {
        format!(
            "---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  \
             namespace: {}\nspec:\n",
            pick(u, &NAMESPACES)?
        )
    };
    let _ = writeln!(y, "  tier: {tier}");
    if u.ratio(2, 3)? {
        let _ = writeln!(y, "  order: {}", u.int_in_range(0..=3)? * 10);
    }
    let _ = writeln!(y, "  selector: \"{}\"", calico_selector(u)?);
    for dir in ["ingress", "egress"] {
        let _ = writeln!(y, "  {dir}:");
        let rules = u.int_in_range(0..=3)?;
        if rules == 0 {
            y = y.replace(&format!("  {dir}:\n"), &format!("  {dir}: []\n"));
        }
        for _ in 0..rules {
            let action = pick(u, &["Allow", "Deny", "Pass", "Log"])?;
            let _ = writeln!(y, "  - action: {action}");
            let has_ports = u.ratio(1, 2)?;
            if has_ports {
                let _ = writeln!(y, "    protocol: {}", pick(u, &["TCP", "UDP"])?);
            } else if u.ratio(1, 4)? {
                let _ = writeln!(y, "    protocol: ICMP\n    icmp:\n      type: 8");
            }
            for side in ["source", "destination"] {
                let body = calico_entity(u, "      ")?;
                let body = if has_ports {
                    body
                } else {
                    body.lines()
                        .filter(|l| !l.contains("orts:"))
                        .map(|l| format!("{l}\n"))
                        .collect()
                };
                if !body.is_empty() {
                    let _ = write!(y, "    {side}:\n{body}");
                }
            }
        }
    }
    Ok(y)
}

/// A random cluster as YAML text. It may be invalid (the frontend then refuses it).
pub fn cluster_yaml(u: &mut Unstructured) -> Result<String> {
    let mut y = String::new();
    for ns in NAMESPACES {
        let _ = write!(y, "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    team: {ns}\n");
    }
    for i in 0..u.int_in_range(1..=4)? {
        let ns = pick(u, &NAMESPACES)?;
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  namespace: {ns}\n  labels:\n{}\
             spec:\n  containers:\n  - name: c\n    ports:\n    - name: http\n      containerPort: {}\n\
             status:\n  podIPs:\n  - ip: 10.1.2.{}\n",
            labels(u, "    ")?,
            pick(u, &PORTS)?,
            10 + i
        );
        if u.ratio(1, 3)? {
            let _ = writeln!(y, "  - ip: fd00:1::{:x}", 10 + i);
        }
    }
    let mut tiers = vec!["default".to_owned()];
    for t in 0..u.int_in_range(0..=2)? {
        let action = pick(u, &["Deny", "Pass"])?;
        let _ = write!(
            y,
            "---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: t{t}\nspec:\n  \
             order: {}\n  defaultAction: {action}\n",
            t * 100 + 50
        );
        tiers.push(format!("t{t}"));
    }
    if u.ratio(1, 2)? {
        y.push_str(
            "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata:\n  name: office\n  \
             labels:\n    app: db\nspec:\n  nets: [10.1.2.0/28, 192.168.0.0/16]\n",
        );
    }
    for n in 0..u.int_in_range(0..=4)? {
        if u.ratio(1, 2)? {
            y.push_str(&k8s_policy(u, n)?);
        } else {
            y.push_str(&calico_policy(u, n, &tiers)?);
        }
    }
    for n in 0..u.int_in_range(0..=2)? {
        y.push_str(&service(u, n)?);
    }
    Ok(y)
}

/// A Service (cluster IPs, ports with number or named target ports, selector, affinity) and
/// sometimes an EndpointSlice for it, including values the frontend must refuse cleanly.
fn service(u: &mut Unstructured, n: usize) -> Result<String> {
    let ns = pick(u, &NAMESPACES)?;
    let ip = pick(u, &["10.96.0.10", "10.96.0.11", "fd96::10", "None", "", "10.96.0.300"])?;
    let port = pick(u, &PORTS)?;
    let target = pick(u, &["8080", "http", "\"8080\"", "0", "metrics"])?;
    let protocol = pick(u, &["TCP", "UDP", "SCTP", "ICMP"])?;
    let affinity = pick(u, &["None", "ClientIP", ""])?;
    let mut y = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: s{n}\n  namespace: {ns}\nspec:\n  \
         clusterIP: \"{ip}\"\n  sessionAffinity: \"{affinity}\"\n  selector:\n{}  ports:\n  \
         - name: p\n    port: {port}\n    protocol: {protocol}\n    targetPort: {target}\n",
        labels(u, "    ")?
    );
    if u.ratio(1, 2)? {
        let family = pick(u, &["IPv4", "IPv6", "FQDN"])?;
        let addr = pick(u, &["10.1.2.10", "fd00:1::a", "not-an-ip", "10.1.2.11"])?;
        let ready = pick(u, &["true", "false", "null"])?;
        let _ = write!(
            y,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
             name: s{n}-x\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: s{n}\n\
             addressType: {family}\nendpoints:\n- addresses: [\"{addr}\"]\n  conditions: \
             {{ready: {ready}}}\nports:\n- name: p\n  port: {port}\n  protocol: {protocol}\n"
        );
    }
    Ok(y)
}

/// The rule identity the evaluator's decision names (what the program must report).
fn expected_key(ep: &EndpointPolicy, trace: &[TraceStep]) -> RuleKey {
    match trace.last() {
        Some(TraceStep::Rule(hit)) => RuleKey::Rule {
            direction: ep.direction,
            tier: hit.tier.clone(),
            policy: hit.policy.clone(),
            kind: hit.kind.clone(),
            index: hit.rule_index,
        },
        Some(TraceStep::TierDefault { tier, .. }) => {
            RuleKey::TierDefault { direction: ep.direction, tier: tier.clone() }
        }
        Some(TraceStep::NoPolicy) => RuleKey::Profile { direction: ep.direction, passed: false },
        _ => RuleKey::Profile { direction: ep.direction, passed: true },
    }
}

/// A flow at `ep` (its address on its side), the peer and ports chosen by the fuzzer.
fn flow_for(u: &mut Unstructured, ep: &EndpointPolicy, family: Family) -> Result<Option<Flow>> {
    let Some(own) = ep.addresses.iter().copied().find(|a| Family::of(a) == family) else {
        return Ok(None);
    };
    let peers: &[&str] = match family {
        Family::V4 => &[
            "10.1.2.10",
            "10.1.2.11",
            "10.1.2.12",
            "10.1.2.13",
            "10.9.9.9",
            "192.168.1.1",
            "10.1.2.3",
        ],
        Family::V6 => &["fd00:1::a", "fd00:1::b", "fd00:2::1", "2001:db8::1"],
    };
    let peer: IpAddr = match pick(u, peers)?.parse() {
        Ok(ip) => ip,
        Err(_) => return Ok(None),
    };
    let (src, dst) = match ep.direction {
        polc_ir::Direction::Ingress => (peer, own),
        polc_ir::Direction::Egress => (own, peer),
    };
    let flow = match u.int_in_range(0u8..=3)? {
        0 => Flow::icmp(src, dst, *pick(u, &[0u8, 8, 128])?, 0),
        n => {
            let protocol = [proto::TCP, proto::UDP, proto::SCTP][usize::from(n - 1)];
            let port = *pick(u, &PORTS)? + u.int_in_range(0..=101)?;
            Flow::ports(src, dst, protocol, 40000, port)
        }
    };
    Ok(Some(flow))
}

/// Compile `yaml` at -O0 and -O2 and check every program on a few fuzzer-chosen flows: the vm
/// verdict and deciding rule must be the evaluator's. Panics (a fuzz finding) on a mismatch or
/// a vm failure; inputs the frontend or compiler refuse are fine.
pub fn check_compiled_matches_evaluator(yaml: &str, u: &mut Unstructured) {
    let Ok(cluster) = polc::frontend::load_str("fuzz.yaml", yaml) else { return };
    // Service resolution must answer (or refuse) without panicking.
    let _ = polc::services::frontends(&cluster);
    let ir = polc::lower::lower(&cluster);
    for opt_level in [0u8, 1, 2] {
        let Ok(compiled) = compile_ir_with(ir.clone(), Options { opt_level, ..Options::default() })
        else {
            return;
        };
        check_programs(&compiled, opt_level, u, yaml);
    }
}

fn check_programs(c: &Compiled, opt_level: u8, u: &mut Unstructured, yaml: &str) {
    for (index, program) in c.programs.iter().enumerate() {
        for endpoint in &program.endpoints {
            let Some(ep) = c.ir.endpoint(endpoint, program.direction) else {
                panic!("program {index} serves {endpoint}, which the IR does not have");
            };
            for _ in 0..3 {
                let Ok(Some(flow)) = flow_for(u, ep, program.family) else { break };
                let want = evaluate(ep, &flow);
                let key = expected_key(ep, &want.trace);
                let got = match vm_run(c, index, &flow) {
                    Ok(got) => got,
                    Err(e) => {
                        panic!("-O{opt_level} vm failed on {flow:?} at {endpoint}: {e}\n{yaml}")
                    }
                };
                let got_key = c.rules.key(got.rule_id);
                assert!(
                    got.verdict == want.verdict && got_key == Some(&key),
                    "-O{opt_level} {endpoint} {:?} {flow:?}: vm says {:?} by {got_key:?}, \
                     evaluator {:?} by {key:?}\n{yaml}",
                    program.direction,
                    got.verdict,
                    want.verdict
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator must mostly produce clusters the frontend accepts, or the compile target
    /// would only fuzz error paths; and their programs must agree with the evaluator.
    #[test]
    fn generated_clusters_mostly_load_and_agree() {
        let (mut loaded, mut programs) = (0, 0);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..300 {
            let bytes: Vec<u8> = (0..512)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let mut u = Unstructured::new(&bytes);
            let Ok(yaml) = cluster_yaml(&mut u) else { continue };
            match polc::frontend::load_str("gen.yaml", &yaml) {
                Ok(c) => {
                    loaded += 1;
                    if let Ok(compiled) = polc::compile::compile_ir(polc::lower::lower(&c)) {
                        programs += compiled.programs.len();
                    }
                }
                Err(e) => eprintln!("refused: {e}"),
            }
            check_compiled_matches_evaluator(&yaml, &mut u);
        }
        assert!(loaded >= 270, "only {loaded} of 300 generated clusters load");
        assert!(programs >= 300, "only {programs} programs compiled");
    }
}
