//! Lowering: the resolved per-endpoint policy -> IR (`polc_ir`), with every selector, network
//! set, ipBlock and named port turned into a shared, numbered IP or port set.
//!
//! Kubernetes NetworkPolicy rules become Allow rules (networking.k8s.io/v1 API reference,
//! NetworkPolicySpec/NetworkPolicyIngressRule): peers are OR'ed (one set), a rule with no peers
//! matches all peers, ports are OR'ed, so one rule becomes one IR rule per protocol; a port
//! without protocol is TCP (frontend default); named ports resolve against the destination pod.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use polc_ir::{
    Action, Direction, EndMatch, EndpointPolicy, Family, IcmpMatch, IpSet, IpSetId, Ir, Match,
    NamedPort, PortMatch, PortRange, PortSet, PortSetId, Prefix, Provenance, Rule, Tier,
    TierDefault,
};

use crate::frontend::{
    self as model, CalicoPolicy, CalicoRule, Cluster, EntityRule, K8sNetworkPolicy, K8sRule, Pod,
    PortSpec, TierDefaultAction,
};
use crate::resolve::{named_ports_of, prefix_of, AppliedTier, PeerSet, PolicyRef, Resolver};

/// Interns IP and port sets so identical sets (same origin and members) share one id, and
/// caches endpoint-independent peer resolution. Use one table per cluster (the cache is keyed
/// by the addresses of the cluster's rules).
#[derive(Debug, Default)]
pub struct SetTable {
    ip_index: BTreeMap<(String, Vec<Prefix>), IpSetId>,
    ip_sets: Vec<Arc<IpSet>>,
    port_index: BTreeMap<(String, Vec<NamedPort>), PortSetId>,
    port_sets: Vec<Arc<PortSet>>,
    /// Peer sets do not depend on the endpoint being lowered: resolve each rule side once.
    /// Keyed by the address of the model object (the cluster is borrowed for the whole run)
    /// and which field of it was resolved.
    peer_cache: BTreeMap<(usize, PeerField), Option<IpSetId>>,
    /// The same by what the peer set is a function of: rules written alike (the same
    /// selectors) share one resolution.
    peer_by_content: HashMap<PeerContent, Option<IpSetId>>,
    /// Named port (name, protocol) -> its set over every endpoint (also endpoint-independent).
    named_port_cache: BTreeMap<(String, Option<u8>), PortSetId>,
}

/// Everything a rule side's peer set depends on (resolution is a function of it).
#[derive(Debug, PartialEq, Eq, Hash)]
enum PeerContent {
    K8s(Vec<model::K8sPeer>, String),
    Calico(Box<CalicoPeer>),
}

/// What a Calico rule side's selector (or notSelector) set depends on.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CalicoPeer {
    field: PeerField,
    selector: Option<crate::selector::Selector>,
    not_selector: Option<crate::selector::Selector>,
    namespace_selector: Option<crate::selector::Selector>,
    service_accounts: Option<model::ServiceAccountMatch>,
    policy_ns: Option<String>,
}

/// Which peer description of a rule a cached set stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum PeerField {
    K8sPeers,
    CalicoSelector,
    CalicoNotSelector,
    Nets,
    NotNets,
}

impl SetTable {
    pub fn ip(&mut self, origin: String, members: Vec<Prefix>) -> IpSetId {
        let key = (origin, members);
        if let Some(id) = self.ip_index.get(&key) {
            return *id;
        }
        let id = IpSetId(self.ip_sets.len() as u32);
        let (origin, members) = key.clone();
        self.ip_sets.push(Arc::new(IpSet { id, members, origin }));
        self.ip_index.insert(key, id);
        id
    }

    pub fn port(&mut self, origin: String, members: Vec<NamedPort>) -> PortSetId {
        let key = (origin, members);
        if let Some(id) = self.port_index.get(&key) {
            return *id;
        }
        let id = PortSetId(self.port_sets.len() as u32);
        let (origin, members) = key.clone();
        self.port_sets.push(Arc::new(PortSet { id, members, origin }));
        self.port_index.insert(key, id);
        id
    }

    fn get_ip(&self, id: IpSetId) -> Option<Arc<IpSet>> {
        self.ip_sets.get(id.0 as usize).cloned()
    }

    fn get_port(&self, id: PortSetId) -> Option<Arc<PortSet>> {
        self.port_sets.get(id.0 as usize).cloned()
    }
}

