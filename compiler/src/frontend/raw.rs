//! The input shapes of each kind as serde types. Leaf values validate themselves while being
//! deserialized, and cross-field rules are checked in `try_from` conversions, so every error is
//! raised inside the YAML deserializer and carries its field path and line:column.

use std::fmt;
use std::net::IpAddr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::model::*;
use crate::selector::{self, Selector};

// ---------------------------------------------------------------------------------------------
// Leaf values
// ---------------------------------------------------------------------------------------------

/// Parses `a.b.c.d/n`, `x::y/n` or a bare address; clears host bits.
pub fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let bad = || format!("invalid CIDR {text:?}");
    let (addr, prefix) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text, None),
    };
    let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len = match prefix {
        None => max,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 3 => {
            p.parse::<u8>().map_err(|_| bad())?
        }
        Some(_) => return Err(bad()),
    };
    if prefix_len > max {
        return Err(format!(
            "invalid CIDR {text:?}: prefix length {prefix_len} is more than {max}"
        ));
    }
    let addr = match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    };
    Ok(Cidr { addr, prefix_len })
}

/// Kubernetes' IANA_SVC_NAME: 1-15 of `[a-z0-9-]`, at least one letter, no `-` at either end
/// and no `--`. Calico named ports follow the same rule.
fn is_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn port_number(value: i64) -> Result<u16, String> {
    match u16::try_from(value) {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("invalid port {value}: must be 1..65535")),
    }
}

/// A YAML integer or string.
pub enum IntOrStr {
    Int(i64),
    Str(String),
}

/// The raw scalar types leaf fields are converted from.
pub trait FromScalar: Sized {
    const EXPECTING: &'static str;
    fn from_int(_: i64) -> Option<Self> {
        None
    }
    fn from_float(_: f64) -> Option<Self> {
        None
    }
    fn from_str(_: &str) -> Option<Self> {
        None
    }
}

impl FromScalar for String {
    const EXPECTING: &'static str = "a string";
    fn from_str(v: &str) -> Option<Self> {
        Some(v.to_owned())
    }
}

impl FromScalar for i64 {
    const EXPECTING: &'static str = "an integer";
    fn from_int(v: i64) -> Option<Self> {
        Some(v)
    }
}

impl FromScalar for f64 {
    const EXPECTING: &'static str = "a number";
    fn from_int(v: i64) -> Option<Self> {
        Some(v as f64)
    }
    fn from_float(v: f64) -> Option<Self> {
        Some(v)
    }
}

impl FromScalar for IntOrStr {
    const EXPECTING: &'static str = "an integer or a string";
    fn from_int(v: i64) -> Option<Self> {
        Some(IntOrStr::Int(v))
    }
    fn from_str(v: &str) -> Option<Self> {
        Some(IntOrStr::Str(v.to_owned()))
    }
}

/// Converts a scalar inside the deserializer's visit call, so that a conversion error gets the
/// scalar's own path and line:column (an error raised after `deserialize` returns would be
/// attributed to the enclosing mapping).
struct LeafVisitor<R, T>(fn(R) -> Result<T, String>);

impl<R: FromScalar, T> LeafVisitor<R, T> {
    fn finish<E: de::Error>(self, raw: Option<R>, unexpected: de::Unexpected) -> Result<T, E> {
        match raw {
            Some(raw) => (self.0)(raw).map_err(E::custom),
            None => Err(E::invalid_type(unexpected, &R::EXPECTING)),
        }
    }
}

