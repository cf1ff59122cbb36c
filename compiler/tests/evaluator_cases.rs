//! The reference evaluator against hand-written expectations: one small cluster (tests/
//! evaluator_base.yaml, inlined below) plus one policy document per case, a flow, and the
//! verdict and trace that Kubernetes/Calico semantics prescribe (worked out by hand from the
//! docs, never by running the evaluator). Also the IR snapshot of testdata/demo.
//!
//! Trace notation, per direction, steps joined by " > ":
//! `ACTION:TIER:POLICY#RULE` for a rule hit (log/pass/allow/deny), `ACTION:tier-default:TIER`,
//! `allow:no-policy`, `allow:profile` (passed out of the last tier), `-` (not a pod).

use polc::explain::{explain, Engine, Query};
use polc::frontend::load_str;
use polc_ir::TraceStep;

/// Namespaces shop (team=shop), monitoring (team=observability), payments, and implicit
/// `other`; pods:
/// shop/web 10.0.1.1 + fd00::1 (app=web, sa web [role=frontend], port http 8080/TCP),
/// shop/db 10.0.1.2 (app=db tier=db, pg 5432/TCP, dns 53/UDP), shop/cache 10.0.1.3 (app=cache,
/// http 9000/TCP), monitoring/prom 10.0.2.1 (app=prometheus), monitoring/grafana 10.0.2.2,
/// other/client 10.0.3.1 (app=web), payments/api 10.0.4.1 + fd00::4 (app=api);
/// NetworkSet shop/partners (kind=partner) 198.51.100.0/24; GlobalNetworkSet feed (feed=bad)
/// 203.0.113.0/24, 2001:db8:bad::/48.
const BASE: &str = include_str!("evaluator_base.yaml");

struct Case {
    name: &'static str,
    policy: &'static str,
    from: &'static str,
    to: &'static str,
    proto: &'static str,
    port: Option<u16>,
    icmp: Option<(u8, u8)>,
    verdict: &'static str,
    egress: &'static str,
    ingress: &'static str,
}

/// A TCP row of the table (one argument per column, hence the many arguments).
#[allow(clippy::too_many_arguments)]
const fn tcp(
    name: &'static str,
    policy: &'static str,
    from: &'static str,
    to: &'static str,
    port: u16,
    verdict: &'static str,
    egress: &'static str,
    ingress: &'static str,
) -> Case {
    Case {
        name,
        policy,
        from,
        to,
        proto: "tcp",
        port: Some(port),
        icmp: None,
        verdict,
        egress,
        ingress,
    }
}

fn render(step: &TraceStep) -> String {
    match step {
        TraceStep::Log(h) | TraceStep::Pass(h) | TraceStep::Rule(h) => {
            format!("{}:{}:{}#{}", h.action.as_str(), h.tier, h.policy, h.rule_index)
        }
        TraceStep::TierDefault { tier, action } => {
            format!("{}:tier-default:{tier}", action.as_str())
        }
        TraceStep::NoPolicy => "allow:no-policy".into(),
        TraceStep::ProfileAfterPass => "allow:profile".into(),
        TraceStep::NotOwnAddress => "deny:not-own-address".into(),
    }
}

fn trace(d: &Option<polc::explain::DirectionResult>) -> String {
    match d {
        None => "-".into(),
        Some(r) => r.decision.trace.iter().map(render).collect::<Vec<_>>().join(" > "),
    }
}

const K8S_DENY_ALL_SHOP: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#;

const K8S_DB_FROM_WEB: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{protocol: TCP, port: 5432}]
"#;

const K8S_WEB_EGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: 5432}]
"#;

const K8S_ANY_PEER_5432: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: any-peer, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - ports: [{port: 5432}]
"#;

const K8S_EMPTY_RULE: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{}]
"#;

const K8S_PEERS_OR: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: peers-or, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    - ipBlock: {cidr: 192.0.2.0/24}
"#;

const K8S_NS_AND_POD: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ns-and-pod, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: observability}}
      podSelector: {matchLabels: {app: prometheus}}
"#;

const K8S_NS_OR_POD: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ns-or-pod, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: observability}}
    - podSelector: {matchLabels: {app: prometheus}}
"#;

const K8S_ALL_NAMESPACES_WEB: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-anywhere, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector: {matchLabels: {app: web}}
"#;

const K8S_IMPLICIT_NS_BY_NAME: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-other, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}
"#;

const K8S_IPBLOCK_EXCEPT: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ipblock, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.0.3.0/24]}
"#;

const K8S_NAMED_PORT_INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: http-in, namespace: shop}
spec:
  podSelector:
    matchExpressions: [{key: app, operator: In, values: [web, cache]}]
  ingress:
  - ports: [{port: http}]
"#;

const K8S_NAMED_PORT_EGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: http-out, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {}}]
    ports: [{port: http}]
"#;

const K8S_END_PORT: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - ports: [{protocol: TCP, port: 5000, endPort: 5500}]
"#;

const K8S_MIXED_PROTOCOLS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: mixed, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - ports: [{protocol: TCP, port: 5432}, {protocol: UDP, port: 53}]
"#;