/// The IR for every endpoint x direction of the cluster.
pub fn lower(cluster: &Cluster) -> Ir {
    let resolver = Resolver::new(cluster);
    let mut sets = SetTable::default();
    let mut memo = Memo::default();
    let mut endpoints: Vec<EndpointPolicy> = Vec::new();
    // Replicas: pods with the same namespace, labels, service account and container ports
    // get the same rules, so they are lowered once (unless the result holds a set of the
    // pod's own named ports, which names the pod's address). Index into `endpoints`.
    type Replica<'c> = (Direction, &'c str, &'c model::Labels, &'c str, &'c [model::ContainerPort]);
    let mut lowered: HashMap<Replica<'_>, usize> = HashMap::new();
    for pod in resolver.endpoints() {
        for dir in [Direction::Ingress, Direction::Egress] {
            let key = (dir, &*pod.namespace, &pod.labels, &*pod.service_account, &*pod.ports);
            if let Some(ep) = lowered.get(&key).and_then(|&i| endpoints.get(i)) {
                endpoints.push(EndpointPolicy {
                    endpoint: format!("{}/{}", pod.namespace, pod.name),
                    addresses: pod.ips.clone(),
                    ..ep.clone()
                });
                continue;
            }
            let (ep, pod_specific) = lower_endpoint_memo(&resolver, &mut sets, &mut memo, pod, dir);
            if !pod_specific {
                lowered.insert(key, endpoints.len());
            }
            endpoints.push(ep);
        }
    }
    Ir { endpoints, ip_sets: sets.ip_sets, port_sets: sets.port_sets }
}

/// What lowering already produced, by what the result depends on. A policy's lowered rules
/// depend on the endpoint only through the direction and the endpoint's container ports (own
/// named ports) -- peer sets are cached by rule in the [`SetTable`] -- unless a rule names
/// a set of the pod's own named ports, which is never memoised. Lowering again what is
/// memoised would add no set (its rule sides are all cached), so set ids are unchanged.
#[derive(Default)]
struct Memo<'c> {
    /// (direction, the applicable tiers as names and policy addresses, ports) -> the
    /// lowered tiers and their sets, shared by every endpoint with the same key.
    tiers: HashMap<TiersKey<'c>, Lowered>,
    /// (policy address, direction, ports) -> the lowered policy.
    policies: HashMap<(usize, Direction, &'c [model::ContainerPort]), polc_ir::Policy>,
}

type TiersKey<'c> = (Direction, Vec<(String, Vec<usize>)>, &'c [model::ContainerPort]);

/// One endpoint's lowered tiers and the sets they reference.
#[derive(Clone)]
struct Lowered {
    tiers: Arc<Vec<Tier>>,
    ip_sets: Vec<Arc<IpSet>>,
    port_sets: Vec<Arc<PortSet>>,
}

fn policy_address(p: &PolicyRef<'_>) -> usize {
    match p {
        PolicyRef::K8s(k) => *k as *const K8sNetworkPolicy as usize,
        PolicyRef::Calico(c) => *c as *const CalicoPolicy as usize,
    }
}

/// The IR for one endpoint in one direction. Set ids come from (and are shared through)
/// `sets`; the returned policy carries the sets it references.
pub fn lower_endpoint(
    resolver: &Resolver<'_>,
    sets: &mut SetTable,
    pod: &Pod,
    direction: Direction,
) -> EndpointPolicy {
    lower_endpoint_memo(resolver, sets, &mut Memo::default(), pod, direction).0
}

