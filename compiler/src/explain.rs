//! `polc explain`: the verdict for one flow between two parties (pods or addresses), with a
//! trace per direction: egress of the source pod AND ingress of the destination pod.

use std::fmt;
use std::net::IpAddr;

use polc_ir::{evaluate, proto, Decision, Direction, Family, Flow, TraceStep, Verdict};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::frontend::{Cluster, Pod};
use crate::lower::{lower_endpoint, SetTable};
use crate::resolve::Resolver;

/// Source port used when `--src-port` is not given: the first IANA ephemeral port.
pub const DEFAULT_SRC_PORT: u16 = 49152;

/// Which implementation decides the flow.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The reference evaluator over the IR.
    Ir,
    /// The compiled bytecode under rbpf.
    Vm,
    /// The compiled bytecode in the kernel (BPF_PROG_TEST_RUN).
    Kernel,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Ir => "ir",
            Engine::Vm => "vm",
            Engine::Kernel => "kernel",
        }
    }
}

/// Output format.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// Flags of `polc explain` (docs/cli.md).
#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// Policy/cluster YAML: a file or directory (recursive); repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<std::path::PathBuf>,
    /// Source: `namespace/pod` or an IP address (a pod's IP means that pod).
    #[arg(long)]
    pub from: String,
    /// Destination: `namespace/pod` or an IP address.
    #[arg(long)]
    pub to: String,
    /// tcp, udp, sctp, udplite, icmp, icmpv6 or a protocol number 0-255.
    #[arg(long)]
    pub protocol: String,
    /// Destination port (required for tcp/udp/sctp/udplite, refused otherwise).
    #[arg(long)]
    pub port: Option<u16>,
    /// Source port (port protocols only; default 49152).
    #[arg(long)]
    pub src_port: Option<u16>,
    /// ICMP type (icmp/icmpv6 only; default echo request: 8, or 128 for icmpv6).
    #[arg(long)]
    pub icmp_type: Option<u8>,
    /// ICMP code (icmp/icmpv6 only; default 0).
    #[arg(long)]
    pub icmp_code: Option<u8>,
    #[arg(long, value_enum, default_value = "ir")]
    pub engine: Engine,
    /// `text` prints a readable trace; `json` the verdict and a trace per direction.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// What to explain, before it is resolved against a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub from: String,
    pub to: String,
    /// As typed: `tcp`, `icmpv6`, `47`, ...
    pub protocol: String,
    pub port: Option<u16>,
    pub src_port: Option<u16>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
}

impl Query {
    pub fn from_args(a: &ExplainArgs) -> Query {
        Query {
            from: a.from.clone(),
            to: a.to.clone(),
            protocol: a.protocol.clone(),
            port: a.port,
            src_port: a.src_port,
            icmp_type: a.icmp_type,
            icmp_code: a.icmp_code,
        }
    }
}

/// One end of the flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    /// `namespace/pod` when the address is an endpoint.
    pub endpoint: Option<String>,
    pub ip: IpAddr,
}

/// The decision of one endpoint in one direction.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectionResult {
    pub endpoint: String,
    pub decision: Decision,
}

/// The answer to a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub engine: Engine,
    pub flow: Flow,
    pub from: Party,
    pub to: Party,
    /// Egress of the source, if it is a pod.
    pub egress: Option<DirectionResult>,
    /// Ingress of the destination, if it is a pod.
    pub ingress: Option<DirectionResult>,
    /// Allow iff every present direction allows (for a service: for every backend).
    pub verdict: Verdict,
    /// Set when the destination was a service frontend: the translation and the verdict
    /// per backend. `flow`, `to` and the traces are those of the backend shown.
    pub service: Option<ServiceHop>,
}

/// A destination that service NAT translates, and what each backend gets.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceHop {
    pub frontend: crate::services::Frontend,
    pub backends: Vec<BackendResult>,
}