const K8S_NOT_IN: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: not-db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector:
        matchExpressions: [{key: tier, operator: NotIn, values: [db]}, {key: app, operator: Exists}]
"#;

const K8S_TWO_POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-cache, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: cache}}}]}]
"#;

// ---- Calico ---------------------------------------------------------------------------------

const SECURITY_TIER_DENY_WEB: &str = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.no-web-to-db}
spec:
  tier: security
  selector: app == 'db'
  ingress:
  - action: Deny
    source: {selector: app == 'web'}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: shop}
spec:
  podSelector: {}
  ingress: [{}]
"#;

const ORDER_DENY_FIRST: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: deny-web, namespace: shop}
spec:
  order: 10
  selector: app == 'db'
  ingress: [{action: Deny, source: {selector: app == 'web'}}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  order: 20
  selector: app == 'db'
  ingress: [{action: Allow, source: {selector: app == 'web'}}]
"#;

const ORDER_ALLOW_FIRST: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: deny-web, namespace: shop}
spec:
  order: 20
  selector: app == 'db'
  ingress: [{action: Deny, source: {selector: app == 'web'}}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  order: 10
  selector: app == 'db'
  ingress: [{action: Allow, source: {selector: app == 'web'}}]
"#;

const ORDER_TIE_BY_NAME: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: b-allow, namespace: shop}
spec:
  order: 10
  selector: app == 'db'
  ingress: [{action: Allow}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: a-deny, namespace: shop}
spec:
  order: 10
  selector: app == 'db'
  ingress: [{action: Deny}]
"#;

const ORDER_MISSING_IS_LAST: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: a-unordered-allow, namespace: shop}
spec:
  selector: app == 'db'
  ingress: [{action: Allow}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: z-ordered-deny, namespace: shop}
spec:
  order: 5000
  selector: app == 'db'
  ingress: [{action: Deny}]
"#;

const K8S_IS_ORDER_1000_BEFORE: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: deny-999, namespace: shop}
spec:
  order: 999
  selector: app == 'db'
  ingress: [{action: Deny}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: shop}
spec:
  podSelector: {}
  ingress: [{}]
"#;

const K8S_IS_ORDER_1000_AFTER: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: deny-1001, namespace: shop}
spec:
  order: 1001
  selector: app == 'db'
  ingress: [{action: Deny}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: shop}
spec:
  podSelector: {}
  ingress: [{}]
"#;

const TIER_ORDER: &str = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: late}
spec: {order: 200}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: early}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: late.deny}
spec:
  tier: late
  selector: app == 'db'
  ingress: [{action: Deny}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: early.allow}
spec:
  tier: early
  selector: app == 'db'
  ingress: [{action: Allow}]
"#;

const TIER_UNORDERED_AFTER_DEFAULT: &str = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: aaa-unordered}
spec: {}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: aaa-unordered.deny}
spec:
  tier: aaa-unordered
  selector: app == 'db'
  ingress: [{action: Deny}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: default-allow}
spec:
  selector: app == 'db'
  ingress: [{action: Allow}]
"#;

const TIER_TIE_BY_NAME: &str = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: beta}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: alpha}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: beta.allow}
spec: {tier: beta, selector: app == 'db', ingress: [{action: Allow}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: alpha.deny}
spec: {tier: alpha, selector: app == 'db', ingress: [{action: Deny}]}
"#;

const PASS_THEN_K8S: &str = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.pass}
spec:
  tier: security
  selector: all()
  ingress: [{action: Pass}, {action: Deny}]
"#;

const PASS_THEN_K8S_DENY: &str = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.pass}
spec:
  tier: security
  selector: all()
  ingress: [{action: Pass}, {action: Deny}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#;

const LOG_THEN_ALLOW: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: log-then-allow, namespace: shop}
spec:
  selector: app == 'db'
  ingress:
  - action: Log
  - action: Allow
    protocol: TCP
    destination: {ports: [5432]}
"#;

const TIER_DEFAULT_PASS: &str = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100, defaultAction: Pass}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.block-partner}
spec:
  tier: security
  selector: all()
  ingress: [{action: Deny, source: {nets: [198.51.100.0/24]}}]
"#;

const TIER_DEFAULT_DENY: &str = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.block-partner}
spec:
  tier: security
  selector: all()
  ingress: [{action: Deny, source: {nets: [198.51.100.0/24]}}]
"#;

const CALICO_TYPES_DEFAULT_EGRESS_ONLY: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: egress-only}
spec:
  selector: all()
  egress: [{action: Deny, protocol: TCP, destination: {ports: [5432]}}]
"#;

const CALICO_NS_SCOPED_SELECTOR: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: web-only, namespace: shop}
spec:
  selector: app == 'db'
  ingress: [{action: Allow, source: {selector: app == 'web'}}]
"#;

const CALICO_RULE_NAMESPACE_SELECTOR: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: from-observability, namespace: shop}
spec:
  selector: app == 'db'
  ingress: [{action: Allow, source: {namespaceSelector: team == 'observability', selector: app == 'prometheus'}}]
"#;

