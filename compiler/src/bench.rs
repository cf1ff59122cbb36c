//! `polc bench`: per-packet cost of the generated policy in the kernel, -O0, -O1 and -O2,
//! on synthetic policy sets of growing size (`crate::synth`), measured with
//! `BPF_PROG_TEST_RUN` in one run so the numbers are comparable.

use crate::compile::{compile_ir_with, Options};
use crate::engine::KernelEngine;
use crate::error::{print_stdout, Error, Result};
use crate::synth::{cluster_yaml, Spec, TARGET, TARGET_IP};
use polc_ir::{proto, Direction, Family, Flow};
use serde_json::json;
use std::net::IpAddr;

/// Flags of `polc bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Rule counts to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [10usize, 100, 1000, 10000])]
    pub rules: Vec<usize>,
    /// BPF_PROG_TEST_RUN repeat count per flow.
    #[arg(long, default_value_t = 1_000_000)]
    pub repeat: u32,
    /// Pods besides the target in each synthetic cluster.
    #[arg(long, default_value_t = 50)]
    pub pods: usize,
    #[arg(long = "output", value_enum, default_value = "text")]
    pub output: crate::compile::OutputFormat,
}

/// The flows every size is measured on: denied by the security tier, allowed late, and
/// falling through to a tier default — so -O0 walks most of its rules.
fn flows() -> Vec<Flow> {
    let dst: IpAddr = TARGET_IP.parse().unwrap_or(IpAddr::from([10, 200, 0, 10]));
    let src = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([10, 200, 1, 1]));
    vec![
        Flow::ports(src("10.200.1.1"), dst, proto::TCP, 40000, 8080),
        Flow::ports(src("10.200.1.7"), dst, proto::UDP, 40001, 5353),
        Flow::ports(src("172.16.5.9"), dst, proto::TCP, 40002, 3050),
        Flow::ports(src("10.9.9.9"), dst, proto::SCTP, 40003, 99),
    ]
}

/// One measurement.
struct Row {
    rules: usize,
    opt: u8,
    used: u8,
    insns: usize,
    worst_insns: u64,
    worst_lookups: u64,
    helper_lookups: u64,
    ns: Vec<u32>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let mut rows = Vec::new();
    for &rules in &args.rules {
        let yaml = cluster_yaml(Spec { rules, pods: args.pods, seed: 42, replicas: 1 });
        let cluster = crate::frontend::load_str("synth.yaml", &yaml)?;
        let ir = crate::lower::lower(&cluster);
        for opt_level in [0u8, 1, 2] {
            let options = Options { opt_level, ..Options::default() };
            let compiled = compile_ir_with(ir.clone(), options)?;
            let index = compiled
                .programs
                .iter()
                .position(|p| {
                    p.direction == Direction::Ingress && p.endpoints.iter().any(|e| e == TARGET)
                })
                .ok_or_else(|| Error::other("no program for the target"))?;
            let p = &compiled.programs[index];
            let engine = KernelEngine::new(&compiled, Family::V4)?;
            let mut ns = Vec::new();
            for flow in flows() {
                ns.push(engine.time_ns(&compiled, index, &flow, args.repeat)?);
            }
            rows.push(Row {
                rules,
                opt: opt_level,
                used: p.opt_level,
                insns: p.insns(),
                worst_insns: p.worst_case.insns,
                worst_lookups: p.worst_case.map_lookups,
                helper_lookups: p.worst_case.helper_lookups,
                ns,
            });
        }
    }
    let text = match args.output {
        crate::compile::OutputFormat::Json => {
            let v: Vec<_> = rows
                .iter()
                .map(|r| {
                    json!({"rules": r.rules, "opt_level": r.opt, "generated_at": r.used,
                           "insns": r.insns, "worst_case_insns": r.worst_insns,
                           "worst_case_map_lookups": r.worst_lookups,
                           "worst_case_helper_lookups": r.helper_lookups, "ns_per_flow": r.ns})
                })
                .collect();
            format!("{}\n", json!({ "repeat": args.repeat, "results": v }))
        }
        crate::compile::OutputFormat::Text => {
            let mut t = format!(
                "{:>7} {:>3} {:>5} {:>8} {:>11} {:>14} {:>8}  ns per flow (repeat {})\n",
                "rules",
                "-O",
                "used",
                "insns",
                "worst insns",
                "worst lookups",
                "(helper)",
                args.repeat
            );
            for r in &rows {
                t.push_str(&format!(
                    "{:>7} {:>3} {:>5} {:>8} {:>11} {:>14} {:>8}  {:?}\n",
                    r.rules,
                    r.opt,
                    r.used,
                    r.insns,
                    r.worst_insns,
                    r.worst_lookups,
                    r.helper_lookups,
                    r.ns
                ));
            }
            t
        }
    };
    print_stdout(&text)
}
