//! Exit codes, errors and output helpers shared by the commands.

use cryptflow_client::{ClientError, Progress, ProgressFn};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::process::ExitCode;

/// The CLI's exit codes (also in `cryptflow --help`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// 1: anything not covered below.
    Internal = 1,
    /// 2: bad command line.
    Usage = 2,
    /// 3: an input file or the update in it is unusable (format, layout, weight, values).
    Input = 3,
    /// 4: a server refused the request (4xx: authentication, permission, conflict, limits).
    Refused = 4,
    /// 5: a server could not be reached or kept failing (after retries).
    Unavailable = 5,
    /// 6: the round is not in a state that allows this (failed, not yet published), or
    /// waiting for it timed out.
    RoundState = 6,
    /// 7: a server sent something invalid (undecodable, wrong size, hash mismatch).
    Protocol = 7,
    /// 8: the aggregate failed verification: evidence of tampering.
    Verification = 8,
    /// 9: this client's policy refuses the round (too few contributors, a peer not allowed,
    /// an update already submitted to another round, a round past the site's privacy budget).
    Policy = 9,
}

/// A command's failure: what to print and which exit code.
#[derive(Debug)]
pub struct CliError {
    /// Exit code.
    pub exit: Exit,
    /// Message.
    pub message: String,
    /// The server's problem document, for refusals.
    pub problem: Option<Box<cryptflow_client::Problem>>,
}

impl CliError {
    /// An error with this exit code.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self { exit, message: message.into(), problem: None }
    }

    /// Exit 2.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    /// Exit 3.
    pub fn input(message: impl Into<String>) -> Self {
        Self::new(Exit::Input, message)
    }

    /// Exit 1.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Exit::Internal, message)
    }

    /// Prints the error (as JSON on stderr with `--json`) and returns the exit code.
    pub fn report(&self, json: bool) -> ExitCode {
        if json {
            let v = serde_json::json!({
                "error": self.message,
                "exit": self.exit as u8,
                "kind": self.exit,
                "problem": self.problem,
            });
            eprintln!("{v}");
        } else {
            // (stderr: a closed pipe there is not worth a panic either)
            eprintln!("error: {}", self.message);
            if let Some(p) = &self.problem {
                if let Some(f) = &p.field {
                    eprintln!("  field: {f}");
                }
                if let Some(l) = p.limit {
                    eprintln!("  limit: {l}");
                }
            }
        }
        ExitCode::from(self.exit as u8)
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        let exit = match &e {
            ClientError::Input(_) => Exit::Input,
            ClientError::Refused { .. } => Exit::Refused,
            ClientError::Server { .. }
            | ClientError::Transport { .. }
            | ClientError::Certificate { .. } => Exit::Unavailable,
            ClientError::Protocol { .. } | ClientError::Committee(_) => Exit::Protocol,
            ClientError::Policy(_) | ClientError::AlreadySubmitted(_) | ClientError::Budget(_) => {
                Exit::Policy
            }
            ClientError::RoundState { .. } | ClientError::Timeout(_) => Exit::RoundState,
            ClientError::Crypto(_) => Exit::Input,
            ClientError::Config(_) => Exit::Usage,
            ClientError::Verification(_) => Exit::Verification,
            _ => Exit::Internal,
        };
        let problem = e.problem().cloned().map(Box::new);
        Self { exit, message: e.to_string(), problem }
    }
}

/// Prints a line on stdout; if stdout is a closed pipe (`cryptflow … | head`), exits quietly
/// instead of panicking.
pub fn emit(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// Prints a warning on stderr (a result that holds, but not as a reader would assume).
pub fn warn(line: &str) {
    eprintln!("{line}");
}

/// Writes a new file readable by its owner only (mode 0600); never overwrites.
pub fn write_private(path: &std::path::Path, contents: &[u8]) -> Result<(), CliError> {
    cryptflow_services::private_fs::write_new(path, contents).map_err(|e| {
        CliError::input(format!("{}: {e} (existing files are not overwritten)", path.display()))
    })
}

/// Writes (or replaces, atomically) a file readable by its owner only (mode 0600).
pub fn write_private_replace(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir =
        path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?; // created 0600
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
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

/// A progress bar on stderr (hidden when stderr is not a terminal, or with `--json`)
/// driven by the SDK's progress events.
pub fn progress_bar(json: bool) -> (ProgressBar, ProgressFn) {
    let bar = if json { ProgressBar::hidden() } else { ProgressBar::new(0) };
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg:12} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let b = bar.clone();
    let f = ProgressFn::new(move |p| match p {
        Progress::Encrypting { values } => {
            b.set_message(format!("encrypting and uploading {values} values"));
            b.enable_steady_tick(std::time::Duration::from_millis(100));
        }
        Progress::Uploading { sent, total } => {
            b.set_length(total);
            b.set_position(sent);
        }
        Progress::Depositing { done, nodes } => {
            b.set_message(format!("key shares deposited with {done} of {nodes} key managers"));
        }
        Progress::Downloading { received, total } => {
            b.set_message("downloading");
            b.set_length(total);
            b.set_position(received);
        }
        Progress::Decrypting => b.set_message("decrypting"),
        _ => {}
    });
    (bar, f)
}
