//! `polc compile`: policy in, annotated listings and ELF objects out.

use crate::error::{Error, Result};

/// Flags of `polc compile` (docs/cli.md).
#[derive(clap::Args, Debug)]
pub struct CompileArgs {
    /// Policy/cluster YAML: a file or directory (recursive); repeatable.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<std::path::PathBuf>,
}

pub fn run(_args: &CompileArgs) -> Result<()> {
    Err(Error::other("compile is not implemented yet"))
}
