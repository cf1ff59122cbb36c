//! Resolution: which policies apply to an endpoint (grouped into ordered tiers), and which
//! addresses and named ports a rule's peers stand for, evaluated against the cluster model.
//!
//! Sources for the semantics (also in docs/semantics.md):
//! - Calico tiers: docs.tigera.io/calico/latest/reference/resources/tier ("Tiers are sorted by
//!   their order - smallest number first"; no order = last; `defaultAction` Deny or Pass); the
//!   default tier's order is `DefaultTierOrder = 1_000_000` (libcalico-go api/pkg/apis/
//!   projectcalico/v3/tier.go); same-order tiers by name (same file).
//! - Calico policy order: reference/resources/networkpolicy ("lowest value first"; no order =
//!   infinite); Kubernetes NetworkPolicy is converted to order 1000 in the default tier with
//!   the name prefix `knp.default.` (Calico's k8s conversion), which we use to break ties.
//! - Calico `types` default (reference/resources/networkpolicy, "Get started with Calico
//!   network policy"): no egress rules -> [Ingress]; egress rules but no ingress rules ->
//!   [Egress]; both -> [Ingress, Egress].
//! - Automatic labels (network-policy/get-started/calico-policy/calico-labels): namespaces
//!   carry `projectcalico.org/name` (and Kubernetes' `kubernetes.io/metadata.name`, added by the
//!   frontend); service accounts carry `projectcalico.org/name`; workload endpoints carry
//!   `projectcalico.org/namespace`, `projectcalico.org/orchestrator: k8s` and
//!   `projectcalico.org/serviceaccount` (libcalico-go apiv3 LabelNamespace/LabelOrchestrator/
//!   LabelServiceAccount).
//! - Rule selector scoping (calico-labels page): in a namespaced policy an empty
//!   namespaceSelector means "the policy's namespace"; in a GlobalNetworkPolicy it means any
//!   namespace and non-namespaced resources. `global()` selects non-namespaced network sets.

use std::borrow::Cow;
use std::collections::BTreeMap;

use polc_ir::{Direction, NamedPort, Prefix};

use crate::frontend::{
    CalicoPolicy, Cidr, Cluster, EntityRule, K8sNetworkPolicy, K8sPeer, LabelSelector,
    LabelSelectorOperator, Labels, NetworkSet, Pod, PolicyType, TierDefaultAction,
};
use crate::selector::{GlobalLabels, Selector};

/// The tier every policy without `spec.tier` (and every Kubernetes NetworkPolicy) is in.
pub const DEFAULT_TIER: &str = "default";
/// Calico's order for the default tier (apiv3 `DefaultTierOrder`).
pub const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;
/// The Calico order a Kubernetes NetworkPolicy behaves as.
pub const K8S_POLICY_ORDER: f64 = 1000.0;
/// Calico's name prefix for converted Kubernetes NetworkPolicies (used for tie-breaking).
pub const K8S_POLICY_PREFIX: &str = "knp.default.";

pub const LABEL_CALICO_NAME: &str = "projectcalico.org/name";
pub const LABEL_CALICO_NAMESPACE: &str = "projectcalico.org/namespace";
pub const LABEL_CALICO_ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
pub const LABEL_CALICO_SERVICE_ACCOUNT: &str = "projectcalico.org/serviceaccount";

/// A policy of either flavour.
#[derive(Debug, Clone, Copy)]
pub enum PolicyRef<'a> {
    K8s(&'a K8sNetworkPolicy),
    Calico(&'a CalicoPolicy),
}

impl PolicyRef<'_> {
    /// Calico order: K8s policies are 1000, missing = infinite (`None`).
    pub fn order(&self) -> Option<f64> {
        match self {
            PolicyRef::K8s(_) => Some(K8S_POLICY_ORDER),
            PolicyRef::Calico(p) => p.order,
        }
    }
    /// The name used to break order ties: `ns/name` (K8s: `ns/knp.default.name`) or `name`.
    pub fn sort_name(&self) -> String {
        match self {
            PolicyRef::K8s(p) => format!("{}/{K8S_POLICY_PREFIX}{}", p.namespace, p.name),
            PolicyRef::Calico(p) => match &p.namespace {
                Some(ns) => format!("{ns}/{}", p.name),
                None => p.name.clone(),
            },
        }
    }
}

