//! The key manager's HTTP API: extract, authorise, call the [`domain`](crate::domain) rules,
//! store, answer. Each handler states the roles it accepts.
//!
//! | method and path | who | what |
//! |---|---|---|
//! | `POST /v1/rounds/{round}/seed-nonce` | aggregator, admin | this node's nonce for the round's mask seed, signed over the aggregator's commitment |
//! | `PUT /v1/rounds/{round}` | aggregator, admin | register a round (its seed checked); answers this node's signed echo |
//! | `GET /v1/rounds/{round}` | the round's members, readers, aggregator, admin | the spec, echo, state |
//! | `DELETE /v1/rounds/{round}` | admin | shred the round's shares |
//! | `PUT /v1/rounds/{round}/deposits/{client}` | the client itself, by roster key | deposit its share for this node, sealed to the node's deposit key for the round (`cryptflow_services::sealed`) |
//! | `GET /v1/rounds/{round}/deposits` | aggregator, admin | who holds a deposit here, for which upload |
//! | `PUT /v1/rounds/{round}/contributors` | aggregator | record the contributor set, once |
//! | `GET /v1/rounds/{round}/release` | a member of the set or a reader, by roster key | the unweighted sum of the set's shares |
//! | `GET /v1/node` | anyone authenticated | committee, roster digests, `m` |
//! | `GET /v1/audit` | admin | the hash-chained audit log |
//! | `GET /healthz`, `/readyz`, `/openapi.json` | none | probes, this API's description |
//!
//! With `internal_listen` set, the public listener serves only the client endpoints (round
//! echo, deposits, release, node) and the probes.

use crate::domain;
use crate::keystore::{KeyStoreError, ROUND_KEY_ID_PREFIX};
use crate::store::{Actor, NewDeposit, StoreError};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cryptflow_he::sharing::KeyShare;
use cryptflow_he::Wire;
use cryptflow_services::api::kms::{
    AuditEntry, ContributorSet, DepositList, DepositReceipt, KmsRoundState, NodeInfo,
    RegisteredRound, ReleaseResponse, SealedDeposit,
};
use cryptflow_services::api::round::{Contribution, RoundSpec, SeedNonceRequest, SeedPart};
use cryptflow_services::api::Base64Bytes;
use cryptflow_services::auth::{Authenticated, Principal};
use cryptflow_services::http::{
    method_not_allowed, not_found, parse_json, probe_routes, problem_documents,
    refuse_declared_oversize, round_param, AppError,
};
use cryptflow_services::sealed::SealContext;
use cryptflow_services::{ClientId, ErrorCode, Role, RoundId, Sha256Digest};
use serde::Deserialize;
use std::sync::atomic::Ordering;

/// The OpenAPI document, checked in as `docs/kms-openapi.json`.
pub const OPENAPI: &str = include_str!("../../docs/kms-openapi.json");

/// Largest deposit body (a share of N = 2^15 in base64 is ~350 KB).
const MAX_DEPOSIT_BYTES: usize = 512 << 10;

/// Every endpoint.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    routes(state, max_body_bytes, true)
}

/// The client-facing endpoints and the probes (see the module docs).
pub fn public_router(state: AppState, max_body_bytes: usize) -> Router {
    routes(state, max_body_bytes, false)
}

fn routes(state: AppState, max_body_bytes: usize, internal: bool) -> Router {
    let round =
        if internal { get(round_info).put(register).delete(destroy) } else { get(round_info) };
    let mut r = Router::new()
        .route("/v1/rounds/{round}", round)
        .route(
            "/v1/rounds/{round}/deposits/{client}",
            put(put_deposit)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_DEPOSIT_BYTES))
                .layer(from_fn_with_state(MAX_DEPOSIT_BYTES, refuse_declared_oversize)),
        )
        .route("/v1/rounds/{round}/release", get(release))
        .route("/v1/node", get(node_info));
    if internal {
        r = r
            .route("/v1/rounds/{round}/seed-nonce", post(seed_nonce))
            .route("/v1/rounds/{round}/deposits", get(list_deposits))
            .route("/v1/rounds/{round}/contributors", put(record_contributors))
            .route("/v1/audit", get(audit_log));
    }
    r.layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .layer(from_fn_with_state(max_body_bytes, refuse_declared_oversize))
        .layer(from_fn_with_state(state.clone(), audit_unauthorized))
        .with_state(state.clone())
        .merge(probe_routes(state.store.pool().clone(), OPENAPI))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(axum::middleware::map_response(problem_documents))
}

