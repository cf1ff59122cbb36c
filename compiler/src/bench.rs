//! `polc bench`: per-packet cost of the generated policy in the kernel, -O0, -O1 and -O2,
//! on synthetic policy sets of growing size (`crate::synth`), measured with
//! `BPF_PROG_TEST_RUN` in one run so the numbers are comparable.

use crate::compile::{compile_ir_with, Options};
use crate::engine::KernelEngine;
use crate::error::{print_stdout, Error, Result};
use crate::synth::{cluster_yaml, PortMix, Spec, TARGET, TARGET_IP};
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
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Pods besides the target in each synthetic cluster.
    #[arg(long, default_value_t = 50)]
    pub pods: usize,
    /// Where the synthetic rules draw their ports from (`polc synth --ports`).
    #[arg(long, value_enum, default_value_t = PortMix::Random)]
    pub ports: PortMix,
    /// Optimisation levels to measure (comma-separated; -O0 cannot compile 25k+ rules).
    #[arg(long, value_delimiter = ',', default_values_t = [0u8, 1, 2],
          value_parser = clap::value_parser!(u8).range(0..=2))]
    pub levels: Vec<u8>,
    /// -O2 programs look IPv4 address classes up in an LPM map instead of the class trie
    /// (the layout before the trie, to compare the two).
    #[arg(long)]
    pub class_lpm: bool,
    #[arg(long = "output", value_enum, default_value = "text")]
    pub output: crate::compile::OutputFormat,
    /// Also write the results as an SVG chart (worst flow's ns and worst-case instructions
    /// against rule count, per level; log scales) to this file.
    #[arg(long)]
    pub svg: Option<std::path::PathBuf>,
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
    // A chart that cannot be written is found out before the minutes of measuring.
    if let Some(dir) = args.svg.as_deref().and_then(std::path::Path::parent) {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            return Err(Error::input(format!("--svg: directory {} does not exist", dir.display())));
        }
    }
    let mut rows = Vec::new();
    for &rules in &args.rules {
        let yaml = cluster_yaml(Spec {
            rules,
            pods: args.pods,
            seed: 42,
            ports: args.ports,
            ..Spec::default()
        });
        let cluster = crate::frontend::load_str("synth.yaml", &yaml)?;
        let ir = crate::lower::lower(&cluster);
        for &opt_level in &args.levels {
            let tuning = crate::opt::Tuning { class_trie: !args.class_lpm, ..Default::default() };
            let options = Options { opt_level, tuning, ..Options::default() };
            let compiled = compile_ir_with(ir.clone(), options)?;
            let index = compiled
                .program_index(TARGET, Direction::Ingress, Family::V4)
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
    if let Some(path) = &args.svg {
        // Written beside the target and renamed: never a half-written file.
        let tmp = path.with_extension("svg.tmp");
        std::fs::write(&tmp, svg(&rows, args.repeat))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| Error::other(format!("writing {}: {e}", path.display())))?;
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

/// Two log-log panels (ns of the slowest flow; worst-case instructions) against the rule
/// count, one line per requested level. Plain SVG: no plotting dependency for two charts.
fn svg(rows: &[Row], repeat: u32) -> String {
    const W: f64 = 460.0;
    const H: f64 = 300.0;
    const PAD: f64 = 60.0;
    let colours = [(0u8, "#c0392b"), (1, "#2874a6"), (2, "#1e8449")];
    let log = |v: f64| v.max(1.0).log10();
    let xs: Vec<f64> = rows.iter().map(|r| log(r.rules as f64)).collect();
    let (x0, x1) =
        (xs.iter().cloned().fold(f64::MAX, f64::min), xs.iter().cloned().fold(0.0, f64::max));
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n",
        2.0 * W,
        H + 30.0
    );
    out.push_str(&format!(
        "<text x=\"10\" y=\"{}\">polc bench: synthetic policy on one endpoint, \
         BPF_PROG_TEST_RUN x {repeat}; red -O0, blue -O1, green -O2 (level requested; \
         -O2 falls back to -O1 past its reach)</text>\n",
        H + 22.0
    ));
    fn slowest(r: &Row) -> f64 {
        r.ns.iter().copied().max().unwrap_or(0) as f64
    }
    fn worst(r: &Row) -> f64 {
        r.worst_insns as f64
    }
    type Metric = fn(&Row) -> f64;
    let panels: [(&str, Metric); 2] =
        [("ns per packet, slowest of 4 flows", slowest), ("worst-case instructions (CFG)", worst)];
    for (k, (title, value)) in panels.iter().enumerate() {
        let left = k as f64 * W;
        let ys: Vec<f64> = rows.iter().map(|r| log(value(r))).collect();
        let y0 = ys.iter().cloned().fold(f64::MAX, f64::min).floor();
        let y1 = ys.iter().cloned().fold(0.0, f64::max).ceil().max(y0 + 1.0);
        let px = |x: f64| left + PAD + (x - x0) / (x1 - x0).max(1e-9) * (W - 2.0 * PAD);
        let py = |y: f64| H - PAD + 20.0 - (y - y0) / (y1 - y0) * (H - 2.0 * PAD);
        out.push_str(&format!(
            "<text x=\"{}\" y=\"20\" font-weight=\"bold\">{title}</text>\n",
            left + PAD
        ));
        out.push_str(&format!(
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\n",
            px(x0),
            py(y1),
            px(x1) - px(x0),
            py(y0) - py(y1)
        ));
        let mut e = y0;
        while e <= y1 {
            out.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">1e{}</text>\n",
                px(x0) - 6.0,
                py(e) + 4.0,
                e as i32
            ));
            e += 1.0;
        }
        let mut seen = Vec::new();
        for r in rows {
            if !seen.contains(&r.rules) {
                seen.push(r.rules);
                out.push_str(&format!(
                    "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                    px(log(r.rules as f64)),
                    py(y0) + 16.0,
                    r.rules
                ));
            }
        }
        for (level, colour) in colours {
            let points: Vec<String> = rows
                .iter()
                .filter(|r| r.opt == level)
                .map(|r| format!("{:.1},{:.1}", px(log(r.rules as f64)), py(log(value(r)))))
                .collect();
            if points.len() > 1 {
                out.push_str(&format!(
                    "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n",
                    points.join(" ")
                ));
            }
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(rules: usize, opt: u8, worst_insns: u64, ns: u32) -> Row {
        Row {
            rules,
            opt,
            used: opt,
            insns: 0,
            worst_insns,
            worst_lookups: 0,
            helper_lookups: 0,
            ns: vec![ns / 2, ns],
        }
    }

    #[test]
    fn the_chart_has_one_line_per_level_in_each_panel_and_every_rule_count() {
        let mut rows = Vec::new();
        for (rules, scale) in [(10, 1), (1000, 100)] {
            rows.push(row(rules, 0, 200 * scale, 60 * scale as u32));
            rows.push(row(rules, 1, 160 * scale, 50 * scale as u32));
            rows.push(row(rules, 2, 104, 70));
        }
        let svg = svg(&rows, 1000);
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        for colour in ["#c0392b", "#2874a6", "#1e8449"] {
            let lines = svg.matches(&format!("stroke=\"{colour}\" stroke-width")).count();
            assert_eq!(lines, 2, "{colour}: one line per panel");
        }
        assert_eq!(svg.matches(">1000</text>").count(), 2, "rule counts label both x axes");
        assert!(svg.contains("BPF_PROG_TEST_RUN x 1000"));
        // -O2 is flat at 104 instructions: its line is horizontal in the second panel.
        let green = svg.lines().filter(|l| l.contains("#1e8449")).nth(1).unwrap_or_default();
        let ys: Vec<&str> = green
            .split("points=\"")
            .nth(1)
            .unwrap_or_default()
            .split(['"', ' '])
            .filter_map(|p| p.split(',').nth(1))
            .collect();
        assert_eq!(ys.len(), 2);
        assert_eq!(ys[0], ys[1], "{green}");
    }
}