/// A tier that applies to an endpoint in one direction, with its policies in order.
#[derive(Debug, Clone)]
pub struct AppliedTier<'a> {
    pub name: String,
    pub order: Option<f64>,
    pub default_action: TierDefaultAction,
    pub policies: Vec<PolicyRef<'a>>,
}

/// An endpoint's or network set's addresses that a peer description selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSet {
    /// Sorted, deduplicated.
    pub members: Vec<Prefix>,
    /// For humans, e.g. `selector app == 'db' in namespace shop`.
    pub origin: String,
}

/// Pod labels as Calico sees them: the pod's labels plus the automatic ones.
struct EndpointLabels<'a> {
    pod: &'a Pod,
    orchestrator: &'static str,
}

impl crate::selector::Labels for EndpointLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        match key {
            LABEL_CALICO_NAMESPACE => Some(&self.pod.namespace),
            LABEL_CALICO_ORCHESTRATOR => Some(self.orchestrator),
            LABEL_CALICO_SERVICE_ACCOUNT => Some(&self.pod.service_account),
            _ => self.pod.labels.get(key).map(String::as_str),
        }
    }
}

fn endpoint_labels(pod: &Pod) -> EndpointLabels<'_> {
    EndpointLabels { pod, orchestrator: "k8s" }
}

/// Network set labels: its own plus `projectcalico.org/namespace` for namespaced sets.
struct NetworkSetLabels<'a>(&'a NetworkSet);

impl crate::selector::Labels for NetworkSetLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        match (key, &self.0.namespace) {
            (LABEL_CALICO_NAMESPACE, Some(ns)) => Some(ns),
            _ => self.0.labels.get(key).map(String::as_str),
        }
    }
    fn is_global(&self) -> bool {
        self.0.namespace.is_none()
    }
}

/// Prefix from the model's CIDR (validated by the frontend, so `None` cannot happen in
/// practice; a bad one is dropped rather than panicking).
pub fn prefix_of(c: &Cidr) -> Option<Prefix> {
    Prefix::new(c.addr, c.prefix_len)
}

/// The Kubernetes/Calico view of the cluster that resolution needs, built once.
pub struct Resolver<'a> {
    pub cluster: &'a Cluster,
    /// Namespace name -> labels (incl. `kubernetes.io/metadata.name` and
    /// `projectcalico.org/name`).
    ns_labels: BTreeMap<&'a str, Labels>,
    /// (namespace, service account) -> labels (incl. `projectcalico.org/name`).
    sa_labels: BTreeMap<(&'a str, &'a str), Labels>,
    /// Endpoints: pods with at least one IP, sorted by `ns/name`.
    endpoints: Vec<&'a Pod>,
}

