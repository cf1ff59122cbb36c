//! The typed cluster model the frontend produces: every object already validated, with the
//! place it came from. Defaults that are pure data (protocol TCP, service account "default",
//! tier "default") are filled in here; defaults that are policy semantics (Calico `types`,
//! K8s `policyTypes`) are kept as written (`Option`) and decided by resolution.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::selector::Selector;

/// Labels of an object (sorted, so output is deterministic).
pub type Labels = BTreeMap<String, String>;

/// Where an object was read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file.
    pub doc: usize,
    /// 0-based index in the `items` of a `kind: List` document.
    pub item: Option<usize>,
    /// The object's kind, e.g. `NetworkPolicy`, `GlobalNetworkPolicy`.
    pub kind: String,
    /// `namespace/name` for namespaced objects, `name` otherwise.
    pub name: String,
}

impl fmt::Display for Source {
    /// `testdata/x.yaml doc 2 (NetworkPolicy prod/allow-web)`, with ` item N` for List items.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} doc {}", self.file.display(), self.doc)?;
        if let Some(item) = self.item {
            write!(f, " item {item}")?;
        }
        write!(f, " ({} {})", self.kind, self.name)
    }
}

/// Everything read from the `-f` inputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cluster {
    /// Declared namespaces, plus implicit ones (named only by another object), sorted by name.
    pub namespaces: Vec<Namespace>,
    /// Pods that are endpoints (hostNetwork pods are left out, with a note).
    pub pods: Vec<Pod>,
    pub service_accounts: Vec<ServiceAccount>,
    pub k8s_policies: Vec<K8sNetworkPolicy>,
    /// Calico NetworkPolicy (`namespace: Some`) and GlobalNetworkPolicy (`namespace: None`).
    pub calico_policies: Vec<CalicoPolicy>,
    pub tiers: Vec<Tier>,
    /// Calico NetworkSet (`namespace: Some`) and GlobalNetworkSet (`namespace: None`).
    pub network_sets: Vec<NetworkSet>,
    /// v1 Services with a cluster IP (headless and ExternalName ones are left out, with a note).
    pub services: Vec<Service>,
    /// discovery.k8s.io/v1 EndpointSlices of IPv4/IPv6 addresses (FQDN ones are left out).
    pub endpoint_slices: Vec<EndpointSlice>,
    /// hostNetwork pods, `namespace/name`: not endpoints (their traffic is the node's).
    pub host_network_pods: Vec<String>,
    /// Informational: skipped documents/kinds, hostNetwork pods, implicit namespaces.
    pub notes: Vec<String>,
    /// What polc read but does not enforce, with location: `http`/`services` in Deny and Log
    /// rules, host-endpoint-only (doNotTrack/preDNAT) policies it skipped, skipped kinds that
    /// carry policy (counted per kind), directory entries it could not read.
    pub warnings: Vec<String>,
}

/// A v1 Namespace. Every namespace carries the automatic label
/// `kubernetes.io/metadata.name: <name>` as the API server adds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// For an implicit namespace: the first object that named it.
    pub source: Source,
    pub name: String,
    pub labels: Labels,
    /// True if no Namespace object was given and it exists because something lives in it.
    pub implicit: bool,
}

/// A v1 Pod that is a policy endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub source: Source,
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `spec.serviceAccountName`, "default" when absent.
    pub service_account: String,
    /// Ports of `spec.containers[]` (init containers are not included: K8s named-port
    /// resolution for NetworkPolicy looks at the running containers).
    pub ports: Vec<ContainerPort>,
    /// `status.podIPs[].ip` (or `status.podIP`), IPv4 and/or IPv6, deduplicated, in order.
    /// Empty for a pod not yet scheduled/running.
    pub ips: Vec<IpAddr>,
}

/// One `containers[].ports[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    /// Default TCP.
    pub protocol: Protocol,
}

/// A v1 ServiceAccount (its labels are matched by Calico `serviceAccounts.selector`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub source: Source,
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
}

/// An IP protocol number (TCP 6, UDP 17, ICMP 1, ICMPv6 58, SCTP 132, UDPLite 136, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(pub u8);

impl Protocol {
    pub const ICMP: Protocol = Protocol(1);
    pub const TCP: Protocol = Protocol(6);
    pub const UDP: Protocol = Protocol(17);
    pub const ICMPV6: Protocol = Protocol(58);
    pub const SCTP: Protocol = Protocol(132);
    pub const UDPLITE: Protocol = Protocol(136);

    /// The protocol number.
    pub fn number(self) -> u8 {
        self.0
    }