/// One backend of a [`ServiceHop`].
#[derive(Debug, Clone, PartialEq)]
pub struct BackendResult {
    pub backend: crate::services::Backend,
    /// `namespace/pod` when the backend address is an endpoint.
    pub endpoint: Option<String>,
    pub verdict: Verdict,
}

/// `polc explain`.
pub fn run(args: &ExplainArgs) -> Result<()> {
    let cluster = crate::frontend::load_reporting(&args.files)?;
    let ex = explain(&cluster, &Query::from_args(args), args.engine)?;
    match args.output {
        Output::Text => print!("{ex}"),
        Output::Json => println!("{}", ex.to_json()),
    }
    Ok(())
}

/// Resolves the query against the cluster and decides it with `engine`. A destination
/// that is a service frontend (cluster IP, port, protocol) is followed to its backends, as
/// the runtime's NAT does before policy: the verdict is "allow" only if every backend
/// allows (the runtime may pick any of them), and the flow and traces shown are those of
/// the first backend that denies, else of the first backend.
pub fn explain(cluster: &Cluster, query: &Query, engine: Engine) -> Result<Explanation> {
    let resolver = Resolver::new(cluster);
    let protocol = parse_protocol(&query.protocol)?;
    let from = resolve_party(&resolver, &query.from, "--from")?;
    let to = resolve_party(&resolver, &query.to, "--to")?;
    let (src, dst) = pick_addresses(&from, &to, &query.from, &query.to)?;
    let flow = build_flow(query, protocol, src, dst)?;
    let mut decider = Decider { cluster, resolver: &resolver, engine, compiled: None };
    let frontends = match to.pod {
        Some(_) => Vec::new(),
        None => crate::services::frontends(cluster)?,
    };
    let frontend = proto::has_ports(protocol)
        .then(|| crate::services::lookup(&frontends, dst, flow.dst_port, protocol))
        .flatten();
    let Some(fe) = frontend else {
        return decider.decide(&flow, from.pod, to.pod);
    };
    let mut hop = ServiceHop { frontend: fe.clone(), backends: Vec::new() };
    let mut shown: Option<Explanation> = None;
    for b in &fe.backends {
        let backend_flow = Flow { dst: b.ip, dst_port: b.port, ..flow };
        let pod = resolver.endpoints().iter().copied().find(|p| p.ips.contains(&b.ip));
        let ex = decider.decide(&backend_flow, from.pod, pod)?;
        hop.backends.push(BackendResult {
            backend: *b,
            endpoint: pod.map(pod_name),
            verdict: ex.verdict,
        });
        let first_deny = ex.verdict == Verdict::Deny
            && shown.as_ref().is_none_or(|s| s.verdict == Verdict::Allow);
        if shown.is_none() || first_deny {
            shown = Some(ex);
        }
    }
    let mut ex = match shown {
        Some(ex) => ex,
        // No backends: the runtime drops the packet before any policy (`no_backend`).
        None => Explanation {
            engine,
            flow,
            from: Party { endpoint: from.pod.map(pod_name), ip: src },
            to: Party { endpoint: None, ip: dst },
            egress: None,
            ingress: None,
            verdict: Verdict::Deny,
            service: None,
        },
    };
    ex.service = Some(hop);
    Ok(ex)
}

/// Decides flows with one engine, compiling the cluster once for the bytecode engines.
struct Decider<'a> {
    cluster: &'a Cluster,
    resolver: &'a Resolver<'a>,
    engine: Engine,
    compiled: Option<crate::compile::Compiled>,
}