fn db(e: StoreError) -> AppError {
    AppError::internal(e)
}

/// A round whose key is gone (shredded — e.g. a database restored from before the shredding
/// still lists its shares) is 410; a master-key rotation under way 503; anything else 500.
fn key_store_error(e: KeyStoreError) -> AppError {
    match e {
        KeyStoreError::Missing { .. } => {
            AppError::new(ErrorCode::Gone, "the round's shares were shredded").with_field("round")
        }
        KeyStoreError::Rotation { .. } => {
            tracing::error!(error = %e, "round-key store");
            AppError::new(
                ErrorCode::Unavailable,
                "the key manager is restarting onto a new master key; retry",
            )
        }
        other => AppError::internal(other),
    }
}

fn actor(p: &Principal) -> Actor<'_> {
    Actor { subject: p.subject.as_str(), role: p.role }
}

async fn registered(s: &AppState, round: &RoundId) -> Result<crate::store::RoundRow, AppError> {
    s.store.round(round).await.map_err(db)?.ok_or_else(|| {
        AppError::new(ErrorCode::NotFound, format!("round {round} is not registered here"))
            .with_field("round")
    })
}

/// Counts a refusal and records it in the audit log (a refused deposit, set or release is
/// evidence an operator wants), then returns it.
async fn refused(
    s: &AppState,
    caller: &Principal,
    action: &str,
    round: &RoundId,
    e: AppError,
) -> AppError {
    s.metrics.refusals.fetch_add(1, Ordering::Relaxed);
    let at = s.clock.now();
    let key = format!("{action}|{}|{round}|{:?}", caller.subject, e.problem().detail);
    // Identical refusals (a re-reported set, a client retrying) are written once per window.
    let Some(repeats) = s.repeats.admit(key, at) else { return e };
    tracing::warn!(round = %round, caller = %caller.subject, action, problem = ?e.problem().detail, repeats, "request refused");
    let detail = serde_json::json!({
        "status": e.problem().status,
        "detail": e.problem().detail,
        "repeats_since_last_entry": repeats,
    });
    if let Err(err) =
        s.store.audit_only(at, &actor(caller), &format!("{action}.refused"), round, detail).await
    {
        return AppError::internal(err);
    }
    e
}

