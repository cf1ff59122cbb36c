//! Service NAT frontends: every Service cluster IP x port with its backends, taken from the
//! EndpointSlices that name the service or, when none does, from the pods its selector
//! picks (what the EndpointSlice controller would write). The loader installs them in the
//! runtime's NAT maps; `polc explain` resolves a cluster IP through them.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use crate::error::{Error, Result};
use crate::frontend::{Cluster, EndpointSlice, Protocol, Service, ServicePort, TargetPort};

/// One backend: a pod address and the port the service port maps to there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
}

/// Where a frontend's backends were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendOrigin {
    /// EndpointSlices labelled with the service's name.
    Slices,
    /// No slice names the service: the pods matching `spec.selector`.
    Selector,
    /// Neither: the service has no backends (packets to it are dropped).
    Nothing,
}

/// One (cluster IP, port, protocol) of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    /// `namespace/name` of the Service.
    pub service: String,
    pub port_name: Option<String>,
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Sorted and deduplicated: ordinal i in the NAT backend map is `backends[i]`.
    pub backends: Vec<Backend>,
    pub origin: BackendOrigin,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout_s: Option<u32>,
}

impl Frontend {
    /// Whether the runtime rewrites packets to this frontend: TCP, UDP and SCTP, IPv4 and
    /// IPv6 (see docs/runtime.md). Other protocols are reported and left alone.
    pub fn translated(&self) -> bool {
        matches!(self.protocol, Protocol::TCP | Protocol::UDP | Protocol::SCTP)
    }
}

impl fmt::Display for Frontend {
    /// `svc default/web 10.96.0.10:80/TCP`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = match self.ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        };
        write!(f, "service {} {ip}:{}/{}", self.service, self.port, self.protocol)
    }
}

/// Every frontend of every service, in service order then port order. Two services on the
/// same (cluster IP, port, protocol) are an input error: the NAT map has one entry for it.
pub fn frontends(cluster: &Cluster) -> Result<Vec<Frontend>> {
    let mut out: Vec<Frontend> = Vec::new();
    for svc in &cluster.services {
        let slices: Vec<&EndpointSlice> = (cluster.endpoint_slices.iter())
            .filter(|s| s.namespace == svc.namespace && s.service.as_deref() == Some(&svc.name))
            .collect();
        for ip in &svc.cluster_ips {
            for sp in &svc.ports {
                let (backends, origin) = if !slices.is_empty() {
                    (from_slices(&slices, sp, ip.is_ipv4()), BackendOrigin::Slices)
                } else if let Some(sel) = &svc.selector {
                    (from_selector(cluster, svc, sel, sp, ip.is_ipv4()), BackendOrigin::Selector)
                } else {
                    (Vec::new(), BackendOrigin::Nothing)
                };
                let fe = Frontend {
                    service: format!("{}/{}", svc.namespace, svc.name),
                    port_name: sp.name.clone(),
                    ip: *ip,
                    port: sp.port,
                    protocol: sp.protocol,
                    backends,
                    origin,
                    affinity_timeout_s: svc.affinity_timeout_s,
                };
                if let Some(other) = out
                    .iter()
                    .find(|o| o.ip == fe.ip && o.port == fe.port && o.protocol == fe.protocol)
                {
                    return Err(Error::input(format!(
                        "{}: spec.clusterIP {}:{}/{} is also used by service {}",
                        svc.source, fe.ip, fe.port, fe.protocol, other.service
                    )));
                }
                out.push(fe);
            }
        }
    }
    Ok(out)
}

/// The frontend a packet to (ip, port, protocol) is translated by, if any.
pub fn lookup(frontends: &[Frontend], ip: IpAddr, port: u16, protocol: u8) -> Option<&Frontend> {
    frontends
        .iter()
        .find(|f| f.translated() && f.ip == ip && f.port == port && f.protocol.0 == protocol)
}