    /// Calico's name for the protocol, if it has one.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Protocol::ICMP => Some("ICMP"),
            Protocol::TCP => Some("TCP"),
            Protocol::UDP => Some("UDP"),
            Protocol::ICMPV6 => Some("ICMPv6"),
            Protocol::SCTP => Some("SCTP"),
            Protocol::UDPLITE => Some("UDPLite"),
            _ => None,
        }
    }

    /// Whether Calico allows `ports` with this protocol: TCP, UDP and SCTP
    /// (libcalico-go `numorstring.Protocol.SupportsPorts`; UDPLite is not among them).
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::TCP | Protocol::UDP | Protocol::SCTP)
    }

    /// Whether the protocol is ICMP or ICMPv6.
    pub fn is_icmp(self) -> bool {
        matches!(self, Protocol::ICMP | Protocol::ICMPV6)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

/// An IP network. The address has its host bits cleared ("10.0.0.1/24" is kept as
/// 10.0.0.0/24, as Calico and Kubernetes accept it); a bare address is /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    /// 4 or 6.
    pub fn family(&self) -> u8 {
        match self.addr {
            IpAddr::V4(_) => 4,
            IpAddr::V6(_) => 6,
        }
    }

    /// Whether `ip` is inside this network (false across families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A port or port range, or a named port (resolved against the destination pod's ports).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortSpec {
    /// `start..=end`; a single port has `start == end`. Always `1 <= start <= end`.
    Range {
        start: u16,
        end: u16,
    },
    Named(String),
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Range { start, end } if start == end => write!(f, "{start}"),
            PortSpec::Range { start, end } => write!(f, "{start}:{end}"),
            PortSpec::Named(name) => f.write_str(name),
        }
    }
}

/// Policy direction, as in K8s `policyTypes` and Calico `types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyType {
    Ingress,
    Egress,
}

// ---------------------------------------------------------------------------------------------
// Kubernetes NetworkPolicy
// ---------------------------------------------------------------------------------------------

/// A Kubernetes label selector (`matchLabels` AND all `matchExpressions`). Empty matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

impl LabelSelector {
    /// Whether the selector matches an object with these labels.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|req| req.matches(labels))
    }

    /// True for `{}`: selects everything.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

/// One `matchExpressions` entry. Validated: In/NotIn have values, Exists/DoesNotExist none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: LabelSelectorOperator,
    pub values: Vec<String>,
}

impl LabelSelectorRequirement {
    /// Kubernetes semantics: `NotIn` and `DoesNotExist` match objects without the key.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            LabelSelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            LabelSelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            LabelSelectorOperator::Exists => value.is_some(),
            LabelSelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LabelSelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// A networking.k8s.io/v1 NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sNetworkPolicy {
    pub source: Source,
    pub namespace: String,
    pub name: String,
    /// Pods (in `namespace`) the policy applies to.
    pub pod_selector: LabelSelector,
    /// As written. K8s default when `None`: Ingress, plus Egress if `egress` is non-empty.
    pub policy_types: Option<Vec<PolicyType>>,
    pub ingress: Vec<K8sRule>,
    pub egress: Vec<K8sRule>,
}

impl K8sNetworkPolicy {
    /// `policyTypes` with the Kubernetes default applied.
    pub fn effective_policy_types(&self) -> Vec<PolicyType> {
        match &self.policy_types {
            Some(types) => types.clone(),
            None if self.egress.is_empty() => vec![PolicyType::Ingress],
            None => vec![PolicyType::Ingress, PolicyType::Egress],
        }
    }
}

/// One ingress (`from`) or egress (`to`) rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sRule {
    /// `from` / `to`; empty (or absent) = any peer. Peers are OR'ed.
    pub peers: Vec<K8sPeer>,
    /// Empty (or absent) = any port. OR'ed.
    pub ports: Vec<K8sPort>,
}

/// One `from[]` / `to[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum K8sPeer {
    /// At least one selector is set. Only `pod_selector`: pods in the policy's namespace;
    /// only `namespace_selector`: all pods in matching namespaces; both: AND.
    Pods {
        namespace_selector: Option<LabelSelector>,
        pod_selector: Option<LabelSelector>,
    },
    IpBlock(IpBlock),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpBlock {
    pub cidr: Cidr,
    /// Validated: same family as `cidr` and inside it.
    pub except: Vec<Cidr>,
}

/// One `ports[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sPort {
    /// Default TCP.
    pub protocol: Protocol,
    /// `None` = all ports of the protocol. A number with `endPort` becomes a Range.
    pub port: Option<PortSpec>,
}

// ---------------------------------------------------------------------------------------------
// Calico
// ---------------------------------------------------------------------------------------------