impl<R: FromScalar, T> Visitor<'_> for LeafVisitor<R, T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(R::EXPECTING)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.finish(R::from_int(v), de::Unexpected::Signed(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        // Beyond i64 is out of range for every field anyway; keep the value for the message.
        let raw = i64::try_from(v).ok().and_then(R::from_int);
        self.finish(raw, de::Unexpected::Unsigned(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.finish(R::from_float(v), de::Unexpected::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        self.finish(R::from_str(v), de::Unexpected::Str(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        self.finish(None, de::Unexpected::Bool(v))
    }
}

/// Declares a newtype leaf field converted from a raw scalar by a function.
macro_rules! leaf {
    ($(#[$doc:meta])* $name:ident($inner:ty) from $raw:ty, $conv:expr) => {
        $(#[$doc])*
        pub struct $name(pub $inner);
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let conv: fn($raw) -> Result<$inner, String> = $conv;
                d.deserialize_any(LeafVisitor(conv)).map($name)
            }
        }
    };
}

/// Declares that `$field` is deserialized as `$raw` and then checked by `TryFrom`, inside the
/// deserializer's visit of the mapping so the error gets the mapping's own path and position.
macro_rules! checked {
    ($field:ty, $raw:ty) => {
        impl<'de> Deserialize<'de> for $field {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_map(CheckedVisitor::<$raw, $field>(std::marker::PhantomData))
            }
        }
    };
}

struct CheckedVisitor<R, T>(std::marker::PhantomData<(R, T)>);

impl<'de, R, T> Visitor<'de> for CheckedVisitor<R, T>
where
    R: Deserialize<'de>,
    T: TryFrom<R, Error = String>,
{
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let raw = R::deserialize(de::value::MapAccessDeserializer::new(map))?;
        T::try_from(raw).map_err(de::Error::custom)
    }
}

leaf!(CidrField(Cidr) from String, |s| parse_cidr(&s));

leaf!(IpField(IpAddr) from String, |s| s
    .trim()
    .parse()
    .map_err(|_| format!("invalid IP address {s:?}")));

leaf!(PortNumber(u16) from i64, port_number);

leaf!(
/// K8s `ports[].port`: a number or an IANA service name.
K8sPortValue(PortSpec) from IntOrStr, |v| match v {
    IntOrStr::Int(n) => port_number(n).map(|p| PortSpec::Range { start: p, end: p }),
    IntOrStr::Str(s) if is_port_name(&s) => Ok(PortSpec::Named(s)),
    IntOrStr::Str(s) => Err(format!(
        "invalid port {s:?}: a named port is 1-15 lower-case letters, digits and '-' with at \
         least one letter (use a number without quotes for a numeric port)"
    )),
});

leaf!(
/// Calico `ports[]`: 80, "80", "1000:2000" or a named port.
CalicoPort(PortSpec) from IntOrStr, |v| match v {
    IntOrStr::Int(n) => port_number(n).map(|p| PortSpec::Range { start: p, end: p }),
    IntOrStr::Str(s) => parse_calico_port(&s),
});

fn parse_calico_port(s: &str) -> Result<PortSpec, String> {
    let number = |t: &str| -> Result<u16, String> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) || t.len() > 5 {
            return Err(format!("invalid port range {s:?}"));
        }
        port_number(t.parse::<i64>().map_err(|_| format!("invalid port {s:?}"))?)
            .map_err(|e| format!("{e} in {s:?}"))
    };
    if let Some((start, end)) = s.split_once(':') {
        let (start, end) = (number(start)?, number(end)?);
        if start > end {
            return Err(format!("invalid port range {s:?}: start is after end"));
        }
        Ok(PortSpec::Range { start, end })
    } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let p = number(s)?;
        Ok(PortSpec::Range { start: p, end: p })
    } else if is_port_name(s) {
        Ok(PortSpec::Named(s.to_owned()))
    } else {
        Err(format!(
            "invalid port {s:?}: expected a number, a range \"start:end\" or a port name \
             (1-15 lower-case letters, digits and '-')"
        ))
    }
}

leaf!(
/// K8s protocols are exactly "TCP", "UDP" or "SCTP" (case-sensitive, as the API server checks).
K8sProtocol(Protocol) from String, |s| match s.as_str() {
    "TCP" => Ok(Protocol::TCP),
    "UDP" => Ok(Protocol::UDP),
    "SCTP" => Ok(Protocol::SCTP),
    _ => Err(format!("unsupported protocol {s:?}: expected TCP, UDP or SCTP")),
});

leaf!(
/// Calico protocols: a name (case-insensitive) or a number 1..255, as a YAML int or string.
CalicoProtocol(Protocol) from IntOrStr, |v| {
    let number = |n: i64| match u8::try_from(n) {
        Ok(n) if n > 0 => Ok(Protocol(n)),
        _ => Err(format!("invalid protocol number {n}: must be 1..255")),
    };
    match v {
        IntOrStr::Int(n) => number(n),
        IntOrStr::Str(s) => match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::TCP),
            "udp" => Ok(Protocol::UDP),
            "icmp" => Ok(Protocol::ICMP),
            "icmpv6" => Ok(Protocol::ICMPV6),
            "sctp" => Ok(Protocol::SCTP),
            "udplite" => Ok(Protocol::UDPLITE),
            t if !t.is_empty() && t.len() <= 3 && t.bytes().all(|b| b.is_ascii_digit()) => {
                number(t.parse().unwrap_or(0))
            }
            _ => Err(format!(
                "unknown protocol {s:?}: expected TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1..255"
            )),
        },
    }
});

