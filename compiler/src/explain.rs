//! `polc explain`: the verdict for one flow, with a trace per direction.

use crate::error::{Error, Result};

/// Flags of `polc explain` (docs/cli.md).
#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// Policy/cluster YAML: a file or directory (recursive); repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<std::path::PathBuf>,
}

pub fn run(_args: &ExplainArgs) -> Result<()> {
    Err(Error::other("explain is not implemented yet"))
}
