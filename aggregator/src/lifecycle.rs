//! A round's life at the aggregator, where it talks to the key managers:
//! `open → aggregating → published | failed`.
//!
//! - **Creation** registers the spec with every node; the round is usable once `t` have
//!   echoed it (the others are retried by [`tick`]).
//! - **Closing** happens at `max_clients` admitted uploads, at the deadline, or on an admin's
//!   request.
//! - **Publication** waits (up to `deposit_grace_secs` after closing) until the admitted uploads
//!   hold deposits with matching digests at `t` nodes, fixes the contributor set `S` once
//!   together with its fold jobs, which any replica runs ([`crate::jobs`]) until the aggregate
//!   is built from the stored uploads of `S`; then reports `S` to every node. The round is
//!   shown `published` — fetchable — only once `t` nodes have recorded `S`; the others keep being
//!   told. Every step is idempotent, safe on several replicas at once, and resumed by [`tick`]
//!   after a crash.
//! - **Retention**: the uploads' blobs are deleted `upload_retention_secs` after publication
//!   (or failure); the aggregate stays.

use crate::domain::{self, Step};
use crate::fold;
use crate::kms_client::KmsError;
use crate::store::{RoundRow, UploadRow};
use crate::AppState;
use cryptflow_services::api::kms::SpecEcho;
use cryptflow_services::api::round::{
    Contribution, RoundSpec, RoundState, SeedDerivation, SeedPart,
};
use cryptflow_services::http::AppError;
use cryptflow_services::protocol;
use cryptflow_services::{ErrorCode, RoundId};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// Fixes `spec`'s mask seed in two steps (`docs/security.md`, 10.): a contribution, its
/// commitment sent to every node, their signed nonces; the seed derives from the contribution
/// and the nonces of the nodes that answered — at least `t`. A node that did not answer is
/// asked once more under the same commitment (it answers the same nonce): a node whose answer
/// was lost would otherwise refuse the round for good, its nonce left out. The contribution is
/// kept in this replica until the spec is stored ([`forget_seed`]), so that a retried creation
/// asks under the same commitment.
pub async fn fix_seed(s: &AppState, mut spec: RoundSpec) -> Result<RoundSpec, AppError> {
    let committee = s.kms.committee();
    let round = spec.round_id.clone();
    let contribution = {
        // Bounded: creations are admin requests, each entry lives until its round is stored or
        // refused; past the bound the oldest-drawn half is dropped (a retry of those draws anew).
        const MAX_PENDING: usize = 10_000;
        let mut pending = s.pending_seeds.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if pending.len() >= MAX_PENDING && !pending.contains_key(&round) {
            let mut by_age: Vec<_> = pending.iter().map(|(r, (_, n))| (*n, r.clone())).collect();
            by_age.sort();
            for (_, r) in by_age.into_iter().take(MAX_PENDING / 2) {
                pending.remove(&r);
            }
        }
        let next = pending.values().map(|(_, n)| n + 1).max().unwrap_or(0);
        pending.entry(round.clone()).or_insert_with(|| (SeedPart::generate(), next)).0
    };
    let commitment = protocol::seed_commitment(&round, &contribution);
    let mut nonces = Vec::new();
    // Each node's last failure.
    let mut failed: BTreeMap<u8, KmsError> = BTreeMap::new();
    let mut ask: Vec<u8> = committee.nodes().iter().map(|n| n.x).collect();
    for pass in 0..2 {
        let calls = ask.iter().map(|&x| {
            let (kms, round) = (s.kms.clone(), round.clone());
            async move { (x, kms.seed_nonce(x, &round, &commitment).await) }
        });
        for (x, outcome) in futures_util::future::join_all(calls).await {
            match outcome {
                Ok(nonce) => {
                    failed.remove(&x);
                    nonces.push(nonce);
                }
                Err(e) => {
                    tracing::warn!(round = %round, node = x, pass, error = %e, "no seed nonce");
                    count_credentials(s, &e);
                    failed.insert(x, e);
                }
            }
        }
        ask = failed
            .iter()
            .filter(|(_, e)| matches!(e, KmsError::Unavailable { .. }))
            .map(|(x, _)| *x)
            .collect();
        if ask.is_empty() {
            break;
        }
    }
    let errors: Vec<KmsError> = failed.into_values().collect();
    let t = committee.shape().threshold();
    if nonces.len() >= t as usize {
        nonces.sort_by_key(|n| n.share_index);
        spec.seed = SeedDerivation { contribution, nonces };
        spec.mask_seed = protocol::derive_mask_seed(&round, &spec.seed);
        return Ok(spec);
    }
    let listed = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
    let refused_spec = errors.iter().any(|e| {
        matches!(e, KmsError::Refused { problem, .. } if matches!(problem.status, 409 | 410 | 422))
    });
    if refused_spec || errors.iter().any(|e| matches!(e, KmsError::Credentials { .. })) {
        // The round id is taken (or refused) at a node, or the aggregator's token is: a retry
        // changes nothing, so the contribution is not kept.
        forget_seed(s, &round);
        return Err(registration_problem(t, nonces.len(), &errors));
    }
    if errors.iter().any(|e| matches!(e, KmsError::Refused { .. })) {
        return Err(AppError::new(
            ErrorCode::BadGateway,
            format!(
                "{listed}: a key manager without the seed step is older than this aggregator \
                 (upgrade the committee and the aggregator together), or the committee file's URL \
                 is not its internal listener; nothing was stored"
            ),
        )
        .with_field("committee_file"));
    }
    Err(AppError::new(
        ErrorCode::Unavailable,
        format!(
            "only {} of the {t} key managers needed answered a nonce for the round's mask seed \
             ({listed}); nothing was stored — repeat the request",
            nonces.len()
        ),
    ))
}

