//! Policy table tests in the style of Calico's pol_prog tests: each row is a small policy over
//! one fixed cluster, the endpoint and direction under test, and packets that must be allowed
//! and packets that must be dropped. Every packet runs on the reference evaluator, and on the
//! program compiled at -O0 and at -O2, under rbpf and in the kernel; all must give the row's
//! verdict and name the same deciding rule.
//!
//! Then every row runs again with a filler tier prepended: 12,500 rules that never match the
//! row's packets (nets in 198.18.0.0/15 and 2001:db8:ffff::/48), ending in a tier-wide Pass,
//! so each semantic case also runs through a large program (split into tail-called parts at
//! -O0) and through -O2's class tables built from a large policy.

mod common;

use common::{icmp, icmp6, other, sctp, tcp, udp, Engines, OPT_LEVELS};
use polc::frontend::load_str;
use polc_ir::{Direction, Family, Flow, Verdict};
use std::fmt::Write as _;
use std::time::Instant;

/// Namespaces app (team=app, env=prod), other (team=other, env=prod), dev (team=dev,
/// env=dev). Service accounts app/web (role=frontend), other/client (role=tester),
/// other/batch (role=worker). Pods:
/// - app/web 10.0.1.1 + fd00::1:1 (app=web, tier=frontend; sa web; http 8080/TCP,
///   dns 5353/UDP, diameter 3868/SCTP)
/// - app/db 10.0.1.2 + fd00::1:2 (app=db, tier=backend; sa db; postgres 5432/TCP)
/// - other/client 10.0.2.1 + fd00::2:1 (app=client; sa client)
/// - other/batch 10.0.2.2 (app=batch, role=worker; sa batch)
/// - dev/tool 10.0.3.1 (app=tool, debug=true; sa default; http 9090/TCP)
///
/// Addresses outside the cluster used by rows: 192.0.2.0/24, 8.8.8.8, 198.51.100.0/24,
/// 203.0.113.0/24, 2001:db8::/32 except 2001:db8:ffff::/48 (the filler's).
const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {team: app, env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {team: other, env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {team: dev, env: dev}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: app, labels: {role: frontend}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: other, labels: {role: tester}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: batch, namespace: other, labels: {role: worker}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: app, labels: {app: web, tier: frontend}}
spec:
  serviceAccountName: web
  containers:
  - name: web
    image: nginx:1.27
    ports:
    - {name: http, containerPort: 8080}
    - {name: dns, containerPort: 5353, protocol: UDP}
    - {name: diameter, containerPort: 3868, protocol: SCTP}
status:
  phase: Running
  podIP: 10.0.1.1
  podIPs: [{ip: 10.0.1.1}, {ip: "fd00::1:1"}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: app, labels: {app: db, tier: backend}}
spec:
  serviceAccountName: db
  containers:
  - name: postgres
    image: postgres:16
    ports:
    - {name: postgres, containerPort: 5432}
status:
  phase: Running
  podIP: 10.0.1.2
  podIPs: [{ip: 10.0.1.2}, {ip: "fd00::1:2"}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: other, labels: {app: client}}
spec:
  serviceAccountName: client
  containers: [{name: curl, image: "curlimages/curl:8.10.1"}]
status:
  phase: Running
  podIP: 10.0.2.1
  podIPs: [{ip: 10.0.2.1}, {ip: "fd00::2:1"}]
---
apiVersion: v1
kind: Pod
metadata: {name: batch, namespace: other, labels: {app: batch, role: worker}}
spec:
  serviceAccountName: batch
  containers: [{name: job, image: "busybox:1.36"}]
status:
  phase: Running
  podIP: 10.0.2.2
---
apiVersion: v1
kind: Pod
metadata: {name: tool, namespace: dev, labels: {app: tool, debug: "true"}}
spec:
  containers:
  - name: tool
    image: "busybox:1.36"
    ports:
    - {name: http, containerPort: 9090}
status:
  phase: Running
  podIP: 10.0.3.1
"#;

const WEB: &str = "app/web";
const DB: &str = "app/db";
const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;

struct Row {
    name: &'static str,
    /// Policy objects (and any tiers or network sets) added to [`BASE`].
    policy: &'static str,
    endpoint: &'static str,
    direction: Direction,
    allowed: Vec<Flow>,
    dropped: Vec<Flow>,
}

fn row(
    name: &'static str,
    endpoint: &'static str,
    direction: Direction,
    policy: &'static str,
    allowed: Vec<Flow>,
    dropped: Vec<Flow>,
) -> Row {
    Row { name, policy, endpoint, direction, allowed, dropped }
}

/// The rows to run: all, or those whose name contains `POLC_TABLE_ROW` (to debug one row).
fn selected_rows() -> Vec<Row> {
    let only = std::env::var("POLC_TABLE_ROW").ok();
    rows().into_iter().filter(|r| only.as_deref().is_none_or(|o| r.name.contains(o))).collect()
}

/// The table. Flows are written as the packet on the wire: for an ingress row the endpoint is
/// the destination, for an egress row the source.
fn rows() -> Vec<Row> {
    vec![
        // ---------------------------------------------------------------- Kubernetes ----
        row(
            "k8s default deny ingress",
            WEB,
            IN,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: app}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#,
            vec![],
            vec![
                tcp("10.0.2.1:31245", "10.0.1.1:8080"),
                udp("10.0.1.2:5353", "10.0.1.1:5353"),
                icmp("8.8.8.8", "10.0.1.1", 8, 0),
                tcp("[fd00::2:1]:40000", "[fd00::1:1]:8080"),
            ],
        ),
        row(
            "k8s default deny ingress leaves egress open",
            WEB,
            OUT,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: app}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#,
            vec![
                tcp("10.0.1.1:31245", "8.8.8.8:443"),
                udp("[fd00::1:1]:1000", "[2001:db8::53]:53"),
            ],
            vec![],
        ),
        row(
            "k8s allow from pod selector",
            WEB,
            IN,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-db, namespace: app}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: db}}}]
