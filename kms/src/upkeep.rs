//! The key manager's work outside requests: the periodic tick (restore-witness note, shares
//! shredded past retention) and the restore check at start (DESIGN §4: a node restored from
//! a backup refuses every round that was open at its restore point).

use crate::store::Actor;
use crate::AppState;
use cryptflow_services::api::kms::KmsRoundState;
use cryptflow_services::{Role, RoundId};

/// One pass of the background work: note the audit length in the restore witness, and shred
/// the shares of rounds past retention.
pub async fn tick(s: &AppState) {
    if let Some(w) = &s.witness {
        match crate::audit::length(s.store.pool()).await {
            Ok(n) => {
                if let Err(e) = w.note_audit(n) {
                    tracing::warn!(error = %e, "cannot write the restore witness");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the audit length"),
        }
    }
    match s.sweep_round_keys().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(keys = n, "round keys of shredded rounds removed"),
        Err(e) => tracing::warn!(error = %e, "round-key sweep failed; will retry"),
    }
    let before = s.clock.now() - i64::try_from(s.retention_secs).unwrap_or(i64::MAX);
    let due = match s.store.rounds_to_shred(before).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "retention scan failed");
            return;
        }
    };
    let system = Actor { subject: "kms", role: Role::Admin };
    for round in due {
        match s.shred(&round, KmsRoundState::Destroyed, &system, "round.expire").await {
            Ok(()) => {
                tracing::info!(round = %round, "shares shredded after retention");
            }
            Err(e) => tracing::warn!(round = %round, error = %e, "shredding failed; will retry"),
        }
    }
}

/// The restore check at start (see [`crate::restore`]): if the database is behind the
/// witness, refuse every round the witness names that the database has open or lacks, and
/// every round it has open; then note the audit length.
pub async fn restore_check(s: &AppState) -> Result<(), String> {
    let Some(witness) = &s.witness else { return Ok(()) };
    let seen = witness.read().map_err(|e| format!("{}: {e}", witness.path().display()))?;
    // A set the node set out to record, for a round the database has open: refused whatever
    // the audit length says (a snapshot taken between the two writes would not be "behind").
    let system = Actor { subject: "kms", role: Role::Admin };
    let mut unrecorded = 0;
    for id in seen.sets.keys() {
        let Ok(round) = RoundId::parse(id.clone()) else { continue };
        let row = s.store.round(&round).await.map_err(|e| e.to_string())?;
        if row.is_some_and(|r| r.state == KmsRoundState::Open) {
            s.shred(&round, KmsRoundState::Refused, &system, "round.refuse_after_restore").await?;
            unrecorded += 1;
        }
    }
    if unrecorded > 0 {
        tracing::warn!(
            rounds = unrecorded,
            "the restore witness saw sets the database does not hold: those rounds are refused"
        );
    }
    let length = crate::audit::length(s.store.pool()).await.map_err(|e| e.to_string())?;
    if length < seen.audit_length {
        tracing::warn!(
            database = length,
            witness = seen.audit_length,
            "the database is behind the restore witness: refusing the rounds open at the backup"
        );
        let refused = refuse_open_rounds(s).await?;
        let mut unknown = 0;
        for id in &seen.rounds {
            let Ok(round) = RoundId::parse(id.clone()) else { continue };
            if s.store.round(&round).await.map_err(|e| e.to_string())?.is_none() {
                s.store.refuse(&round, s.clock.now()).await.map_err(|e| e.to_string())?;
                unknown += 1;
            }
        }
        tracing::warn!(refused, unknown, "rounds refused after a restore");
    }
    // Keys of rounds refused above, or registered after the backup the database came from.
    s.sweep_round_keys().await?;
    let length = crate::audit::length(s.store.pool()).await.map_err(|e| e.to_string())?;
    witness.note_audit(length).map_err(|e| format!("{}: {e}", witness.path().display()))
}

/// Refuses (and shreds) every round still open: what a node restored from a backup must do.
pub async fn refuse_open_rounds(s: &AppState) -> Result<u64, String> {
    let system = Actor { subject: "kms", role: Role::Admin };
    let open = s.store.open_rounds().await.map_err(|e| e.to_string())?;
    for round in &open {
        s.shred(round, KmsRoundState::Refused, &system, "round.refuse_after_restore").await?;
    }
    Ok(open.len() as u64)
}