/// Drops the seed contribution kept for `round`'s creation (stored, or refused for good).
pub fn forget_seed(s: &AppState, round: &RoundId) {
    s.pending_seeds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(round);
}

/// Registers the round with every node that has not echoed it yet; stores and returns all
/// echoes, and the refusals of this pass.
pub async fn register_missing(
    s: &AppState,
    row: &RoundRow,
) -> Result<(Vec<SpecEcho>, Vec<KmsError>), AppError> {
    let committee = s.kms.committee();
    let missing: Vec<u8> = committee
        .nodes()
        .iter()
        .map(|n| n.x)
        .filter(|x| !row.echoes.iter().any(|e| e.share_index == *x))
        .collect();
    if missing.is_empty() {
        return Ok((row.echoes.clone(), Vec::new()));
    }
    let calls = missing.iter().map(|&x| {
        let kms = s.kms.clone();
        let spec = row.spec.clone();
        async move { (x, kms.register(x, &spec).await) }
    });
    let mut echoes = row.echoes.clone();
    let mut errors = Vec::new();
    for (x, outcome) in futures_util::future::join_all(calls).await {
        match outcome.and_then(|echo| {
            // The aggregator checks what clients will check, to report a misconfigured node.
            if echo.share_index != x {
                return Err(KmsError::Unavailable {
                    x,
                    detail: format!("it answered with node {}'s echo", echo.share_index),
                });
            }
            protocol::verify_echo(committee, &row.spec, &echo).map(|_| echo).map_err(|e| {
                KmsError::Unavailable { x, detail: format!("its echo does not verify: {e}") }
            })
        }) {
            Ok(echo) => echoes.push(echo),
            Err(e) => {
                tracing::warn!(round = %row.spec.round_id, node = x, error = %e, "registration failed");
                count_credentials(s, &e);
                errors.push(e);
            }
        }
    }
    echoes.sort_by_key(|e| e.share_index);
    if echoes.len() != row.echoes.len() {
        s.store.set_echoes(&row.spec.round_id, &echoes).await.map_err(AppError::internal)?;
    }
    Ok((echoes, errors))
}