/// [`lower_endpoint`] through `memo`, and whether the result depends on the pod itself
/// beyond its namespace, labels, service account and ports (a set of its own named ports).
fn lower_endpoint_memo<'c>(
    resolver: &Resolver<'c>,
    sets: &mut SetTable,
    memo: &mut Memo<'c>,
    pod: &'c Pod,
    direction: Direction,
) -> (EndpointPolicy, bool) {
    let applicable = resolver.applicable(pod, direction);
    let key: TiersKey<'c> = (
        direction,
        applicable
            .iter()
            .map(|t| (t.name.clone(), t.policies.iter().map(policy_address).collect()))
            .collect(),
        &pod.ports,
    );
    let endpoint_policy = |l: Lowered| EndpointPolicy {
        endpoint: format!("{}/{}", pod.namespace, pod.name),
        addresses: pod.ips.clone(),
        direction,
        tiers: l.tiers,
        ip_sets: l.ip_sets,
        port_sets: l.port_sets,
    };
    if let Some(l) = memo.tiers.get(&key) {
        return (endpoint_policy(l.clone()), false);
    }
    let mut cx = Lowering { resolver, sets, pod, direction, pod_specific: false };
    let mut tiers = Vec::with_capacity(applicable.len());
    for t in &applicable {
        let mut policies = Vec::with_capacity(t.policies.len());
        for p in &t.policies {
            let pkey = (policy_address(p), direction, &*pod.ports);
            if let Some(lowered) = memo.policies.get(&pkey) {
                policies.push(lowered.clone());
                continue;
            }
            let before = cx.pod_specific;
            cx.pod_specific = false;
            let lowered = match p {
                PolicyRef::K8s(k) => cx.lower_k8s_policy(k),
                PolicyRef::Calico(c) => cx.lower_calico_policy(c),
            };
            if !cx.pod_specific {
                memo.policies.insert(pkey, lowered.clone());
            }
            cx.pod_specific |= before;
            policies.push(lowered);
        }
        tiers.push(cx.tier(t, policies));
    }
    let mut ip_ids = BTreeSet::new();
    let mut port_ids = BTreeSet::new();
    for rule in tiers.iter().flat_map(|t| &t.policies).flat_map(|p| &p.rules) {
        for end in [&rule.matches.src, &rule.matches.dst] {
            ip_ids.extend(end.in_sets.iter().chain(&end.not_in_sets).copied());
            for pm in end.ports.iter().chain(&end.not_ports) {
                port_ids.extend(pm.named.iter().copied());
            }
        }
    }
    let lowered = Lowered {
        tiers: Arc::new(tiers),
        ip_sets: ip_ids.into_iter().filter_map(|id| cx.sets.get_ip(id)).collect(),
        port_sets: port_ids.into_iter().filter_map(|id| cx.sets.get_port(id)).collect(),
    };
    let pod_specific = cx.pod_specific;
    if !pod_specific {
        memo.tiers.insert(key, lowered.clone());
    }
    (endpoint_policy(lowered), pod_specific)
}

struct Lowering<'r, 'a, 's> {
    resolver: &'r Resolver<'a>,
    sets: &'s mut SetTable,
    pod: &'r Pod,
    direction: Direction,
    /// Set when a rule resolved to a set naming this pod's own address (own named ports
    /// without a protocol): the result cannot be reused for a replica.
    pod_specific: bool,
}

fn provenance(
    kind: &str,
    source: &model::Source,
    namespace: Option<&str>,
    name: &str,
) -> Provenance {
    Provenance {
        file: source.file.display().to_string(),
        doc: source.doc,
        item: source.item,
        kind: kind.to_string(),
        namespace: namespace.map(str::to_string),
        name: name.to_string(),
    }
}

