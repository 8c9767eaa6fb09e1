//! Detecting a restore from backup (DESIGN §4: "a node restored from a backup counts as
//! colluding: it refuses every round that was open at its restore point").
//!
//! A restored database has forgotten what happened after the backup — possibly a recorded
//! contributor set — so it could record a second set for a round and hand a lying aggregator
//! the difference. The **witness** is an append-only journal on storage outside the database's
//! backups: the node appends `round <id>` (fsynced) when it registers a round, before
//! answering, and `audit <n>` with its audit log's length. On start, a database whose audit
//! log is shorter than the witness's last `audit` line was restored: every round the witness
//! names that the database has open — or does not have at all — is refused for good.
//! Operators who restore the witness too run `cryptflow-kms refuse-open-rounds`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the witness has seen.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Every round registered.
    pub rounds: BTreeSet<String>,
    /// The audit log's length at the last note.
    pub audit_length: i64,
}

/// The witness journal.
#[derive(Clone, Debug)]
pub struct Witness {
    path: PathBuf,
}

impl Witness {
    /// The journal at `path` (created on the first note).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&self, line: &str) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        f.write_all(line.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    }

    /// Notes a registered round, durably.
    pub fn note_round(&self, round: &str) -> std::io::Result<()> {
        self.append(&format!("round {round}"))
    }

    /// Notes the audit log's length, durably.
    pub fn note_audit(&self, length: i64) -> std::io::Result<()> {
        self.append(&format!("audit {length}"))
    }

    /// Reads the journal (an absent journal has seen nothing).
    pub fn read(&self) -> std::io::Result<Seen> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Seen::default()),
            Err(e) => return Err(e),
        };
        let mut seen = Seen::default();
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("round", id)) => {
                    seen.rounds.insert(id.to_owned());
                }
                Some(("audit", n)) => {
                    if let Ok(n) = n.trim().parse::<i64>() {
                        seen.audit_length = seen.audit_length.max(n);
                    }
                }
                // A torn last line after a crash is ignored.
                _ => {}
            }
        }
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_remembers_rounds_and_the_longest_audit() {
        let dir = tempfile::tempdir().unwrap();
        let w = Witness::new(dir.path().join("witness"));
        assert_eq!(w.read().unwrap(), Seen::default());
        w.note_round("r1").unwrap();
        w.note_audit(7).unwrap();
        w.note_round("r2").unwrap();
        w.note_audit(5).unwrap();
        std::fs::OpenOptions::new().append(true).open(w.path()).unwrap().write_all(b"rou").unwrap();
        let seen = w.read().unwrap();
        assert_eq!(seen.audit_length, 7);
        assert_eq!(seen.rounds.into_iter().collect::<Vec<_>>(), vec!["r1", "r2"]);
    }
}