"#,
            vec![
                tcp("10.0.1.2:40000", "10.0.1.1:8080"),
                udp("10.0.1.2:40000", "10.0.1.1:53"),
                tcp("[fd00::1:2]:40000", "[fd00::1:1]:8080"),
            ],
            vec![
                tcp("10.0.2.1:40000", "10.0.1.1:8080"),
                tcp("10.0.3.1:40000", "10.0.1.1:8080"),
                tcp("[fd00::2:1]:40000", "[fd00::1:1]:8080"),
            ],
        ),
        row(
            "k8s namespace selector",
            WEB,
            IN,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-other, namespace: app}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: other}}}]
"#,
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080"), sctp("10.0.2.2:3868", "10.0.1.1:3868")],
            vec![
                tcp("10.0.1.2:40000", "10.0.1.1:8080"),
                tcp("10.0.3.1:40000", "10.0.1.1:8080"),
                tcp("192.0.2.10:40000", "10.0.1.1:8080"),
            ],
        ),
        row(
            "k8s namespace AND pod selector in one peer",
            WEB,
            IN,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: batch-only, namespace: app}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: other}}
      podSelector: {matchLabels: {app: batch}}
"#,
            vec![tcp("10.0.2.2:40000", "10.0.1.1:8080")],
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080"), tcp("10.0.1.2:40000", "10.0.1.1:8080")],
        ),
        row(
            "k8s namespace OR pod selector as two peers",
            WEB,
            IN,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dev-or-db, namespace: app}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: dev}}
    - podSelector: {matchLabels: {app: db}}
"#,
            vec![tcp("10.0.3.1:40000", "10.0.1.1:8080"), tcp("10.0.1.2:40000", "10.0.1.1:8080")],
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080"), tcp("10.0.2.2:40000", "10.0.1.1:8080")],
        ),
        row(
            "k8s match expressions",
            WEB,
            IN,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: expressions, namespace: app}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [web, api]}]}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: env, operator: In, values: [dev]}]}
    - podSelector: {matchExpressions: [{key: tier, operator: Exists}]}
"#,
            vec![tcp("10.0.3.1:40000", "10.0.1.1:8080"), tcp("10.0.1.2:40000", "10.0.1.1:8080")],
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080"), tcp("10.0.2.2:40000", "10.0.1.1:8080")],
        ),
        row(
            "k8s ports with protocols",
            WEB,
            IN,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ports, namespace: app}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 8080}, {protocol: UDP, port: 5353}]
"#,
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080"), udp("8.8.8.8:53", "10.0.1.1:5353")],
            vec![
                tcp("10.0.2.1:40000", "10.0.1.1:5353"),
                udp("10.0.2.1:40000", "10.0.1.1:8080"),
                tcp("10.0.2.1:40000", "10.0.1.1:8081"),
                sctp("10.0.2.1:40000", "10.0.1.1:8080"),
                icmp("10.0.2.1", "10.0.1.1", 8, 0),
            ],
        ),
        row(
            "k8s endPort range",
            WEB,
            IN,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: app}
spec:
  podSelector: {}
  ingress:
  - ports: [{protocol: TCP, port: 8000, endPort: 8100}]
"#,
            vec![
                tcp("10.0.2.1:40000", "10.0.1.1:8000"),
                tcp("10.0.2.1:40000", "10.0.1.1:8050"),
                tcp("10.0.2.1:40000", "10.0.1.1:8100"),
            ],
            vec![
                tcp("10.0.2.1:40000", "10.0.1.1:7999"),
                tcp("10.0.2.1:40000", "10.0.1.1:8101"),
                udp("10.0.2.1:40000", "10.0.1.1:8050"),
            ],
        ),
        row(
            "k8s named port resolves on the destination pod",
            WEB,
            IN,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: http, namespace: app}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: http}, {protocol: UDP, port: dns}]
"#,
            vec![
                tcp("10.0.2.1:40000", "10.0.1.1:8080"),
                udp("10.0.2.1:40000", "10.0.1.1:5353"),
                tcp("[fd00::2:1]:40000", "[fd00::1:1]:8080"),
            ],
            vec![
                tcp("10.0.2.1:40000", "10.0.1.1:9090"),
                tcp("10.0.2.1:40000", "10.0.1.1:5353"),
                udp("10.0.2.1:40000", "10.0.1.1:8080"),
            ],
        ),
        row(
            "k8s named port means another number on another pod",
            "dev/tool",
            IN,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: http, namespace: dev}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: http}]
"#,
            vec![tcp("10.0.1.1:40000", "10.0.3.1:9090")],
            vec![tcp("10.0.1.1:40000", "10.0.3.1:8080")],
        ),
        row(
            "k8s ipBlock with except",
            WEB,
            IN,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ipblock, namespace: app}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25, 192.0.2.64/32]}}]
"#,
            vec![
                tcp("192.0.2.0:40000", "10.0.1.1:8080"),
                tcp("192.0.2.63:40000", "10.0.1.1:8080"),
                tcp("192.0.2.65:40000", "10.0.1.1:8080"),
                tcp("192.0.2.127:40000", "10.0.1.1:8080"),
            ],
            vec![
                tcp("192.0.2.64:40000", "10.0.1.1:8080"),
                tcp("192.0.2.128:40000", "10.0.1.1:8080"),
                tcp("192.0.2.255:40000", "10.0.1.1:8080"),
                tcp("192.0.3.1:40000", "10.0.1.1:8080"),
                tcp("10.0.2.1:40000", "10.0.1.1:8080"),
            ],
        ),
        row(
            "k8s IPv6 ipBlock with except",
            WEB,
            IN,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ipblock6, namespace: app}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: "2001:db8::/32", except: ["2001:db8:1::/48"]}}]