impl Lowering<'_, '_, '_> {
    /// The IR tier of `t` with its (already lowered) policies.
    fn tier(&self, t: &AppliedTier<'_>, policies: Vec<polc_ir::Policy>) -> Tier {
        Tier {
            name: t.name.clone(),
            order: t.order,
            default_action: match t.default_action {
                TierDefaultAction::Deny => TierDefault::Deny,
                TierDefaultAction::Pass => TierDefault::Pass,
            },
            policies,
        }
    }

    /// True if the endpoint is the destination of the traffic this direction governs.
    fn self_is_dst(&self) -> bool {
        self.direction == Direction::Ingress
    }

    // ---- Kubernetes ------------------------------------------------------------------------

    fn lower_k8s_policy(&mut self, p: &K8sNetworkPolicy) -> polc_ir::Policy {
        let rules_in = match self.direction {
            Direction::Ingress => &p.ingress,
            Direction::Egress => &p.egress,
        };
        let mut rules = Vec::new();
        for (index, r) in rules_in.iter().enumerate() {
            rules.extend(self.lower_k8s_rule(r, index, &p.namespace));
        }
        polc_ir::Policy {
            source: provenance("k8s/NetworkPolicy", &p.source, Some(&p.namespace), &p.name),
            order: Some(crate::resolve::K8S_POLICY_ORDER),
            rules,
        }
    }

    fn lower_k8s_rule(&mut self, r: &K8sRule, index: usize, ns: &str) -> Vec<Rule> {
        let peer = self.cached(
            r as *const K8sRule as usize,
            PeerField::K8sPeers,
            || Some(PeerContent::K8s(r.peers.clone(), ns.to_string())),
            |res| res.k8s_peers(&r.peers, ns),
        );
        let mut base = Match::default();
        if let Some(id) = peer {
            let end = if self.self_is_dst() { &mut base.src } else { &mut base.dst };
            end.in_sets.push(id);
        }
        if r.ports.is_empty() {
            return vec![Rule { action: Action::Allow, matches: base, index, part: 0 }];
        }
        // Group the OR'ed ports by protocol: protocol -> ports (None = every port).
        let mut by_proto: BTreeMap<u8, Option<PortMatch>> = BTreeMap::new();
        for port in &r.ports {
            let proto = port.protocol.0;
            let Some(spec) = &port.port else {
                by_proto.insert(proto, None);
                continue;
            };
            let mut one = PortMatch::default();
            self.add_port(&mut one, spec, self.self_is_dst(), Some(proto));
            if let Some(pm) = by_proto.entry(proto).or_insert_with(|| Some(PortMatch::default())) {
                pm.ranges.extend(one.ranges);
                pm.named.extend(one.named);
            }
        }
        by_proto
            .into_iter()
            .enumerate()
            .map(|(part, (proto, pm))| {
                let mut m = base.clone();
                m.protocol = Some(proto);
                m.dst.ports = pm.map(normalise_port_match);
                Rule { action: Action::Allow, matches: m, index, part }
            })
            .collect()
    }

    // ---- Calico ----------------------------------------------------------------------------

    fn lower_calico_policy(&mut self, p: &CalicoPolicy) -> polc_ir::Policy {
        let rules_in = match self.direction {
            Direction::Ingress => &p.ingress,
            Direction::Egress => &p.egress,
        };
        let rules = rules_in
            .iter()
            .enumerate()
            .map(|(index, r)| self.lower_calico_rule(r, index, p.namespace.as_deref()))
            .collect();
        let kind = if p.namespace.is_some() {
            "calico/NetworkPolicy"
        } else {
            "calico/GlobalNetworkPolicy"
        };
        polc_ir::Policy {
            source: provenance(kind, &p.source, p.namespace.as_deref(), &p.name),
            order: p.order,
            rules,
        }
    }

    fn lower_calico_rule(&mut self, r: &CalicoRule, index: usize, ns: Option<&str>) -> Rule {
        let protocol = r.protocol.map(|p| p.0);
        let matches = Match {
            protocol,
            not_protocol: r.not_protocol.map(|p| p.0),
            ip_version: match r.ip_version {
                Some(4) => Some(Family::V4),
                Some(6) => Some(Family::V6),
                _ => None,
            },
            src: self.lower_entity(&r.source, !self.self_is_dst(), protocol, ns),
            dst: self.lower_entity(&r.destination, self.self_is_dst(), protocol, ns),
            icmp: r.icmp.map(|m| IcmpMatch { icmp_type: m.icmp_type, code: m.code }),
            not_icmp: r.not_icmp.map(|m| IcmpMatch { icmp_type: m.icmp_type, code: m.code }),
        };
        let action = match r.action {
            model::Action::Allow => Action::Allow,
            model::Action::Deny => Action::Deny,
            model::Action::Log => Action::Log,
            model::Action::Pass => Action::Pass,
        };
        Rule { action, matches, index, part: 0 }
    }

    /// One side of a Calico rule. `is_self`: this side is the endpoint being programmed.
    fn lower_entity(
        &mut self,
        e: &EntityRule,
        is_self: bool,
        protocol: Option<u8>,
        ns: Option<&str>,
    ) -> EndMatch {
        let mut m = EndMatch::default();
        // The rule's identity: its sets do not depend on the endpoint, so every endpoint
        // after the first reuses them (this is most of lowering's time at 10k rules).
        let key = e as *const EntityRule as usize;
        let nets = |nets: &[model::Cidr]| {
            let mut members: Vec<Prefix> = nets.iter().filter_map(prefix_of).collect();
            members.sort();
            members.dedup();
            let names: Vec<String> = nets.iter().map(|c| c.to_string()).collect();
            Some(PeerSet { origin: format!("nets {}", names.join(" ")), members })
        };
        if !e.nets.is_empty() {
            m.in_sets.extend(self.cached(key, PeerField::Nets, || None, |_| nets(&e.nets)));
        }
        if !e.not_nets.is_empty() {
            let not_nets = self.cached(key, PeerField::NotNets, || None, |_| nets(&e.not_nets));
            m.not_in_sets.extend(not_nets);
        }
        let content = |field| {
            Some(PeerContent::Calico(Box::new(CalicoPeer {
                field,
                selector: e.selector.clone(),
                not_selector: e.not_selector.clone(),
                namespace_selector: e.namespace_selector.clone(),
                service_accounts: e.service_accounts.clone(),
                policy_ns: ns.map(str::to_string),
            })))
        };
        let sel = self.cached(
            key,
            PeerField::CalicoSelector,
            || content(PeerField::CalicoSelector),
            |res| res.calico_peers(e, ns),
        );
        m.in_sets.extend(sel);
        let not = self.cached(
            key,
            PeerField::CalicoNotSelector,
            || content(PeerField::CalicoNotSelector),
            |res| res.calico_not_peers(e, ns),
        );
        m.not_in_sets.extend(not);
        if !e.ports.is_empty() {
            m.ports = Some(self.port_match(&e.ports, is_self, protocol));
        }
        if !e.not_ports.is_empty() {
            m.not_ports = Some(self.port_match(&e.not_ports, is_self, protocol));
        }
        m
    }

    fn port_match(&mut self, specs: &[PortSpec], is_self: bool, protocol: Option<u8>) -> PortMatch {
        let mut pm = PortMatch::default();
        for s in specs {
            self.add_port(&mut pm, s, is_self, protocol);
        }
        normalise_port_match(pm)
    }

    // ---- shared ----------------------------------------------------------------------------

    /// Adds one port spec. A named port on this endpoint's side resolves to its own container
    /// port numbers (when the protocol is known, the number is exact); on the peer side it
    /// becomes a set of (ip, protocol, port) over every endpoint with that named port.
    fn add_port(
        &mut self,
        pm: &mut PortMatch,
        spec: &PortSpec,
        is_self: bool,
        protocol: Option<u8>,
    ) {
        match spec {
            PortSpec::Range { start, end } => {
                if let Some(r) = PortRange::new(*start, *end) {
                    pm.ranges.push(r);
                }
            }
            PortSpec::Named(name) => {
                let proto_txt = protocol.map(polc_ir::proto::name).unwrap_or_else(|| "any".into());
                if is_self {
                    let own = named_ports_of(self.pod, name, protocol);
                    if protocol.is_some() {
                        pm.ranges.extend(own.iter().map(|n| PortRange::single(n.port)));
                    } else if !own.is_empty() {
                        let origin = format!(
                            "named port {name}/{proto_txt} on {}/{}",
                            self.pod.namespace, self.pod.name
                        );
                        pm.named.push(self.sets.port(origin, own));
                        self.pod_specific = true;
                    }
                } else {
                    let key = (name.clone(), protocol);
                    let id = match self.sets.named_port_cache.get(&key) {
                        Some(id) => *id,
                        None => {
                            let members = self.resolver.named_port_members(name, protocol);
                            let origin = format!("named port {name}/{proto_txt} on any endpoint");
                            let id = self.sets.port(origin, members);
                            self.sets.named_port_cache.insert(key, id);
                            id
                        }
                    };
                    pm.named.push(id);
                }
            }
        }
    }

    /// The set for one peer description of a rule, resolved once per lowering run (and once
    /// per `content`, what the resolution depends on, if given).
    fn cached(
        &mut self,
        key: usize,
        field: PeerField,
        content: impl FnOnce() -> Option<PeerContent>,
        resolve: impl FnOnce(&Resolver<'_>) -> Option<PeerSet>,
    ) -> Option<IpSetId> {
        if let Some(hit) = self.sets.peer_cache.get(&(key, field)) {
            return *hit;
        }
        let content = content();
        let known = content.as_ref().and_then(|c| self.sets.peer_by_content.get(c));
        let id = match known {
            Some(id) => *id,
            None => resolve(self.resolver).map(|p| self.sets.ip(p.origin, p.members)),
        };
        if let Some(c) = content {
            self.sets.peer_by_content.insert(c, id);
        }
        self.sets.peer_cache.insert((key, field), id);
        id
    }
}

fn normalise_port_match(mut pm: PortMatch) -> PortMatch {
    pm.ranges = polc_ir::net::normalise_ranges(pm.ranges);
    pm.named.sort();
    pm.named.dedup();
    pm
}