/// Backends of `sp` from the service's slices: ready endpoints, or, when none is ready,
/// serving-but-terminating ones (kube-proxy's fallback so connections drain gracefully).
fn from_slices(slices: &[&EndpointSlice], sp: &ServicePort, v4: bool) -> Vec<Backend> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        let Some(port) = slice
            .ports
            .iter()
            .find(|p| p.name == sp.name && p.protocol == sp.protocol)
            .and_then(|p| p.port)
        else {
            continue;
        };
        for e in &slice.endpoints {
            for ip in e.addresses.iter().filter(|a| a.is_ipv4() == v4) {
                if e.ready {
                    ready.insert(Backend { ip: *ip, port });
                } else if e.serving && e.terminating {
                    terminating.insert(Backend { ip: *ip, port });
                }
            }
        }
    }
    let chosen = if ready.is_empty() { terminating } else { ready };
    chosen.into_iter().collect()
}

/// Backends of `sp` from the pods in the service's namespace whose labels include every
/// selector pair; a named target port is looked up in each pod (pods without it are left out).
fn from_selector(
    cluster: &Cluster,
    svc: &Service,
    selector: &crate::frontend::Labels,
    sp: &ServicePort,
    v4: bool,
) -> Vec<Backend> {
    // An empty selector selects nothing for a Service (the controller writes no endpoints).
    if selector.is_empty() {
        return Vec::new();
    }
    let mut out = BTreeSet::new();
    for pod in cluster.pods.iter().filter(|p| p.namespace == svc.namespace) {
        if !selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
            continue;
        }
        let port = match &sp.target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Named(name) => pod
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name) && p.protocol == sp.protocol)
                .map(|p| p.port),
        };
        let Some(port) = port else { continue };
        for ip in pod.ips.iter().filter(|a| a.is_ipv4() == v4) {
            out.insert(Backend { ip: *ip, port });
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Cluster {
        crate::frontend::load_str("t.yaml", yaml).expect("valid yaml")
    }

    const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  containers: [{ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.0.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec:
  containers: [{ports: [{name: http, containerPort: 9090}]}]
status: {podIP: 10.0.0.12}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
status: {podIP: 10.0.0.13}
";

    #[test]
    fn selector_backends_resolve_named_target_ports_per_pod() {
        let c = load(&format!(
            "{PODS}---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  clusterIP: 10.96.0.10
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"
        ));
        let fes = frontends(&c).unwrap();
        assert_eq!(fes.len(), 1);
        let fe = &fes[0];
        assert_eq!(fe.origin, BackendOrigin::Selector);
        let got: Vec<String> = fe.backends.iter().map(|b| format!("{}:{}", b.ip, b.port)).collect();
        assert_eq!(got, ["10.0.0.11:8080", "10.0.0.12:9090"]);
        assert!(lookup(&fes, "10.96.0.10".parse().unwrap(), 80, 6).is_some());
        assert!(lookup(&fes, "10.96.0.10".parse().unwrap(), 80, 17).is_none(), "TCP only");
        assert!(lookup(&fes, "10.96.0.10".parse().unwrap(), 81, 6).is_none());
    }

    #[test]
    fn slices_win_over_the_selector_and_only_ready_endpoints_count() {
        let c = load(&format!(
            "{PODS}---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  clusterIPs: [10.96.0.10]
  selector: {{app: web}}
  ports: [{{name: http, port: 80, protocol: UDP, targetPort: 53}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: [10.0.0.21]
- addresses: [10.0.0.22]
  conditions: {{ready: false, serving: true, terminating: true}}
- addresses: [10.0.0.23]
  conditions: {{ready: true}}
ports: [{{name: http, port: 5353, protocol: UDP}}]
"
        ));
        let fes = frontends(&c).unwrap();
        let fe = &fes[0];
        assert_eq!(fe.origin, BackendOrigin::Slices);
        let got: Vec<String> = fe.backends.iter().map(|b| format!("{}:{}", b.ip, b.port)).collect();
        assert_eq!(got, ["10.0.0.21:5353", "10.0.0.23:5353"]);
    }

    #[test]
    fn terminating_endpoints_serve_only_when_nothing_is_ready() {
        let c = load(
            "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: [10.0.0.22]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.0.0.24]
  conditions: {ready: false, serving: false, terminating: true}
ports: [{port: 8080}]
",
        );
        let fes = frontends(&c).unwrap();
        assert_eq!(fes[0].backends, [Backend { ip: "10.0.0.22".parse().unwrap(), port: 8080 }]);
    }

    #[test]
    fn dual_stack_and_sctp_frontends_are_translated_with_backends_of_their_family() {
        let c = load(
            "
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: x}
spec:
  clusterIPs: [10.96.0.10, fd96::10]
  ports: [{name: a, port: 53, protocol: UDP}, {name: s, port: 9899, protocol: SCTP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-v4, namespace: x, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.5]}]
ports: [{name: a, port: 5353, protocol: UDP}, {name: s, port: 9900, protocol: SCTP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-v6, namespace: x, labels: {kubernetes.io/service-name: dns}}
addressType: IPv6
endpoints: [{addresses: ['fd77::5']}]
ports: [{name: a, port: 5353, protocol: UDP}, {name: s, port: 9900, protocol: SCTP}]
",
        );
        let fes = frontends(&c).unwrap();
        let got: Vec<String> =
            (fes.iter()).map(|f| format!("{f} -> {:?} {}", f.backends, f.translated())).collect();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(fes.len(), 4, "{got:?}");
        for fe in &fes {
            assert!(fe.translated(), "{fe}");
            assert_eq!(fe.backends.len(), 1, "{fe}");
            assert_eq!(fe.backends[0].ip.is_ipv4(), fe.ip.is_ipv4(), "{fe}");
        }
        let v6 = lookup(&fes, ip("fd96::10"), 53, 17).expect("v6 UDP frontend");
        assert_eq!(v6.backends, [Backend { ip: ip("fd77::5"), port: 5353 }]);
        let sctp = lookup(&fes, ip("10.96.0.10"), 9899, 132).expect("SCTP frontend");
        assert_eq!(sctp.backends, [Backend { ip: ip("10.0.0.5"), port: 9900 }]);
        assert!(lookup(&fes, ip("fd96::10"), 9899, 132).is_some());

        // The loader's map entries: 16-byte keys with the family, no notes.
        let (defs, notes) = crate::dataplane::service_defs(&fes);
        assert!(notes.is_empty(), "{notes:?}");
        let d = defs.iter().find(|d| d.frontend.family == 6 && d.frontend.protocol == 17).unwrap();
        assert_eq!(d.frontend.addr, "fd96::10".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!((d.frontend.port, d.backends.len()), (53, 1));
        assert_eq!(d.backends[0].addr, "fd77::5".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!(d.backends[0].port, 5353);
        let d = defs.iter().find(|d| d.frontend.family == 4 && d.frontend.protocol == 132).unwrap();
        assert_eq!(d.frontend.addr[..4], [10, 96, 0, 10]);
        assert_eq!(d.frontend.addr[4..], [0; 12]);
    }

    #[test]
    fn services_without_backends_and_clashing_frontends() {
        let c = load(
            "
apiVersion: v1
kind: Service
metadata: {name: a, namespace: x}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
",
        );
        let fes = frontends(&c).unwrap();
        assert_eq!(fes[0].origin, BackendOrigin::Nothing);
        assert!(fes[0].backends.is_empty());

        let c = load(
            "
apiVersion: v1
kind: Service
metadata: {name: a, namespace: x}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: y}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
",
        );
        let err = frontends(&c).unwrap_err().to_string();
        assert!(err.contains("also used by service x/a"), "{err}");
        assert!(err.contains("t.yaml doc 2"), "{err}");
    }
}
