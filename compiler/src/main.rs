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
    /// Print a deterministic synthetic cluster (policy set on bench/target) for benchmarks.
    Synth(polc::synth::SynthArgs),
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
    };
    if let Err(e) = result {
        eprintln!("polc: {e}");
        std::process::exit(e.exit_code());
    }
}