impl Decider<'_> {
    /// Egress of `from` (if a pod) AND ingress of `to` (if a pod) for `flow`.
    fn decide(&mut self, flow: &Flow, from: Option<&Pod>, to: Option<&Pod>) -> Result<Explanation> {
        let (egress, ingress) = match self.engine {
            Engine::Ir => {
                let mut sets = SetTable::default();
                let mut decide = |pod: &Pod, dir: Direction| {
                    let policy = lower_endpoint(self.resolver, &mut sets, pod, dir);
                    DirectionResult {
                        endpoint: policy.endpoint.clone(),
                        decision: evaluate(&policy, flow),
                    }
                };
                (
                    from.map(|p| decide(p, Direction::Egress)),
                    to.map(|p| decide(p, Direction::Ingress)),
                )
            }
            Engine::Kernel | Engine::Vm => {
                if self.compiled.is_none() {
                    let ir = crate::lower::lower(self.cluster);
                    self.compiled = Some(crate::compile::compile_ir(ir)?);
                }
                let compiled = self.compiled.as_ref().ok_or_else(|| Error::other("compile"))?;
                let engine = self.engine;
                let decide = |pod: &Pod, dir: Direction| -> Result<DirectionResult> {
                    crate::engine::explain_compiled(compiled, &pod_name(pod), dir, flow, engine)
                };
                (
                    from.map(|p| decide(p, Direction::Egress)).transpose()?,
                    to.map(|p| decide(p, Direction::Ingress)).transpose()?,
                )
            }
        };
        let allowed = [&egress, &ingress]
            .iter()
            .all(|d| d.as_ref().is_none_or(|r| r.decision.verdict == Verdict::Allow));
        Ok(Explanation {
            engine: self.engine,
            flow: *flow,
            from: Party { endpoint: from.map(pod_name), ip: flow.src },
            to: Party { endpoint: to.map(pod_name), ip: flow.dst },
            egress,
            ingress,
            verdict: if allowed { Verdict::Allow } else { Verdict::Deny },
            service: None,
        })
    }
}

fn pod_name(p: &Pod) -> String {
    format!("{}/{}", p.namespace, p.name)
}

/// `tcp`, `udp`, `sctp`, `udplite`, `icmp`, `icmpv6` (any case) or a number 0-255.
pub fn parse_protocol(s: &str) -> Result<u8> {
    let p = match s.to_ascii_lowercase().as_str() {
        "tcp" => proto::TCP,
        "udp" => proto::UDP,
        "sctp" => proto::SCTP,
        "udplite" => proto::UDPLITE,
        "icmp" => proto::ICMP,
        "icmpv6" => proto::ICMPV6,
        other => other.parse::<u8>().map_err(|_| {
            Error::input(format!(
                "--protocol {s:?}: expected tcp, udp, sctp, udplite, icmp, icmpv6 or 0-255"
            ))
        })?,
    };
    Ok(p)
}

/// A resolved `--from`/`--to`: the pod (if any) and the candidate addresses.
struct Resolved<'a> {
    pod: Option<&'a Pod>,
    ips: Vec<IpAddr>,
}

fn resolve_party<'a>(r: &Resolver<'a>, text: &str, flag: &str) -> Result<Resolved<'a>> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        let pod = r.endpoints().iter().copied().find(|p| p.ips.contains(&ip));
        return Ok(Resolved { pod, ips: vec![ip] });
    }
    let Some((ns, name)) = text.split_once('/') else {
        return Err(Error::input(format!(
            "{flag} {text:?}: expected namespace/pod or an IP address"
        )));
    };
    if ns.parse::<IpAddr>().is_ok() {
        return Err(Error::input(format!(
            "{flag} {text:?}: expected an IP address, not a CIDR (a flow has one address: \
             give {ns})"
        )));
    }
    let Some(pod) = r.cluster.pods.iter().find(|p| p.namespace == ns && p.name == name) else {
        // Not a pod: a Service of that name means its cluster IPs.
        if let Some(svc) = r.cluster.services.iter().find(|s| s.namespace == ns && s.name == name) {
            return Ok(Resolved { pod: None, ips: svc.cluster_ips.clone() });
        }
        // hostNetwork pods are not endpoints: their traffic is the node's.
        if r.cluster.host_network_pods.iter().any(|p| p == text) {
            return Err(Error::input(format!(
                "{flag} {text:?}: a hostNetwork pod is not a policy endpoint (its traffic is \
                 the node's): give its IP address to explain a flow from or to it"
            )));
        }
        return Err(Error::input(format!("{flag} {text:?}: unknown pod or service")));
    };
    if pod.ips.is_empty() {
        return Err(Error::input(format!("{flag} {text:?}: pod has no IP address (status.podIP)")));
    }
    Ok(Resolved { pod: Some(pod), ips: pod.ips.clone() })
}