"#,
            vec![
                tcp("[2001:db8::10]:40000", "[fd00::1:1]:8080"),
                tcp("[2001:db8:2::1]:40000", "[fd00::1:1]:8080"),
            ],
            vec![
                tcp("[2001:db8:1::5]:40000", "[fd00::1:1]:8080"),
                tcp("[2001:db9::1]:40000", "[fd00::1:1]:8080"),
                tcp("8.8.8.8:40000", "10.0.1.1:8080"),
            ],
        ),
        row(
            "k8s SCTP port",
            WEB,
            IN,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sctp, namespace: app}
spec:
  podSelector: {}
  ingress:
  - ports: [{protocol: SCTP, port: 3868}]
"#,
            vec![sctp("10.0.2.1:3868", "10.0.1.1:3868")],
            vec![tcp("10.0.2.1:3868", "10.0.1.1:3868"), sctp("10.0.2.1:3868", "10.0.1.1:3869")],
        ),
        row(
            "k8s egress to pods and DNS",
            WEB,
            OUT,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-egress, namespace: app}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: 5432}]
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]
    ports: [{protocol: UDP, port: 53}]
"#,
            vec![tcp("10.0.1.1:40000", "10.0.1.2:5432"), udp("10.0.1.1:40000", "8.8.8.8:53")],
            vec![
                tcp("10.0.1.1:40000", "10.0.1.2:5433"),
                tcp("10.0.1.1:40000", "8.8.8.8:443"),
                tcp("10.0.1.1:40000", "10.0.2.1:5432"),
                udp("[fd00::1:1]:40000", "[2001:db8::53]:53"),
            ],
        ),
        row(
            "k8s egress named port resolves on the peer",
            WEB,
            OUT,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-postgres, namespace: app}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports: [{port: postgres}]
"#,
            vec![
                tcp("10.0.1.1:40000", "10.0.1.2:5432"),
                tcp("[fd00::1:1]:40000", "[fd00::1:2]:5432"),
            ],
            vec![
                tcp("10.0.1.1:40000", "10.0.3.1:5432"),
                tcp("10.0.1.1:40000", "8.8.8.8:5432"),
                udp("10.0.1.1:40000", "10.0.1.2:5432"),
            ],
        ),
        row(
            "k8s policyTypes default with only egress rules isolates ingress too",
            WEB,
            IN,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-rules, namespace: app}
spec:
  podSelector: {}
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]
"#,
            vec![],
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080"), icmp("10.0.2.1", "10.0.1.1", 8, 0)],
        ),
        row(
            "k8s allow-all rule beside deny-all",
            WEB,
            IN,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: app}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: app}
spec:
  podSelector: {}
  ingress: [{}]
"#,
            vec![
                tcp("10.0.2.1:40000", "10.0.1.1:8080"),
                other("192.0.2.1", "10.0.1.1", 47),
                icmp6("2001:db8::1", "fd00::1:1", 128, 0),
            ],
            vec![],
        ),
        row(
            "k8s egress default deny with DNS to pods only",
            WEB,
            OUT,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns, namespace: app}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}}]
    ports: [{protocol: UDP, port: 53}]
"#,
            vec![udp("10.0.1.1:40000", "10.0.2.1:53"), udp("10.0.1.1:40000", "10.0.3.1:53")],
            vec![udp("10.0.1.1:40000", "8.8.8.8:53"), tcp("10.0.1.1:40000", "10.0.2.1:53")],
        ),
        // ------------------------------------------------------------------- Calico ----
        row(
            "calico first matching rule decides",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: nets, namespace: app}
spec:
  selector: app == 'web'
  ingress:
  - action: Deny
    source: {nets: [192.0.2.0/28]}
  - action: Allow
    source: {nets: [192.0.2.0/24]}
"#,
            vec![tcp("192.0.2.16:40000", "10.0.1.1:8080"), udp("192.0.2.255:40000", "10.0.1.1:1")],
            vec![
                tcp("192.0.2.5:40000", "10.0.1.1:8080"),
                tcp("192.0.2.15:40000", "10.0.1.1:8080"),
                tcp("8.8.8.8:40000", "10.0.1.1:8080"),
            ],
        ),
        row(
            "calico policy order",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: z-first, namespace: app}
spec:
  order: 10
  selector: all()
  ingress:
  - action: Deny
    protocol: TCP
    source: {selector: app == 'db'}
    destination: {ports: [8080]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: a-second, namespace: app}
spec:
  order: 20
  selector: all()
  ingress:
  - action: Allow
"#,
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080"), tcp("10.0.1.2:40000", "10.0.1.1:8081")],
            vec![
                tcp("10.0.1.2:40000", "10.0.1.1:8080"),
                tcp("[fd00::1:2]:40000", "[fd00::1:1]:8080"),
            ],
        ),
        row(
            "calico equal order ties by name",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: b-allow, namespace: app}
spec:
  order: 5
  selector: all()
  ingress: [{action: Allow}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: a-deny-tcp, namespace: app}
spec:
  order: 5
  selector: all()
  ingress: [{action: Deny, protocol: TCP}]
"#,
            vec![udp("10.0.2.1:40000", "10.0.1.1:8080")],
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080")],
        ),
        row(
            "calico policy without order comes last",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: aaa-unordered, namespace: app}
spec:
  selector: all()
  ingress: [{action: Allow}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: zzz-ordered, namespace: app}
spec:
  order: 100
  selector: all()
  ingress: [{action: Deny, protocol: TCP}]
"#,
            vec![udp("10.0.2.1:40000", "10.0.1.1:8080")],
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080")],
        ),
        row(
            "calico Pass to the next tier",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.quarantine}
