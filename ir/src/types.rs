//! The policy IR: per endpoint and direction, ordered tiers -> policies -> rules, each rule an
//! action plus a normalised match over protocol, addresses (via IP sets), ports and ICMP.

use std::net::IpAddr;
use std::sync::Arc;

use crate::net::{Family, PortRange, Prefix};

/// Which traffic a policy applies to, seen from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Traffic to the endpoint (the endpoint is the destination).
    Ingress,
    /// Traffic from the endpoint (the endpoint is the source).
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// A rule's action (Calico v3 `action`; Kubernetes rules are all `Allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
    /// Record the hit and continue with the next rule.
    Log,
    /// Skip the rest of this tier and continue with the next tier.
    Pass,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Log => "log",
            Action::Pass => "pass",
        }
    }
}

/// What a tier does when it applies to the endpoint but no rule decided (Calico Tier
/// `defaultAction`, default Deny).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TierDefault {
    Deny,
    Pass,
}

impl TierDefault {
    pub fn as_str(self) -> &'static str {
        match self {
            TierDefault::Deny => "deny",
            TierDefault::Pass => "pass",
        }
    }
}

/// Identifies an [`IpSet`] within one IR (shared by all endpoints that use it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpSetId(pub u32);

/// Identifies a [`PortSet`] within one IR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSetId(pub u32);

/// A set of prefixes an address is tested against: literal nets, ipBlocks, or the IPs of the
/// endpoints and network sets a selector matched. Members are sorted and deduplicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSet {
    pub id: IpSetId,
    pub members: Vec<Prefix>,
    /// Why the set exists, for humans: e.g. `selector app == 'db' in namespace shop`.
    pub origin: String,
}

impl IpSet {
    pub fn contains(&self, addr: &IpAddr) -> bool {
        self.members.iter().any(|p| p.contains(addr))
    }
}

/// One (address, protocol, port) of a named port resolved on a peer endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub addr: IpAddr,
    pub protocol: u8,
    pub port: u16,
}

/// A named port resolved against the endpoints it may refer to (e.g. `http` on every pod
/// a destination selector matches): the flow's (address, protocol, port) must be a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSet {
    pub id: PortSetId,
    pub members: Vec<NamedPort>,
    pub origin: String,
}

impl PortSet {
    pub fn contains(&self, addr: &IpAddr, protocol: u8, port: u16) -> bool {
        self.members.iter().any(|m| m.addr == *addr && m.protocol == protocol && m.port == port)
    }
}

/// A port condition: the port is in one of `ranges`, or (address, protocol, port) is in one of
/// the `named` sets. An empty `PortMatch` matches nothing (e.g. an unresolvable named port).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortMatch {
    /// Sorted, merged.
    pub ranges: Vec<PortRange>,
    pub named: Vec<PortSetId>,
}

/// The conditions on one end (source or destination) of a flow. All present conditions must
/// hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndMatch {
    /// The address must be in every one of these sets.
    pub in_sets: Vec<IpSetId>,
    /// The address must be in none of these sets.
    pub not_in_sets: Vec<IpSetId>,
    /// The port must match (only port-carrying protocols can).
    pub ports: Option<PortMatch>,
    /// The port must not match (only port-carrying protocols can satisfy this either).
    pub not_ports: Option<PortMatch>,
}

impl EndMatch {
    pub fn is_any(&self) -> bool {
        self.in_sets.is_empty()
            && self.not_in_sets.is_empty()
            && self.ports.is_none()
            && self.not_ports.is_none()
    }
}

/// ICMP type and optional code (Calico `icmp`/`notICMP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    pub icmp_type: u8,
    pub code: Option<u8>,
}

/// A rule's match: every present field must hold (a conjunction); absent = any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    pub protocol: Option<u8>,
    pub not_protocol: Option<u8>,
    pub ip_version: Option<Family>,
    pub src: EndMatch,
    pub dst: EndMatch,
    pub icmp: Option<IcmpMatch>,
    pub not_icmp: Option<IcmpMatch>,
}

/// Where a policy came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    pub file: String,
    /// 1-based document index in the file.
    pub doc: usize,
    /// 0-based index in a `kind: List` document's items.
    pub item: Option<usize>,
    /// `k8s/NetworkPolicy`, `calico/NetworkPolicy` or `calico/GlobalNetworkPolicy`.
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl Provenance {
    /// `ns/name` or `name`.
    pub fn qualified_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// One IR rule. A source rule may become several IR rules (e.g. a Kubernetes rule whose ports
/// mix protocols); they share `index` and differ in `part`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub action: Action,
    pub matches: Match,
    /// Index of the source rule in the policy's ingress/egress list.
    pub index: usize,
    pub part: usize,
}

/// A policy as it applies to one endpoint and direction: its rules for that direction.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub source: Provenance,
    /// Calico order (Kubernetes NetworkPolicy: 1000); `None` = infinite.
    pub order: Option<f64>,
    pub rules: Vec<Rule>,
}

/// A tier that applies to the endpoint (at least one of its policies selects it).
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    pub name: String,
    /// `None` = after all ordered tiers.
    pub order: Option<f64>,
    pub default_action: TierDefault,
    /// In evaluation order.
    pub policies: Vec<Policy>,
}

/// Everything needed to decide one direction of traffic for one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointPolicy {
    /// `namespace/pod`.
    pub endpoint: String,
    pub addresses: Vec<IpAddr>,
    pub direction: Direction,
    /// In evaluation order; empty = no policy selects the endpoint (default profile: allow).
    /// Shared: replicas of a workload have the same tiers (lowered once).
    pub tiers: Arc<Vec<Tier>>,
    /// The sets the rules refer to, sorted by id.
    pub ip_sets: Vec<Arc<IpSet>>,
    pub port_sets: Vec<Arc<PortSet>>,
}

impl EndpointPolicy {
    pub fn ip_set(&self, id: IpSetId) -> Option<&IpSet> {
        self.ip_sets
            .binary_search_by_key(&id, |s| s.id)
            .ok()
            .and_then(|i| self.ip_sets.get(i))
            .map(|s| &**s)
    }
    pub fn port_set(&self, id: PortSetId) -> Option<&PortSet> {
        self.port_sets
            .binary_search_by_key(&id, |s| s.id)
            .ok()
            .and_then(|i| self.port_sets.get(i))
            .map(|s| &**s)
    }
}

/// The IR of a whole cluster: every endpoint x direction, and the sets they share.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ir {
    /// Sorted by (endpoint, direction).
    pub endpoints: Vec<EndpointPolicy>,
    /// All sets, sorted by id (each endpoint holds the ones it uses).
    pub ip_sets: Vec<Arc<IpSet>>,
    pub port_sets: Vec<Arc<PortSet>>,
}

impl Ir {
    pub fn endpoint(&self, name: &str, direction: Direction) -> Option<&EndpointPolicy> {
        self.endpoints.iter().find(|e| e.endpoint == name && e.direction == direction)
    }
}