leaf!(ActionField(Action) from String, |s| match s.as_str() {
    "Allow" => Ok(Action::Allow),
    "Deny" => Ok(Action::Deny),
    "Log" => Ok(Action::Log),
    "Pass" => Ok(Action::Pass),
    _ => Err(format!("unknown action {s:?}: expected Allow, Deny, Log or Pass")),
});

leaf!(PolicyTypeField(PolicyType) from String, |s| match s.as_str() {
    "Ingress" => Ok(PolicyType::Ingress),
    "Egress" => Ok(PolicyType::Egress),
    _ => Err(format!("unknown policy type {s:?}: expected Ingress or Egress")),
});

leaf!(IpVersionField(u8) from i64, |v| match v {
    4 => Ok(4),
    6 => Ok(6),
    _ => Err(format!("invalid ipVersion {v}: expected 4 or 6")),
});

leaf!(OrderField(f64) from f64, |v| if v.is_finite() {
    Ok(v)
} else {
    Err(format!("invalid order {v}: must be a finite number"))
});

leaf!(IcmpValue(u8) from i64, |v| u8::try_from(v)
    .map_err(|_| format!("invalid ICMP value {v}: must be 0..255")));

leaf!(TierActionField(TierDefaultAction) from String, |s| match s.as_str() {
    "Deny" => Ok(TierDefaultAction::Deny),
    "Pass" => Ok(TierDefaultAction::Pass),
    _ => Err(format!("invalid defaultAction {s:?}: expected Deny or Pass")),
});

leaf!(OperatorField(LabelSelectorOperator) from String, |s| match s.as_str() {
    "In" => Ok(LabelSelectorOperator::In),
    "NotIn" => Ok(LabelSelectorOperator::NotIn),
    "Exists" => Ok(LabelSelectorOperator::Exists),
    "DoesNotExist" => Ok(LabelSelectorOperator::DoesNotExist),
    _ => Err(format!("unknown operator {s:?}: expected In, NotIn, Exists or DoesNotExist")),
});

leaf!(
    /// A Calico selector; empty or blank is `None` (= `all()`).
    SelectorField(Option<Selector>) from String, |text| {
        if text.trim().is_empty() {
            return Ok(None);
        }
        if text.len() > super::limits::MAX_SELECTOR_BYTES {
            return Err(format!(
                "selector is {} bytes long, more than {} (limit)",
                text.len(),
                super::limits::MAX_SELECTOR_BYTES
            ));
        }
        selector::parse(&text)
            .map(Some)
            .map_err(|e| format!("invalid selector {:?}: {e}", abbreviate(&text)))
    }
);