spec:
  tier: security
  order: 1
  selector: app == 'web'
  ingress:
  - action: Deny
    source: {nets: [192.0.2.0/24]}
  - action: Pass
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-web, namespace: app}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    protocol: TCP
    destination: {ports: [8080]}
"#,
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080"), tcp("8.8.8.8:40000", "10.0.1.1:8080")],
            vec![tcp("192.0.2.1:40000", "10.0.1.1:8080"), tcp("10.0.2.1:40000", "10.0.1.1:9000")],
        ),
        row(
            "calico tiers by order not name",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: aaa}
spec: {order: 50}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: bbb}
spec: {order: 20}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: aaa.deny-all}
spec:
  tier: aaa
  selector: all()
  ingress: [{action: Deny}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: bbb.allow-client}
spec:
  tier: bbb
  selector: all()
  ingress:
  - action: Allow
    source: {selector: app == 'client'}
"#,
            vec![
                tcp("10.0.2.1:40000", "10.0.1.1:8080"),
                tcp("[fd00::2:1]:40000", "[fd00::1:1]:22"),
            ],
            vec![tcp("10.0.1.2:40000", "10.0.1.1:8080"), tcp("10.0.2.2:40000", "10.0.1.1:8080")],
        ),
        row(
            "calico tier default deny",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: strict}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: strict.http}
spec:
  tier: strict
  selector: app == 'web'
  ingress:
  - action: Allow
    protocol: TCP
    destination: {ports: [8080]}
"#,
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080")],
            vec![udp("10.0.2.1:40000", "10.0.1.1:8080"), tcp("10.0.2.1:40000", "10.0.1.1:80")],
        ),
        row(
            "calico tier defaultAction Pass",
            DB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: platform}
spec: {order: 200, defaultAction: Pass}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: platform.admin}
spec:
  tier: platform
  selector: app == 'db'
  types: [Ingress]
  ingress:
  - action: Allow
    protocol: TCP
    destination: {ports: [9999]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: postgres, namespace: app}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - ports: [{port: 5432}]
"#,
            vec![tcp("10.0.2.1:40000", "10.0.1.2:9999"), tcp("10.0.2.1:40000", "10.0.1.2:5432")],
            vec![tcp("10.0.2.1:40000", "10.0.1.2:80"), udp("10.0.2.1:40000", "10.0.1.2:9999")],
        ),
        row(
            "calico Pass out of the last tier reaches the profile",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: observe}
spec: {order: 10}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: observe.pass}
spec:
  tier: observe
  selector: all()
  ingress: [{action: Log}, {action: Pass}]
"#,
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080"), icmp6("2001:db8::1", "fd00::1:1", 1, 3)],
            vec![],
        ),
        row(
            "calico Log continues to the next rule",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: log-deny, namespace: app}
spec:
  selector: all()
  ingress:
  - action: Log
  - action: Deny
    protocol: TCP
  - action: Log
    protocol: UDP
  - action: Allow
"#,
            vec![udp("10.0.2.1:40000", "10.0.1.1:8080"), icmp("10.0.2.1", "10.0.1.1", 8, 0)],
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080")],
        ),
        row(
            "calico notNets",
            WEB,
            OUT,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: internal-only, namespace: app}
spec:
  selector: app == 'web'
  types: [Egress]
  egress:
  - action: Deny
    destination: {notNets: [10.0.0.0/8, 192.0.2.0/24]}
  - action: Allow
"#,
            vec![
                tcp("10.0.1.1:40000", "10.0.1.2:5432"),
                tcp("10.0.1.1:40000", "192.0.2.77:443"),
                tcp("10.0.1.1:40000", "10.255.255.255:443"),
            ],
            vec![tcp("10.0.1.1:40000", "8.8.8.8:443"), tcp("10.0.1.1:40000", "11.0.0.0:443")],
        ),
        row(
            "calico notProtocol",
            WEB,
            OUT,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: udp-out, namespace: app}
spec:
  selector: app == 'web'
  types: [Egress]
  egress:
  - action: Deny
    notProtocol: UDP
    destination: {notNets: [10.0.0.0/8]}
  - action: Allow
"#,
            vec![udp("10.0.1.1:40000", "8.8.8.8:53"), tcp("10.0.1.1:40000", "10.0.1.2:5432")],
            vec![tcp("10.0.1.1:40000", "8.8.8.8:443"), icmp("10.0.1.1", "8.8.8.8", 8, 0)],
        ),
        row(
            "calico notPorts",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: not-ports, namespace: app}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    protocol: TCP
    destination: {notPorts: [8080, "9000:9100"]}
"#,
            vec![tcp("10.0.2.1:40000", "10.0.1.1:80"), tcp("10.0.2.1:40000", "10.0.1.1:9101")],
            vec![
                tcp("10.0.2.1:40000", "10.0.1.1:8080"),
                tcp("10.0.2.1:40000", "10.0.1.1:9000"),
                tcp("10.0.2.1:40000", "10.0.1.1:9050"),
                udp("10.0.2.1:40000", "10.0.1.1:80"),
            ],
        ),
        row(
            "calico ports, port ranges and a named port",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: ports, namespace: app}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    protocol: TCP
    destination: {ports: [http, "9000:9010", 443]}
"#,
            vec![
                tcp("10.0.2.1:40000", "10.0.1.1:8080"),
                tcp("10.0.2.1:40000", "10.0.1.1:9000"),
                tcp("10.0.2.1:40000", "10.0.1.1:9010"),
                tcp("[fd00::2:1]:40000", "[fd00::1:1]:443"),
            ],
            vec![
                tcp("10.0.2.1:40000", "10.0.1.1:8999"),
                tcp("10.0.2.1:40000", "10.0.1.1:9011"),
                tcp("10.0.2.1:40000", "10.0.1.1:80"),
                udp("10.0.2.1:40000", "10.0.1.1:443"),
            ],
        ),
        row(
            "calico egress named port on the peer",
            WEB,
            OUT,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: to-postgres, namespace: app}
