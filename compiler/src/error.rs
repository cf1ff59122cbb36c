//! The CLI-facing error: one line of text and whether it was the user's input (exit 2) or not (exit 1).

use std::fmt;

/// Which exit code an error maps to, per the CLI contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input (YAML, selector, flags): exit code 2.
    Input,
    /// Anything else (I/O, kernel, internal): exit code 1.
    Other,
}

/// An error the CLI prints as one line: `polc: <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn input(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Input, message: message.into() }
    }
    pub fn other(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Other, message: message.into() }
    }
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            ErrorKind::Input => 2,
            ErrorKind::Other => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keep it one line whatever the source said.
        f.write_str(&self.message.replace('\n', " "))
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Print `text` to stdout. A closed pipe (`polc ... | head`) ends the program quietly with
/// success instead of panicking, as Unix tools do.
pub fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(Error::other(format!("cannot write to stdout: {e}"))),
    }
}