/// A long selector cut to its first 80 characters, so that its error stays readable.
fn abbreviate(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

fn selector(field: Option<SelectorField>) -> Option<Selector> {
    field.and_then(|s| s.0)
}

/// Whether an accepted-but-unsupported field is actually set (not null/false/empty).
pub fn is_set(value: &Option<serde_yaml_ng::Value>) -> bool {
    use serde_yaml_ng::Value;
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Sequence(s)) => !s.is_empty(),
        Some(Value::Mapping(m)) => !m.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

// ---------------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
#[serde(expecting = "a mapping")]
pub struct Meta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub labels: Option<Labels>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
pub struct RawNamespace {
    #[serde(default)]
    pub metadata: Meta,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
pub struct RawServiceAccount {
    #[serde(default)]
    pub metadata: Meta,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
pub struct RawPod {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub spec: RawPodSpec,
    #[serde(default)]
    pub status: RawPodStatus,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
#[serde(expecting = "a mapping")]
pub struct RawPodSpec {
    pub service_account_name: Option<String>,
    pub containers: Option<Vec<RawContainer>>,
    pub host_network: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
#[serde(expecting = "a mapping")]
pub struct RawContainer {
    pub ports: Option<Vec<RawContainerPort>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(expecting = "a mapping")]
pub struct RawContainerPort {
    pub name: Option<String>,
    pub container_port: PortNumber,
    pub protocol: Option<K8sProtocol>,
}

impl RawContainerPort {
    pub fn into_model(self) -> ContainerPort {
        ContainerPort {
            name: self.name.filter(|n| !n.is_empty()),
            port: self.container_port.0,
            protocol: self.protocol.map_or(Protocol::TCP, |p| p.0),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
#[serde(expecting = "a mapping")]
pub struct RawPodStatus {
    pub phase: Option<String>,
    #[serde(rename = "podIP")]
    pub pod_ip: Option<IpOrEmpty>,
    #[serde(rename = "podIPs")]
    pub pod_ips: Option<Vec<RawPodIp>>,
}

leaf!(
    /// `status.podIP` is "" on some pending pods.
    IpOrEmpty(Option<IpAddr>) from String, |text| {
        if text.is_empty() {
            return Ok(None);
        }
        text.trim().parse().map(Some).map_err(|_| format!("invalid IP address {text:?}"))
    }
);

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
pub struct RawPodIp {
    pub ip: IpField,
}

// --- Kubernetes NetworkPolicy ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
pub struct RawK8sPolicy {
    #[serde(default)]
    pub spec: RawK8sSpec,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
#[serde(expecting = "a mapping", deny_unknown_fields)]
pub struct RawK8sSpec {
    pub pod_selector: Option<RawLabelSelector>,
    pub policy_types: Option<Vec<PolicyTypeField>>,
    pub ingress: Option<Vec<RawK8sIngress>>,
    pub egress: Option<Vec<RawK8sEgress>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
#[serde(expecting = "a mapping", deny_unknown_fields)]
pub struct RawK8sIngress {
    pub from: Option<Vec<PeerField>>,
    pub ports: Option<Vec<K8sPortField>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
#[serde(expecting = "a mapping", deny_unknown_fields)]
pub struct RawK8sEgress {
    pub to: Option<Vec<PeerField>>,
    pub ports: Option<Vec<K8sPortField>>,
}

pub fn k8s_rule(peers: Option<Vec<PeerField>>, ports: Option<Vec<K8sPortField>>) -> K8sRule {
    K8sRule {
        peers: peers.unwrap_or_default().into_iter().map(|p| p.0).collect(),
        ports: ports.unwrap_or_default().into_iter().map(|p| p.0).collect(),
    }
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
#[serde(expecting = "a mapping", deny_unknown_fields)]
pub struct RawLabelSelector {
    pub match_labels: Option<Labels>,
    pub match_expressions: Option<Vec<RequirementField>>,
}

impl RawLabelSelector {
    pub fn into_model(self) -> LabelSelector {
        LabelSelector {
            match_labels: self.match_labels.unwrap_or_default(),
            match_expressions: self
                .match_expressions
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.0)
                .collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping", deny_unknown_fields)]
pub struct RawRequirement {
    key: String,
    operator: OperatorField,
    #[serde(default)]
    values: Option<Vec<String>>,
}

checked!(RequirementField, RawRequirement);
pub struct RequirementField(pub LabelSelectorRequirement);

impl TryFrom<RawRequirement> for RequirementField {
    type Error = String;
    fn try_from(raw: RawRequirement) -> Result<Self, String> {
        let values = raw.values.unwrap_or_default();
        let operator = raw.operator.0;
        match operator {
            LabelSelectorOperator::In | LabelSelectorOperator::NotIn if values.is_empty() => {
                return Err(format!("operator {operator:?} on key {:?} needs values", raw.key));
            }
            LabelSelectorOperator::Exists | LabelSelectorOperator::DoesNotExist
                if !values.is_empty() =>
            {
                return Err(format!(
                    "operator {operator:?} on key {:?} must not have values",
                    raw.key
                ));
            }
            _ => {}
        }
        Ok(RequirementField(LabelSelectorRequirement { key: raw.key, operator, values }))
    }
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
#[serde(expecting = "a mapping", deny_unknown_fields)]
pub struct RawPeer {
    pod_selector: Option<RawLabelSelector>,
    namespace_selector: Option<RawLabelSelector>,
    ip_block: Option<IpBlockField>,
}

checked!(PeerField, RawPeer);
pub struct PeerField(pub K8sPeer);

impl TryFrom<RawPeer> for PeerField {
    type Error = String;
    fn try_from(raw: RawPeer) -> Result<Self, String> {
        let selectors = raw.pod_selector.is_some() || raw.namespace_selector.is_some();
        match raw.ip_block {
            Some(_) if selectors => {
                Err("ipBlock cannot be combined with podSelector or namespaceSelector".into())
            }
            Some(block) => Ok(PeerField(K8sPeer::IpBlock(block.0))),
            None if !selectors => {
                Err("a peer needs podSelector, namespaceSelector or ipBlock".into())
            }
            None => Ok(PeerField(K8sPeer::Pods {
                namespace_selector: raw.namespace_selector.map(RawLabelSelector::into_model),
                pod_selector: raw.pod_selector.map(RawLabelSelector::into_model),
            })),
        }
    }
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping", deny_unknown_fields)]
pub struct RawIpBlock {
    cidr: CidrField,
    #[serde(default)]
    except: Option<Vec<CidrField>>,
}

checked!(IpBlockField, RawIpBlock);
pub struct IpBlockField(pub IpBlock);

impl TryFrom<RawIpBlock> for IpBlockField {
    type Error = String;
    fn try_from(raw: RawIpBlock) -> Result<Self, String> {
        let cidr = raw.cidr.0;
        let except: Vec<Cidr> = raw.except.unwrap_or_default().into_iter().map(|c| c.0).collect();
        for e in &except {
            // The API server requires each except to be a strict subset of cidr.
            if e.family() != cidr.family()
                || e.prefix_len <= cidr.prefix_len
                || !cidr.contains(e.addr)
            {
                return Err(format!("except {e} is not inside cidr {cidr}"));
            }
        }
        Ok(IpBlockField(IpBlock { cidr, except }))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(expecting = "a mapping", deny_unknown_fields)]
pub struct RawK8sPort {
    #[serde(default)]
    protocol: Option<K8sProtocol>,
    #[serde(default)]
    port: Option<K8sPortValue>,
    #[serde(default)]
    end_port: Option<PortNumber>,
}

checked!(K8sPortField, RawK8sPort);
pub struct K8sPortField(pub K8sPort);

impl TryFrom<RawK8sPort> for K8sPortField {
    type Error = String;
    fn try_from(raw: RawK8sPort) -> Result<Self, String> {
        let protocol = raw.protocol.map_or(Protocol::TCP, |p| p.0);
        let port = match (raw.port.map(|p| p.0), raw.end_port.map(|p| p.0)) {
            (port, None) => port,
            (None, Some(_)) => return Err("endPort needs port".into()),
            (Some(PortSpec::Named(name)), Some(_)) => {
                return Err(format!("endPort cannot be used with named port {name:?}"));
            }
            (Some(PortSpec::Range { start, .. }), Some(end)) if end < start => {
                return Err(format!("endPort {end} is less than port {start}"));
            }
            (Some(PortSpec::Range { start, .. }), Some(end)) => {
                Some(PortSpec::Range { start, end })
            }
        };
        Ok(K8sPortField(K8sPort { protocol, port }))
    }
}

// --- Calico ------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
pub struct RawCalicoPolicy {
    #[serde(default)]
    pub spec: RawCalicoSpec,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
#[serde(expecting = "a mapping", deny_unknown_fields)]
pub struct RawCalicoSpec {
    pub tier: Option<String>,
    pub order: Option<OrderField>,
    pub selector: Option<SelectorField>,
    pub namespace_selector: Option<SelectorField>,
    pub service_account_selector: Option<SelectorField>,
    pub types: Option<Vec<PolicyTypeField>>,
    pub ingress: Option<Vec<CalicoRuleField>>,
    pub egress: Option<Vec<CalicoRuleField>>,
    pub do_not_track: Option<bool>,
    #[serde(rename = "preDNAT")]
    pub pre_dnat: Option<bool>,
    /// No effect on pod traffic (it is about forwarded host traffic): accepted silently.
    pub apply_on_forward: Option<bool>,
    /// Hints never change what a policy enforces: accepted silently.
    pub performance_hints: Option<Vec<String>>,
}

impl RawCalicoSpec {
    pub fn selectors(&mut self) -> (Option<Selector>, Option<Selector>, Option<Selector>) {
        (
            selector(self.selector.take()),
            selector(self.namespace_selector.take()),
            selector(self.service_account_selector.take()),
        )
    }

    /// Why the policy applies only to host endpoints, if it does: Felix puts `doNotTrack`
    /// policies in the untracked (raw table) tier and `preDNAT` ones in the pre-DNAT (mangle
    /// table) tier, both of which it renders for host endpoints only, never for pods.
    pub fn host_endpoint_only(&self) -> Option<&'static str> {
        if self.do_not_track == Some(true) {
            Some("spec.doNotTrack is true: Calico applies it only to host endpoints (untracked)")
        } else if self.pre_dnat == Some(true) {
            Some("spec.preDNAT is true: Calico applies it only to host endpoints (before DNAT)")
        } else {
            None
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
#[serde(expecting = "a mapping", deny_unknown_fields)]
pub struct RawCalicoRule {
    action: Option<ActionField>,
    ip_version: Option<IpVersionField>,
    protocol: Option<CalicoProtocol>,
    not_protocol: Option<CalicoProtocol>,
    icmp: Option<IcmpField>,
    #[serde(rename = "notICMP")]
    not_icmp: Option<IcmpField>,
    source: Option<RawEntityRule>,
    destination: Option<RawEntityRule>,
    http: Option<serde_yaml_ng::Value>,
    /// Annotations: not a match, so never looked at.
    #[serde(rename = "metadata")]
    _metadata: Option<de::IgnoredAny>,
}

checked!(CalicoRuleField, RawCalicoRule);
/// A validated Calico rule plus the match fields it sets that polc cannot enforce (paths
/// relative to the rule). Whether that is an error depends on the action (load.rs).
pub struct CalicoRuleField {
    pub rule: CalicoRule,
    pub unenforced: Vec<Unenforced>,
}

/// A rule match polc cannot enforce: ignoring it makes the rule match more traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unenforced {
    Http,
    SourceServices,
    DestinationServices,
}

impl Unenforced {
    /// The field's path relative to the rule.
    pub fn field(self) -> &'static str {
        match self {
            Unenforced::Http => "http",
            Unenforced::SourceServices => "source.services",
            Unenforced::DestinationServices => "destination.services",
        }
    }

    /// What the field matches, for messages.
    pub fn what(self) -> &'static str {
        match self {
            Unenforced::Http => "HTTP (layer 7) matches",
            Unenforced::SourceServices | Unenforced::DestinationServices => "service matches",
        }
    }
}

impl TryFrom<RawCalicoRule> for CalicoRuleField {
    type Error = String;
    fn try_from(raw: RawCalicoRule) -> Result<Self, String> {
        let action = raw.action.ok_or("missing field `action`")?.0;
        let protocol = raw.protocol.map(|p| p.0);
        let ip_version = raw.ip_version.map(|v| v.0);
        // `metadata` (annotations) is not a match: nothing to enforce.
        let mut unenforced = Vec::new();
        if is_set(&raw.http) {
            unenforced.push(Unenforced::Http);
        }
        let (source, src_services) = raw.source.unwrap_or_default().into_model();
        let (destination, dst_services) = raw.destination.unwrap_or_default().into_model();
        if src_services {
            unenforced.push(Unenforced::SourceServices);
        }
        if dst_services {
            unenforced.push(Unenforced::DestinationServices);
        }

        // Ports. Calico's validator (libcalico-go lib/validator/v3/validator.go, validateRule)
        // rejects ports when the protocol is set and `!Protocol.SupportsPorts()` (TCP, UDP, SCTP
        // only: lib/numorstring/protocol.go), and, when no protocol is set, accepts only named
        // ports (their protocol comes from the endpoint's named port).
        for (field, ports) in [
            ("source.ports", &source.ports),
            ("source.notPorts", &source.not_ports),
            ("destination.ports", &destination.ports),
            ("destination.notPorts", &destination.not_ports),
        ] {
            match protocol {
                Some(p) if !p.has_ports() && !ports.is_empty() => {
                    return Err(format!(
                        "{field} needs protocol TCP, UDP or SCTP, but protocol is {p}"
                    ));
                }
                None if ports.iter().any(|p| !matches!(p, PortSpec::Named(_))) => {
                    return Err(format!(
                        "{field} has numeric ports but the rule has no protocol (set protocol \
                         TCP, UDP or SCTP)"
                    ));
                }
                _ => {}
            }
        }

        // ICMP matches need an ICMP protocol of the rule's IP version.
        for (field, icmp) in [("icmp", &raw.icmp), ("notICMP", &raw.not_icmp)] {
            if icmp.is_some() && !protocol.is_some_and(Protocol::is_icmp) {
                return Err(format!("{field} needs protocol ICMP or ICMPv6"));
            }
        }
        match (protocol, ip_version) {
            (Some(Protocol::ICMP), Some(6)) => return Err("protocol ICMP with ipVersion 6".into()),
            (Some(Protocol::ICMPV6), Some(4)) => {
                return Err("protocol ICMPv6 with ipVersion 4".into())
            }
            _ => {}
        }

        // Nets must agree with ipVersion and with each other (validateRule's scanNets).
        let mut families = Vec::new();
        for (field, nets) in [
            ("source.nets", &source.nets),
            ("source.notNets", &source.not_nets),
            ("destination.nets", &destination.nets),
            ("destination.notNets", &destination.not_nets),
        ] {
            for net in nets.iter() {
                if let Some(v) = ip_version.filter(|v| *v != net.family()) {
                    return Err(format!(
                        "{field}: {net} is IPv{} but ipVersion is {v}",
                        net.family()
                    ));
                }
                if !families.contains(&net.family()) {
                    families.push(net.family());
                }
            }
        }
        if families.len() > 1 {
            return Err("rule mixes IPv4 and IPv6 nets (split it into one rule per family)".into());
        }

        let rule = CalicoRule {
            action,
            ip_version,
            protocol,
            not_protocol: raw.not_protocol.map(|p| p.0),
            icmp: raw.icmp.map(|i| i.0),
            not_icmp: raw.not_icmp.map(|i| i.0),
            source,
            destination,
        };
        Ok(CalicoRuleField { rule, unenforced })
    }
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping", deny_unknown_fields)]
pub struct RawIcmp {
    #[serde(default, rename = "type")]
    icmp_type: Option<IcmpValue>,
    #[serde(default)]
    code: Option<IcmpValue>,
}

checked!(IcmpField, RawIcmp);
pub struct IcmpField(pub IcmpMatch);

impl TryFrom<RawIcmp> for IcmpField {
    type Error = String;
    fn try_from(raw: RawIcmp) -> Result<Self, String> {
        match raw.icmp_type {
            // Calico: "ICMP code specified without an ICMP type" (validateICMPFields).
            None if raw.code.is_some() => Err("ICMP code needs a type".into()),
            None => Err("ICMP match needs a type".into()),
            Some(t) => Ok(IcmpField(IcmpMatch { icmp_type: t.0, code: raw.code.map(|c| c.0) })),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
#[serde(expecting = "a mapping", deny_unknown_fields)]
pub struct RawEntityRule {
    nets: Option<Vec<CidrField>>,
    not_nets: Option<Vec<CidrField>>,
    selector: Option<SelectorField>,
    not_selector: Option<SelectorField>,
    namespace_selector: Option<SelectorField>,
    ports: Option<Vec<CalicoPort>>,
    not_ports: Option<Vec<CalicoPort>>,
    service_accounts: Option<RawServiceAccountMatch>,
    services: Option<serde_yaml_ng::Value>,
}

impl RawEntityRule {
    /// The model, and whether unsupported `services` was set.
    fn into_model(self) -> (EntityRule, bool) {
        let cidrs = |v: Option<Vec<CidrField>>| v.unwrap_or_default().into_iter().map(|c| c.0);
        let ports = |v: Option<Vec<CalicoPort>>| v.unwrap_or_default().into_iter().map(|p| p.0);
        let services = is_set(&self.services);
        let rule = EntityRule {
            nets: cidrs(self.nets).collect(),
            not_nets: cidrs(self.not_nets).collect(),
            selector: selector(self.selector),
            not_selector: selector(self.not_selector),
            namespace_selector: selector(self.namespace_selector),
            ports: ports(self.ports).collect(),
            not_ports: ports(self.not_ports).collect(),
            service_accounts: self.service_accounts.map(|sa| ServiceAccountMatch {
                names: sa.names.unwrap_or_default(),
                selector: selector(sa.selector),
            }),
        };
        (rule, services)
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
#[serde(expecting = "a mapping", deny_unknown_fields)]
pub struct RawServiceAccountMatch {
    names: Option<Vec<String>>,
    selector: Option<SelectorField>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
pub struct RawTier {
    #[serde(default)]
    pub spec: RawTierSpec,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
#[serde(expecting = "a mapping", deny_unknown_fields)]
pub struct RawTierSpec {
    pub order: Option<OrderField>,
    pub default_action: Option<TierActionField>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
pub struct RawNetworkSet {
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub spec: RawNetworkSetSpec,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
#[serde(expecting = "a mapping", deny_unknown_fields)]
pub struct RawNetworkSetSpec {
    pub nets: Option<Vec<CidrField>>,
    pub allowed_egress_domains: Option<serde_yaml_ng::Value>,
}

// --- Services and EndpointSlices ----------------------------------------------------------------

leaf!(
/// A Service's `targetPort`: a number or a container port name.
TargetPortField(TargetPort) from IntOrStr, |v| match v {
    IntOrStr::Int(n) => port_number(n).map(TargetPort::Number),
    IntOrStr::Str(s) if is_port_name(&s) => Ok(TargetPort::Named(s)),
    IntOrStr::Str(s) => Err(format!(
        "invalid targetPort {s:?}: a port name is 1-15 lower-case letters, digits and '-' with \
         at least one letter (use a number without quotes for a numeric port)"
    )),
});

leaf!(
/// `sessionAffinityConfig.clientIP.timeoutSeconds`: 1..86400, as the API server checks.
AffinityTimeout(u32) from i64, |v| match u32::try_from(v) {
    Ok(s) if (1..=86_400).contains(&s) => Ok(s),
    _ => Err(format!("invalid timeoutSeconds {v}: must be 1..86400")),
});

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
pub struct RawService {
    #[serde(default)]
    pub spec: RawServiceSpec,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
#[serde(expecting = "a mapping")]
pub struct RawServiceSpec {
    #[serde(rename = "type")]
    pub service_type: Option<String>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Option<Vec<String>>,
    pub selector: Option<Labels>,
    pub ports: Option<Vec<RawServicePort>>,
    pub session_affinity: Option<String>,
    pub session_affinity_config: Option<RawAffinityConfig>,
    pub external_traffic_policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(expecting = "a mapping")]
pub struct RawServicePort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Option<K8sProtocol>,
    pub port: PortNumber,
    #[serde(default)]
    pub target_port: Option<TargetPortField>,
}

impl RawServicePort {
    pub fn into_model(self) -> ServicePort {
        ServicePort {
            name: self.name.filter(|n| !n.is_empty()),
            protocol: self.protocol.map_or(Protocol::TCP, |p| p.0),
            port: self.port.0,
            target: self.target_port.map_or(TargetPort::Number(self.port.0), |t| t.0),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
#[serde(expecting = "a mapping")]
pub struct RawAffinityConfig {
    #[serde(rename = "clientIP")]
    pub client_ip: Option<RawClientIpConfig>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
#[serde(expecting = "a mapping")]
pub struct RawClientIpConfig {
    pub timeout_seconds: Option<AffinityTimeout>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(expecting = "a mapping")]
pub struct RawEndpointSlice {
    #[serde(default)]
    pub metadata: Meta,
    /// IPv4, IPv6 or FQDN (required by the API).
    pub address_type: String,
    #[serde(default)]
    pub endpoints: Option<Vec<RawSliceEndpoint>>,
    #[serde(default)]
    pub ports: Option<Vec<RawSlicePort>>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
pub struct RawSliceEndpoint {
    /// Checked against `addressType` when the slice is converted.
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: RawSliceConditions,
}

#[derive(Deserialize, Default)]
#[serde(default)]
#[serde(expecting = "a mapping")]
pub struct RawSliceConditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
pub struct RawSlicePort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Option<K8sProtocol>,
    #[serde(default)]
    pub port: Option<PortNumber>,
}

impl RawSlicePort {
    pub fn into_model(self) -> SlicePort {
        SlicePort {
            name: self.name.filter(|n| !n.is_empty()),
            protocol: self.protocol.map_or(Protocol::TCP, |p| p.0),
            port: self.port.map(|p| p.0),
        }
    }
}