spec:
  selector: app == 'web'
  types: [Egress]
  egress:
  - action: Allow
    protocol: TCP
    destination: {ports: [postgres]}
"#,
            vec![
                tcp("10.0.1.1:40000", "10.0.1.2:5432"),
                tcp("[fd00::1:1]:40000", "[fd00::1:2]:5432"),
            ],
            vec![
                tcp("10.0.1.1:40000", "10.0.1.2:5433"),
                tcp("10.0.1.1:40000", "10.0.3.1:5432"),
                tcp("10.0.1.1:40000", "8.8.8.8:5432"),
            ],
        ),
        row(
            "calico source ports",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: dns-replies, namespace: app}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    protocol: UDP
    source: {ports: [53]}
"#,
            vec![udp("8.8.8.8:53", "10.0.1.1:40000")],
            vec![udp("8.8.8.8:54", "10.0.1.1:40000"), tcp("8.8.8.8:53", "10.0.1.1:40000")],
        ),
        row(
            "calico notSelector in a GlobalNetworkPolicy",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: not-db}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    source: {notSelector: app == 'db'}
"#,
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080"), tcp("8.8.8.8:40000", "10.0.1.1:8080")],
            vec![
                tcp("10.0.1.2:40000", "10.0.1.1:8080"),
                tcp("[fd00::1:2]:40000", "[fd00::1:1]:80"),
            ],
        ),
        row(
            "calico notSelector in a namespaced policy stays in the namespace",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: not-db, namespace: app}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    source: {notSelector: app == 'db'}
"#,
            vec![tcp("10.0.1.1:40000", "10.0.1.1:8080")],
            vec![
                tcp("10.0.1.2:40000", "10.0.1.1:8080"),
                tcp("10.0.2.1:40000", "10.0.1.1:8080"),
                tcp("8.8.8.8:40000", "10.0.1.1:8080"),
            ],
        ),
        row(
            "calico selector operators in, !has, &&",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: ops, namespace: app}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    source:
      namespaceSelector: all()
      selector: app in {'client', 'tool'} && !has(debug)
"#,
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080")],
            vec![tcp("10.0.3.1:40000", "10.0.1.1:8080"), tcp("10.0.2.2:40000", "10.0.1.1:8080")],
        ),
        row(
            "calico != matches pods without the label",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: not-worker, namespace: app}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    source:
      namespaceSelector: team == 'other' || team == 'dev'
      selector: role != 'worker' && app not in {'tool'}
"#,
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080")],
            vec![
                tcp("10.0.2.2:40000", "10.0.1.1:8080"),
                tcp("10.0.3.1:40000", "10.0.1.1:8080"),
                tcp("10.0.1.2:40000", "10.0.1.1:8080"),
            ],
        ),
        row(
            "calico GlobalNetworkPolicy namespaceSelector picks endpoints",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: app-ns}
spec:
  namespaceSelector: team == 'app'
  selector: all()
  ingress:
  - action: Deny
    protocol: TCP
    destination: {ports: [22]}
  - action: Allow
"#,
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080")],
            vec![tcp("10.0.2.1:40000", "10.0.1.1:22")],
        ),
        row(
            "calico GlobalNetworkPolicy namespaceSelector leaves others on the profile",
            "other/client",
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: app-ns}
spec:
  namespaceSelector: team == 'app'
  selector: all()
  ingress:
  - action: Deny
    protocol: TCP
    destination: {ports: [22]}
  - action: Allow
"#,
            vec![tcp("10.0.1.1:40000", "10.0.2.1:22"), tcp("[fd00::1:1]:40000", "[fd00::2:1]:22")],
            vec![],
        ),
        row(
            "calico ICMP type and code",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: ping, namespace: app}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    protocol: ICMP
    icmp: {type: 8, code: 0}
  - action: Allow
    protocol: ICMP
    icmp: {type: 3}
"#,
            vec![
                icmp("10.0.2.1", "10.0.1.1", 8, 0),
                icmp("10.0.2.1", "10.0.1.1", 3, 0),
                icmp("10.0.2.1", "10.0.1.1", 3, 4),
            ],
            vec![
                icmp("10.0.2.1", "10.0.1.1", 8, 1),
                icmp("10.0.2.1", "10.0.1.1", 0, 0),
                icmp("10.0.2.1", "10.0.1.1", 11, 0),
                tcp("10.0.2.1:40000", "10.0.1.1:8080"),
            ],
        ),
        row(
            "calico notICMP",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: not-echo, namespace: app}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    protocol: ICMP
    notICMP: {type: 8}
  - action: Allow
    protocol: ICMP
    notICMP: {type: 13, code: 0}
"#,
            vec![icmp("10.0.2.1", "10.0.1.1", 0, 0), icmp("10.0.2.1", "10.0.1.1", 8, 1)],
            vec![udp("10.0.2.1:40000", "10.0.1.1:8080")],
        ),
        row(
            "calico notICMP both rules exclude",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: not-echo, namespace: app}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    protocol: ICMP
    notICMP: {type: 8}
  - action: Allow
    protocol: ICMP
    notICMP: {type: 8, code: 0}
"#,
            vec![icmp("10.0.2.1", "10.0.1.1", 8, 1), icmp("10.0.2.1", "10.0.1.1", 11, 0)],
            vec![icmp("10.0.2.1", "10.0.1.1", 8, 0)],
        ),
        row(
            "calico ICMPv6",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: ping6, namespace: app}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    ipVersion: 6
    protocol: ICMPv6
    icmp: {type: 128}
  - action: Deny
    protocol: ICMPv6
    notICMP: {type: 135}
  - action: Allow
    ipVersion: 6