const CALICO_NP_NOT_SELECTOR: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: not-cache, namespace: shop}
spec:
  selector: app == 'db'
  ingress: [{action: Allow, source: {notSelector: app == 'cache'}}]
"#;

const GNP_NOT_SELECTOR: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: not-cache}
spec:
  selector: app == 'db'
  ingress: [{action: Allow, source: {notSelector: app == 'cache'}}]
"#;

const CALICO_NE_ABSENT: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: not-db-tier}
spec:
  selector: app == 'cache'
  ingress: [{action: Allow, source: {selector: tier != 'db'}}]
"#;

const CALICO_GLOBAL_SET_FROM_NP: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: block-feed, namespace: shop}
spec:
  selector: app == 'db'
  ingress:
  - action: Deny
    source: {namespaceSelector: global(), selector: feed == 'bad'}
  - action: Allow
"#;

const CALICO_GLOBAL_SET_NOT_IN_SCOPE: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: block-feed, namespace: shop}
spec:
  selector: app == 'db'
  ingress:
  - action: Deny
    source: {selector: feed == 'bad'}
  - action: Allow
"#;

const GNP_FEED: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: block-feed}
spec:
  selector: all()
  ingress:
  - action: Deny
    source: {selector: feed == 'bad'}
  - action: Allow
"#;

const CALICO_NETWORK_SET: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: partners-only, namespace: shop}
spec:
  selector: app == 'db'
  ingress: [{action: Allow, source: {selector: kind == 'partner'}}]
"#;

const CALICO_SA_NAMES: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: sa-web, namespace: shop}
spec:
  selector: app == 'db'
  ingress: [{action: Allow, source: {serviceAccounts: {names: [web]}}}]
"#;

const CALICO_SA_SELECTOR: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: sa-frontend, namespace: shop}
spec:
  selector: app == 'db'
  ingress: [{action: Allow, source: {serviceAccounts: {selector: role == 'frontend'}}}]
"#;

const CALICO_ICMP: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: icmp}
spec:
  selector: app == 'db'
  ingress:
  - action: Allow
    protocol: ICMP
    icmp: {type: 8}
  - action: Allow
    protocol: ICMP
    icmp: {type: 3, code: 4}
"#;

const CALICO_NOT_ICMP: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: not-echo}
spec:
  selector: app == 'db'
  ingress:
  - action: Allow
    protocol: ICMP
    notICMP: {type: 8}
"#;

const CALICO_IP_VERSION_6: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: v6-only}
spec:
  selector: app == 'api'
  ingress:
  - action: Allow
    ipVersion: 6
"#;

const CALICO_V6_NETS: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: v6-nets}
spec:
  selector: app == 'api'
  ingress:
  - action: Allow
    source: {nets: ["fd00::/64"]}
"#;

const CALICO_NEGATIONS: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: negations}
spec:
  selector: app == 'db'
  ingress:
  - action: Deny
    notProtocol: TCP
  - action: Deny
    source: {notNets: [10.0.1.0/24]}
  - action: Allow
    protocol: TCP
    destination: {notPorts: [22, "6000:7000"]}
"#;

const CALICO_NAMED_PORT_DST_SELECTOR: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: web-to-cache-http}
spec:
  selector: app == 'web'
  types: [Egress]
  egress:
  - action: Allow
    protocol: TCP
    destination: {selector: app == 'cache', ports: [http]}
"#;

const GNP_NAMESPACE_SELECTOR: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: shop-deny}
spec:
  namespaceSelector: team == 'shop'
  selector: all()
  ingress: [{action: Deny}]
"#;

const GNP_AUTOMATIC_NAMESPACE_LABEL: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: payments-deny}
spec:
  selector: projectcalico.org/namespace == 'payments'
  ingress: [{action: Deny}]
"#;

const GNP_PASS_ONLY: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: pass-all}
spec:
  selector: all()
  types: [Ingress, Egress]
  ingress: [{action: Pass}]
  egress: [{action: Pass}]
"#;

