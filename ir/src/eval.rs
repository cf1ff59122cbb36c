//! The reference evaluator: a direct reading of the semantics over the IR. It is the spec that
//! compiled programs are tested against, so it favours obviousness over speed.
//!
//! Order of evaluation (Calico "How policy is evaluated", docs.tigera.io/calico/latest/
//! reference/resources/tier): tiers in order; in a tier, policies in order, rules in order; the
//! first Allow/Deny decides, Log records and continues, Pass jumps to the next tier; a tier that
//! applies but decides nothing ends with its defaultAction (Deny, or Pass); no tier applies, or
//! Pass out of the last tier -> the endpoint's profile, which allows.

use crate::flow::Flow;
use crate::net::{proto, Family};
use crate::types::{Action, EndMatch, EndpointPolicy, IcmpMatch, Match, PortMatch, TierDefault};
use std::net::IpAddr;

/// The outcome of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

/// A rule that fired, with enough provenance to find it in the YAML.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleHit {
    pub tier: String,
    /// `ns/name` or `name`.
    pub policy: String,
    pub kind: String,
    pub file: String,
    /// 1-based document index; `item` is the index inside a `kind: List` document.
    pub doc: usize,
    pub item: Option<usize>,
    pub rule_index: usize,
    pub action: Action,
}

/// One step of a decision.
#[derive(Debug, Clone, PartialEq)]
pub enum TraceStep {
    /// A Log rule matched; evaluation continued.
    Log(RuleHit),
    /// A Pass rule matched; evaluation continued with the next tier.
    Pass(RuleHit),
    /// An Allow or Deny rule matched and decided.
    Rule(RuleHit),
    /// The tier applied but no rule decided: its default action.
    TierDefault { tier: String, action: TierDefault },
    /// No policy selects the endpoint in this direction: the default profile allows.
    NoPolicy,
    /// Every applicable tier passed: the endpoint's profile allows.
    ProfileAfterPass,
    /// The endpoint's side of the flow (the source on egress, the destination on ingress) is
    /// not one of the endpoint's addresses: dropped before any policy (anti-spoofing, as
    /// Calico's dataplane drops workload traffic with a foreign source address).
    NotOwnAddress,
}

/// A verdict and how it was reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    pub trace: Vec<TraceStep>,
}

/// Decide `flow` for `policy` (one endpoint, one direction).
pub fn evaluate(policy: &EndpointPolicy, flow: &Flow) -> Decision {
    let mut trace = Vec::new();
    let own = match policy.direction {
        crate::types::Direction::Ingress => flow.dst,
        crate::types::Direction::Egress => flow.src,
    };
    if !policy.addresses.contains(&own) {
        trace.push(TraceStep::NotOwnAddress);
        return Decision { verdict: Verdict::Deny, trace };
    }
    if policy.tiers.is_empty() {
        trace.push(TraceStep::NoPolicy);
        return Decision { verdict: Verdict::Allow, trace };
    }
    'tiers: for tier in policy.tiers.iter() {
        for pol in &tier.policies {
            for rule in &pol.rules {
                if !rule_matches(policy, &rule.matches, flow) {
                    continue;
                }
                let hit = RuleHit {
                    tier: tier.name.clone(),
                    policy: pol.source.qualified_name(),
                    kind: pol.source.kind.clone(),
                    file: pol.source.file.clone(),
                    doc: pol.source.doc,
                    item: pol.source.item,
                    rule_index: rule.index,
                    action: rule.action,
                };
                match rule.action {
                    Action::Log => trace.push(TraceStep::Log(hit)),
                    Action::Pass => {
                        trace.push(TraceStep::Pass(hit));
                        continue 'tiers;
                    }
                    Action::Allow => {
                        trace.push(TraceStep::Rule(hit));
                        return Decision { verdict: Verdict::Allow, trace };
                    }
                    Action::Deny => {
                        trace.push(TraceStep::Rule(hit));
                        return Decision { verdict: Verdict::Deny, trace };
                    }
                }
            }
        }
        trace.push(TraceStep::TierDefault { tier: tier.name.clone(), action: tier.default_action });
        if tier.default_action == TierDefault::Deny {
            return Decision { verdict: Verdict::Deny, trace };
        }
    }
    trace.push(TraceStep::ProfileAfterPass);
    Decision { verdict: Verdict::Allow, trace }
}

