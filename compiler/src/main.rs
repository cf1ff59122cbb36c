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

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap's usage errors are bad input: exit 2 (help/version exit 0).
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
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