fn cases() -> Vec<Case> {
    let none = "allow:no-policy";
    vec![
        // ---- defaults
        tcp("no policy anywhere allows", "", "shop/web", "shop/db", 5432, "allow", none, none),
        tcp(
            "k8s default deny ingress ends in the default tier's deny",
            K8S_DENY_ALL_SHOP, "shop/web", "shop/db", 5432, "deny",
            none, "deny:tier-default:default",
        ),
        tcp(
            "k8s policy does not touch other namespaces",
            K8S_DENY_ALL_SHOP, "shop/web", "payments/api", 80, "allow", none, none,
        ),
        // ---- Kubernetes rules
        tcp(
            "k8s ingress rule allows the selected peer and port",
            K8S_DB_FROM_WEB, "shop/web", "shop/db", 5432, "allow",
            none, "allow:default:shop/db-from-web#0",
        ),
        tcp(
            "k8s ingress rule: other port falls to the tier default",
            K8S_DB_FROM_WEB, "shop/web", "shop/db", 5433, "deny",
            none, "deny:tier-default:default",
        ),
        tcp(
            "k8s policyTypes default is Ingress only without egress rules",
            K8S_DB_FROM_WEB, "shop/db", "shop/web", 8080, "allow", none, none,
        ),
        tcp(
            "k8s policyTypes default adds Egress when egress rules exist (allowed)",
            K8S_WEB_EGRESS, "shop/web", "shop/db", 5432, "allow",
            "allow:default:shop/web-egress#0", none,
        ),
        tcp(
            "k8s egress isolation denies other destinations",
            K8S_WEB_EGRESS, "shop/web", "shop/cache", 9000, "deny",
            "deny:tier-default:default", none,
        ),
        tcp(
            "k8s policyTypes default still isolates ingress (empty ingress list)",
            K8S_WEB_EGRESS, "shop/cache", "shop/web", 8080, "deny",
            none, "deny:tier-default:default",
        ),
        tcp(
            "k8s rule without from matches every peer, even outside the cluster",
            K8S_ANY_PEER_5432, "8.8.8.8", "shop/db", 5432, "allow",
            "-", "allow:default:shop/any-peer#0",
        ),
        tcp(
            "k8s empty rule {} allows everything",
            K8S_EMPTY_RULE, "monitoring/grafana", "shop/db", 1, "allow",
            none, "allow:default:shop/allow-all#0",
        ),
        tcp(
            "k8s peers are OR'ed: ipBlock peer",
            K8S_PEERS_OR, "192.0.2.5", "shop/db", 5432, "allow",
            "-", "allow:default:shop/peers-or#0",
        ),
        tcp(
            "k8s peers are OR'ed: pod peer",
            K8S_PEERS_OR, "shop/web", "shop/db", 5432, "allow",
            none, "allow:default:shop/peers-or#0",
        ),
        tcp(
            "k8s peers are OR'ed: neither",
            K8S_PEERS_OR, "shop/cache", "shop/db", 5432, "deny",
            none, "deny:tier-default:default",
        ),
        tcp(
            "k8s namespaceSelector AND podSelector: both match",
            K8S_NS_AND_POD, "monitoring/prom", "shop/db", 9090, "allow",
            none, "allow:default:shop/ns-and-pod#0",
        ),
        tcp(
            "k8s namespaceSelector AND podSelector: namespace only",
            K8S_NS_AND_POD, "monitoring/grafana", "shop/db", 9090, "deny",
            none, "deny:tier-default:default",
        ),
        tcp(
            "k8s separate namespaceSelector and podSelector peers are OR'ed",
            K8S_NS_OR_POD, "monitoring/grafana", "shop/db", 9090, "allow",
            none, "allow:default:shop/ns-or-pod#0",
        ),
        tcp(
            "k8s podSelector-only peer is scoped to the policy namespace",
            K8S_NS_OR_POD, "other/client", "shop/db", 9090, "deny",
            none, "deny:tier-default:default",
        ),
        tcp(
            "k8s podSelector peer with empty namespaceSelector spans namespaces",
            K8S_ALL_NAMESPACES_WEB, "other/client", "shop/db", 5432, "allow",
            none, "allow:default:shop/web-anywhere#0",
        ),
        tcp(
            "k8s namespace named only by a pod has kubernetes.io/metadata.name",
            K8S_IMPLICIT_NS_BY_NAME, "other/client", "shop/db", 5432, "allow",
            none, "allow:default:shop/from-other#0",
        ),
        tcp(
            "k8s ipBlock cidr matches",
            K8S_IPBLOCK_EXCEPT, "shop/web", "shop/db", 5432, "allow",
            none, "allow:default:shop/ipblock#0",
        ),
        tcp(
            "k8s ipBlock except carves out",
            K8S_IPBLOCK_EXCEPT, "other/client", "shop/db", 5432, "deny",
            none, "deny:tier-default:default",
        ),
        tcp(
            "k8s named port resolves on the destination pod (web: http=8080)",
            K8S_NAMED_PORT_INGRESS, "shop/db", "shop/web", 8080, "allow",
            none, "allow:default:shop/http-in#0",
        ),
        tcp(
            "k8s named port: web's http is not 9000",
            K8S_NAMED_PORT_INGRESS, "shop/db", "shop/web", 9000, "deny",
            none, "deny:tier-default:default",
        ),
        tcp(
            "k8s named port resolves on the destination pod (cache: http=9000)",
            K8S_NAMED_PORT_INGRESS, "shop/db", "shop/cache", 9000, "allow",
            none, "allow:default:shop/http-in#0",
        ),
        tcp(
            "k8s named port egress: resolves on the destination peer",
            K8S_NAMED_PORT_EGRESS, "shop/web", "shop/cache", 9000, "allow",
            "allow:default:shop/http-out#0", none,
        ),
        tcp(
            "k8s named port egress: another pod's http number does not count",
            K8S_NAMED_PORT_EGRESS, "shop/web", "shop/cache", 8080, "deny",
            "deny:tier-default:default", none,
        ),
        tcp(
            "k8s named port egress: destination without the named port",
            K8S_NAMED_PORT_EGRESS, "shop/web", "shop/db", 5432, "deny",
            "deny:tier-default:default", none,
        ),
        tcp(
            "k8s endPort: inside the range",
            K8S_END_PORT, "shop/web", "shop/db", 5432, "allow",
            none, "allow:default:shop/range#0",
        ),
        tcp(
            "k8s endPort: upper bound inclusive",
            K8S_END_PORT, "shop/web", "shop/db", 5500, "allow",
            none, "allow:default:shop/range#0",
        ),
        tcp(
            "k8s endPort: above the range",
            K8S_END_PORT, "shop/web", "shop/db", 5501, "deny",
            none, "deny:tier-default:default",
        ),
        Case {
            name: "k8s port without protocol is TCP only",
            policy: K8S_ANY_PEER_5432, from: "shop/web", to: "shop/db", proto: "udp",
            port: Some(5432), icmp: None, verdict: "deny",
            egress: none, ingress: "deny:tier-default:default",
        },
        Case {
            name: "k8s ports are OR'ed per protocol: udp 53",
            policy: K8S_MIXED_PROTOCOLS, from: "shop/web", to: "shop/db", proto: "udp",
            port: Some(53), icmp: None, verdict: "allow",
            egress: none, ingress: "allow:default:shop/mixed#0",
        },
        tcp(
            "k8s ports do not cross protocols: tcp 53",
            K8S_MIXED_PROTOCOLS, "shop/web", "shop/db", 53, "deny",
            none, "deny:tier-default:default",
        ),
        Case {
            name: "k8s port rule never matches ICMP",
            policy: K8S_ANY_PEER_5432, from: "shop/web", to: "shop/db", proto: "icmp",
            port: None, icmp: Some((8, 0)), verdict: "deny",
            egress: none, ingress: "deny:tier-default:default",
        },
        tcp(
            "k8s NotIn matches a pod without the key",
            K8S_NOT_IN, "shop/web", "shop/db", 5432, "allow",
            none, "allow:default:shop/not-db#0",
        ),
        tcp(
            "k8s policies are additive: the second one allows",
            K8S_TWO_POLICIES, "shop/cache", "shop/db", 5432, "allow",
            none, "allow:default:shop/from-cache#0",
        ),
        // ---- Calico ordering
        tcp(
            "calico tier before the default tier: deny wins over the k8s allow",
            SECURITY_TIER_DENY_WEB, "shop/web", "shop/db", 5432, "deny",
            none, "deny:security:security.no-web-to-db#0",
        ),
        tcp(
            "calico tier with no matching rule ends in its default deny",
            SECURITY_TIER_DENY_WEB, "shop/cache", "shop/db", 5432, "deny",
            none, "deny:tier-default:security",
        ),
        tcp(
            "calico lower order first (deny 10 before allow 20)",
            ORDER_DENY_FIRST, "shop/web", "shop/db", 5432, "deny",
            none, "deny:default:shop/deny-web#0",
        ),
        tcp(
            "calico lower order first (allow 10 before deny 20)",
            ORDER_ALLOW_FIRST, "shop/web", "shop/db", 5432, "allow",
            none, "allow:default:shop/allow-web#0",
        ),
        tcp(
            "calico equal order: by name",
            ORDER_TIE_BY_NAME, "shop/web", "shop/db", 5432, "deny",
            none, "deny:default:shop/a-deny#0",
        ),
        tcp(
            "calico missing order is after every ordered policy",
            ORDER_MISSING_IS_LAST, "shop/web", "shop/db", 5432, "deny",
            none, "deny:default:shop/z-ordered-deny#0",
        ),
        tcp(
            "k8s policy is order 1000: a 999 Calico policy goes first",
            K8S_IS_ORDER_1000_BEFORE, "shop/web", "shop/db", 5432, "deny",
            none, "deny:default:shop/deny-999#0",
        ),
        tcp(
            "k8s policy is order 1000: a 1001 Calico policy goes after",
            K8S_IS_ORDER_1000_AFTER, "shop/web", "shop/db", 5432, "allow",
            none, "allow:default:shop/allow-all#0",
        ),
        tcp(
            "calico tiers by order",
            TIER_ORDER, "shop/web", "shop/db", 5432, "allow",
            none, "allow:early:early.allow#0",
        ),
        tcp(
            "calico tier without order comes after the default tier",
            TIER_UNORDERED_AFTER_DEFAULT, "shop/web", "shop/db", 5432, "allow",
            none, "allow:default:default-allow#0",
        ),
        tcp(
            "calico tiers of equal order: by name",
            TIER_TIE_BY_NAME, "shop/web", "shop/db", 5432, "deny",
            none, "deny:alpha:alpha.deny#0",
        ),
        tcp(
            "calico Pass jumps to the next tier (k8s policy there denies)",
            PASS_THEN_K8S_DENY, "shop/web", "shop/db", 5432, "deny",
            none, "pass:security:security.pass#0 > deny:tier-default:default",
        ),
        tcp(
            "calico Pass out of the last tier: profile allows",
            PASS_THEN_K8S, "shop/web", "shop/db", 5432, "allow",
            none, "pass:security:security.pass#0 > allow:profile",
        ),
        tcp(
            "calico Pass in both directions",
            GNP_PASS_ONLY, "shop/web", "shop/db", 5432, "allow",
            "pass:default:pass-all#0 > allow:profile", "pass:default:pass-all#0 > allow:profile",
        ),
        tcp(
            "calico Log records and continues",
            LOG_THEN_ALLOW, "shop/web", "shop/db", 5432, "allow",
            none, "log:default:shop/log-then-allow#0 > allow:default:shop/log-then-allow#1",
        ),
        tcp(
            "calico Log then nothing decides: tier default deny",
            LOG_THEN_ALLOW, "shop/web", "shop/db", 22, "deny",
            none, "log:default:shop/log-then-allow#0 > deny:tier-default:default",
        ),
        tcp(
            "calico tier defaultAction Pass continues (then profile)",
            TIER_DEFAULT_PASS, "shop/web", "shop/db", 5432, "allow",
            none, "pass:tier-default:security > allow:profile",
        ),
        tcp(
            "calico tier defaultAction Pass: the tier's own deny still applies",
            TIER_DEFAULT_PASS, "198.51.100.9", "shop/db", 5432, "deny",
            "-", "deny:security:security.block-partner#0",
        ),
        tcp(
            "calico tier defaultAction Deny (the default)",
            TIER_DEFAULT_DENY, "shop/web", "shop/db", 5432, "deny",
            none, "deny:tier-default:security",
        ),
        // ---- Calico matching
        tcp(
            "calico types default: egress rules only -> Egress only (egress denied)",
            CALICO_TYPES_DEFAULT_EGRESS_ONLY, "shop/web", "shop/db", 5432, "deny",
            "deny:default:egress-only#0", none,
        ),
        tcp(
            "calico types default: egress-only policy leaves ingress alone",
            CALICO_TYPES_DEFAULT_EGRESS_ONLY, "8.8.8.8", "shop/db", 5432, "allow", "-", none,
        ),
        tcp(
            "calico NP rule selector scoped to its namespace: same namespace",
            CALICO_NS_SCOPED_SELECTOR, "shop/web", "shop/db", 5432, "allow",
            none, "allow:default:shop/web-only#0",
        ),
        tcp(
            "calico NP rule selector scoped to its namespace: same labels elsewhere",
            CALICO_NS_SCOPED_SELECTOR, "other/client", "shop/db", 5432, "deny",
            none, "deny:tier-default:default",
        ),
        tcp(
            "calico rule namespaceSelector widens the scope",
            CALICO_RULE_NAMESPACE_SELECTOR, "monitoring/prom", "shop/db", 9090, "allow",
            none, "allow:default:shop/from-observability#0",
        ),
        tcp(
            "calico rule namespaceSelector AND selector",
            CALICO_RULE_NAMESPACE_SELECTOR, "monitoring/grafana", "shop/db", 9090, "deny",
            none, "deny:tier-default:default",
        ),
        tcp(
            "calico NP notSelector: other endpoints of the namespace match",
            CALICO_NP_NOT_SELECTOR, "shop/web", "shop/db", 5432, "allow",
            none, "allow:default:shop/not-cache#0",
        ),
        tcp(
            "calico NP notSelector: the excluded endpoint",
            CALICO_NP_NOT_SELECTOR, "shop/cache", "shop/db", 5432, "deny",
            none, "deny:tier-default:default",
        ),
        tcp(
            "calico NP notSelector still requires the policy namespace",
            CALICO_NP_NOT_SELECTOR, "8.8.8.8", "shop/db", 5432, "deny",
            "-", "deny:tier-default:default",
        ),
        tcp(
            "calico GNP notSelector alone matches any other address",
            GNP_NOT_SELECTOR, "8.8.8.8", "shop/db", 5432, "allow",
            "-", "allow:default:not-cache#0",
        ),
        tcp(
            "calico GNP notSelector excludes the endpoint",
            GNP_NOT_SELECTOR, "shop/cache", "shop/db", 5432, "deny",
            none, "deny:tier-default:default",
        ),
        tcp(
            "calico != matches endpoints without the label",
            CALICO_NE_ABSENT, "shop/web", "shop/cache", 9000, "allow",
            none, "allow:default:not-db-tier#0",
        ),
        tcp(
            "calico != excludes endpoints with the value",
            CALICO_NE_ABSENT, "shop/db", "shop/cache", 9000, "deny",
            none, "deny:tier-default:default",
        ),
        tcp(
            "calico GNP selector with != matches network addresses of no endpoint? no: not selected",
            CALICO_NE_ABSENT, "8.8.8.8", "shop/cache", 9000, "deny",
            "-", "deny:tier-default:default",
        ),
        tcp(
            "calico namespaceSelector global() reaches global network sets",
            CALICO_GLOBAL_SET_FROM_NP, "203.0.113.9", "shop/db", 5432, "deny",
            "-", "deny:default:shop/block-feed#0",
        ),
        tcp(
            "calico global() set does not contain other addresses",
            CALICO_GLOBAL_SET_FROM_NP, "8.8.8.8", "shop/db", 5432, "allow",
            "-", "allow:default:shop/block-feed#1",
        ),
        tcp(
            "calico NP selector without global() does not see global sets",
            CALICO_GLOBAL_SET_NOT_IN_SCOPE, "203.0.113.9", "shop/db", 5432, "allow",
            "-", "allow:default:shop/block-feed#1",
        ),
        tcp(
            "calico GNP selector sees global network sets",
            GNP_FEED, "203.0.113.9", "shop/db", 5432, "deny",
            "-", "deny:default:block-feed#0",
        ),
        tcp(
            "calico namespaced NetworkSet in the policy namespace",
            CALICO_NETWORK_SET, "198.51.100.7", "shop/db", 5432, "allow",
            "-", "allow:default:shop/partners-only#0",
        ),
        tcp(
            "calico NetworkSet does not cover other addresses",
            CALICO_NETWORK_SET, "8.8.8.8", "shop/db", 5432, "deny",
            "-", "deny:tier-default:default",
        ),
        tcp(
            "calico serviceAccounts names",
            CALICO_SA_NAMES, "shop/web", "shop/db", 5432, "allow",
            none, "allow:default:shop/sa-web#0",
        ),
        tcp(
            "calico serviceAccounts names: default SA does not match",
            CALICO_SA_NAMES, "shop/cache", "shop/db", 5432, "deny",
            none, "deny:tier-default:default",
        ),
        tcp(
            "calico serviceAccounts selector on SA labels",
            CALICO_SA_SELECTOR, "shop/web", "shop/db", 5432, "allow",
            none, "allow:default:shop/sa-frontend#0",
        ),
        tcp(
            "calico serviceAccounts selector: unlabelled SA",
            CALICO_SA_SELECTOR, "shop/cache", "shop/db", 5432, "deny",
            none, "deny:tier-default:default",
        ),
        Case {
            name: "calico icmp type matches",
            policy: CALICO_ICMP, from: "shop/web", to: "shop/db", proto: "icmp", port: None,
            icmp: Some((8, 0)), verdict: "allow", egress: none, ingress: "allow:default:icmp#0",
        },
        Case {
            name: "calico icmp other type",
            policy: CALICO_ICMP, from: "shop/web", to: "shop/db", proto: "icmp", port: None,
            icmp: Some((0, 0)), verdict: "deny", egress: none,
            ingress: "deny:tier-default:default",
        },
        Case {
            name: "calico icmp type and code match",
            policy: CALICO_ICMP, from: "shop/web", to: "shop/db", proto: "icmp", port: None,
            icmp: Some((3, 4)), verdict: "allow", egress: none, ingress: "allow:default:icmp#1",
        },
        Case {
            name: "calico icmp code differs",
            policy: CALICO_ICMP, from: "shop/web", to: "shop/db", proto: "icmp", port: None,
            icmp: Some((3, 1)), verdict: "deny", egress: none,
            ingress: "deny:tier-default:default",
        },
        Case {
            name: "calico notICMP excludes the type",
            policy: CALICO_NOT_ICMP, from: "shop/web", to: "shop/db", proto: "icmp", port: None,
            icmp: Some((8, 0)), verdict: "deny", egress: none,
            ingress: "deny:tier-default:default",
        },
        Case {
            name: "calico notICMP allows other types",
            policy: CALICO_NOT_ICMP, from: "shop/web", to: "shop/db", proto: "icmp", port: None,
            icmp: Some((0, 0)), verdict: "allow", egress: none,
            ingress: "allow:default:not-echo#0",
        },
        tcp(
            "calico ipVersion 6 matches an IPv6 flow",
            CALICO_IP_VERSION_6, "fd00::1", "payments/api", 443, "allow",
            none, "allow:default:v6-only#0",
        ),
        tcp(
            "calico ipVersion 6 does not match IPv4",
            CALICO_IP_VERSION_6, "shop/web", "payments/api", 443, "deny",
            none, "deny:tier-default:default",
        ),
        Case {
            name: "calico IPv6 nets and ICMPv6",
            policy: CALICO_V6_NETS, from: "fd00::1", to: "fd00::4", proto: "icmpv6", port: None,
            icmp: Some((128, 0)), verdict: "allow", egress: none,
            ingress: "allow:default:v6-nets#0",
        },
        tcp(
            "calico IPv6 nets: outside the prefix",
            CALICO_V6_NETS, "2001:db8::1", "payments/api", 443, "deny",
            "-", "deny:tier-default:default",
        ),
        Case {
            name: "calico notProtocol",
            policy: CALICO_NEGATIONS, from: "shop/web", to: "shop/db", proto: "udp",
            port: Some(53), icmp: None, verdict: "deny", egress: none,
            ingress: "deny:default:negations#0",
        },
        tcp(
            "calico notNets",
            CALICO_NEGATIONS, "monitoring/prom", "shop/db", 5432, "deny",
            none, "deny:default:negations#1",
        ),
        tcp(
            "calico notPorts: outside the excluded ports",
            CALICO_NEGATIONS, "shop/web", "shop/db", 5432, "allow",
            none, "allow:default:negations#2",
        ),
        tcp(
            "calico notPorts: inside an excluded range",
            CALICO_NEGATIONS, "shop/web", "shop/db", 6500, "deny",
            none, "deny:tier-default:default",
        ),
        tcp(
            "calico named port against a destination selector",
            CALICO_NAMED_PORT_DST_SELECTOR, "shop/web", "shop/cache", 9000, "allow",
            "allow:default:web-to-cache-http#0", none,
        ),
        tcp(
            "calico named port: the source's own http number does not count",
            CALICO_NAMED_PORT_DST_SELECTOR, "shop/web", "shop/cache", 8080, "deny",
            "deny:tier-default:default", none,
        ),
        tcp(
            "calico GNP namespaceSelector picks the namespace",
            GNP_NAMESPACE_SELECTOR, "payments/api", "shop/db", 5432, "deny",
            none, "deny:default:shop-deny#0",
        ),
        tcp(
            "calico GNP namespaceSelector leaves other namespaces",
            GNP_NAMESPACE_SELECTOR, "shop/db", "payments/api", 80, "allow", none, none,
        ),
        tcp(
            "calico automatic label projectcalico.org/namespace",
            GNP_AUTOMATIC_NAMESPACE_LABEL, "shop/web", "payments/api", 80, "deny",
            none, "deny:default:payments-deny#0",
        ),
        tcp(
            "connection needs egress AND ingress: ingress denies",
            K8S_DB_FROM_WEB, "shop/cache", "shop/db", 5432, "deny",
            none, "deny:tier-default:default",
        ),
    ]
}

