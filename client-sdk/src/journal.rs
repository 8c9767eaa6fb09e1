//! The submission journal: which update went to which round. The same update submitted to two
//! rounds whose sets differ by this client would let whoever reads both means subtract them
//! (DESIGN §6), so the SDK refuses to submit an update it already submitted elsewhere (unless
//! told to). The update is identified by the SHA-256 of its values (as `f64`, in layout order);
//! the journal is a file of JSON lines, appended to after each successful submission.
//!
//! It is also the site's **privacy ledger** (issue #26): a line of a DP round carries the
//! round's charge (`cryptflow_he::dp::accounting::Charge`, from the plan the key managers
//! signed) and its ledger slot (1, 2, … in the order recorded). The site's spend is the sum of
//! every charge in the file — every training, every committee — and a site with a budget
//! refuses a round whose charge would take it past the budget.

use crate::error::{ClientError, Result};
use crate::update::ModelUpdate;
use cryptflow_he::dp::accounting::{epsilon, Charge};
use cryptflow_he::Values;
use cryptflow_services::{RoundId, Sha256Digest};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One journal line.
#[derive(Serialize, Deserialize)]
struct Entry {
    round: RoundId,
    update_sha256: Sha256Digest,
    /// A DP round's charge and ledger slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dp: Option<LedgerEntry>,
}

/// A DP round in the ledger.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct LedgerEntry {
    slot: u64,
    charge: Charge,
}

/// What a site has spent: the sum of the charges of the DP rounds its journal records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ledger {
    /// DP rounds recorded (the last ledger slot used).
    pub rounds: u64,
    /// The sum of their charges (Rényi DP at the accountant's orders).
    pub spent: Charge,
}

impl Ledger {
    /// `ε` of the spend at `δ` (`cryptflow_he::dp::accounting::epsilon`).
    ///
    /// # Errors
    /// [`ClientError::Config`] for `δ` outside `(0, 1)`.
    pub fn epsilon(&self, delta: f64) -> Result<f64> {
        epsilon(&self.spent, delta)
            .map(|(e, _)| e)
            .map_err(|e| ClientError::Config(format!("dp_delta: {e}")))
    }
}

/// A journal file.
pub(crate) struct Journal {
    path: PathBuf,
}

/// The fingerprint of an update's values, within an experiment (see
/// [`SubmitOptions::experiment`](crate::SubmitOptions::experiment)).
pub(crate) fn fingerprint(update: &ModelUpdate, experiment: Option<&str>) -> Sha256Digest {
    let values = update.values();
    let mut h = Sha256::new();
    if let Some(label) = experiment {
        // Length-prefixed, so that no label and values run into another's.
        h.update(b"cryptflow journal experiment\0");
        h.update((label.len() as u64).to_le_bytes());
        h.update(label.as_bytes());
    }
    let mut buf = vec![0f64; 1 << 14];
    let mut at = 0;
    while at < values.len() {
        let n = buf.len().min(values.len() - at);
        values.read(at, &mut buf[..n]);
        for v in &buf[..n] {
            h.update(v.to_le_bytes());
        }
        at += n;
    }
    Sha256Digest(h.finalize().into())
}

impl Journal {
    pub(crate) fn new(path: impl AsRef<Path>) -> Self {
        Self { path: path.as_ref().to_path_buf() }
    }