/// The first family (IPv4, then IPv6) both parties have an address in.
fn pick_addresses(
    from: &Resolved<'_>,
    to: &Resolved<'_>,
    from_text: &str,
    to_text: &str,
) -> Result<(IpAddr, IpAddr)> {
    for fam in [Family::V4, Family::V6] {
        let a = from.ips.iter().find(|ip| Family::of(ip) == fam);
        let b = to.ips.iter().find(|ip| Family::of(ip) == fam);
        if let (Some(a), Some(b)) = (a, b) {
            return Ok((*a, *b));
        }
    }
    Err(Error::input(format!("{from_text} and {to_text} have no IP family in common")))
}

fn build_flow(q: &Query, protocol: u8, src: IpAddr, dst: IpAddr) -> Result<Flow> {
    let pname = proto::name(protocol);
    if proto::has_ports(protocol) {
        if q.icmp_type.is_some() || q.icmp_code.is_some() {
            return Err(Error::input(format!(
                "--icmp-type/--icmp-code need icmp or icmpv6, not {pname}"
            )));
        }
        let Some(port) = q.port else {
            return Err(Error::input(format!("--port is required for {pname}")));
        };
        let sport = q.src_port.unwrap_or(DEFAULT_SRC_PORT);
        return Ok(Flow::ports(src, dst, protocol, sport, port));
    }
    if q.port.is_some() || q.src_port.is_some() {
        return Err(Error::input(format!("--port/--src-port need a port protocol, not {pname}")));
    }
    let is_v6 = src.is_ipv6();
    match protocol {
        proto::ICMP | proto::ICMPV6 => {
            if (protocol == proto::ICMP) == is_v6 {
                let want = if is_v6 { "icmpv6" } else { "icmp" };
                return Err(Error::input(format!(
                    "{pname} does not fit the addresses: use {want}"
                )));
            }
            if q.icmp_code.is_some() && q.icmp_type.is_none() {
                return Err(Error::input("--icmp-code needs --icmp-type"));
            }
            let default_type = if is_v6 { 128 } else { 8 };
            let t = q.icmp_type.unwrap_or(default_type);
            let mut flow = Flow::icmp(src, dst, t, q.icmp_code.unwrap_or(0));
            flow.protocol = protocol;
            Ok(flow)
        }
        _ => {
            if q.icmp_type.is_some() || q.icmp_code.is_some() {
                return Err(Error::input(format!(
                    "--icmp-type/--icmp-code need icmp or icmpv6, not {pname}"
                )));
            }
            Ok(Flow {
                src,
                dst,
                protocol,
                src_port: 0,
                dst_port: 0,
                icmp_type: None,
                icmp_code: None,
            })
        }
    }
}

fn step_json(step: &TraceStep) -> Value {
    let hit = |kind: &str, h: &polc_ir::RuleHit| {
        json!({
            "step": kind,
            "action": h.action.as_str(),
            "tier": h.tier,
            "policy": h.policy,
            "kind": h.kind,
            "file": h.file,
            "doc": h.doc,
            "item": h.item,
            "rule_index": h.rule_index,
        })
    };
    match step {
        TraceStep::Log(h) => hit("log", h),
        TraceStep::Pass(h) => hit("pass", h),
        TraceStep::Rule(h) => hit("rule", h),
        TraceStep::TierDefault { tier, action } => {
            json!({"step": "tier_default", "tier": tier, "action": action.as_str()})
        }
        TraceStep::NoPolicy => json!({"step": "no_policy", "action": "allow"}),
        TraceStep::ProfileAfterPass => json!({"step": "profile_after_pass", "action": "allow"}),
        TraceStep::NotOwnAddress => json!({"step": "not_own_address", "action": "deny"}),
    }
}