impl<'a> Resolver<'a> {
    pub fn new(cluster: &'a Cluster) -> Resolver<'a> {
        let mut ns_labels = BTreeMap::new();
        for ns in &cluster.namespaces {
            let mut labels = ns.labels.clone();
            labels
                .entry("kubernetes.io/metadata.name".to_string())
                .or_insert_with(|| ns.name.clone());
            labels.insert(LABEL_CALICO_NAME.to_string(), ns.name.clone());
            ns_labels.insert(ns.name.as_str(), labels);
        }
        let mut sa_labels = BTreeMap::new();
        for sa in &cluster.service_accounts {
            let mut labels = sa.labels.clone();
            labels.insert(LABEL_CALICO_NAME.to_string(), sa.name.clone());
            sa_labels.insert((sa.namespace.as_str(), sa.name.as_str()), labels);
        }
        let mut endpoints: Vec<&Pod> = cluster.pods.iter().filter(|p| !p.ips.is_empty()).collect();
        endpoints.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Resolver { cluster, ns_labels, sa_labels, endpoints }
    }

    /// Pods with at least one IP, sorted by `namespace/name`.
    pub fn endpoints(&self) -> &[&'a Pod] {
        &self.endpoints
    }

    /// The namespace's labels; a namespace nobody declared still has its automatic labels.
    fn namespace_labels<'s>(&'s self, ns: &'s str) -> Cow<'s, Labels> {
        match self.ns_labels.get(ns) {
            Some(l) => Cow::Borrowed(l),
            None => Cow::Owned(Labels::from([
                ("kubernetes.io/metadata.name".to_string(), ns.to_string()),
                (LABEL_CALICO_NAME.to_string(), ns.to_string()),
            ])),
        }
    }

    /// A service account's labels; an undeclared one has only `projectcalico.org/name`.
    fn service_account_labels<'s>(&'s self, ns: &'s str, name: &'s str) -> Cow<'s, Labels> {
        match self.sa_labels.get(&(ns, name)) {
            Some(l) => Cow::Borrowed(l),
            None => Cow::Owned(Labels::from([(LABEL_CALICO_NAME.to_string(), name.to_string())])),
        }
    }

    /// Whether a Calico policy selects `pod`.
    fn calico_selects(&self, p: &CalicoPolicy, pod: &Pod) -> bool {
        let ns_ok = match (&p.namespace, &p.namespace_selector) {
            (Some(ns), _) => *ns == pod.namespace,
            (None, Some(sel)) => sel.matches(&*self.namespace_labels(&pod.namespace)),
            (None, None) => true,
        };
        let sel_ok = p.selector.as_ref().is_none_or(|s| s.matches(&endpoint_labels(pod)));
        let sa_ok = p.service_account_selector.as_ref().is_none_or(|s| {
            s.matches(&*self.service_account_labels(&pod.namespace, &pod.service_account))
        });
        ns_ok && sel_ok && sa_ok
    }

    /// The policies that apply to `pod` in `direction`, grouped into tiers, all in evaluation
    /// order. Empty if none applies (then the default profile allows).
    pub fn applicable(&self, pod: &Pod, direction: Direction) -> Vec<AppliedTier<'a>> {
        let want = match direction {
            Direction::Ingress => PolicyType::Ingress,
            Direction::Egress => PolicyType::Egress,
        };
        let mut by_tier: BTreeMap<String, Vec<PolicyRef<'a>>> = BTreeMap::new();
        for p in &self.cluster.k8s_policies {
            if p.namespace == pod.namespace
                && p.pod_selector.matches(&pod.labels)
                && p.effective_policy_types().contains(&want)
            {
                by_tier.entry(DEFAULT_TIER.to_string()).or_default().push(PolicyRef::K8s(p));
            }
        }
        for p in &self.cluster.calico_policies {
            if calico_types(p).contains(&want) && self.calico_selects(p, pod) {
                by_tier.entry(p.tier.clone()).or_default().push(PolicyRef::Calico(p));
            }
        }
        let mut tiers: Vec<AppliedTier<'a>> = by_tier
            .into_iter()
            .map(|(name, mut policies)| {
                policies.sort_by(|a, b| {
                    cmp_order(a.order(), b.order()).then_with(|| a.sort_name().cmp(&b.sort_name()))
                });
                let (order, default_action) = self.tier_settings(&name);
                AppliedTier { name, order, default_action, policies }
            })
            .collect();
        tiers.sort_by(|a, b| cmp_order(a.order, b.order).then_with(|| a.name.cmp(&b.name)));
        tiers
    }

    /// A tier's order and default action; the `default` tier exists implicitly.
    fn tier_settings(&self, name: &str) -> (Option<f64>, TierDefaultAction) {
        match self.cluster.tiers.iter().find(|t| t.name == name) {
            // Calico always gives the default tier its order; a dump that omits it means it.
            Some(t) if t.name == DEFAULT_TIER => {
                (t.order.or(Some(DEFAULT_TIER_ORDER)), t.default_action)
            }
            Some(t) => (t.order, t.default_action),
            None if name == DEFAULT_TIER => (Some(DEFAULT_TIER_ORDER), TierDefaultAction::Deny),
            // A policy naming an undeclared tier: Calico would refuse it; we treat the tier as
            // unordered (last) with the default Deny rather than fail the whole cluster.
            None => (None, TierDefaultAction::Deny),
        }
    }

    /// The addresses a Calico rule side must be in: the endpoints (and network sets) matching
    /// `selector`, `namespaceSelector` and `serviceAccounts` together, scoped to `policy_ns`
    /// for a namespaced policy without a namespaceSelector. A namespaced policy's side with
    /// only a `notSelector` still requires its own namespace (libcalico-go adds the namespace
    /// selector whenever a selector or notSelector is present; Dikastes `computeNamespaceMatch`
    /// does the same). `None`: the side places no positive endpoint constraint (any address).
    pub fn calico_peers(&self, e: &EntityRule, policy_ns: Option<&str>) -> Option<PeerSet> {
        let scoped_not = e.not_selector.is_some() && policy_ns.is_some();
        if e.selector.is_none()
            && e.namespace_selector.is_none()
            && e.service_accounts.is_none()
            && !scoped_not
        {
            return None;
        }
        Some(self.select_peers(e.selector.as_ref(), e, e.service_accounts.is_some(), policy_ns))
    }

    /// The addresses a Calico rule side's `notSelector` excludes (same scope as the positive
    /// side; it only matters within it). `None` without a notSelector.
    pub fn calico_not_peers(&self, e: &EntityRule, policy_ns: Option<&str>) -> Option<PeerSet> {
        let not_sel = e.not_selector.as_ref()?;
        Some(self.select_peers(Some(not_sel), e, false, policy_ns))
    }

    /// Endpoints and network sets in scope that match `selector` (and the service accounts).
    fn select_peers(
        &self,
        selector: Option<&Selector>,
        e: &EntityRule,
        with_service_accounts: bool,
        policy_ns: Option<&str>,
    ) -> PeerSet {
        let sa = if with_service_accounts { e.service_accounts.as_ref() } else { None };
        let mut members = Vec::new();
        for pod in &self.endpoints {
            let ns_ok = match (&e.namespace_selector, policy_ns) {
                (Some(nsel), _) => nsel.matches(&*self.namespace_labels(&pod.namespace)),
                (None, Some(ns)) => pod.namespace == ns,
                (None, None) => true,
            };
            let sel_ok = selector.is_none_or(|s| s.matches(&endpoint_labels(pod)));
            let sa_ok = sa.is_none_or(|m| {
                (m.names.is_empty() || m.names.contains(&pod.service_account))
                    && m.selector.as_ref().is_none_or(|s| {
                        s.matches(
                            &*self.service_account_labels(&pod.namespace, &pod.service_account),
                        )
                    })
            });
            if ns_ok && sel_ok && sa_ok {
                members.extend(pod.ips.iter().map(|ip| Prefix::host(*ip)));
            }
        }
        // Network sets have no service account, so serviceAccounts excludes them.
        if sa.is_none() {
            for set in &self.cluster.network_sets {
                let labels = NetworkSetLabels(set);
                let scope_ok = match (&set.namespace, &e.namespace_selector, policy_ns) {
                    (Some(ns), Some(nsel), _) => nsel.matches(&*self.namespace_labels(ns)),
                    (Some(ns), None, Some(pns)) => ns == pns,
                    (Some(_), None, None) => true,
                    // A global set is in scope of a namespaceSelector only through global().
                    (None, Some(nsel), _) => {
                        nsel.uses_global() && nsel.matches(&GlobalLabels(&Labels::new()))
                    }
                    (None, None, Some(_)) => false,
                    (None, None, None) => true,
                };
                if scope_ok && selector.is_none_or(|s| s.matches(&labels)) {
                    members.extend(set.nets.iter().filter_map(prefix_of));
                }
            }
        }
        members.sort();
        members.dedup();
        PeerSet { members, origin: describe_calico_peer(selector, e, sa.is_some(), policy_ns) }
    }

    /// The addresses a Kubernetes rule's `from`/`to` list selects (peers OR'ed), or `None`
    /// for an empty list (all peers).
    pub fn k8s_peers(&self, peers: &[K8sPeer], policy_ns: &str) -> Option<PeerSet> {
        if peers.is_empty() {
            return None;
        }
        let mut members = Vec::new();
        let mut origins = Vec::new();
        for peer in peers {
            match peer {
                K8sPeer::Pods { namespace_selector, pod_selector } => {
                    for pod in &self.endpoints {
                        let ns_ok = match namespace_selector {
                            Some(nsel) => nsel.matches(&self.namespace_labels(&pod.namespace)),
                            None => pod.namespace == policy_ns,
                        };
                        let pod_ok = pod_selector.as_ref().is_none_or(|s| s.matches(&pod.labels));
                        if ns_ok && pod_ok {
                            members.extend(pod.ips.iter().map(|ip| Prefix::host(*ip)));
                        }
                    }
                    let ns = match namespace_selector {
                        Some(s) if s.is_empty() => "all namespaces".to_string(),
                        Some(s) => format!("namespaces {}", describe_label_selector(s)),
                        None => format!("namespace {policy_ns}"),
                    };
                    let pods = match pod_selector {
                        Some(s) => format!("pods {}", describe_label_selector(s)),
                        None => "all pods".to_string(),
                    };
                    origins.push(format!("{pods} in {ns}"));
                }
                K8sPeer::IpBlock(b) => {
                    let holes: Vec<Prefix> = b.except.iter().filter_map(prefix_of).collect();
                    if let Some(cidr) = prefix_of(&b.cidr) {
                        members.extend(cidr.subtract(&holes));
                    }
                    let except: Vec<String> = b.except.iter().map(|c| c.to_string()).collect();
                    if except.is_empty() {
                        origins.push(format!("ipBlock {}", b.cidr));
                    } else {
                        origins.push(format!("ipBlock {} except {}", b.cidr, except.join(" ")));
                    }
                }
            }
        }
        members.sort();
        members.dedup();
        Some(PeerSet { members, origin: origins.join(" | ") })
    }

    /// Every (ip, protocol, port) of a container port named `name` (with `protocol`, if
    /// given) on any endpoint: how a named port on the peer side of a rule is resolved.
    pub fn named_port_members(&self, name: &str, protocol: Option<u8>) -> Vec<NamedPort> {
        let mut out = Vec::new();
        for pod in &self.endpoints {
            out.extend(named_ports_of(pod, name, protocol));
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The (ip, protocol, port) triples of `pod`'s container ports named `name`.
pub fn named_ports_of(pod: &Pod, name: &str, protocol: Option<u8>) -> Vec<NamedPort> {
    let mut out = Vec::new();
    for cp in &pod.ports {
        if cp.name.as_deref() == Some(name) && protocol.is_none_or(|p| p == cp.protocol.0) {
            for ip in &pod.ips {
                out.push(NamedPort { addr: *ip, protocol: cp.protocol.0, port: cp.port });
            }
        }
    }
    out
}

/// Calico `types` with its documented default applied.
pub fn calico_types(p: &CalicoPolicy) -> Vec<PolicyType> {
    match &p.types {
        Some(t) => t.clone(),
        None if p.egress.is_empty() => vec![PolicyType::Ingress],
        None if p.ingress.is_empty() => vec![PolicyType::Egress],
        None => vec![PolicyType::Ingress, PolicyType::Egress],
    }
}

/// Order comparison: ascending, missing (infinite) last.
fn cmp_order(a: Option<f64>, b: Option<f64>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

fn describe_calico_peer(
    selector: Option<&Selector>,
    e: &EntityRule,
    with_sa: bool,
    policy_ns: Option<&str>,
) -> String {
    let mut parts = Vec::new();
    if let Some(s) = selector {
        parts.push(format!("selector {s}"));
    } else {
        parts.push("all endpoints".to_string());
    }
    if with_sa {
        if let Some(sa) = &e.service_accounts {
            if !sa.names.is_empty() {
                parts.push(format!("serviceAccounts {}", sa.names.join(",")));
            }
            if let Some(s) = &sa.selector {
                parts.push(format!("serviceAccount selector {s}"));
            }
        }
    }
    match (&e.namespace_selector, policy_ns) {
        (Some(n), _) => parts.push(format!("in namespaces {n}")),
        (None, Some(ns)) => parts.push(format!("in namespace {ns}")),
        (None, None) => parts.push("in any namespace".to_string()),
    }
    parts.join(" ")
}

/// `{a=b,c in (x,y)}`-style text for a Kubernetes label selector.
pub fn describe_label_selector(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for r in &s.match_expressions {
        parts.push(match r.operator {
            LabelSelectorOperator::In => format!("{} in ({})", r.key, r.values.join(",")),
            LabelSelectorOperator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
            LabelSelectorOperator::Exists => r.key.clone(),
            LabelSelectorOperator::DoesNotExist => format!("!{}", r.key),
        });
    }
    format!("{{{}}}", parts.join(","))
}