/// True if every condition of `m` holds for `flow`.
pub fn rule_matches(policy: &EndpointPolicy, m: &Match, flow: &Flow) -> bool {
    if let Some(v) = m.ip_version {
        if Family::of(&flow.src) != v || Family::of(&flow.dst) != v {
            return false;
        }
    }
    if m.protocol.is_some_and(|p| p != flow.protocol) {
        return false;
    }
    if m.not_protocol.is_some_and(|p| p == flow.protocol) {
        return false;
    }
    if let Some(icmp) = &m.icmp {
        if !icmp_matches(icmp, flow) {
            return false;
        }
    }
    if let Some(icmp) = &m.not_icmp {
        if icmp_matches(icmp, flow) {
            return false;
        }
    }
    end_matches(policy, &m.src, &flow.src, flow.protocol, flow.src_port)
        && end_matches(policy, &m.dst, &flow.dst, flow.protocol, flow.dst_port)
}

fn end_matches(
    policy: &EndpointPolicy,
    m: &EndMatch,
    addr: &IpAddr,
    protocol: u8,
    port: u16,
) -> bool {
    // A set id the endpoint does not carry is a lowering bug; treat it as empty (fail closed
    // for `in`, open for `not in`, exactly as an empty set would behave).
    let in_set = |id| policy.ip_set(id).is_some_and(|s| s.contains(addr));
    if !m.in_sets.iter().all(|&id| in_set(id)) {
        return false;
    }
    if m.not_in_sets.iter().any(|&id| in_set(id)) {
        return false;
    }
    if let Some(pm) = &m.ports {
        if !proto::has_ports(protocol) || !port_matches(policy, pm, addr, protocol, port) {
            return false;
        }
    }
    if let Some(pm) = &m.not_ports {
        if !proto::has_ports(protocol) || port_matches(policy, pm, addr, protocol, port) {
            return false;
        }
    }
    true
}

fn port_matches(
    policy: &EndpointPolicy,
    pm: &PortMatch,
    addr: &IpAddr,
    protocol: u8,
    port: u16,
) -> bool {
    pm.ranges.iter().any(|r| r.contains(port))
        || pm
            .named
            .iter()
            .any(|&id| policy.port_set(id).is_some_and(|s| s.contains(addr, protocol, port)))
}