#[test]
fn evaluator_cases() {
    let mut failures = Vec::new();
    let all = cases();
    for case in &all {
        let yaml = if case.policy.is_empty() {
            BASE.to_string()
        } else {
            format!("{BASE}\n---\n{}", case.policy)
        };
        let cluster = match load_str("case.yaml", &yaml) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{}: load failed: {e}", case.name));
                continue;
            }
        };
        let query = Query {
            from: case.from.into(),
            to: case.to.into(),
            protocol: case.proto.into(),
            port: case.port,
            src_port: None,
            icmp_type: case.icmp.map(|i| i.0),
            icmp_code: case.icmp.map(|i| i.1),
        };
        match explain(&cluster, &query, Engine::Ir) {
            Err(e) => failures.push(format!("{}: explain failed: {e}", case.name)),
            Ok(ex) => {
                let got = (ex.verdict.as_str(), trace(&ex.egress), trace(&ex.ingress));
                let want = (case.verdict, case.egress.to_string(), case.ingress.to_string());
                if got != want {
                    failures.push(format!("{}:\n   got  {got:?}\n   want {want:?}", case.name));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn ir_demo_snapshot() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/demo");
    let cluster = polc::frontend::load(&[std::path::PathBuf::from(root)]).expect("demo loads");
    let text = polc::lower::lower(&cluster).to_string();
    // Paths in provenance are whatever was passed; make them repository-relative.
    let text = text.replace(concat!(env!("CARGO_MANIFEST_DIR"), "/../"), "");
    insta::with_settings!({
        snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots"),
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_snapshot!("ir_demo", text);
    });
}

/// Rough scale check (run with `--ignored --nocapture`): lowering a synthetic cluster of
/// 2000 pods in 20 namespaces with 200 Kubernetes and 20 Calico policies.
#[test]
#[ignore]
fn lower_scale() {
    let mut y = String::new();
    for i in 0..2000 {
        let ns = i % 20;
        let (a, b) = (i / 250, i % 250);
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: ns{ns}, labels: {{app: a{}, tier: t{}}}}}\nspec: {{containers: [{{name: c, ports: [{{name: http, containerPort: {}}}]}}]}}\nstatus: {{podIP: 10.1.{a}.{b}}}\n",
            i % 50, i % 5, 8000 + i % 3
        ));
    }
    for i in 0..200 {
        y.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{i}, namespace: ns{}}}\nspec:\n  podSelector: {{matchLabels: {{app: a{}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{tier: t{}}}}}}}, {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: a{}}}}}}}]\n    ports: [{{port: http}}, {{protocol: UDP, port: 53}}]\n",
            i % 20, i % 50, i % 5, (i + 1) % 50
        ));
    }
    for i in 0..20 {
        y.push_str(&format!(
            "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: g{i}}}\nspec:\n  order: {i}\n  selector: tier == 't{}'\n  ingress: [{{action: Deny, source: {{selector: app == 'a{i}'}}}}, {{action: Pass}}]\n  egress: [{{action: Allow, protocol: TCP, destination: {{selector: has(app), ports: [http]}}}}]\n",
            i % 5
        ));
    }
    let t = std::time::Instant::now();
    let cluster = load_str("scale.yaml", &y).expect("loads");
    let loaded = t.elapsed();
    let t = std::time::Instant::now();
    let ir = polc::lower::lower(&cluster);
    let lowered = t.elapsed();
    let rules: usize = ir
        .endpoints
        .iter()
        .flat_map(|e| e.tiers.iter())
        .flat_map(|t| &t.policies)
        .map(|p| p.rules.len())
        .sum();
    eprintln!(
        "load {loaded:?}, lower {lowered:?}: {} endpoint-directions, {rules} rules, {} ip sets, {} port sets",
        ir.endpoints.len(),
        ir.ip_sets.len(),
        ir.port_sets.len()
    );
    assert_eq!(ir.endpoints.len(), 4000);
}
