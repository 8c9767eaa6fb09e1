//! The demo's exit codes, errors and output (a closed pipe ends the program quietly).

use std::io::Write;
use std::process::ExitCode;

/// Exit codes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// 1: anything not covered below.
    Internal = 1,
    /// 2: bad command line.
    Usage = 2,
    /// 8: an encrypted mean differed from plaintext FedAvg by more than the planner's bound.
    BoundExceeded = 8,
}

/// A failure: what to print and which exit code.
#[derive(Debug)]
pub struct DemoError {
    exit: Exit,
    message: String,
}

impl DemoError {
    /// An error with this exit code.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self { exit, message: message.into() }
    }

    /// Exit 1.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(Exit::Internal, message.to_string())
    }

    /// Prints the error (as JSON on stderr with `--json`) and returns the exit code.
    pub fn report(&self, json: bool) -> ExitCode {
        if json {
            let v = serde_json::json!({ "error": self.message, "exit": self.exit as u8, "kind": self.exit });
            eprintln!("{v}");
        } else {
            eprintln!("error: {}", self.message);
        }
        ExitCode::from(self.exit as u8)
    }
}

/// Prints a line on stdout; if stdout is a closed pipe (`cryptflow-demo | head`), exits quietly
/// instead of panicking.
pub fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// `1.23 MB`-style sizes (decimal units).
pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}
