//! The readable, deterministic text form of the IR and of decisions (snapshot-tested).

use std::fmt::{self, Write as _};

use crate::eval::{Decision, RuleHit, TraceStep};
use crate::net::proto;
use crate::types::{
    EndMatch, EndpointPolicy, IcmpMatch, IpSet, Ir, Match, PortMatch, PortSet, Rule, Tier,
};

fn fmt_order(o: Option<f64>) -> String {
    match o {
        Some(v) => format!("{v}"),
        None => "none".into(),
    }
}

fn fmt_port_match(pm: &PortMatch) -> String {
    let mut parts: Vec<String> = pm.ranges.iter().map(|r| r.to_string()).collect();
    parts.extend(pm.named.iter().map(|id| format!("portset#{}", id.0)));
    format!("{{{}}}", parts.join(","))
}

fn fmt_icmp(m: &IcmpMatch) -> String {
    match m.code {
        Some(c) => format!("type={} code={c}", m.icmp_type),
        None => format!("type={}", m.icmp_type),
    }
}

fn fmt_end(side: &str, m: &EndMatch, out: &mut Vec<String>) {
    for id in &m.in_sets {
        out.push(format!("{side} in ipset#{}", id.0));
    }
    for id in &m.not_in_sets {
        out.push(format!("{side} not in ipset#{}", id.0));
    }
    if let Some(pm) = &m.ports {
        out.push(format!("{side}.port in {}", fmt_port_match(pm)));
    }
    if let Some(pm) = &m.not_ports {
        out.push(format!("{side}.port not in {}", fmt_port_match(pm)));
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(v) = self.ip_version {
            parts.push(v.to_string());
        }
        if let Some(p) = self.protocol {
            parts.push(format!("proto {}", proto::name(p)));
        }
        if let Some(p) = self.not_protocol {
            parts.push(format!("proto != {}", proto::name(p)));
        }
        fmt_end("src", &self.src, &mut parts);
        fmt_end("dst", &self.dst, &mut parts);
        if let Some(m) = &self.icmp {
            parts.push(format!("icmp {}", fmt_icmp(m)));
        }
        if let Some(m) = &self.not_icmp {
            parts.push(format!("not icmp {}", fmt_icmp(m)));
        }
        if parts.is_empty() {
            f.write_str("any")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {}.{}: {} if {}", self.index, self.part, self.action.as_str(), self.matches)
    }
}

fn write_tier(out: &mut String, t: &Tier) -> fmt::Result {
    writeln!(
        out,
        "  tier {} (order {}, default {})",
        t.name,
        fmt_order(t.order),
        t.default_action.as_str()
    )?;
    for p in &t.policies {
        writeln!(
            out,
            "    policy {} {} (order {}) from {}",
            p.source.kind,
            p.source.qualified_name(),
            fmt_order(p.order),
            fmt_location(&p.source.file, p.source.doc, p.source.item)
        )?;
        if p.rules.is_empty() {
            writeln!(out, "      (no rules)")?;
        }
        for r in &p.rules {
            writeln!(out, "      {r}")?;
        }
    }
    Ok(())
}

fn write_endpoint_header(out: &mut String, e: &EndpointPolicy) -> fmt::Result {
    let addrs: Vec<String> = e.addresses.iter().map(|a| a.to_string()).collect();
    writeln!(out, "endpoint {} [{}] {}", e.endpoint, addrs.join(", "), e.direction.as_str())?;
    if e.tiers.is_empty() {
        writeln!(out, "  no policy: default profile allows")?;
    }
    for t in e.tiers.iter() {
        write_tier(out, t)?;
    }
    Ok(())
}

impl fmt::Display for IpSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m: Vec<String> = self.members.iter().map(|p| p.to_string()).collect();
        write!(f, "ipset#{} ({}): {{{}}}", self.id.0, self.origin, m.join(", "))
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m: Vec<String> = self
            .members
            .iter()
            .map(|n| format!("{} {}/{}", n.addr, proto::name(n.protocol), n.port))
            .collect();
        write!(f, "portset#{} ({}): {{{}}}", self.id.0, self.origin, m.join(", "))
    }
}