/// The problem an admin gets when fewer than `t` nodes registered a round.
pub fn registration_problem(t: u8, echoes: usize, errors: &[KmsError]) -> AppError {
    let detail = |e: &KmsError| e.to_string();
    let all = || errors.iter().map(detail).collect::<Vec<_>>().join("; ");
    // A node refusing the spec itself (422), or holding another spec or a destroyed round
    // under this id (409, 410): the request must change.
    let spec_refusal = |e: &&KmsError| matches!(e, KmsError::Refused { problem, .. } if matches!(problem.status, 409 | 410 | 422));
    if let Some(KmsError::Refused { problem, .. }) = errors.iter().find(spec_refusal) {
        let code =
            if problem.status == 422 { ErrorCode::Unprocessable } else { ErrorCode::Conflict };
        let mut err = AppError::new(code, format!("the key managers refused the round: {}", all()));
        if let Some(f) = &problem.field {
            err = err.with_field(f.clone());
        }
        return err;
    }
    // Any other refusal (404/405: a committee URL that is not the node's internal listener,
    // 413/415, …) is this deployment's configuration, not the round's: 502, round kept.
    if let Some(e) = errors.iter().find(|e| matches!(e, KmsError::Refused { .. })) {
        return AppError::new(
            ErrorCode::BadGateway,
            format!(
                "{e}: the aggregator's configuration does not match the key manager's (is the committee \
                 file's URL the node's internal listener?); the round is kept — fix it and repeat the request"
            ),
        )
        .with_field("committee_file");
    }
    if let Some(e @ KmsError::Credentials { .. }) =
        errors.iter().find(|e| matches!(e, KmsError::Credentials { .. }))
    {
        return AppError::new(ErrorCode::BadGateway, e.to_string()).with_field("kms_token_file");
    }
    AppError::new(
        ErrorCode::Unavailable,
        format!(
            "only {echoes} of the {t} key managers needed registered the round ({}); it is kept and \
             registration is retried — repeat the request to see it through",
            errors.iter().map(detail).collect::<Vec<_>>().join("; ")
        ),
    )
}

fn contributions(uploads: &[UploadRow]) -> Vec<Contribution> {
    uploads
        .iter()
        .map(|u| Contribution { client_id: u.client_id.clone(), upload_sha256: u.sha256 })
        .collect()
}

/// One step of publication for a closed round (see the module docs). Safe to call again at
/// any point, also after a crash.
pub async fn advance(s: &AppState, round: &RoundId) -> Result<(), AppError> {
    let _serial = s.publish_lock.lock().await;
    let Some(mut row) = s.store.round(round).await.map_err(AppError::internal)? else {
        return Ok(());
    };
    if row.state != RoundState::Aggregating {
        return Ok(());
    }
    if row.set.is_none() {
        if !choose_and_plan(s, &row).await? {
            return Ok(());
        }
        row = match s.store.round(round).await.map_err(AppError::internal)? {
            Some(r) if r.state == RoundState::Aggregating => r,
            _ => return Ok(()),
        };
    }
    if row.aggregate_sha256.is_none() {
        // The fold jobs are running (on any replica); the publication job calls back here.
        if s.clock.now() >= row.closed_at.unwrap_or(0) + s.tuning.publish_timeout_secs as i64 {
            let why = format!(
                "the fold did not complete within {} s (publish_timeout_secs)",
                s.tuning.publish_timeout_secs
            );
            fail(s, round, &why).await?;
        }
        return Ok(());
    }
    report_set(s, &row).await
}