"#,
            vec![
                icmp6("fd00::2:1", "fd00::1:1", 128, 0),
                icmp6("fd00::2:1", "fd00::1:1", 135, 0),
                tcp("[fd00::2:1]:40000", "[fd00::1:1]:8080"),
            ],
            vec![
                icmp6("fd00::2:1", "fd00::1:1", 129, 0),
                icmp6("2001:db8::1", "fd00::1:1", 1, 4),
                icmp("10.0.2.1", "10.0.1.1", 8, 0),
            ],
        ),
        row(
            "calico protocol by number",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: gre, namespace: app}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    protocol: 47
"#,
            vec![other("192.0.2.1", "10.0.1.1", 47), other("2001:db8::1", "fd00::1:1", 47)],
            vec![other("192.0.2.1", "10.0.1.1", 50), tcp("192.0.2.1:47", "10.0.1.1:47")],
        ),
        row(
            "calico SCTP ports",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: diameter, namespace: app}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    protocol: SCTP
    destination: {ports: [diameter]}
"#,
            vec![sctp("10.0.2.1:40000", "10.0.1.1:3868")],
            vec![tcp("10.0.2.1:40000", "10.0.1.1:3868"), sctp("10.0.2.1:40000", "10.0.1.1:3867")],
        ),
        row(
            "calico serviceAccounts by name",
            DB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: by-sa-name, namespace: app}
spec:
  selector: app == 'db'
  ingress:
  - action: Allow
    source:
      serviceAccounts: {names: [web, client]}
"#,
            vec![
                tcp("10.0.1.1:40000", "10.0.1.2:5432"),
                tcp("[fd00::1:1]:40000", "[fd00::1:2]:5432"),
            ],
            vec![tcp("10.0.2.1:40000", "10.0.1.2:5432"), tcp("10.0.1.2:40000", "10.0.1.2:5432")],
        ),
        row(
            "calico serviceAccounts by selector across namespaces",
            DB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: by-sa-labels, namespace: app}
spec:
  selector: app == 'db'
  ingress:
  - action: Allow
    source:
      namespaceSelector: all()
      serviceAccounts:
        selector: role in {'tester', 'frontend'}
"#,
            vec![tcp("10.0.2.1:40000", "10.0.1.2:5432"), tcp("10.0.1.1:40000", "10.0.1.2:5432")],
            vec![tcp("10.0.2.2:40000", "10.0.1.2:5432"), tcp("10.0.3.1:40000", "10.0.1.2:5432")],
        ),
        row(
            "calico policy serviceAccountSelector picks endpoints",
            "other/client",
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: testers-closed}
spec:
  serviceAccountSelector: role == 'tester'
  ingress:
  - action: Deny
"#,
            vec![],
            vec![tcp("10.0.1.1:40000", "10.0.2.1:80"), icmp6("fd00::1:1", "fd00::2:1", 128, 0)],
        ),
        row(
            "calico namespaced NetworkSet",
            WEB,
            OUT,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: partners, namespace: app, labels: {list: partner}}
spec:
  nets: [198.51.100.7/32, "2001:db8:7::/64"]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: to-partners, namespace: app}
spec:
  selector: app == 'web'
  types: [Egress]
  egress:
  - action: Allow
    destination: {selector: list == 'partner'}
"#,
            vec![
                tcp("10.0.1.1:40000", "198.51.100.7:443"),
                tcp("[fd00::1:1]:40000", "[2001:db8:7::99]:443"),
            ],
            vec![
                tcp("10.0.1.1:40000", "198.51.100.8:443"),
                tcp("10.0.1.1:40000", "198.51.100.6:443"),
                tcp("[fd00::1:1]:40000", "[2001:db8:8::99]:443"),
            ],
        ),
        row(
            "calico GlobalNetworkSet through namespaceSelector global()",
            WEB,
            OUT,
            r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: blocklist, labels: {list: block}}
spec:
  nets: [203.0.113.0/24, "2001:db8:bad::/48"]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: block, namespace: app}
spec:
  selector: app == 'web'
  types: [Egress]
  egress:
  - action: Deny
    destination:
      namespaceSelector: global()
      selector: list == 'block'
  - action: Allow
"#,
            vec![
                tcp("10.0.1.1:40000", "8.8.8.8:443"),
                tcp("10.0.1.1:40000", "203.0.114.0:443"),
                tcp("[fd00::1:1]:40000", "[2001:db8::1]:443"),
            ],
            vec![
                tcp("10.0.1.1:40000", "203.0.113.9:443"),
                icmp("10.0.1.1", "203.0.113.255", 8, 0),
                tcp("[fd00::1:1]:40000", "[2001:db8:bad::1]:443"),
            ],
        ),
        row(
            "calico GlobalNetworkSet from a GlobalNetworkPolicy",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: blocklist, labels: {list: block}}
spec:
  nets: [203.0.113.0/24]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: block}
spec:
  selector: all()
  ingress:
  - action: Deny
    source: {selector: list == 'block'}
  - action: Allow
    source: {nets: [0.0.0.0/0]}
"#,
            vec![tcp("8.8.8.8:40000", "10.0.1.1:8080")],
            vec![
                tcp("203.0.113.1:40000", "10.0.1.1:8080"),
                tcp("[2001:db8::1]:40000", "[fd00::1:1]:8080"),
            ],
        ),
        row(
            "calico IPv6 nets and ipVersion",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: web-v6, namespace: app}
spec:
  selector: app == 'web'
  types: [Ingress]
  ingress:
  - action: Deny
    ipVersion: 6
    source: {nets: ["fd00:dead::/32"]}
  - action: Allow
    ipVersion: 6
