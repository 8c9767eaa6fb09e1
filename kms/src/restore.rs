//! Detecting a restore from backup (DESIGN §4: "a node restored from a backup counts as
//! colluding: it refuses every round that was open at its restore point").
//!
//! A restored database has forgotten what happened after the backup — possibly a recorded
//! contributor set — so it could record a second set for a round and hand a lying aggregator
//! the difference. The **witness** is an append-only journal on storage outside the database's
//! backups. The node appends, fsynced, before the database change it announces:
//! `round <id>` when it registers a round, `set <id> <sha256>` when it records a round's
//! contributor set (`cryptflow_services::protocol::set_digest`), and `audit <n>` with its
//! audit log's length when that grew. On start:
//! - a round the witness saw a set for that the database has open is refused for good (the
//!   database is behind, or a crash came between the two writes);
//! - if the audit log is shorter than the witness's last `audit` line, the database was
//!   restored: every round the witness names that the database has open, or does not have, is
//!   refused too.
//!
//! Operators who restore the witness together with the database defeat it; they run
//! `cryptflow-kms refuse-open-rounds` instead. `serve` refuses to start without a witness.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the witness has seen.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Every round registered.
    pub rounds: BTreeSet<String>,
    /// The digests of the sets the node set out to record, by round (hex; concurrent
    /// attempts may leave more than one — the database holds the one that won).
    pub sets: std::collections::BTreeMap<String, BTreeSet<String>>,
    /// The audit log's length at the last note.
    pub audit_length: i64,
}

/// The witness journal.
#[derive(Debug)]
pub struct Witness {
    path: PathBuf,
    /// The audit length last noted (so a tick with nothing new writes nothing).
    noted: std::sync::atomic::AtomicI64,
}

impl Witness {
    /// The journal at `path` (created on the first note).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), noted: std::sync::atomic::AtomicI64::new(-1) }
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&self, line: &str) -> std::io::Result<()> {
        let mut f =
            cryptflow_services::private_fs::options().create(true).append(true).open(&self.path)?;
        f.write_all(line.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    }

    /// Notes a registered round, durably.
    pub fn note_round(&self, round: &str) -> std::io::Result<()> {
        self.append(&format!("round {round}"))
    }

    /// Notes a round's contributor set (its digest), durably.
    pub fn note_set(&self, round: &str, digest: &str) -> std::io::Result<()> {
        self.append(&format!("set {round} {digest}"))
    }

    /// Notes the audit log's length, durably, if it grew since the last note.
    pub fn note_audit(&self, length: i64) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        if self.noted.load(Ordering::Relaxed) >= length {
            return Ok(());
        }
        self.append(&format!("audit {length}"))?;
        self.noted.fetch_max(length, Ordering::Relaxed);
        Ok(())
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
                Some(("set", rest)) => {
                    if let Some((id, digest)) = rest.split_once(' ') {
                        seen.rounds.insert(id.to_owned());
                        seen.sets
                            .entry(id.to_owned())
                            .or_default()
                            .insert(digest.trim().to_owned());
                    }
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
        w.note_set("r3", "abcd").unwrap();
        std::fs::OpenOptions::new().append(true).open(w.path()).unwrap().write_all(b"rou").unwrap();
        let seen = w.read().unwrap();
        assert_eq!(seen.audit_length, 7);
        assert_eq!(seen.rounds.into_iter().collect::<Vec<_>>(), vec!["r1", "r2", "r3"]);
        assert!(seen.sets["r3"].contains("abcd"));
        // An audit length that did not grow is not written again.
        let lines = std::fs::read_to_string(w.path()).unwrap().lines().count();
        w.note_audit(7).unwrap();
        w.note_audit(3).unwrap();
        assert_eq!(std::fs::read_to_string(w.path()).unwrap().lines().count(), lines);
    }
}
