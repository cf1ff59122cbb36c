//! Deterministic synthetic clusters for benchmarks and size tests: one namespace of pods and
//! a policy set of about `rules` ingress rules that all apply to one endpoint,
//! `bench/target`, in a realistic mix — a security tier of CIDR denies and Pass rules, a
//! platform tier ending in Pass, and default-tier Calico and Kubernetes policies with
//! selectors, port ranges, named ports, ipBlocks and ICMP.

use std::fmt::Write;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Ingress rules selecting `bench/target`, over all tiers (approximate: within a few).
    pub rules: usize,
    /// Pods besides the target (they give selectors something to match).
    pub pods: usize,
    pub seed: u64,
    /// Pods per workload: consecutive pods share labels and ports, like a Deployment's
    /// replicas (1: every pod drawn on its own).
    pub replicas: usize,
    /// Where rules draw their ports from.
    pub ports: PortMix,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec { rules: 100, pods: 50, seed: 1, replicas: 1, ports: PortMix::Random }
    }
}

/// Where the generated rules draw their destination ports from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PortMix {
    /// Uniformly from 1-20000, ranges up to 500 (Kubernetes: 1000) wide: nearly every rule
    /// adds port boundaries of its own (a worst case for class tables).
    #[default]
    Random,
    /// From the ports services listen on: well-known service ports and a few common ranges
    /// (the NodePort range, ephemeral ports), as rules written against real workloads use.
    Services,
}

/// Single ports of `PortMix::Services`: common service and infrastructure ports.
const SERVICE_PORTS: &[u64] = &[
    22, 53, 80, 443, 1433, 2379, 2380, 3000, 3306, 4222, 5000, 5432, 5672, 6379, 6443, 7000, 8000,
    8080, 8081, 8443, 8888, 9000, 9042, 9090, 9092, 9093, 9100, 9200, 9300, 9411, 10250, 11211,
    15672, 27017,
];
/// Port ranges of `PortMix::Services`.
const SERVICE_RANGES: &[(u64, u64)] = &[(30000, 32767), (32768, 60999), (8000, 8099), (6000, 6007)];

/// Flags of `polc synth`.
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Ingress rules selecting bench/target, over all tiers.
    #[arg(long, default_value_t = 100)]
    pub rules: usize,
    /// Pods besides the target.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub pods: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Pods per workload (replicas share labels and ports).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub replicas: u64,
    /// Where rules draw their ports from.
    #[arg(long, value_enum, default_value_t = PortMix::Random)]
    pub ports: PortMix,
}

/// `polc synth`: print the cluster YAML to stdout.
pub fn run(args: &SynthArgs) -> crate::error::Result<()> {
    let spec = Spec {
        rules: args.rules,
        pods: args.pods as usize,
        seed: args.seed,
        replicas: args.replicas as usize,
        ports: args.ports,
    };
    crate::error::print_stdout(&cluster_yaml(spec))
}

/// The target endpoint every generated policy selects.
pub const TARGET: &str = "bench/target";
/// Its address.
pub const TARGET_IP: &str = "10.200.0.10";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic across platforms and runs.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const APPS: &[&str] = &["web", "api", "db", "cache", "queue", "auth", "search", "billing"];
const TEAMS: &[&str] = &["red", "blue", "green", "gold"];
const ENVS: &[&str] = &["prod", "staging", "dev"];

