//! Shared helpers of the engine-comparison tests: packet builders, a seeded xorshift generator,
//! and the three-engine check (reference evaluator, compiled program under rbpf, compiled
//! program in the kernel) that must agree on the verdict and on the deciding rule.

// Each test binary includes this module and uses a different part of it.
#![allow(dead_code)]

use polc::codegen::RuleKey;
use polc::compile::{compile_ir_with, Compiled, Options};
use polc::engine::{vm_run, KernelEngine, Outcome};
use polc::frontend::Cluster;
use polc_ir::{evaluate, proto, Direction, EndpointPolicy, Family, Flow, Ir, TraceStep, Verdict};
use std::net::{IpAddr, SocketAddr};

/// A small deterministic generator (xorshift64) so every run sees the same cases.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // xorshift never leaves 0.
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

fn socket(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address:port {s:?} in a test: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s:?} in a test: {e}"))
}

fn ported(protocol: u8, src: &str, dst: &str) -> Flow {
    let (s, d) = (socket(src), socket(dst));
    Flow::ports(s.ip(), d.ip(), protocol, s.port(), d.port())
}

/// A TCP flow: `tcp("10.0.0.1:31245", "10.0.0.2:80")`, `tcp("[fd00::1]:1234", "[fd00::2]:80")`.
pub fn tcp(src: &str, dst: &str) -> Flow {
    ported(proto::TCP, src, dst)
}
pub fn udp(src: &str, dst: &str) -> Flow {
    ported(proto::UDP, src, dst)
}
pub fn sctp(src: &str, dst: &str) -> Flow {
    ported(proto::SCTP, src, dst)
}
/// An ICMP flow (IPv4 addresses): `icmp("10.0.0.1", "10.0.0.2", 8, 0)` is an echo request.
pub fn icmp(src: &str, dst: &str, icmp_type: u8, code: u8) -> Flow {
    let flow = Flow::icmp(ip(src), ip(dst), icmp_type, code);
    assert_eq!(flow.protocol, proto::ICMP, "icmp() takes IPv4 addresses: {src} {dst}");
    flow
}
/// An ICMPv6 flow (IPv6 addresses).
pub fn icmp6(src: &str, dst: &str, icmp_type: u8, code: u8) -> Flow {
    let flow = Flow::icmp(ip(src), ip(dst), icmp_type, code);
    assert_eq!(flow.protocol, proto::ICMPV6, "icmp6() takes IPv6 addresses: {src} {dst}");
    flow
}
/// A flow of a protocol without ports (e.g. 47, GRE).
pub fn other(src: &str, dst: &str, protocol: u8) -> Flow {
    Flow::ports(ip(src), ip(dst), protocol, 0, 0)
}

/// The rule identity the evaluator's decision names (what the program must write as rule id).
pub fn expected_key(ep: &EndpointPolicy, trace: &[TraceStep]) -> RuleKey {
    match trace.last() {
        Some(TraceStep::Rule(hit)) => RuleKey::Rule {
            direction: ep.direction,
            tier: hit.tier.clone(),
            policy: hit.policy.clone(),
            kind: hit.kind.clone(),
            index: hit.rule_index,
        },
        Some(TraceStep::TierDefault { tier, .. }) => {
            RuleKey::TierDefault { direction: ep.direction, tier: tier.clone() }
        }
        Some(TraceStep::NoPolicy) => RuleKey::Profile { direction: ep.direction, passed: false },
        // Programs never see these flows: the runtime drops them first.
        Some(TraceStep::NotOwnAddress) => {
            panic!("a program-level test sent a flow that is not the endpoint's own traffic")
        }
        _ => RuleKey::Profile { direction: ep.direction, passed: true },
    }
}

/// The optimisation levels every engine comparison runs: the linear baseline, linear with
/// the peer-set bitmap, and the class-table optimiser.
pub const OPT_LEVELS: [u8; 3] = [0, 1, 2];

/// Compile `ir` at `opt_level` (0, 1 or 2).
pub fn compile(ir: Ir, opt_level: u8) -> Result<Compiled, String> {
    compile_ir_with(ir, Options { opt_level, ..Options::default() })
        .map_err(|e| format!("compile -O{opt_level}: {e}"))
}

