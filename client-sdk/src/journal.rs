//! The submission journal: which update went to which round. The same update submitted to two
//! rounds whose sets differ by this client would let whoever reads both means subtract them
//! (DESIGN §6), so the SDK refuses to submit an update it already submitted elsewhere (unless
//! told to). The update is identified by the SHA-256 of its values (as `f64`, in layout order);
//! the journal is a file of JSON lines, appended to after each successful submission.

use crate::error::{ClientError, Result};
use crate::update::ModelUpdate;
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
        // A torn last line after a crash is skipped.
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
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

    /// Records a submission.
    pub(crate) fn record(&self, round: &RoundId, f: &Sha256Digest) -> Result<()> {
        let line = serde_json::to_string(&Entry { round: round.clone(), update_sha256: *f })
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
        writeln!(f, "{line}")
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
        j.record(&r1, &f).unwrap();
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
        j.record(&r1, &f).unwrap();
        assert!(matches!(j.check(&r2, &u, Some("run-1"), false), Err(ClientError::Policy(_))));
        let g = j.check(&r2, &u, Some("run-2"), false).unwrap();
        assert_ne!(f, g);
        j.record(&r2, &g).unwrap();
        assert!(matches!(j.check(&r3, &u, Some("run-2"), false), Err(ClientError::Policy(_))));
        // No label and a label are different namespaces; labels cannot run into the values.
        assert_ne!(fingerprint(&u, None), fingerprint(&u, Some("")));
    }
}