/// A projectcalico.org/v3 NetworkPolicy (`namespace: Some`) or GlobalNetworkPolicy.
#[derive(Debug, Clone, PartialEq)]
pub struct CalicoPolicy {
    pub source: Source,
    /// `None` for GlobalNetworkPolicy.
    pub namespace: Option<String>,
    /// `metadata.name` as given (may or may not carry a `tier.` prefix).
    pub name: String,
    /// `spec.tier`, "default" when absent.
    pub tier: String,
    /// `None` = infinite (after all ordered policies).
    pub order: Option<f64>,
    /// `None` when absent or empty: `all()`.
    pub selector: Option<Selector>,
    /// GNP only: endpoints in namespaces matching it. `None` = no namespace restriction.
    pub namespace_selector: Option<Selector>,
    /// Endpoints whose service account matches. `None` = no restriction.
    pub service_account_selector: Option<Selector>,
    /// As written; Calico's default applies when `None`.
    pub types: Option<Vec<PolicyType>>,
    pub ingress: Vec<CalicoRule>,
    pub egress: Vec<CalicoRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
    Log,
    Pass,
}

/// One Calico rule. All set match fields are AND'ed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalicoRule {
    pub action: Action,
    /// 4 or 6 when set.
    pub ip_version: Option<u8>,
    pub protocol: Option<Protocol>,
    pub not_protocol: Option<Protocol>,
    /// Only with protocol ICMP/ICMPv6.
    pub icmp: Option<IcmpMatch>,
    pub not_icmp: Option<IcmpMatch>,
    pub source: EntityRule,
    pub destination: EntityRule,
}

/// ICMP type, and optionally code (a code needs a type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    pub icmp_type: u8,
    pub code: Option<u8>,
}

/// A rule's `source` or `destination`. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntityRule {
    /// Any of these (empty = any address).
    pub nets: Vec<Cidr>,
    /// None of these.
    pub not_nets: Vec<Cidr>,
    pub selector: Option<Selector>,
    pub not_selector: Option<Selector>,
    pub namespace_selector: Option<Selector>,
    /// Numeric ports only with protocol TCP/UDP/SCTP. Named ports may also appear in a rule
    /// without a protocol (as Calico allows): they then match the named port's own protocol.
    pub ports: Vec<PortSpec>,
    pub not_ports: Vec<PortSpec>,
    pub service_accounts: Option<ServiceAccountMatch>,
}

/// `serviceAccounts`: endpoints whose service account is in `names` (if non-empty) AND matches
/// `selector` (if set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ServiceAccountMatch {
    pub names: Vec<String>,
    pub selector: Option<Selector>,
}

/// A projectcalico.org/v3 Tier.
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    pub source: Source,
    pub name: String,
    /// `None` = infinite.
    pub order: Option<f64>,
    /// What happens when the tier's policies select an endpoint but none decides. Default Deny.
    pub default_action: TierDefaultAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TierDefaultAction {
    Deny,
    Pass,
}

/// A Calico NetworkSet (`namespace: Some`) or GlobalNetworkSet: labelled nets that selectors
/// can match like endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSet {
    pub source: Source,
    pub namespace: Option<String>,
    pub name: String,
    pub labels: Labels,
    pub nets: Vec<Cidr>,
}

/// A v1 Service that has a cluster IP: the frontends service NAT translates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub source: Source,
    pub namespace: String,
    pub name: String,
    /// `spec.selector`: the pods that back it when no EndpointSlice names the service.
    /// `None` when absent (the service's endpoints are managed by hand).
    pub selector: Option<Labels>,
    /// `spec.clusterIPs` (or `spec.clusterIP`), at most one per family, in order.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP`: the timeout in seconds (default 10800); `None` otherwise.
    pub affinity_timeout_s: Option<u32>,
    /// `externalTrafficPolicy: Local` (recorded; polc translates cluster IPs only).
    pub external_traffic_local: bool,
}

/// One `spec.ports[]` entry of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Required by the API server when the service has more than one port.
    pub name: Option<String>,
    /// Default TCP.
    pub protocol: Protocol,
    pub port: u16,
    /// `targetPort`: the backend port; defaults to `port`.
    pub target: TargetPort,
}

/// A Service's `targetPort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, looked up in each backing pod.
    Named(String),
}

/// A discovery.k8s.io/v1 EndpointSlice with IPv4 or IPv6 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    pub source: Source,
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label: the service it belongs to.
    pub service: Option<String>,
    pub endpoints: Vec<SliceEndpoint>,
    pub ports: Vec<SlicePort>,
}

/// One `endpoints[]` entry of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready`; absent means ready (as the API documents).
    pub ready: bool,
    /// `conditions.serving`; absent means the value of `ready`.
    pub serving: bool,
    /// `conditions.terminating`; absent means false.
    pub terminating: bool,
}

/// One `ports[]` entry of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    /// Matches the Service port of the same name ("" and absent are the same).
    pub name: Option<String>,
    /// Default TCP.
    pub protocol: Protocol,
    /// The backend port; absent means "all ports", which no ClusterIP port can use.
    pub port: Option<u16>,
}