/// Frontend -> lower -> compile of one YAML text at `opt_level`.
pub fn compile_yaml(name: &str, yaml: &str, opt_level: u8) -> Result<Compiled, String> {
    let cluster = polc::frontend::load_str(name, yaml).map_err(|e| format!("frontend: {e}"))?;
    compile(polc::lower::lower(&cluster), opt_level)
}

/// The IR of `cluster` for `endpoint` x `direction` only (the other endpoints are dropped
/// after lowering): big policies then cost one program, not one per pod.
pub fn lower_for(cluster: &Cluster, endpoint: &str, direction: Direction) -> Result<Ir, String> {
    let mut ir = polc::lower::lower(cluster);
    ir.endpoints.retain(|ep| ep.endpoint == endpoint && ep.direction == direction);
    if ir.endpoints.is_empty() {
        return Err(format!("no endpoint {endpoint} {}", direction.as_str()));
    }
    Ok(ir)
}

/// A compile and, per family it has programs for, those programs loaded in the kernel.
pub struct Engines {
    pub compiled: Compiled,
    kernel: Vec<(Family, KernelEngine)>,
}

impl Engines {
    /// Load every program of the compile into the kernel (one map set per family).
    pub fn new(compiled: Compiled) -> Result<Engines, String> {
        let mut kernel = Vec::new();
        for family in [Family::V4, Family::V6] {
            if compiled.programs.iter().any(|p| p.family == family) {
                let engine = KernelEngine::new(&compiled, family)
                    .map_err(|e| format!("kernel: loading IPv{} programs: {e}", family.number()))?;
                kernel.push((family, engine));
            }
        }
        Ok(Engines { compiled, kernel })
    }

    /// The index of the program serving `endpoint` x `direction` x `family`.
    pub fn program(&self, endpoint: &str, direction: Direction, family: Family) -> Option<usize> {
        self.compiled.program_index(endpoint, direction, family)
    }

    fn describe(&self, o: &Outcome) -> String {
        let rule =
            self.compiled.rules.key(o.rule_id).map_or("unknown rule id".into(), |k| k.describe());
        format!("{} by #{} ({rule})", o.verdict.as_str(), o.rule_id)
    }

    /// Decide `flow` at `endpoint` (`ns/pod`) for `direction` on all three engines. Ok(verdict)
    /// when evaluator, vm and kernel agree on verdict and deciding rule; otherwise a message
    /// naming what each engine said.
    pub fn check(
        &self,
        endpoint: &str,
        direction: Direction,
        flow: &Flow,
    ) -> Result<Verdict, String> {
        let ep = self
            .compiled
            .ir
            .endpoint(endpoint, direction)
            .ok_or_else(|| format!("no endpoint {endpoint} {}", direction.as_str()))?;
        let want = evaluate(ep, flow);
        let key = expected_key(ep, &want.trace);
        let family = Family::of(&flow.src);
        let index = self.program(endpoint, direction, family).ok_or_else(|| {
            format!("no IPv{} program for {endpoint} {}", family.number(), direction.as_str())
        })?;
        let vm = vm_run(&self.compiled, index, flow).map_err(|e| format!("vm failed: {e}"))?;
        let engine = self
            .kernel
            .iter()
            .find(|(f, _)| *f == family)
            .map(|(_, e)| e)
            .ok_or_else(|| format!("no kernel engine for IPv{}", family.number()))?;
        let kernel =
            engine.run(&self.compiled, index, flow).map_err(|e| format!("kernel failed: {e}"))?;
        let agrees = |o: &Outcome| {
            o.verdict == want.verdict && self.compiled.rules.key(o.rule_id) == Some(&key)
        };
        if agrees(&vm) && agrees(&kernel) {
            return Ok(want.verdict);
        }
        Err(format!(
            "{endpoint} {} {flow}: engines disagree\n  ir:     {} by {}\n  vm:     {}\n  kernel: {}",
            direction.as_str(),
            want.verdict.as_str(),
            key.describe(),
            self.describe(&vm),
            self.describe(&kernel)
        ))
    }
}