/// Chooses `S` and plans its fold jobs; `false` if the round must wait or failed.
async fn choose_and_plan(s: &AppState, row: &RoundRow) -> Result<bool, AppError> {
    let round = &row.spec.round_id;
    let uploads = s.store.uploads(round).await.map_err(AppError::internal)?;
    let needed = domain::needed(&row.spec, &row.echoes);
    if uploads.len() < needed as usize {
        // Decided without asking the key managers (one may be down): fail now.
        if let Step::Fail(why) = domain::next_step(uploads.len(), Vec::new(), needed, false) {
            fail(s, round, &why).await?;
        }
        return Ok(false);
    }
    let calls = s.kms.committee().nodes().iter().map(|n| {
        let (kms, round, x) = (s.kms.clone(), round.clone(), n.x);
        async move { (x, kms.deposits(x, &round).await) }
    });
    let mut lists = BTreeMap::new();
    for (x, outcome) in futures_util::future::join_all(calls).await {
        match outcome {
            Ok(d) => {
                lists.insert(x, d);
            }
            Err(e) => {
                tracing::warn!(round = %round, node = x, error = %e, "cannot list deposits");
                count_credentials(s, &e);
            }
        }
    }
    let roots = uploads
        .iter()
        .filter_map(|u| u.upload_root.map(|r| (u.client_id.clone(), (u.sha256, r))))
        .collect();
    let (deposits, foreign) = domain::deposits_matching_roots(lists, &roots);
    for (client, xs) in &foreign {
        tracing::warn!(round = %round, client = %client, nodes = ?xs, "a member's deposits sign another upload root than its upload's; left out of the set");
    }
    let t = s.kms.committee().shape().threshold();
    let admitted = contributions(&uploads);
    let (set, _group) = domain::choose_set(&admitted, &deposits, t);
    let grace_over =
        s.clock.now() >= row.closed_at.unwrap_or(0) + s.tuning.deposit_grace_secs as i64;
    let left_out = domain::left_out(&admitted, &deposits, &foreign, &set, t);
    match domain::next_step(uploads.len(), set, needed, grace_over) {
        Step::WaitForDeposits => Ok(false),
        Step::Fail(why) => {
            let why = if left_out.is_empty() {
                why
            } else {
                format!("{why}; left out: {}", left_out.join("; "))
            };
            fail(s, round, &why).await?;
            Ok(false)
        }
        Step::Publish(mut set) => {
            set.sort_by(|a, b| a.client_id.cmp(&b.client_id));
            let setup = protocol::setup(&row.spec).map_err(AppError::internal)?;
            let jobs = fold::plan(
                round,
                &setup,
                row.span_blocks,
                set.len() as u64,
                s.tuning.fold_batch_uploads,
            );
            if s.store.fix_set(round, &set, &jobs).await.map_err(AppError::internal)? {
                tracing::info!(round = %round, contributors = set.len(), jobs = jobs.len(), "contributor set fixed; fold jobs planned");
            }
            Ok(true)
        }
    }
}

/// Tells every node that has not recorded `S` (with the aggregate's digest) yet; publishes
/// once `t` have.
async fn report_set(s: &AppState, row: &RoundRow) -> Result<(), AppError> {
    let (Some(set), Some(aggregate)) = (&row.set, row.aggregate_sha256) else { return Ok(()) };
    let round = &row.spec.round_id;
    let committee = s.kms.committee();
    let calls = committee.nodes().iter().filter(|n| !row.recorded_by.contains(&n.x)).map(|n| {
        let (kms, round, x, set) = (s.kms.clone(), round.clone(), n.x, set.clone());
        async move { (x, kms.record_set(x, &round, &set, &aggregate).await) }
    });
    let mut recorded = row.recorded_by.clone();
    let mut refused = Vec::new();
    for (x, outcome) in futures_util::future::join_all(calls).await {
        match outcome {
            Ok(()) => recorded.push(x),
            Err(e @ KmsError::Refused { .. }) => {
                tracing::warn!(round = %round, node = x, error = %e, "a key manager refused the set");
                refused.push(e.to_string());
            }
            Err(e) => {
                tracing::warn!(round = %round, node = x, error = %e, "reporting the set failed; will retry");
                count_credentials(s, &e);
            }
        }
    }
    recorded.sort_unstable();
    recorded.dedup();
    let t = committee.shape().threshold() as usize;
    let publish =
        (recorded.len() >= t && row.state == RoundState::Aggregating).then(|| s.clock.now());
    if recorded != row.recorded_by || publish.is_some() {
        s.store.set_recorded_by(round, &recorded, publish).await.map_err(AppError::internal)?;
    }
    if publish.is_some() {
        s.metrics.rounds_published.fetch_add(1, Ordering::Relaxed);
        tracing::info!(round = %round, nodes = ?recorded, "round published: the key managers recorded its set");
    } else if row.state == RoundState::Aggregating && committee.nodes().len() - refused.len() < t {
        fail(
            s,
            round,
            &format!("the key managers refused the contributor set: {}", refused.join("; ")),
        )
        .await?;
    } else if row.state == RoundState::Aggregating
        && s.clock.now() >= row.closed_at.unwrap_or(0) + s.tuning.publish_timeout_secs as i64
    {
        let why = format!(
            "only {} of the {t} key managers needed recorded the contributor set within {} s",
            recorded.len(),
            s.tuning.publish_timeout_secs
        );
        fail(s, round, &why).await?;
    }
    Ok(())
}