fn direction_json(d: &Option<DirectionResult>) -> Value {
    match d {
        None => Value::Null,
        Some(r) => json!({
            "endpoint": r.endpoint,
            "verdict": r.decision.verdict.as_str(),
            // The last step is the one that decided.
            "decided_by": r.decision.trace.last().map(step_json),
            "trace": r.decision.trace.iter().map(step_json).collect::<Vec<_>>(),
        }),
    }
}

impl Explanation {
    /// `{"verdict", "engine", "flow", "from", "to", "egress", "ingress"}`.
    pub fn to_json(&self) -> Value {
        let party = |p: &Party| json!({"endpoint": p.endpoint, "ip": p.ip.to_string()});
        let f = &self.flow;
        let ports = proto::has_ports(f.protocol);
        json!({
            "verdict": self.verdict.as_str(),
            "engine": self.engine.as_str(),
            "flow": {
                "src": f.src.to_string(),
                "dst": f.dst.to_string(),
                "protocol": proto::name(f.protocol),
                "protocol_number": f.protocol,
                "src_port": if ports { Some(f.src_port) } else { None },
                "dst_port": if ports { Some(f.dst_port) } else { None },
                "icmp_type": f.icmp_type,
                "icmp_code": f.icmp_code,
            },
            "from": party(&self.from),
            "to": party(&self.to),
            "egress": direction_json(&self.egress),
            "ingress": direction_json(&self.ingress),
            "service": self.service.as_ref().map(ServiceHop::to_json),
        })
    }
}

impl ServiceHop {
    /// `{"name", "cluster_ip", "port", "protocol", "backends": [{"ip", "port", "endpoint",
    /// "verdict"}]}`; no backends means the runtime drops the packet (`no_backend`).
    pub fn to_json(&self) -> Value {
        let fe = &self.frontend;
        json!({
            "name": fe.service,
            "port_name": fe.port_name,
            "cluster_ip": fe.ip.to_string(),
            "port": fe.port,
            "protocol": fe.protocol.to_string(),
            "backends": self.backends.iter().map(|b| json!({
                "ip": b.backend.ip.to_string(),
                "port": b.backend.port,
                "endpoint": b.endpoint,
                "verdict": b.verdict.as_str(),
            })).collect::<Vec<_>>(),
        })
    }
}

impl fmt::Display for Explanation {
    /// A human trace: the verdict and flow, then each direction's steps.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "verdict: {}", self.verdict.as_str())?;
        if let Some(hop) = &self.service {
            let allowed = hop.backends.iter().filter(|b| b.verdict == Verdict::Allow).count();
            writeln!(
                f,
                "{}: {} backend(s), {allowed} allow{}",
                hop.frontend,
                hop.backends.len(),
                if hop.backends.is_empty() { " (no backends: dropped as no_backend)" } else { "" }
            )?;
            for b in &hop.backends {
                let who = b.endpoint.as_deref().unwrap_or("not an endpoint");
                writeln!(
                    f,
                    "  -> {}:{} ({who}): {}",
                    b.backend.ip,
                    b.backend.port,
                    b.verdict.as_str()
                )?;
            }
            if hop.backends.is_empty() {
                return Ok(());
            }
            writeln!(
                f,
                "shown: the {} backend",
                if self.verdict == Verdict::Deny { "first denying" } else { "first" }
            )?;
        }
        writeln!(f, "flow: {}", self.flow)?;
        let sides =
            [("egress of", &self.from, &self.egress), ("ingress of", &self.to, &self.ingress)];
        for (label, party, result) in sides {
            match result {
                Some(r) => {
                    writeln!(
                        f,
                        "{label} {} ({}): {}",
                        r.endpoint,
                        party.ip,
                        r.decision.verdict.as_str()
                    )?;
                    for step in &r.decision.trace {
                        writeln!(f, "  {step}")?;
                    }
                }
                None => writeln!(f, "{label} {}: not an endpoint, no policy", party.ip)?,
            }
        }
        Ok(())
    }
}