"#,
            vec![
                tcp("[fd00::2:1]:40000", "[fd00::1:1]:8080"),
                udp("[fd00:deae::1]:40000", "[fd00::1:1]:53"),
            ],
            vec![
                tcp("[fd00:dead::1]:40000", "[fd00::1:1]:8080"),
                tcp("[fd00:dead:ffff::1]:40000", "[fd00::1:1]:8080"),
                tcp("10.0.2.1:40000", "10.0.1.1:8080"),
            ],
        ),
        row(
            "calico nets, protocol and ports together",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: combined, namespace: app}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    protocol: TCP
    source: {nets: [192.0.2.0/24, 10.0.2.0/24], notNets: [10.0.2.2/32]}
    destination: {ports: [443, "8443:8444"]}
"#,
            vec![tcp("192.0.2.9:40000", "10.0.1.1:443"), tcp("10.0.2.1:40000", "10.0.1.1:8444")],
            vec![
                tcp("10.0.2.2:40000", "10.0.1.1:443"),
                tcp("10.0.1.2:40000", "10.0.1.1:443"),
                udp("192.0.2.9:40000", "10.0.1.1:443"),
                tcp("192.0.2.9:40000", "10.0.1.1:8445"),
            ],
        ),
        row(
            "mixed Calico and Kubernetes policy by order",
            WEB,
            IN,
            r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: block-client, namespace: app}
spec:
  order: 500
  selector: all()
  ingress:
  - action: Deny
    source:
      namespaceSelector: all()
      selector: app == 'client'
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-other, namespace: app}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: other}}}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: late-allow, namespace: app}
spec:
  order: 2000
  selector: all()
  ingress:
  - action: Allow
    protocol: UDP
"#,
            vec![tcp("10.0.2.2:40000", "10.0.1.1:8080"), udp("8.8.8.8:40000", "10.0.1.1:53")],
            vec![tcp("10.0.2.1:40000", "10.0.1.1:8080"), tcp("8.8.8.8:40000", "10.0.1.1:8080")],
        ),
        row(
            "default profile allows when no policy selects the endpoint",
            "other/batch",
            IN,
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: app}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"#,
            vec![
                tcp("10.0.1.1:40000", "10.0.2.2:80"),
                other("192.0.2.1", "10.0.2.2", 47),
                icmp("8.8.8.8", "10.0.2.2", 8, 0),
            ],
            vec![],
        ),
        row(
            "default profile allows with no policy at all",
            WEB,
            OUT,
            "",
            vec![
                tcp("10.0.1.1:40000", "8.8.8.8:443"),
                udp("[fd00::1:1]:40000", "[2001:db8::1]:53"),
                icmp6("fd00::1:1", "fd00::2:1", 128, 0),
            ],
            vec![],
        ),
    ]
}