/// Counts a key manager's refusal of the aggregator's own token (`/metrics`: an operator
/// must renew `kms_token_file`).
fn count_credentials(s: &AppState, e: &KmsError) {
    if matches!(e, KmsError::Credentials { .. }) {
        s.metrics.kms_credential_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// Fails a round not yet published (once; later calls change nothing).
pub async fn fail(s: &AppState, round: &RoundId, why: &str) -> Result<(), AppError> {
    if s.store.fail(round, why).await.map_err(AppError::internal)? {
        s.metrics.rounds_failed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(round = %round, why, "round failed");
    }
    Ok(())
}

/// Closes a round now (admin, deadline or `max_clients`) and takes the first publication step.
pub async fn close(s: &AppState, round: &RoundId) -> Result<(), AppError> {
    if s.store.close(round, s.clock.now()).await.map_err(AppError::internal)? {
        tracing::info!(round = %round, "round closed");
    }
    advance(s, round).await
}

/// Deletes the uploads' blobs of a finished round once their retention has passed.
async fn expire_uploads(s: &AppState, row: &RoundRow) -> Result<(), AppError> {
    let finished_at = row.published_at.or(row.closed_at).unwrap_or(0);
    if s.clock.now() < finished_at + s.tuning.upload_retention_secs as i64 {
        return Ok(());
    }
    // The uploads, the partial sums, and temporary objects that crashed writes left (no
    // write of a finished round is still wanted); the aggregate stays.
    let r = row.spec.round_id.as_str();
    let mut names = s.blobs.list(r, false).await.map_err(AppError::internal)?;
    names.retain(|n| n.starts_with("upload.") || n.starts_with("partial."));
    names.extend(s.blobs.list(r, true).await.map_err(AppError::internal)?);
    for name in names {
        s.blobs.delete(r, &name).await.map_err(AppError::internal)?;
    }
    s.store.uploads_deleted(&row.spec.round_id).await.map_err(AppError::internal)
}

/// One pass of the background work over every round in progress.
pub async fn tick(s: &AppState) {
    let rows = match s.store.rounds_in_progress().await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "round scan failed");
            return;
        }
    };
    for row in rows {
        let round = row.spec.round_id.clone();
        let outcome = async {
            match row.state {
                RoundState::Open => {
                    register_missing(s, &row).await?;
                    if domain::should_close(
                        row.state,
                        row.admitted,
                        row.spec.max_clients,
                        row.deadline,
                        s.clock.now(),
                    ) {
                        close(s, &round).await?;
                    }
                    Ok(())
                }
                RoundState::Aggregating => advance(s, &round).await,
                RoundState::Published => {
                    if row.recorded_by.len() < s.kms.committee().nodes().len() {
                        let _serial = s.publish_lock.lock().await;
                        report_set(s, &row).await?;
                    }
                    expire_uploads(s, &row).await
                }
                RoundState::Failed => expire_uploads(s, &row).await,
            }
        }
        .await;
        if let Err(e) = outcome {
            tracing::warn!(round = %round, problem = ?e.problem(), "background step failed; will retry");
        }
    }
}