/// A YAML cluster as described by `spec`.
pub fn cluster_yaml(spec: Spec) -> String {
    let mut r = Rng(spec.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut y = String::new();
    let _ =
        writeln!(y, "# polc synth: {} rules, {} pods, seed {}", spec.rules, spec.pods, spec.seed);
    y.push_str(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: bench\n  labels: {env: prod}\n",
    );
    let _ = write!(
        y,
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: target\n  namespace: bench\n  \
         labels: {{app: target, team: red, env: prod}}\nspec:\n  containers:\n  - name: main\n    \
         image: bench/target:1\n    ports:\n    - {{name: http, containerPort: 8080}}\n    \
         - {{name: metrics, containerPort: 9090}}\n    - {{name: dns, containerPort: 5353, \
         protocol: UDP}}\nstatus:\n  podIP: {TARGET_IP}\n"
    );
    let mut workload = ("", "", "", 0);
    for i in 0..spec.pods {
        if i % spec.replicas.max(1) == 0 {
            // Drawn in this order so that one replica per workload reproduces older output.
            let (app, team, env) = (r.pick(APPS), r.pick(TEAMS), r.pick(ENVS));
            workload = (app, team, env, 8000 + r.below(4) * 80);
        }
        let (app, team, env, port) = workload;
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-{i}\n  namespace: bench\n  \
             labels: {{app: {app}, team: {team}, env: {env}}}\nspec:\n  containers:\n  - name: \
             main\n    image: bench/{app}:1\n    ports:\n    - {{name: http, containerPort: {}}}\n\
             status:\n  podIP: 10.200.{}.{}\n",
            port,
            1 + i / 250,
            1 + i % 250
        );
    }
    y.push_str("---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: security\nspec:\n  order: 100\n");
    y.push_str("---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: platform\nspec:\n  order: 200\n  defaultAction: Pass\n");

    // About 20% security, 20% platform, 60% default tier (half Calico, half Kubernetes).
    let security = spec.rules / 5;
    let platform = spec.rules / 5;
    let calico = (spec.rules - security - platform) / 2;
    let k8s = spec.rules - security - platform - calico;
    const PER_POLICY: usize = 50;

    for (p, n) in chunks(security, PER_POLICY).enumerate() {
        let _ = write!(
            y,
            "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  \
             name: security.block-{p}\nspec:\n  tier: security\n  order: {p}\n  selector: \
             env == 'prod'\n  types: [Ingress]\n  ingress:\n"
        );
        for i in 0..n {
            let last = i + 1 == n;
            if last {
                y.push_str("  - action: Pass\n");
            } else if r.chance(10) {
                let _ = write!(y, "  - action: Log\n    source:\n      nets: [{}]\n", cidr(&mut r));
            } else if r.chance(10) {
                let _ = write!(
                    y,
                    "  - action: Pass\n    protocol: TCP\n    source:\n      nets: [{}]\n",
                    cidr(&mut r)
                );
            } else {
                let _ = write!(
                    y,
                    "  - action: Deny\n    source:\n      nets: [{}, {}]\n",
                    cidr(&mut r),
                    cidr(&mut r)
                );
            }
        }
    }
    for (p, n) in chunks(platform, PER_POLICY).enumerate() {
        let _ = write!(
            y,
            "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  \
             name: platform.shared-{p}\nspec:\n  tier: platform\n  order: {p}\n  selector: \
             all()\n  types: [Ingress]\n  ingress:\n"
        );
        for _ in 0..n {
            let action = if r.chance(70) { "Allow" } else { "Deny" };
            let _ = writeln!(y, "  - action: {action}");
            port_rule(&mut y, &mut r, spec.ports);
        }
    }
    for (p, n) in chunks(calico, PER_POLICY).enumerate() {
        let _ = write!(
            y,
            "---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  \
             name: app-{p}\n  namespace: bench\nspec:\n  order: {}\n  selector: app == \
             'target'\n  types: [Ingress]\n  ingress:\n",
            100 + p
        );
        for _ in 0..n {
            let action = if r.chance(80) { "Allow" } else { "Deny" };
            let _ = writeln!(y, "  - action: {action}");
            port_rule(&mut y, &mut r, spec.ports);
        }
    }
    for (p, n) in chunks(k8s, PER_POLICY).enumerate() {
        let _ = write!(
            y,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  \
             name: k8s-{p}\n  namespace: bench\nspec:\n  podSelector:\n    matchLabels: \
             {{app: target}}\n  policyTypes: [Ingress]\n  ingress:\n"
        );
        for _ in 0..n {
            let peer = match r.below(3) {
                0 => format!("{{podSelector: {{matchLabels: {{app: {}}}}}}}", r.pick(APPS)),
                1 => format!(
                    "{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.{}.{}.0/24]}}}}",
                    r.below(199),
                    r.below(256)
                ),
                _ => format!(
                    "{{podSelector: {{matchExpressions: [{{key: team, operator: In, values: \
                     [{}, {}]}}]}}}}",
                    r.pick(TEAMS),
                    r.pick(TEAMS)
                ),
            };
            let port = match (r.below(3), spec.ports) {
                (0, _) => "{port: http}".to_string(),
                (1, PortMix::Random) => {
                    format!("{{port: {}, endPort: {}}}", 3000 + r.below(100), 3100 + r.below(900))
                }
                (1, PortMix::Services) => {
                    let (lo, hi) = SERVICE_RANGES[r.below(SERVICE_RANGES.len() as u64) as usize];
                    format!("{{port: {lo}, endPort: {hi}}}")
                }
                (_, PortMix::Random) => {
                    format!("{{protocol: UDP, port: {}}}", 1000 + r.below(9000))
                }
                (_, PortMix::Services) => {
                    format!("{{protocol: UDP, port: {}}}", service_port(&mut r))
                }
            };
            let _ = write!(y, "  - from: [{peer}]\n    ports: [{port}]\n");
        }
    }
    y
}

/// `total` split into chunks of at most `size` (none for 0).
fn chunks(total: usize, size: usize) -> impl Iterator<Item = usize> {
    (0..total.div_ceil(size)).map(move |i| size.min(total - i * size))
}