fn icmp_matches(m: &IcmpMatch, flow: &Flow) -> bool {
    let is_icmp = flow.protocol == proto::ICMP || flow.protocol == proto::ICMPV6;
    is_icmp
        && flow.icmp_type == Some(m.icmp_type)
        && m.code.is_none_or(|c| flow.icmp_code == Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{PortRange, Prefix};
    use crate::types::{
        EndMatch, IpSet, IpSetId, Policy, PortMatch, Provenance, Rule, Tier, TierDefault,
    };
    use std::sync::Arc;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rule(action: Action, matches: Match) -> Rule {
        Rule { action, matches, index: 0, part: 0 }
    }

    fn policy(name: &str, rules: Vec<Rule>) -> Policy {
        let source = Provenance { name: name.into(), kind: "test".into(), ..Default::default() };
        Policy { source, order: None, rules }
    }

    fn tier(name: &str, default_action: TierDefault, policies: Vec<Policy>) -> Tier {
        Tier { name: name.into(), order: None, default_action, policies }
    }

    fn endpoint(tiers: Vec<Tier>) -> EndpointPolicy {
        let set = IpSet {
            id: IpSetId(0),
            members: vec!["10.0.0.0/24".parse::<Prefix>().unwrap()],
            origin: "test".into(),
        };
        EndpointPolicy {
            endpoint: "ns/pod".into(),
            addresses: vec![ip("10.0.1.1")],
            direction: crate::types::Direction::Ingress,
            tiers: std::sync::Arc::new(tiers),
            ip_sets: vec![Arc::new(set)],
            port_sets: vec![],
        }
    }

    fn tcp(src: &str, port: u16) -> Flow {
        Flow::ports(ip(src), ip("10.0.1.1"), proto::TCP, 40000, port)
    }

    fn port_rule(action: Action, port: u16) -> Rule {
        let ports = PortMatch { ranges: vec![PortRange::single(port)], named: vec![] };
        let dst = EndMatch { ports: Some(ports), ..Default::default() };
        rule(action, Match { dst, ..Default::default() })
    }

    #[test]
    fn no_tiers_is_the_default_profile_allow() {
        let d = evaluate(&endpoint(vec![]), &tcp("1.2.3.4", 80));
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.trace, vec![TraceStep::NoPolicy]);
    }

    #[test]
    fn log_continues_and_first_deciding_rule_wins() {
        let p = policy(
            "p",
            vec![
                rule(Action::Log, Match::default()),
                port_rule(Action::Deny, 22),
                port_rule(Action::Allow, 22),
            ],
        );
        let d =
            evaluate(&endpoint(vec![tier("t", TierDefault::Deny, vec![p])]), &tcp("1.2.3.4", 22));
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(
            matches!(d.trace.as_slice(), [TraceStep::Log(_), TraceStep::Rule(h)] if h.action == Action::Deny)
        );
    }

    #[test]
    fn pass_skips_the_rest_of_the_tier() {
        let t1 = tier(
            "t1",
            TierDefault::Deny,
            vec![
                policy("a", vec![rule(Action::Pass, Match::default())]),
                policy("b", vec![rule(Action::Deny, Match::default())]),
            ],
        );
        let t2 =
            tier("t2", TierDefault::Deny, vec![policy("c", vec![port_rule(Action::Allow, 80)])]);
        let ep = endpoint(vec![t1, t2]);
        assert_eq!(evaluate(&ep, &tcp("1.2.3.4", 80)).verdict, Verdict::Allow);
        let d = evaluate(&ep, &tcp("1.2.3.4", 81));
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(
            matches!(d.trace.last(), Some(TraceStep::TierDefault { tier, .. }) if tier == "t2")
        );
    }

    #[test]
    fn tier_default_pass_and_pass_out_of_last_tier_allow() {
        let t = tier("t", TierDefault::Pass, vec![policy("p", vec![port_rule(Action::Deny, 22)])]);
        let d = evaluate(&endpoint(vec![t]), &tcp("1.2.3.4", 80));
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.trace.last(), Some(&TraceStep::ProfileAfterPass));
    }

    #[test]
    fn sets_and_negated_sets() {
        let src_in = EndMatch { in_sets: vec![IpSetId(0)], ..Default::default() };
        let src_not = EndMatch { not_in_sets: vec![IpSetId(0)], ..Default::default() };
        let ep = endpoint(vec![tier(
            "t",
            TierDefault::Deny,
            vec![
                policy("p", vec![rule(Action::Allow, Match { src: src_in, ..Default::default() })]),
                policy("q", vec![rule(Action::Log, Match { src: src_not, ..Default::default() })]),
            ],
        )]);
        assert_eq!(evaluate(&ep, &tcp("10.0.0.9", 1)).verdict, Verdict::Allow);
        let d = evaluate(&ep, &tcp("10.0.9.9", 1));
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(matches!(d.trace[0], TraceStep::Log(_)));
    }

    #[test]
    fn unknown_set_fails_closed_for_in_and_open_for_not_in() {
        let m_in = Match {
            src: EndMatch { in_sets: vec![IpSetId(7)], ..Default::default() },
            ..Default::default()
        };
        let m_not = Match {
            src: EndMatch { not_in_sets: vec![IpSetId(7)], ..Default::default() },
            ..Default::default()
        };
        let ep = endpoint(vec![]);
        assert!(!rule_matches(&ep, &m_in, &tcp("10.0.0.1", 1)));
        assert!(rule_matches(&ep, &m_not, &tcp("10.0.0.1", 1)));
    }

    #[test]
    fn ports_never_match_portless_protocols() {
        let ep = endpoint(vec![]);
        let r = port_rule(Action::Allow, 0);
        let icmp = Flow::icmp(ip("10.0.0.1"), ip("10.0.1.1"), 8, 0);
        assert!(!rule_matches(&ep, &r.matches, &icmp));
        let not_ports = PortMatch { ranges: vec![PortRange::single(22)], named: vec![] };
        let m = Match {
            dst: EndMatch { not_ports: Some(not_ports), ..Default::default() },
            ..Default::default()
        };
        assert!(!rule_matches(&ep, &m, &icmp));
        assert!(rule_matches(&ep, &m, &tcp("10.0.0.1", 80)));
    }

    #[test]
    fn icmp_type_code_and_ip_version() {
        let ep = endpoint(vec![]);
        let m =
            Match { icmp: Some(IcmpMatch { icmp_type: 3, code: Some(4) }), ..Default::default() };
        assert!(rule_matches(&ep, &m, &Flow::icmp(ip("10.0.0.1"), ip("10.0.1.1"), 3, 4)));
        assert!(!rule_matches(&ep, &m, &Flow::icmp(ip("10.0.0.1"), ip("10.0.1.1"), 3, 1)));
        assert!(!rule_matches(&ep, &m, &tcp("10.0.0.1", 3)));
        let v6 = Match { ip_version: Some(Family::V6), ..Default::default() };
        assert!(!rule_matches(&ep, &v6, &tcp("10.0.0.1", 3)));
        assert!(rule_matches(
            &ep,
            &v6,
            &Flow::ports(ip("fd00::1"), ip("fd00::2"), proto::TCP, 1, 2)
        ));
    }
}