/// Middleware: a request refused for its credentials (401) is counted, logged and audited —
/// with the subject, role and key id the token *claims* (unverified: that is the point) and
/// the reason — once per kind per window ([`crate::repeats`]). Before, a forged or replayed
/// roster token, or an issuer-minted token in a site's name, left no trace (#24).
async fn audit_unauthorized(
    State(s): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path().to_owned();
    let claimed = claimed(request.headers());
    let response = next.run(request).await;
    if response.status() != axum::http::StatusCode::UNAUTHORIZED {
        return response;
    }
    s.metrics.credentials_refused.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
    let reason = serde_json::from_slice::<cryptflow_services::Problem>(&bytes)
        .ok()
        .and_then(|p| p.detail)
        .unwrap_or_default();
    // Time refusals state the node's clock; the kind is the reason without it.
    let kind = reason.split(" (this service's clock").next().unwrap_or_default().to_owned();
    let round = path
        .strip_prefix("/v1/rounds/")
        .and_then(|r| r.split('/').next())
        .and_then(|r| RoundId::parse(r).ok());
    let (subject, role, kid) = claimed;
    let at = s.clock.now();
    let key = format!("credentials|{subject:?}|{role:?}|{kid:?}|{kind}|{round:?}");
    if let Some(repeats) = s.repeats.admit(key, at) {
        tracing::warn!(claimed_subject = ?subject, claimed_role = ?role, kid = ?kid, path, reason = %kind, repeats, "credentials refused");
        let detail = serde_json::json!({
            "claimed_subject": subject,
            "claimed_role": role,
            "kid": kid,
            "path": path,
            "reason": kind,
            "repeats_since_last_entry": repeats,
        });
        let actor = subject.as_deref().unwrap_or("(no token)");
        let event = crate::audit::Event {
            actor,
            // The claimed role when the token has one; the entry's detail says it is claimed.
            role: role.unwrap_or(Role::Client),
            action: "credentials.refused",
            round_id: round.as_ref().map(RoundId::as_str),
            detail,
        };
        if let Err(e) = s.store.audit_event(at, event).await {
            tracing::error!(error = %e, "cannot audit a refused credential");
        }
    }
    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// The subject, role and key id a bearer token claims, read without verifying it (for the
/// audit entry of its refusal only).
fn claimed(headers: &axum::http::HeaderMap) -> (Option<String>, Option<Role>, Option<String>) {
    use base64::Engine;
    let Some(token) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
    else {
        return (None, None, None);
    };
    let mut parts = token.trim().split('.');
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let json = |part: Option<&str>| -> Option<serde_json::Value> {
        serde_json::from_slice(&b64.decode(part?).ok()?).ok()
    };
    let header = json(parts.next());
    let claims = json(parts.next());
    let text = |v: Option<&serde_json::Value>, field: &str| {
        v.and_then(|v| v.get(field))
            .and_then(|f| f.as_str())
            .map(|f| f.chars().take(128).collect::<String>())
    };
    let role = claims
        .as_ref()
        .and_then(|c| c.get("role"))
        .and_then(|r| serde_json::from_value::<Role>(r.clone()).ok());
    (text(claims.as_ref(), "sub"), role, text(header.as_ref(), "kid"))
}

async fn view(s: &AppState, row: crate::store::RoundRow) -> Result<RegisteredRound, AppError> {
    let deposits = s.store.deposits(&row.spec.round_id).await.map_err(db)?.len() as u32;
    Ok(RegisteredRound {
        spec: row.spec,
        echo: row.echo,
        state: row.state,
        deposits,
        contributors: row.set,
    })
}

/// `PUT /v1/rounds/{round}` — aggregator or admin. 201 registered, 200 the same spec again,
/// 409 another spec, 410 destroyed; 422 naming the field of an invalid spec.
async fn register(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(round): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    caller.require(&[Role::Aggregator, Role::Admin])?;
    let round = round_param(round)?;
    let spec: RoundSpec = parse_json(&headers, &body)?;
    if s.store.is_refused(&round).await.map_err(db)? {
        return Err(AppError::new(
            ErrorCode::Conflict,
            "this key manager was restored from a backup and refuses this round for good",
        )
        .with_field("round"));
    }
    // An existing round is compared, not re-validated: a roster change since does not turn
    // the same registration into a refusal.
    if let Some(existing) = s.store.round(&round).await.map_err(db)? {
        domain::same_registration(&existing, &spec)?;
        note_round(&s, &round)?; // a crash may have come between the commit and the note
        return Ok((StatusCode::OK, Json(view(&s, existing).await?)).into_response());
    }
    domain::check_registration(&s.node, &round, &spec)?;
    let answered = s.store.seed_nonces(&round).await.map_err(db)?;
    domain::check_seed(&s.node, &spec, &answered)?;
    if let Some(earlier) = s.store.round_with_seed(&spec.mask_seed).await.map_err(db)? {
        return Err(domain::seed_reused(&spec, &earlier));
    }
    // The witness learns of the round before the database, so no crash can hide it.
    note_round(&s, &round)?;
    // The round's key is made now (outside the database): the deposit key pair the echo
    // carries is derived from it, and dies with it at shredding.
    let guard = s.registration_guard().await;
    let round_key = s.round_key_for(&round).await.map_err(key_store_error)?;
    let echo = s.node.echo(&spec, round_key.deposit_keys(round.as_str()).public_key());
    drop(round_key);
    let at = s.clock.now();
    let inserted = s
        .store
        .insert_round(&spec, &echo.spec_hash, &echo, at, &actor(&caller))
        .await
        .map_err(db)?;
    drop(guard);
    if !inserted {
        // A concurrent registration won: answer as if it had come first.
        let existing = registered(&s, &round).await?;
        domain::same_registration(&existing, &spec)?;
        return Ok((StatusCode::OK, Json(view(&s, existing).await?)).into_response());
    }
    s.metrics.rounds_registered.fetch_add(1, Ordering::Relaxed);
    tracing::info!(round = %round, spec_hash = %echo.spec_hash, "round registered");
    let row = registered(&s, &round).await?;
    Ok((StatusCode::CREATED, Json(view(&s, row).await?)).into_response())
}

/// Most commitments a node answers nonces for per round: an aggregator that crashed between
/// asking and registering asks again with a new contribution; more than a few would let it
/// choose among many seeds.
pub const MAX_SEED_COMMITMENTS: u32 = 8;

/// `POST /v1/rounds/{round}/seed-nonce` — aggregator, admins: this node's fresh nonce for the
/// round's mask seed, signed over the aggregator's commitment to its contribution (the same
/// nonce again for the same commitment). Refused once the round is registered here (409
/// `round`), and beyond [`MAX_SEED_COMMITMENTS`] commitments (409 `commitment`).
async fn seed_nonce(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(round): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    caller.require(&[Role::Aggregator, Role::Admin])?;
    let round = round_param(round)?;
    let request: SeedNonceRequest = parse_json(&headers, &body)?;
    if s.store.is_refused(&round).await.map_err(db)?
        || s.store.round(&round).await.map_err(db)?.is_some()
    {
        return Err(AppError::new(
            ErrorCode::Conflict,
            format!("round {round} is registered at this key manager already (or refused): its seed is fixed"),
        )
        .with_field("round"));
    }
    let nonce = s
        .store
        .answer_seed_nonce(
            &round,
            &request.commitment,
            SeedPart::generate(),
            MAX_SEED_COMMITMENTS,
            s.clock.now(),
        )
        .await
        .map_err(db)?
        .map_err(|n| {
            AppError::new(
                ErrorCode::Conflict,
                format!(
                    "this key manager answered nonces for {n} commitments to round {round}'s seed; \
                     at most {MAX_SEED_COMMITMENTS} (choosing among many seeds is what two steps stop)"
                ),
            )
            .with_field("commitment")
            .with_limit(MAX_SEED_COMMITMENTS as u64)
        })?;
    Ok(Json(s.node.seed_nonce(&round, &request.commitment, nonce)).into_response())
}

/// Notes a round in the restore witness, durably.
fn note_round(s: &AppState, round: &RoundId) -> Result<(), AppError> {
    match &s.witness {
        Some(w) => w.note_round(round.as_str()).map_err(AppError::internal),
        None => Ok(()),
    }
}

/// `GET /v1/rounds/{round}` — the round's members, readers, the aggregator, admins.
async fn round_info(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(round): Path<String>,
) -> Result<Json<RegisteredRound>, AppError> {
    let round = round_param(round)?;
    let row = registered(&s, &round).await?;
    domain::may_see_round(&s.node, &row, &caller)?;
    Ok(Json(view(&s, row).await?))
}

/// `DELETE /v1/rounds/{round}` — admin. Crypto-shreds the round's shares; 204.
async fn destroy(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(round): Path<String>,
) -> Result<StatusCode, AppError> {
    caller.require(&[Role::Admin])?;
    let round = round_param(round)?;
    let row = registered(&s, &round).await?;
    if row.state == KmsRoundState::Destroyed {
        return Err(AppError::new(ErrorCode::Gone, "already destroyed").with_field("round"));
    }
    s.shred(&round, KmsRoundState::Destroyed, &actor(&caller), "round.destroy")
        .await
        .map_err(AppError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/rounds/{round}/deposits/{client}` — the client itself, by roster key. 201 stored,
/// 200 the same deposit again (in any state but shredded), 409 another one or a round no
/// longer open, 410 shredded; 403 another caller or a non-member; 422 naming the invalid field (`share`,
/// `signature`).
async fn put_deposit(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((round, client)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let round = round_param(round)?;
    let client = ClientId::parse(client)
        .map_err(|e| AppError::new(ErrorCode::BadRequest, e.to_string()).with_field("client"))?;
    let row = registered(&s, &round).await?;
    let outcome = async {
        if caller.subject != client {
            return Err(AppError::new(
                ErrorCode::Forbidden,
                format!("only {client} itself deposits its share"),
            ));
        }
        let sealed: SealedDeposit = parse_json(&headers, &body)?;
        // Sealed to this node's deposit key for the round; the key dies with the round's (so
        // a shredded round answers 410 even to the same deposit again).
        let round_key = s.round_key(&round).await.map_err(key_store_error)?;
        let ctx = SealContext {
            round: &round,
            spec_hash: &row.spec_hash,
            committee: &s.node.committee().digest(),
            x: s.node.x().get(),
            node_key: &row.echo.deposit_key.0,
        };
        let deposit =
            round_key.deposit_keys(round.as_str()).open(&ctx, &client, &sealed).map_err(|e| {
                AppError::new(ErrorCode::Unprocessable, e.to_string()).with_field("ciphertext")
            })?;
        let checked = domain::check_deposit(&s.node, &row, &caller, &client, &deposit)?;
        Ok((deposit, checked, round_key))
    }
    .await;
    let (mut deposit, checked, round_key) = match outcome {
        Ok(v) => v,
        Err(e) => return Err(refused(&s, &caller, "deposit", &round, e).await),
    };
    // The share lives on in `checked` (zeroized on drop) until sealed.
    zeroize::Zeroize::zeroize(&mut deposit.share.0);
    let receipt = DepositReceipt {
        round_id: round.clone(),
        client_id: client.clone(),
        share_index: s.node.x().get(),
        upload_sha256: deposit.upload_sha256,
    };
    // The same deposit again is answered 200 in any state (a retry after a lost answer);
    // a new one needs an open round.
    if let Some(existing) = s.store.deposit(&round, &client).await.map_err(db)? {
        domain::same_deposit(&existing, &checked, &deposit)?;
        return Ok((StatusCode::OK, Json(receipt)).into_response());
    }
    if let Err(e) = domain::require_state(&row, KmsRoundState::Open) {
        return Err(refused(&s, &caller, "deposit", &round, e).await);
    }
    // Sealed at rest under the round's key (kept outside the database), never the master key
    // alone: shredding the round deletes that key (see `keystore`). Made at registration,
    // never by a deposit: a deposit racing a shred cannot bring it back.
    let sealed = round_key
        .seal(round.as_str(), client.as_str(), &checked.share)
        .map_err(AppError::internal)?;
    let round_key_id = round_key.id();
    let new = NewDeposit {
        client: &client,
        upload_sha256: deposit.upload_sha256,
        upload_root: deposit.upload_root,
        share_sha256: checked.share_sha256,
        signature: deposit.signature.to_string(),
        sealed,
        master_key_id: &round_key_id,
    };
    let at = s.clock.now();
    if !s.store.insert_deposit(&round, new, at, &actor(&caller)).await.map_err(db)? {
        // A concurrent deposit, or the set was recorded meanwhile.
        return match s.store.deposit(&round, &client).await.map_err(db)? {
            Some(existing) => {
                domain::same_deposit(&existing, &checked, &deposit)?;
                Ok((StatusCode::OK, Json(receipt)).into_response())
            }
            None => Err(domain::require_state(&registered(&s, &round).await?, KmsRoundState::Open)
                .err()
                .unwrap_or_else(|| AppError::internal("deposit vanished"))),
        };
    }
    s.metrics.deposits.fetch_add(1, Ordering::Relaxed);
    Ok((StatusCode::CREATED, Json(receipt)).into_response())
}

/// `GET /v1/rounds/{round}/deposits` — aggregator, admin. 409 for a refused round and 410 for
/// a shredded one: their rows must not steer the choice of a set.
async fn list_deposits(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(round): Path<String>,
) -> Result<Json<DepositList>, AppError> {
    caller.require(&[Role::Aggregator, Role::Admin])?;
    let round = round_param(round)?;
    let row = registered(&s, &round).await?;
    if matches!(row.state, KmsRoundState::Refused | KmsRoundState::Destroyed) {
        domain::require_state(&row, KmsRoundState::Open)?;
    }
    let rows = s.store.deposits(&round).await.map_err(db)?;
    let upload_roots =
        rows.iter().filter_map(|d| d.upload_root.map(|r| (d.client_id.clone(), r))).collect();
    let deposits = rows
        .into_iter()
        .map(|d| Contribution { client_id: d.client_id, upload_sha256: d.upload_sha256 })
        .collect();
    Ok(Json(DepositList { deposits, upload_roots }))
}

/// `PUT /v1/rounds/{round}/contributors` — aggregator. Records the set once, durably before
/// answering: 201 recorded, 200 the same set again, 409 another set, 422 an invalid one.
async fn record_contributors(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(round): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    caller.require(&[Role::Aggregator])?;
    let round = round_param(round)?;
    let row = registered(&s, &round).await?;
    let outcome = async {
        let body: ContributorSet = parse_json(&headers, &body)?;
        let aggregate = body.aggregate_sha256;
        let set = cryptflow_services::protocol::canonical_set(body.contributors).map_err(|e| {
            AppError::new(ErrorCode::Unprocessable, e.to_string()).with_field("contributors")
        })?;
        if row.state == KmsRoundState::SetRecorded {
            domain::same_set(&row, &set, &aggregate)?;
            return Ok((set, aggregate, false));
        }
        domain::require_state(&row, KmsRoundState::Open)?;
        let deposits = s.store.deposits(&round).await.map_err(db)?;
        Ok((domain::check_set(&s.node, &row, set, &deposits)?, aggregate, true))
    }
    .await;
    let (set, aggregate, new) = match outcome {
        Ok(v) => v,
        Err(e) => return Err(refused(&s, &caller, "set", &round, e).await),
    };
    let answer = |set| Json(ContributorSet { contributors: set, aggregate_sha256: aggregate });
    if !new {
        return Ok((StatusCode::OK, answer(set)).into_response());
    }
    // The witness learns of the set before the database records it (see `crate::restore`).
    if let Some(w) = &s.witness {
        let digest = cryptflow_services::protocol::set_digest(&set);
        w.note_set(round.as_str(), &digest.to_string()).map_err(AppError::internal)?;
    }
    if !s
        .store
        .record_set(&round, &set, &aggregate, s.clock.now(), &actor(&caller))
        .await
        .map_err(db)?
    {
        let row = registered(&s, &round).await?;
        domain::same_set(&row, &set, &aggregate)?;
        return Ok((StatusCode::OK, answer(set)).into_response());
    }
    s.metrics.sets_recorded.fetch_add(1, Ordering::Relaxed);
    tracing::info!(round = %round, contributors = set.len(), "contributor set recorded");
    Ok((StatusCode::CREATED, answer(set)).into_response())
}

/// `GET /v1/rounds/{round}/release` — a member of the recorded set or a roster reader, by
/// roster key. `Cache-Control: no-store`; audited. 403 for anyone else (checked before the
/// state), 409 before the set is recorded, 410 once shredded.
async fn release(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(round): Path<String>,
) -> Result<Response, AppError> {
    let round = round_param(round)?;
    let row = registered(&s, &round).await?;
    let outcome = domain::may_ask_release(&s.node, &row, &caller)
        .and_then(|()| domain::require_state(&row, KmsRoundState::SetRecorded))
        .and_then(|()| {
            let set = row.set.as_deref().unwrap_or_default();
            domain::may_read(&s.node, set, &caller)
        })
        .and_then(|()| {
            row.aggregate_sha256.ok_or_else(|| {
                AppError::new(
                    ErrorCode::Conflict,
                    "the set was recorded without the aggregate's digest (before this node's \
                     upgrade): no reader could check the aggregate against it, so the round is \
                     not released; re-run it",
                )
                .with_field("round")
            })
        });
    let aggregate_sha256 = match outcome {
        Ok(digest) => digest,
        Err(e) => return Err(refused(&s, &caller, "release", &round, e).await),
    };
    let set = row.set.clone().unwrap_or_default();
    let members: Vec<&ClientId> = set.iter().map(|c| &c.client_id).collect();
    let sealed = s.store.sealed_shares(&round, &members).await.map_err(db)?.ok_or_else(|| {
        AppError::new(ErrorCode::Gone, "the round's shares were shredded").with_field("round")
    })?;
    let mut shares = Vec::with_capacity(sealed.len());
    let mut round_key = None;
    for (client, sealed, wrapped_by) in sealed {
        let bytes = if wrapped_by.starts_with(ROUND_KEY_ID_PREFIX) {
            if round_key.is_none() {
                round_key = Some(s.round_key(&round).await.map_err(key_store_error)?);
            }
            let key = round_key.as_ref().ok_or_else(|| AppError::internal("no round key"))?;
            if key.id() != wrapped_by {
                // Sealed under a key the store no longer has (the file was lost or replaced
                // and a later deposit made a new one): that share is gone.
                return Err(AppError::new(
                    ErrorCode::Gone,
                    "a share of this round is sealed under a round key this node no longer has",
                )
                .with_field("round"));
            }
            key.open(round.as_str(), client.as_str(), &sealed)
        } else {
            // Deposited before round keys existed: sealed under the master key.
            s.master.open(round.as_str(), client.as_str(), &sealed)
        }
        .map_err(AppError::internal)?;
        shares.push(KeyShare::from_bytes(&bytes).map_err(AppError::internal)?);
    }
    let release = domain::release(&s.node, &shares)?;
    // Each member's signed root, for verifiers sampling spans of its upload.
    let roots: std::collections::HashMap<ClientId, Option<Sha256Digest>> = s
        .store
        .deposits(&round)
        .await
        .map_err(db)?
        .into_iter()
        .map(|d| (d.client_id, d.upload_root))
        .collect();
    let upload_roots: Option<Vec<Sha256Digest>> =
        set.iter().map(|c| roots.get(&c.client_id).copied().flatten()).collect();
    let detail = serde_json::json!({ "contributors": set.len() });
    s.store
        .audit_only(s.clock.now(), &actor(&caller), "release.serve", &round, detail)
        .await
        .map_err(db)?;
    s.metrics.releases.fetch_add(1, Ordering::Relaxed);
    tracing::info!(round = %round, reader = %caller.subject, "release served");
    let body = ReleaseResponse {
        round_id: round,
        share_index: s.node.x().get(),
        contributors: set,
        aggregate_sha256,
        upload_roots,
        release: Base64Bytes(release.to_bytes()),
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// `GET /v1/node` — anyone authenticated.
async fn node_info(
    State(s): State<AppState>,
    Authenticated(_caller): Authenticated,
) -> Json<NodeInfo> {
    Json(s.node.info())
}

/// Paging of the audit log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    100
}

/// `GET /v1/audit?after=&limit=` — admin.
async fn audit_log(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, AppError> {
    caller.require(&[Role::Admin])?;
    let Query(q) = query
        .map_err(|e| AppError::new(ErrorCode::BadRequest, e.body_text()).with_field("query"))?;
    if !(1..=1000).contains(&q.limit) {
        return Err(AppError::new(ErrorCode::BadRequest, "limit must be in [1, 1000]")
            .with_field("limit")
            .with_limit(1000));
    }
    Ok(Json(crate::audit::list(s.store.pool(), q.after, q.limit).await?))
}