/// A CIDR outside the cluster's pod range (10.200.0.0/16), /8 to /32.
fn cidr(r: &mut Rng) -> String {
    let a = [172u64, 192, 100, 10][r.below(4) as usize];
    // Never 10.0.0.0/8, which would cover the pods.
    let len = [8u64, 16, 20, 24, 24, 28, 32, 32][r.below(8) as usize].max(8 * (a == 10) as u64 * 2);
    let b = if a == 10 { r.below(199) } else { r.below(256) };
    let addr = (a << 24) | (b << 16) | (r.below(256) << 8) | r.below(256);
    let masked = if len == 0 { 0 } else { addr & (u32::MAX as u64) << (32 - len) & 0xffff_ffff };
    format!(
        "{}.{}.{}.{}/{len}",
        masked >> 24,
        (masked >> 16) & 255,
        (masked >> 8) & 255,
        masked & 255
    )
}

/// The match part of a Calico rule: protocol, source selector or nets, destination ports.
fn port_rule(y: &mut String, r: &mut Rng, ports: PortMix) {
    match r.below(10) {
        0 => {
            let _ = write!(
                y,
                "    protocol: ICMP\n    icmp: {{type: {}}}\n",
                [0, 3, 8, 11][r.below(4) as usize]
            );
            return;
        }
        1..=5 => y.push_str("    protocol: TCP\n"),
        6..=7 => y.push_str("    protocol: UDP\n"),
        _ => y.push_str("    protocol: SCTP\n"),
    }
    match r.below(4) {
        0 => {
            let _ = write!(y, "    source:\n      nets: [{}]\n", cidr(r));
        }
        1 => {
            let _ = write!(
                y,
                "    source:\n      selector: app == '{}' && team != '{}'\n",
                r.pick(APPS),
                r.pick(TEAMS)
            );
        }
        2 => {
            let _ = write!(
                y,
                "    source:\n      selector: team in {{'{}', '{}'}}\n      notNets: [{}]\n",
                r.pick(TEAMS),
                r.pick(TEAMS),
                cidr(r)
            );
        }
        _ => {}
    }
    if ports == PortMix::Services {
        match r.below(4) {
            0 => {
                let _ = write!(y, "    destination:\n      ports: [{}]\n", service_port(r));
            }
            1 => {
                let (lo, hi) = SERVICE_RANGES[r.below(SERVICE_RANGES.len() as u64) as usize];
                let _ = write!(y, "    destination:\n      ports: [\"{lo}:{hi}\"]\n");
            }
            2 => y.push_str("    destination:\n      ports: [http, metrics]\n"),
            _ => {
                let (a, b, not) = (service_port(r), service_port(r), service_port(r));
                let _ = write!(
                    y,
                    "    destination:\n      ports: [{a}, {b}]\n      notPorts: [{not}]\n"
                );
            }
        }
        return;
    }
    let lo = 1 + r.below(20000);
    match r.below(4) {
        0 => {
            let _ = write!(y, "    destination:\n      ports: [{lo}]\n");
        }
        1 => {
            let _ = write!(y, "    destination:\n      ports: [\"{lo}:{}\"]\n", lo + r.below(500));
        }
        2 => y.push_str("    destination:\n      ports: [http, metrics]\n"),
        _ => {
            let _ = write!(
                y,
                "    destination:\n      ports: [{lo}, {}]\n      notPorts: [{}]\n",
                lo + 7,
                lo + 3
            );
        }
    }
}

fn service_port(r: &mut Rng) -> u64 {
    SERVICE_PORTS[r.below(SERVICE_PORTS.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_deterministic_and_loads() {
        let spec = Spec { rules: 300, pods: 40, seed: 7, ..Spec::default() };
        let a = cluster_yaml(spec);
        assert_eq!(a, cluster_yaml(spec));
        assert_ne!(a, cluster_yaml(Spec { seed: 8, ..spec }));
        let cluster = crate::frontend::load_str("synth.yaml", &a).unwrap();
        let ir = crate::lower::lower(&cluster);
        let ep = ir.endpoint(TARGET, polc_ir::Direction::Ingress).unwrap();
        let rules: usize = ep.tiers.iter().flat_map(|t| &t.policies).map(|p| p.rules.len()).sum();
        // K8s rules may lower to several IR rules (one per peer x port); never fewer.
        assert!((300..=330).contains(&rules), "{rules} rules");
        assert_eq!(ep.tiers.len(), 3);
    }

    #[test]
    fn cidrs_are_canonical() {
        let mut r = Rng(5);
        for _ in 0..1000 {
            let c = cidr(&mut r);
            let p: polc_ir::Prefix = c.parse().unwrap();
            assert_eq!(p.to_string(), c);
        }
    }
}