/// A filler tier ahead of every other tier: `count` GlobalNetworkPolicies of `rules_each` rules
/// for `direction`, selecting every pod, each rule matching only peers in 198.18.0.0/15 or
/// 2001:db8:ffff::/48 (which no row uses), and a tier-wide `defaultAction: Pass`.
fn filler(direction: Direction, count: usize, rules_each: usize) -> String {
    let key = match direction {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    let mut out = String::from(
        "\n---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: filler}\n\
         spec: {order: 1, defaultAction: Pass}\n",
    );
    let mut n = 0u32;
    for p in 0..count {
        let _ = write!(
            out,
            "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
             metadata: {{name: filler.p{p}}}\nspec:\n  tier: filler\n  order: {p}\n  \
             selector: all()\n  types: [{}]\n  {key}:\n",
            if direction == Direction::Ingress { "Ingress" } else { "Egress" }
        );
        for _ in 0..rules_each {
            let action = if n.is_multiple_of(3) { "Allow" } else { "Deny" };
            let (hi, lo) = ((n >> 8) & 0x1ff, n & 0xff);
            let net = if n % 4 == 3 {
                format!("\"2001:db8:ffff:{n:x}::/64\"")
            } else {
                format!("198.{}.{}.{lo}/32", 18 + (hi >> 8), hi & 0xff)
            };
            // Varied protocols and ports, as real rule sets have; the nets alone never match.
            let (protocol, ports) = match n % 5 {
                0 => ("protocol: TCP, ", format!(", ports: [{}]", 1 + n % 60000)),
                1 => (
                    "protocol: UDP, ",
                    format!(", ports: [\"{}:{}\"]", 1000 + n % 999, 2000 + n % 999),
                ),
                2 => ("protocol: SCTP, ", String::new()),
                3 => ("protocol: 47, ", String::new()),
                _ => ("", String::new()),
            };
            let matcher = match direction {
                Direction::Ingress if ports.is_empty() => {
                    format!("{protocol}source: {{nets: [{net}]}}")
                }
                Direction::Ingress => format!(
                    "{protocol}source: {{nets: [{net}]}}, destination: {{{}}}",
                    ports.trim_start_matches(", ")
                ),
                Direction::Egress => format!("{protocol}destination: {{nets: [{net}]{ports}}}"),
            };
            let _ = writeln!(out, "  - {{action: {action}, {matcher}}}");
            n += 1;
        }
    }
    out
}

fn run_row(row: &Row, engines: &Engines, failures: &mut Vec<String>, label: &str) -> usize {
    let mut checked = 0;
    let cases = row
        .allowed
        .iter()
        .map(|f| (f, Verdict::Allow))
        .chain(row.dropped.iter().map(|f| (f, Verdict::Deny)));
    for (flow, want) in cases {
        checked += 1;
        match engines.check(row.endpoint, row.direction, flow) {
            Ok(got) if got == want => {}
            Ok(got) => failures.push(format!(
                "{label}row {:?}: {} {} {flow}: all engines say {}, the row says {}",
                row.name,
                row.endpoint,
                row.direction.as_str(),
                got.as_str(),
                want.as_str()
            )),
            Err(e) => failures.push(format!("{label}row {:?}: {e}", row.name)),
        }
    }
    checked
}

#[test]
fn every_row_agrees_on_ir_vm_and_kernel() {
    polc_loader::require_kernel!();
    let start = Instant::now();
    assert!(rows().len() >= 40, "only {} rows", rows().len());
    let table = selected_rows();
    let mut failures = Vec::new();
    let mut packets = 0;
    for row in &table {
        assert!(
            !row.allowed.is_empty() || !row.dropped.is_empty(),
            "row {:?} has no packets",
            row.name
        );
        let yaml = format!("{BASE}---\n{}", row.policy);
        for opt_level in OPT_LEVELS {
            let label = format!("-O{opt_level} ");
            let engines =
                match common::compile_yaml(row.name, &yaml, opt_level).and_then(Engines::new) {
                    Ok(e) => e,
                    Err(e) => {
                        failures.push(format!("{label}row {:?}: {e}", row.name));
                        continue;
                    }
                };
            packets += run_row(row, &engines, &mut failures, &label);
        }
    }
    eprintln!(
        "policy table: {} rows at -O0 and -O2, {packets} packets on 3 engines in {:.1?}",
        table.len(),
        start.elapsed()
    );
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Rules in the filler tier: 25 policies x 500 rules.
const FILLER_POLICIES: usize = 25;
const FILLER_RULES_EACH: usize = 500;

#[test]
fn every_row_agrees_behind_a_12500_rule_filler_tier() {
    polc_loader::require_kernel!();
    let start = Instant::now();
    let table = selected_rows();
    let mut failures = Vec::new();
    let mut packets = 0;
    let parse_filler = |direction| {
        let text = filler(direction, FILLER_POLICIES, FILLER_RULES_EACH);
        load_str("filler.yaml", &text).unwrap_or_else(|e| panic!("filler: {e}"))
    };
    // -O2 spends minutes (debug build) building class tables for the 12,500 rules before it
    // falls back, so by default the filler runs at the levels that split: -O0 and -O1.
    let filler_levels: Vec<u8> = match std::env::var("POLC_TABLE_FILLER_O2").as_deref() {
        Ok("1") => OPT_LEVELS.to_vec(),
        _ => vec![0, 1],
    };
    let filler_in = parse_filler(Direction::Ingress);
    let filler_out = parse_filler(Direction::Egress);
    for row in &table {
        let t = Instant::now();
        // The row's cluster plus the filler (parsed once per direction, above). Compiled for
        // the row's endpoint only, in the families its packets use: the filler selects every
        // pod, and compiling and loading 12,500-rule programs for the others adds nothing.
        let mut cluster = match load_str(row.name, &format!("{BASE}---\n{}", row.policy)) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("filler row {:?}: frontend: {e}", row.name));
                continue;
            }
        };
        let extra = if row.direction == Direction::Ingress { &filler_in } else { &filler_out };
        cluster.tiers.extend(extra.tiers.iter().cloned());
        cluster.calico_policies.extend(extra.calico_policies.iter().cloned());
        let ir = match common::lower_for(&cluster, row.endpoint, row.direction) {
            Ok(ir) => ir,
            Err(e) => {
                failures.push(format!("filler row {:?}: {e}", row.name));
                continue;
            }
        };
        // The filler must really be in front of the row's endpoint.
        let rules_in_filler = ir
            .endpoint(row.endpoint, row.direction)
            .and_then(|ep| ep.tiers.first())
            .filter(|t| t.name == "filler")
            .map_or(0, |t| t.policies.iter().map(|p| p.rules.len()).sum::<usize>());
        assert_eq!(rules_in_filler, FILLER_POLICIES * FILLER_RULES_EACH, "row {:?}", row.name);
        let lower_time = t.elapsed();
        let families: Vec<Family> =
            row.allowed.iter().chain(&row.dropped).map(|f| Family::of(&f.src)).collect();
        for &opt_level in &filler_levels {
            let label = format!("filler -O{opt_level} ");
            let t = Instant::now();
            let mut compiled = match common::compile(ir.clone(), opt_level) {
                Ok(c) => c,
                Err(e) => {
                    failures.push(format!("{label}row {:?}: {e}", row.name));
                    continue;
                }
            };
            compiled.programs.retain(|p| families.contains(&p.family));
            let compile_time = t.elapsed();
            let t = Instant::now();
            let engines = match Engines::new(compiled) {
                Ok(e) => e,
                Err(e) => {
                    failures.push(format!("{label}row {:?}: {e}", row.name));
                    continue;
                }
            };
            let load_time = t.elapsed();
            let sizes: Vec<String> = engines
                .compiled
                .programs
                .iter()
                .map(|p| {
                    let level = match &p.fallback {
                        Some(why) => format!("-O{} (fallback: {why})", p.opt_level),
                        None => format!("-O{}", p.opt_level),
                    };
                    format!(
                        "IPv{} {} insns in {} parts at {level}",
                        p.family.number(),
                        p.insns(),
                        p.parts.len()
                    )
                })
                .collect();
            let t = Instant::now();
            packets += run_row(row, &engines, &mut failures, &label);
            eprintln!(
                "{label}row {:?}: {}; lower {lower_time:.1?}, compile {compile_time:.1?}, \
                 load {load_time:.1?}, run {:.1?}",
                row.name,
                sizes.join(", "),
                t.elapsed()
            );
        }
    }
    eprintln!(
        "policy table behind the filler tier: {} rows at {filler_levels:?}, {packets} packets on \
         3 engines in {:.1?}",
        table.len(),
        start.elapsed()
    );
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
