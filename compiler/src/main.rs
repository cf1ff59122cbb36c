//! The `polc` command line. The contract (flags, output, exit codes) is in docs/cli.md.

use clap::{Parser, Subcommand};
use polc::error::Error;

#[derive(Parser)]
#[command(name = "polc", version, about = "Compile Kubernetes and Calico network policy into eBPF")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile policy into eBPF programs: annotated listings and ELF objects.
    Compile(polc::compile::CompileArgs),
    /// Explain the verdict for one flow between two endpoints.
    Explain(polc::explain::ExplainArgs),
    /// Measure per-packet policy cost in the kernel (-O0, -O1, -O2) on synthetic policy.
    Bench(polc::bench::BenchArgs),
    /// Print a deterministic synthetic cluster (policy set on bench/target) for benchmarks.
    Synth(polc::synth::SynthArgs),
    /// Attach compiled policy to pods' host-side interfaces (root; swaps atomically).
    Attach(polc::dataplane::AttachArgs),
    /// Remove every tc hook, program and pin polc made.
    Detach(polc::dataplane::PinArgs),
    /// Show attached endpoints, programs, conntrack fill and drop counters.
    Status(polc::dataplane::PinArgs),
    /// Print an attached policy's listing with per-rule hit counts.
    Dump(polc::dataplane::DumpArgs),
    /// Keep the attached policy in sync with the files (watch, debounce, re-attach).
    Agent(polc::dataplane::AgentArgs),
}

/// clap's message up to its first blank line (the usage and tips follow), on one line.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).take_while(|l| !l.is_empty()).collect();
    let joined = lines.join(" ");
    let text = joined.strip_prefix("error: ").unwrap_or(&joined);
    format!("{text} (see --help)")
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version.
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            // A usage error is bad input: one line, exit 2, like every other input error.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "polc: {}", one_line(&e.to_string()));
            std::process::exit(2);
        }
    };
    let result: Result<(), Error> = match &cli.command {
        Command::Compile(args) => polc::compile::run(args),
        Command::Explain(args) => polc::explain::run(args),
        Command::Synth(args) => polc::synth::run(args),
        Command::Bench(args) => polc::bench::run(args),
        Command::Attach(args) => polc::dataplane::run_attach(args),
        Command::Detach(args) => polc::dataplane::run_detach(args),
        Command::Status(args) => polc::dataplane::run_status(args),
        Command::Dump(args) => polc::dataplane::run_dump(args),
        Command::Agent(args) => polc::dataplane::run_agent(args),
    };
    if let Err(e) = result {
        // Not eprintln!: it panics when stderr is closed early (`2>&1 | head -c 10`).
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "polc: {e}");
        std::process::exit(e.exit_code());
    }
}