impl fmt::Display for EndpointPolicy {
    /// The endpoint's tiers followed by the sets its rules use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        write_endpoint_header(&mut out, self)?;
        for s in &self.ip_sets {
            writeln!(out, "  {s}")?;
        }
        for s in &self.port_sets {
            writeln!(out, "  {s}")?;
        }
        f.write_str(&out)
    }
}

impl fmt::Display for Ir {
    /// All sets once, then every endpoint x direction.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        writeln!(out, "sets:")?;
        for s in &self.ip_sets {
            writeln!(out, "  {s}")?;
        }
        for s in &self.port_sets {
            writeln!(out, "  {s}")?;
        }
        for e in &self.endpoints {
            writeln!(out)?;
            write_endpoint_header(&mut out, e)?;
        }
        f.write_str(&out)
    }
}

/// `FILE doc N` or `FILE doc N item M`.
fn fmt_location(file: &str, doc: usize, item: Option<usize>) -> String {
    match item {
        Some(i) => format!("{file} doc {doc} item {i}"),
        None => format!("{file} doc {doc}"),
    }
}

fn fmt_hit(h: &RuleHit) -> String {
    format!(
        "tier {} policy {} ({}, {}) rule {}",
        h.tier,
        h.policy,
        h.kind,
        fmt_location(&h.file, h.doc, h.item),
        h.rule_index
    )
}

impl fmt::Display for TraceStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceStep::Log(h) => write!(f, "log: {}", fmt_hit(h)),
            TraceStep::Pass(h) => write!(f, "pass: {} -> next tier", fmt_hit(h)),
            TraceStep::Rule(h) => write!(f, "{}: {}", h.action.as_str(), fmt_hit(h)),
            TraceStep::TierDefault { tier, action } => {
                write!(
                    f,
                    "{}: tier {tier} applies but no rule decided (tier default)",
                    action.as_str()
                )
            }
            TraceStep::NoPolicy => {
                f.write_str("allow: no policy selects the endpoint (default profile)")
            }
            TraceStep::ProfileAfterPass => {
                f.write_str("allow: passed out of the last tier (endpoint profile)")
            }
            TraceStep::NotOwnAddress => f.write_str(
                "deny: the endpoint's side of the flow is not its address (anti-spoofing)",
            ),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.verdict.as_str())?;
        for step in &self.trace {
            writeln!(f, "  {step}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::net::PortRange;
    use crate::types::{Action, EndMatch, IcmpMatch, IpSetId, Match, PortMatch, PortSetId, Rule};

    #[test]
    fn rule_text_lists_every_condition() {
        let m = Match {
            protocol: Some(6),
            src: EndMatch {
                in_sets: vec![IpSetId(1)],
                not_in_sets: vec![IpSetId(2)],
                ..Default::default()
            },
            dst: EndMatch {
                ports: Some(PortMatch {
                    ranges: vec![PortRange::single(80), PortRange { lo: 8000, hi: 8080 }],
                    named: vec![PortSetId(3)],
                }),
                ..Default::default()
            },
            not_icmp: Some(IcmpMatch { icmp_type: 8, code: None }),
            ..Default::default()
        };
        let r = Rule { action: Action::Allow, matches: m, index: 2, part: 1 };
        assert_eq!(
            r.to_string(),
            "rule 2.1: allow if proto tcp, src in ipset#1, src not in ipset#2, dst.port in {80,8000-8080,portset#3}, not icmp type=8"
        );
        assert_eq!(
            Rule { action: Action::Deny, matches: Match::default(), index: 0, part: 0 }.to_string(),
            "rule 0.0: deny if any"
        );
    }
}