    fn entries(&self) -> Result<Vec<Entry>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(ClientError::Config(format!("journal {}: {e}", self.path.display())))
            }
        };
        // A torn line (a crash in the middle of its one write; the next record starts on a
        // line of its own) never ends in `}` and is skipped: its submission never reached a
        // deposit, which waits for the record. Any other line that does not parse is an
        // error — skipping it could drop a charge from the ledger.
        let lines: Vec<&str> = text.lines().collect();
        let mut out = Vec::with_capacity(lines.len());
        for (i, l) in lines.iter().enumerate() {
            match serde_json::from_str(l) {
                Ok(e) => out.push(e),
                Err(_) if !l.trim_end().ends_with('}') => {}
                Err(e) => {
                    return Err(ClientError::Config(format!(
                        "journal {} line {}: {e} — the journal is this site's privacy ledger and \
                         record of submissions: restore it from a backup",
                        self.path.display(),
                        i + 1
                    )))
                }
            }
        }
        Ok(out)
    }

    /// Holds the journal exclusively (an advisory lock on the file) until dropped: a site's
    /// submissions to DP rounds check the budget and record their charge under it, so two at
    /// once cannot both spend what is left. Waits up to `wait`.
    pub(crate) async fn lock(&self, wait: std::time::Duration) -> Result<std::fs::File> {
        let fail = |e: std::io::Error| {
            ClientError::Config(format!("journal {}: {e}", self.path.display()))
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            cryptflow_services::private_fs::create_dir_all(dir).map_err(fail)?;
        }
        let file = cryptflow_services::private_fs::options()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(fail)?;
        let start = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < wait => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(ClientError::Config(format!(
                        "journal {}: another submission of this site held it for {:.0} s",
                        self.path.display(),
                        wait.as_secs_f64()
                    )))
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(fail(e)),
            }
        }
    }

    /// The site's spend so far.
    pub(crate) fn ledger(&self) -> Result<Ledger> {
        let mut ledger = Ledger::default();
        for e in self.entries()? {
            if let Some(dp) = e.dp {
                ledger.rounds = ledger.rounds.max(dp.slot);
                ledger.spent = ledger.spent.plus(&dp.charge);
            }
        }
        Ok(ledger)
    }

    /// The update's fingerprint, unless it already went to this round, or to another round
    /// (and that is not allowed).
    pub(crate) fn check(
        &self,
        round: &RoundId,
        update: &ModelUpdate,
        experiment: Option<&str>,
        allow: bool,
    ) -> Result<Sha256Digest> {
        let f = fingerprint(update, experiment);
        if self.entries()?.iter().any(|e| e.update_sha256 == f && &e.round == round) {
            return Err(ClientError::AlreadySubmitted(round.to_string()));
        }
        if !allow {
            if let Some(e) =
                self.entries()?.into_iter().find(|e| e.update_sha256 == f && &e.round != round)
            {
                return Err(ClientError::Policy(format!(
                    "this exact update was already submitted to round {}; submitting it to round {round} too \
                     would let whoever reads both means learn it (a re-run of an experiment: name a new experiment; \
                     else allow resubmission: `--allow-resubmission`, `allow_resubmission=True`)",
                    e.round
                )));
            }
        }
        Ok(f)
    }

    /// Records a submission, with a DP round's charge in the next ledger slot.
    pub(crate) fn record(
        &self,
        round: &RoundId,
        f: &Sha256Digest,
        charge: Option<&Charge>,
    ) -> Result<()> {
        let dp = match charge {
            Some(c) => Some(LedgerEntry { slot: self.ledger()?.rounds + 1, charge: c.clone() }),
            None => None,
        };
        let line = serde_json::to_string(&Entry { round: round.clone(), update_sha256: *f, dp })
            .map_err(|e| ClientError::Config(e.to_string()))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            cryptflow_services::private_fs::create_dir_all(dir)
                .map_err(|e| ClientError::Config(format!("journal {}: {e}", dir.display())))?;
        }
        // Owner-only (0600): which update went to which round is the site's business (#24).
        let mut f = cryptflow_services::private_fs::options()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| ClientError::Config(format!("journal {}: {e}", self.path.display())))?;
        // One write of the whole line (after a newline if a crash left a torn one), synced
        // before the deposits it precedes.
        let torn = std::fs::read(&self.path).map(|b| b.last().is_some_and(|&c| c != b'\n'));
        let text = if torn.unwrap_or(false) { format!("\n{line}\n") } else { format!("{line}\n") };
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| ClientError::Config(format!("journal {}: {e}", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_update_is_refused_for_a_second_round() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("state/journal.jsonl"));
        let u = ModelUpdate::from(ndarray::Array1::from(vec![0.5f32, -0.25]));
        let r1 = RoundId::parse("r1").unwrap();
        let r2 = RoundId::parse("r2").unwrap();
        let f = j.check(&r1, &u, None, false).unwrap();
        j.record(&r1, &f, None).unwrap();
        assert!(
            matches!(j.check(&r1, &u, None, false), Err(ClientError::AlreadySubmitted(_))),
            "nothing to resend"
        );
        assert!(matches!(j.check(&r2, &u, None, false), Err(ClientError::Policy(_))));
        assert!(j.check(&r2, &u, None, true).is_ok());
        let other = ModelUpdate::from(ndarray::Array1::from(vec![0.5f32, -0.5]));
        assert!(j.check(&r2, &other, None, false).is_ok());
        // Readable by its owner only (#24: it was 0644).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode(&dir.path().join("state/journal.jsonl")) & 0o777, 0o600);
            assert_eq!(mode(&dir.path().join("state")) & 0o777, 0o700);
        }
    }

    #[test]
    fn the_ledger_sums_every_dp_round_in_slot_order_and_survives_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let j = Journal::new(&path);
        assert_eq!(j.ledger().unwrap(), Ledger::default());
        let c = Charge::of_mechanism(1, 200, 1, 10);
        for (i, dp) in [Some(&c), None, Some(&c)].into_iter().enumerate() {
            let r = RoundId::parse(format!("r{i}")).unwrap();
            j.record(&r, &Sha256Digest([i as u8; 32]), dp).unwrap();
        }
        let l = j.ledger().unwrap();
        assert_eq!((l.rounds, &l.spent), (2, &c.times(2)));
        assert!(l.epsilon(1e-5).unwrap() > 0.0);
        assert!(l.epsilon(0.0).is_err());
        // A crash mid-line loses that line only.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"round\":\"r9\",\"upd")
            .unwrap();
        assert_eq!(j.ledger().unwrap().rounds, 2);
        // The next record starts on a line of its own: nothing recorded is lost.
        j.record(&RoundId::parse("r10").unwrap(), &Sha256Digest([9; 32]), Some(&c)).unwrap();
        let l = j.ledger().unwrap();
        assert_eq!((l.rounds, &l.spent), (3, &c.times(3)));
        // A corrupt line that is not the last is an error, not a charge dropped.
        let text = std::fs::read_to_string(&path).unwrap().replacen("{", "{x", 1);
        std::fs::write(&path, text).unwrap();
        assert!(matches!(j.ledger(), Err(ClientError::Config(m)) if m.contains("line 1")));
    }

    #[tokio::test]
    async fn one_holder_of_the_journal_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("journal.jsonl"));
        let held = j.lock(std::time::Duration::from_secs(1)).await.unwrap();
        let e = j.lock(std::time::Duration::from_millis(300)).await.unwrap_err();
        assert!(e.to_string().contains("another submission"), "{e}");
        drop(held);
        assert!(j.lock(std::time::Duration::from_millis(300)).await.is_ok());
    }

    #[test]
    fn a_new_experiment_is_a_new_namespace_and_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("journal.jsonl"));
        let u = ModelUpdate::from(ndarray::Array1::from(vec![0.5f32, -0.25]));
        let (r1, r2, r3) = (
            RoundId::parse("r1").unwrap(),
            RoundId::parse("r2").unwrap(),
            RoundId::parse("r3").unwrap(),
        );
        let f = j.check(&r1, &u, Some("run-1"), false).unwrap();
        j.record(&r1, &f, None).unwrap();
        assert!(matches!(j.check(&r2, &u, Some("run-1"), false), Err(ClientError::Policy(_))));
        let g = j.check(&r2, &u, Some("run-2"), false).unwrap();
        assert_ne!(f, g);
        j.record(&r2, &g, None).unwrap();
        assert!(matches!(j.check(&r3, &u, Some("run-2"), false), Err(ClientError::Policy(_))));
        // No label and a label are different namespaces; labels cannot run into the values.
        assert_ne!(fingerprint(&u, None), fingerprint(&u, Some("")));
    }
}
