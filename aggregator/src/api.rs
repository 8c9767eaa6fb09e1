//! The aggregator's HTTP API. Each handler states the roles it accepts.
//!
//! | method and path | roles | what |
//! |---|---|---|
//! | `POST /v1/rounds` | admin | create a round (asks the KMS for its key) |
//! | `GET /v1/rounds/{round}` | any | the round, its plan and state; after publication its transcript |
//! | `POST /v1/rounds/{round}/close` | admin | close now and publish (or fail below `min_clients`) |
//! | `PUT /v1/rounds/{round}/submissions/{client}` | client (itself, of the round) | upload an encrypted update |
//! | `GET /v1/rounds/{round}/aggregate` | client of the round, admin | the compressed aggregate |
//! | `GET /healthz`, `GET /readyz`, `GET /openapi.json` | none | probes, this API's description |
//!
//! Accepting a submission: the body is read under a hard limit equal to the round's exact
//! upload size, decoded and checked against the round (key, parameters, layout, encoding,
//! widths, freshness), written durably to the blob store, recorded in the database, and only
//! then acknowledged; it is folded into the round's running sum afterwards. The running sum
//! is a cache: after a restart it is rebuilt from the recorded submissions, each exactly once.

use crate::blob::BlobStore;
use crate::kms_client::{KmsClient, KmsError};
use crate::Metrics;
use axum::body::Body;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cryptflow_he::planner::{Plan, PlanTarget};
use cryptflow_he::wire::{compressed_ciphertext_len, COMPRESSED_HEADER_LEN};
use cryptflow_he::{
    Ciphertext, CompressedCiphertext, DecodeLimits, ParameterSet, PublicKey, Weight, Wire,
};
use cryptflow_services::api::aggregator::{
    Contribution, Layout, RoundInfo, RoundSpec, RoundState, SubmissionReceipt, Weighting,
    MAX_DIMENSION,
};
use cryptflow_services::api::kms::{KeySpec, MAX_ROUND_CLIENTS};
use cryptflow_services::auth::{Authenticated, Verifier};
use cryptflow_services::http::{not_found, probe_routes, round_param, unix_now, ApiJson, AppError};
use cryptflow_services::{ClientId, ErrorCode, Role, RoundId};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{Mutex, Semaphore};

/// A round's running sum and which clients are in it.
pub struct Accumulator {
    sum: Ciphertext,
    folded: HashSet<String>,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Database.
    pub pool: AnyPool,
    /// Token verification.
    pub verifier: Arc<Verifier>,
    /// The KMS.
    pub kms: KmsClient,
    /// Ciphertext storage.
    pub blobs: BlobStore,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Running sums of open rounds (one O(d) ciphertext each).
    pub accumulators: Arc<Mutex<HashMap<String, Arc<Mutex<Accumulator>>>>>,
    /// Bounds concurrent uploads held in memory; beyond it clients get 429.
    pub uploads: Arc<Semaphore>,
    /// Serialises closing and publication.
    pub publish_lock: Arc<Mutex<()>>,
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(s: &AppState) -> Self {
        s.verifier.clone()
    }
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/rounds", post(create_round))
        .route("/v1/rounds/{round}", get(round_info))
        .route("/v1/rounds/{round}/close", post(close_round))
        .route("/v1/rounds/{round}/submissions/{client}", put(submit))
        .route("/v1/rounds/{round}/aggregate", get(aggregate))
        .layer(axum::extract::DefaultBodyLimit::max(4 << 20))
        .with_state(state.clone())
        .merge(probe_routes(state.pool, OPENAPI))
        .fallback(not_found)
}

/// The OpenAPI document, checked in as `docs/aggregator-openapi.json`.
pub const OPENAPI: &str = include_str!("../../docs/aggregator-openapi.json");

fn kms_error(e: KmsError) -> AppError {
    match e {
        KmsError::Refused { status, detail, field } if status == 422 || status == 409 => {
            let code = if status == 422 { ErrorCode::Unprocessable } else { ErrorCode::Conflict };
            let err = AppError::new(code, format!("the KMS refused the round: {detail}"));
            match field {
                Some(f) => err.with_field(f),
                None => err,
            }
        }
        other => AppError::unavailable(other),
    }
}

/// Values per encrypted vector: the layout's, plus the weight slot in `private` mode.
pub fn encrypted_values(spec: &RoundSpec) -> Option<u64> {
    let extra = u64::from(matches!(spec.weighting, Weighting::Private { .. }));
    spec.layout.values()?.checked_add(extra)
}

/// The key spec the KMS gets for a round.
fn key_spec(spec: &RoundSpec) -> KeySpec {
    let (clip_bound, max_weight) = match spec.weighting {
        Weighting::Uniform => (spec.clip_bound, 1),
        Weighting::Samples { max_weight } => (spec.clip_bound, max_weight),
        // Clients encrypt v·w and w itself: both fit below max(B, 1)·w_max.
        Weighting::Private { max_weight } => (spec.clip_bound.max(1.0) * max_weight as f64, 1),
    };
    KeySpec {
        bodies: spec.bodies,
        max_clients: spec.max_clients,
        min_clients: spec.min_clients,
        clip_bound,
        max_weight,
        target: PlanTarget::Precision { max_abs_error: spec.max_abs_error },
        clients: spec.clients.clone(),
    }
}

fn validate(spec: &RoundSpec) -> Result<u64, AppError> {
    let bad = |field: &str, detail: String| {
        AppError::new(ErrorCode::Unprocessable, detail).with_field(field)
    };
    let values = encrypted_values(spec).filter(|&v| (1..=MAX_DIMENSION).contains(&v));
    let Some(values) = values else {
        return Err(bad("layout", format!("must describe 1 to {MAX_DIMENSION} values"))
            .with_limit(MAX_DIMENSION));
    };
    if let Layout::Tensors(ts) = &spec.layout {
        let names: HashSet<&str> = ts.iter().map(|t| t.name.as_str()).collect();
        if names.len() != ts.len() || ts.iter().any(|t| t.name.is_empty() || t.name.len() > 256) {
            return Err(bad("layout", "tensor names must be unique and 1 to 256 bytes".into()));
        }
    }
    if spec.clients.is_empty() || spec.clients.len() > MAX_ROUND_CLIENTS {
        return Err(bad("clients", format!("must list 1 to {MAX_ROUND_CLIENTS} clients"))
            .with_limit(MAX_ROUND_CLIENTS as u64));
    }
    if spec.clients.iter().collect::<HashSet<_>>().len() != spec.clients.len() {
        return Err(bad("clients", "lists a client twice".into()));
    }
    if spec.max_clients == 0 || spec.max_clients as usize > spec.clients.len() {
        return Err(bad("max_clients", format!("must be in [1, {} clients]", spec.clients.len())));
    }
    if spec.min_clients == 0 || spec.min_clients > spec.max_clients {
        return Err(bad(
            "min_clients",
            format!("must be in [1, max_clients = {}]", spec.max_clients),
        ));
    }
    if spec.deadline <= unix_now() {
        return Err(bad("deadline", "must be in the future".into()));
    }
    if let Weighting::Samples { max_weight } | Weighting::Private { max_weight } = spec.weighting {
        if max_weight == 0 {
            return Err(bad("weighting.max_weight", "must be at least 1".into()));
        }
    }
    Ok(values)
}

/// A round as stored.
struct RoundRow {
    spec: RoundSpec,
    key_id: String,
    plan: Plan,
    public_key: Vec<u8>,
    state: RoundState,
    aggregate_sha256: Option<String>,
    failure: Option<String>,
}

fn state_of(s: &str) -> Result<RoundState, AppError> {
    match s {
        "open" => Ok(RoundState::Open),
        "aggregating" => Ok(RoundState::Aggregating),
        "published" => Ok(RoundState::Published),
        "failed" => Ok(RoundState::Failed),
        other => Err(AppError::internal(format!("unknown round state {other:?}"))),
    }
}

fn state_name(s: RoundState) -> &'static str {
    match s {
        RoundState::Open => "open",
        RoundState::Aggregating => "aggregating",
        RoundState::Published => "published",
        RoundState::Failed => "failed",
    }
}

async fn load(pool: &AnyPool, round: &RoundId) -> Result<Option<RoundRow>, AppError> {
    let row = sqlx::query(
        "SELECT spec_json, key_id, plan_json, public_key, state, aggregate_sha256, failure FROM rounds WHERE round_id = $1",
    )
    .bind(round.as_str())
    .fetch_optional(pool)
    .await
    ?;
    let Some(row) = row else { return Ok(None) };
    let spec: String = row.try_get("spec_json")?;
    let plan: String = row.try_get("plan_json")?;
    Ok(Some(RoundRow {
        spec: serde_json::from_str(&spec).map_err(AppError::internal)?,
        key_id: row.try_get("key_id")?,
        plan: serde_json::from_str(&plan).map_err(AppError::internal)?,
        public_key: row.try_get("public_key")?,
        state: state_of(&row.try_get::<String, _>("state")?)?,
        aggregate_sha256: row.try_get("aggregate_sha256")?,
        failure: row.try_get("failure")?,
    }))
}

async fn require_round(pool: &AnyPool, round: &RoundId) -> Result<RoundRow, AppError> {
    load(pool, round).await?.ok_or_else(|| {
        AppError::new(ErrorCode::NotFound, format!("no round {round}")).with_field("round")
    })
}

async fn contributions(pool: &AnyPool, round: &RoundId) -> Result<Vec<Contribution>, AppError> {
    let rows = sqlx::query(
        "SELECT client_id, weight, sha256 FROM submissions WHERE round_id = $1 ORDER BY client_id",
    )
    .bind(round.as_str())
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Contribution {
                client_id: ClientId::parse(r.try_get::<String, _>("client_id")?)
                    .map_err(AppError::internal)?,
                weight: r.try_get::<i64, _>("weight")? as u64,
                sha256: r.try_get("sha256")?,
            })
        })
        .collect()
}

async fn info(pool: &AnyPool, round: &RoundId, row: RoundRow) -> Result<RoundInfo, AppError> {
    let list = contributions(pool, round).await?;
    let contributors = list.len() as u32;
    let published = row.state == RoundState::Published;
    Ok(RoundInfo {
        encrypted_values: encrypted_values(&row.spec).unwrap_or_default(),
        spec: row.spec,
        state: row.state,
        key_id: row.key_id,
        plan: row.plan,
        contributors,
        contributions: if published { list } else { Vec::new() },
        aggregate_sha256: row.aggregate_sha256,
        failure: row.failure,
    })
}

/// `POST /v1/rounds` — admin. 201 when created, 200 for an identical existing round, 409 for
/// a different one; 422 when the spec is invalid or infeasible (naming the field or bound).
async fn create_round(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiJson(spec): ApiJson<RoundSpec>,
) -> Result<Response, AppError> {
    caller.require(&[Role::Admin])?;
    validate(&spec)?;
    let round = spec.round_id.clone();
    if let Some(existing) = load(&s.pool, &round).await? {
        return same_or_conflict(&s.pool, &round, existing, &spec).await;
    }
    let key = s.kms.create_key(&round, &key_spec(&spec)).await.map_err(kms_error)?;
    let public = s.kms.public_key(&round).await.map_err(kms_error)?;
    let pk = PublicKey::from_bytes(&public).map_err(AppError::internal)?;
    if pk.id().to_string() != key.key_id {
        return Err(AppError::internal(
            "the KMS served a public key that does not match the key id",
        ));
    }
    let mut tx = s.pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO rounds (round_id, spec_json, key_id, plan_json, public_key, state, deadline, created_at) \
         VALUES ($1, $2, $3, $4, $5, 'open', $6, $7) ON CONFLICT (round_id) DO NOTHING",
    )
    .bind(round.as_str())
    .bind(serde_json::to_string(&spec).map_err(AppError::internal)?)
    .bind(&key.key_id)
    .bind(serde_json::to_string(&key.plan).map_err(AppError::internal)?)
    .bind(public)
    .bind(spec.deadline)
    .bind(unix_now())
    .execute(&mut *tx)
    .await
    ?
    .rows_affected();
    if inserted == 0 {
        tx.rollback().await?;
        let existing = require_round(&s.pool, &round).await?;
        return same_or_conflict(&s.pool, &round, existing, &spec).await;
    }
    for client in &spec.clients {
        sqlx::query("INSERT INTO round_clients (round_id, client_id) VALUES ($1, $2)")
            .bind(round.as_str())
            .bind(client.as_str())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    s.metrics.rounds_created.fetch_add(1, Ordering::Relaxed);
    tracing::info!(round = %round, key_id = %key.key_id, "round created");
    let row = require_round(&s.pool, &round).await?;
    Ok((StatusCode::CREATED, Json(info(&s.pool, &round, row).await?)).into_response())
}

async fn same_or_conflict(
    pool: &AnyPool,
    round: &RoundId,
    existing: RoundRow,
    spec: &RoundSpec,
) -> Result<Response, AppError> {
    if &existing.spec != spec {
        return Err(AppError::new(
            ErrorCode::Conflict,
            format!("round {round} exists with a different spec"),
        )
        .with_field("round_id"));
    }
    Ok((StatusCode::OK, Json(info(pool, round, existing).await?)).into_response())
}

/// `GET /v1/rounds/{round}` — any authenticated role.
async fn round_info(
    State(s): State<AppState>,
    Authenticated(_caller): Authenticated,
    Path(round): Path<String>,
) -> Result<Json<RoundInfo>, AppError> {
    let round = round_param(round)?;
    let row = require_round(&s.pool, &round).await?;
    Ok(Json(info(&s.pool, &round, row).await?))
}

/// `POST /v1/rounds/{round}/close` — admin. Publishes (or fails the round below its minimum).
async fn close_round(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(round): Path<String>,
) -> Result<Json<RoundInfo>, AppError> {
    caller.require(&[Role::Admin])?;
    let round = round_param(round)?;
    let row = require_round(&s.pool, &round).await?;
    if row.state == RoundState::Open || row.state == RoundState::Aggregating {
        publish(&s, &round).await?;
    }
    let row = require_round(&s.pool, &round).await?;
    Ok(Json(info(&s.pool, &round, row).await?))
}

/// Query of an upload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitQuery {
    /// Public sample count, required with `samples` weighting and refused otherwise.
    weight: Option<u64>,
}

async fn is_round_client(
    pool: &AnyPool,
    round: &RoundId,
    client: &ClientId,
) -> Result<bool, AppError> {
    Ok(sqlx::query("SELECT 1 FROM round_clients WHERE round_id = $1 AND client_id = $2")
        .bind(round.as_str())
        .bind(client.as_str())
        .fetch_optional(pool)
        .await?
        .is_some())
}

/// `PUT /v1/rounds/{round}/submissions/{client}` — the client itself, if allowed in the
/// round. 201 accepted, 200 identical retry, 409 a different second upload or a closed round,
/// 413 over the round's exact size, 422 a ciphertext that does not fit the round, 429 when
/// too many uploads are in flight.
async fn submit(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((round, client)): Path<(String, String)>,
    query: Result<Query<SubmitQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<Response, AppError> {
    caller.require(&[Role::Client])?;
    let round = round_param(round)?;
    let client = ClientId::parse(client)
        .map_err(|e| AppError::new(ErrorCode::BadRequest, e.to_string()).with_field("client"))?;
    if caller.subject != client {
        return Err(AppError::new(ErrorCode::Forbidden, "a client may only submit its own update")
            .with_field("client"));
    }
    let Query(query) = query
        .map_err(|e| AppError::new(ErrorCode::BadRequest, e.body_text()).with_field("query"))?;
    let row = require_round(&s.pool, &round).await?;
    if !is_round_client(&s.pool, &round, &client).await? {
        return Err(AppError::new(
            ErrorCode::Forbidden,
            format!("{client} is not a client of round {round}"),
        ));
    }
    if row.state != RoundState::Open {
        return Err(AppError::new(
            ErrorCode::Conflict,
            format!("round {round} is {}", state_name(row.state)),
        )
        .with_field("round"));
    }
    let weight = match (&row.spec.weighting, query.weight) {
        (Weighting::Samples { max_weight }, Some(w)) if (1..=*max_weight).contains(&w) => w,
        (Weighting::Samples { max_weight }, _) => {
            return Err(AppError::new(
                ErrorCode::Unprocessable,
                format!("samples weighting needs ?weight= in [1, {max_weight}]"),
            )
            .with_field("weight")
            .with_limit(*max_weight));
        }
        (_, Some(_)) => {
            return Err(AppError::new(
                ErrorCode::Unprocessable,
                "this round does not take public weights",
            )
            .with_field("weight"));
        }
        (_, None) => 1,
    };
    let params = ParameterSet::default_128();
    let values =
        encrypted_values(&row.spec).ok_or_else(|| AppError::internal("stored spec has no size"))?;
    let expected = compressed_ciphertext_len(&params, row.plan.bodies, values, row.plan.upload)
        .ok_or_else(|| AppError::internal("round size overflows"))?;

    // Back-pressure: bounded uploads in memory.
    let Ok(_permit) = s.uploads.clone().try_acquire_owned() else {
        s.metrics.uploads_throttled.fetch_add(1, Ordering::Relaxed);
        let err = AppError::new(
            ErrorCode::TooManyRequests,
            "too many uploads in progress; retry shortly",
        );
        let mut res = err.into_response();
        res.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return Ok(res);
    };
    let too_large = || {
        AppError::new(
            ErrorCode::PayloadTooLarge,
            format!("an upload for this round is exactly {expected} bytes"),
        )
        .with_field("body")
        .with_limit(expected)
    };
    // Read straight into one buffer of the round's exact size: an upload is held once in
    // memory (the decoder keeps this buffer, the blob is written from it).
    let limit = usize::try_from(expected).map_err(|_| too_large())?;
    let mut bytes: Vec<u8> = Vec::with_capacity(limit);
    let mut body = Limited::new(body, limit);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                too_large()
            } else {
                AppError::new(ErrorCode::BadRequest, "the upload was interrupted")
                    .with_field("body")
            }
        })?;
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    if bytes.len() as u64 != expected {
        return Err(AppError::new(
            ErrorCode::BadRequest,
            format!("got {} bytes; an upload for this round is exactly {expected}", bytes.len()),
        )
        .with_field("body")
        .with_limit(expected));
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let header = bytes[..COMPRESSED_HEADER_LEN.min(bytes.len())].to_vec();
    let ct =
        CompressedCiphertext::from_vec_with_limits(bytes, &DecodeLimits { max_values: values })
            .map_err(|e| AppError::new(ErrorCode::BadRequest, e.to_string()).with_field("body"))?;
    check_fits(&ct, &row, values)?;

    // One submission per client: an identical retry is fine, a different one is not.
    if let Some(existing) = existing_submission(&s.pool, &round, &client).await? {
        return answer_repeat(&s.pool, round, client, sha256, &existing).await;
    }

    // Durable before acknowledged: blob first, then the row that makes it count.
    let blobs = s.blobs.clone();
    // Named by content: a concurrent, different upload of the same client (which will lose
    // the insert and get 409) can never overwrite the blob the accepted row points to.
    // The blob is the upload byte for byte: its (validated) header and the payload.
    let (r, c) = (round.to_string(), submission_blob(client.as_str(), &sha256));
    let ct = tokio::task::spawn_blocking(move || {
        blobs.put_parts(&r, &c, &[&header, ct.payload()]).map(|()| ct)
    })
    .await
    .map_err(AppError::internal)?
    .map_err(AppError::internal)?;
    let inserted = sqlx::query(
        "INSERT INTO submissions (round_id, client_id, weight, sha256, bytes, received_at) \
         SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM rounds WHERE round_id = $7 AND state = 'open') \
         ON CONFLICT (round_id, client_id) DO NOTHING",
    )
    .bind(round.as_str())
    .bind(client.as_str())
    .bind(weight as i64)
    .bind(&sha256)
    .bind(expected as i64)
    .bind(unix_now())
    .bind(round.as_str())
    .execute(&s.pool)
    .await
    ?
    .rows_affected();
    if inserted == 0 {
        // Lost a race: a concurrent identical upload, a different one, or the round closed.
        return match existing_submission(&s.pool, &round, &client).await? {
            Some(h) => answer_repeat(&s.pool, round, client, sha256, &h).await,
            None => Err(AppError::new(ErrorCode::Conflict, format!("round {round} closed"))
                .with_field("round")),
        };
    }
    s.metrics.submissions.fetch_add(1, Ordering::Relaxed);
    s.metrics.submission_bytes.fetch_add(expected, Ordering::Relaxed);
    fold_one(&s, &round, &row, client.as_str(), ct, weight).await?;
    let contributors = contributions(&s.pool, &round).await?.len() as u32;
    if contributors >= row.spec.max_clients {
        let (state, round2) = (s.clone(), round.clone());
        tokio::spawn(async move {
            if let Err(e) = publish(&state, &round2).await {
                tracing::warn!(round = %round2, problem = ?e.problem(), "publication after the last submission failed; the deadline task retries");
            }
        });
    }
    Ok((
        StatusCode::CREATED,
        Json(SubmissionReceipt { round_id: round, client_id: client, sha256, contributors }),
    )
        .into_response())
}

/// The answer to an upload from a client that already has a recorded one: 200 with the
/// receipt if it is the same ciphertext, 409 otherwise.
async fn answer_repeat(
    pool: &AnyPool,
    round: RoundId,
    client: ClientId,
    sha256: String,
    recorded: &str,
) -> Result<Response, AppError> {
    if recorded != sha256 {
        return Err(AppError::new(
            ErrorCode::Conflict,
            format!("{client} already submitted a different update"),
        )
        .with_field("client"));
    }
    let contributors = contributions(pool, &round).await?.len() as u32;
    let receipt = SubmissionReceipt { round_id: round, client_id: client, sha256, contributors };
    Ok((StatusCode::OK, Json(receipt)).into_response())
}

/// Checks a decoded upload belongs to the round: key, parameters, layout, encoding, widths,
/// and that it is a single fresh encryption.
fn check_fits(ct: &CompressedCiphertext, row: &RoundRow, values: u64) -> Result<(), AppError> {
    let h = ct.header();
    let bad = |field: &str, detail: &str| {
        AppError::new(ErrorCode::Unprocessable, detail.to_owned()).with_field(field)
    };
    if h.key_id().to_string() != row.key_id {
        return Err(bad("body.key_id", "encrypted under another key than this round's"));
    }
    if h.params() != ParameterSet::default_128().id() || h.bodies() != row.plan.bodies {
        return Err(bad(
            "body.parameters",
            "parameter set or bodies per mask differ from the round's",
        ));
    }
    if h.value_count() != values {
        return Err(
            bad("body.value_count", &format!("the round takes {values} values")).with_limit(values)
        );
    }
    if h.encoding() != &row.plan.encoding {
        return Err(bad("body.encoding", "encoding differs from the round's plan"));
    }
    if ct.widths() != row.plan.upload {
        return Err(bad("body.widths", "transport widths differ from the round's plan"));
    }
    if !h.is_fresh() {
        return Err(bad("body.contributors", "must be a single fresh encryption"));
    }
    Ok(())
}

async fn existing_submission(
    pool: &AnyPool,
    round: &RoundId,
    client: &ClientId,
) -> Result<Option<String>, AppError> {
    sqlx::query("SELECT sha256 FROM submissions WHERE round_id = $1 AND client_id = $2")
        .bind(round.as_str())
        .bind(client.as_str())
        .fetch_optional(pool)
        .await?
        .map(|r| r.try_get::<String, _>(0))
        .transpose()
        .map_err(AppError::from)
}

/// Blob name of a submission: client and content hash.
fn submission_blob(client: &str, sha256: &str) -> String {
    format!("{client}.{sha256}.ct")
}

/// The round's accumulator, rebuilt from the recorded submissions if this process has none.
async fn accumulator(
    s: &AppState,
    round: &RoundId,
    row: &RoundRow,
) -> Result<Arc<Mutex<Accumulator>>, AppError> {
    let mut map = s.accumulators.lock().await;
    if let Some(acc) = map.get(round.as_str()) {
        return Ok(acc.clone());
    }
    let params = ParameterSet::default_128();
    let pk = PublicKey::from_bytes(&row.public_key).map_err(AppError::internal)?;
    let values =
        encrypted_values(&row.spec).ok_or_else(|| AppError::internal("stored spec has no size"))?;
    let template = cryptflow_he::CiphertextHeader::fresh(
        &params,
        pk.id(),
        row.plan.bodies,
        values,
        row.plan.encoding,
    );
    let sum = Ciphertext::zero_like(&template, &params).map_err(AppError::internal)?;
    let acc = Arc::new(Mutex::new(Accumulator { sum, folded: HashSet::new() }));
    // Re-fold every recorded submission (after a restart); each exactly once.
    let rows = sqlx::query("SELECT client_id, weight, sha256 FROM submissions WHERE round_id = $1")
        .bind(round.as_str())
        .fetch_all(&s.pool)
        .await?;
    for r in rows {
        let client: String = r.try_get("client_id")?;
        let weight = r.try_get::<i64, _>("weight")? as u64;
        let sha: String = r.try_get("sha256")?;
        let bytes = s
            .blobs
            .get(round.as_str(), &submission_blob(&client, &sha))
            .map_err(AppError::internal)?;
        if hex::encode(Sha256::digest(&bytes)) != sha {
            return Err(AppError::internal(format!(
                "stored submission of {client} does not match its hash"
            )));
        }
        let ct =
            CompressedCiphertext::from_vec_with_limits(bytes, &DecodeLimits { max_values: values })
                .map_err(AppError::internal)?;
        fold_into(acc.clone(), client, ct, weight).await?;
    }
    map.insert(round.to_string(), acc.clone());
    Ok(acc)
}

async fn fold_into(
    acc: Arc<Mutex<Accumulator>>,
    client: String,
    ct: CompressedCiphertext,
    weight: u64,
) -> Result<(), AppError> {
    let weight = Weight::try_new(weight).map_err(AppError::internal)?;
    // The fold is CPU work (~1 ms per 10^6 values): off the async runtime.
    tokio::task::spawn_blocking(move || {
        let mut a = acc.blocking_lock();
        if a.folded.contains(&client) {
            return Ok(());
        }
        a.sum.weighted_add_compressed(&[(&ct, weight)])?;
        a.folded.insert(client);
        Ok::<(), cryptflow_he::Error>(())
    })
    .await
    .map_err(AppError::internal)?
    .map_err(AppError::internal)
}

async fn fold_one(
    s: &AppState,
    round: &RoundId,
    row: &RoundRow,
    client: &str,
    ct: CompressedCiphertext,
    weight: u64,
) -> Result<(), AppError> {
    let start = std::time::Instant::now();
    let acc = accumulator(s, round, row).await?;
    fold_into(acc, client.to_owned(), ct, weight).await?;
    s.metrics.fold_micros.fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
    Ok(())
}

/// Closes a round: fails it below `min_clients`, else builds, stores and publishes the
/// aggregate and tells the KMS. Safe to call again after a crash at any point.
pub async fn publish(s: &AppState, round: &RoundId) -> Result<(), AppError> {
    let _guard = s.publish_lock.lock().await;
    let row = require_round(&s.pool, round).await?;
    match row.state {
        RoundState::Failed => return Ok(()),
        RoundState::Published => return notify_kms(s, round).await,
        RoundState::Open | RoundState::Aggregating => {}
    }
    sqlx::query("UPDATE rounds SET state = 'aggregating' WHERE round_id = $1 AND state = 'open'")
        .bind(round.as_str())
        .execute(&s.pool)
        .await?;
    let list = contributions(&s.pool, round).await?;
    if (list.len() as u32) < row.spec.min_clients {
        let why = format!(
            "{} contributions, fewer than min_clients = {}",
            list.len(),
            row.spec.min_clients
        );
        sqlx::query("UPDATE rounds SET state = 'failed', failure = $1 WHERE round_id = $2")
            .bind(&why)
            .bind(round.as_str())
            .execute(&s.pool)
            .await?;
        s.metrics.rounds_failed.fetch_add(1, Ordering::Relaxed);
        s.accumulators.lock().await.remove(round.as_str());
        tracing::info!(round = %round, %why, "round failed");
        return Ok(());
    }
    let acc = accumulator(s, round, &row).await?;
    let expected: HashSet<String> = list.iter().map(|c| c.client_id.to_string()).collect();
    let plan = row.plan;
    let bytes = {
        let acc = acc.clone();
        tokio::task::spawn_blocking(move || {
            let a = acc.blocking_lock();
            if a.folded != expected {
                return Err(format!(
                    "running sum holds {} contributions, the database {}",
                    a.folded.len(),
                    expected.len()
                ));
            }
            Ok(a.sum.compress(&ParameterSet::default_128(), plan.download).to_bytes())
        })
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)?
    };
    let sha = hex::encode(Sha256::digest(&bytes));
    let (blobs, r) = (s.blobs.clone(), round.to_string());
    tokio::task::spawn_blocking(move || blobs.put(&r, "aggregate.ct", &bytes))
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)?;
    sqlx::query("UPDATE rounds SET state = 'published', published_at = $1, aggregate_sha256 = $2 WHERE round_id = $3")
        .bind(unix_now())
        .bind(&sha)
        .bind(round.as_str())
        .execute(&s.pool)
        .await
        ?;
    s.accumulators.lock().await.remove(round.as_str());
    s.metrics.rounds_published.fetch_add(1, Ordering::Relaxed);
    tracing::info!(round = %round, contributors = list.len(), aggregate = %sha, "round published");
    notify_kms(s, round).await
}

/// Tells the KMS the round is aggregated (releasing the key to clients); remembered once done.
async fn notify_kms(s: &AppState, round: &RoundId) -> Result<(), AppError> {
    let notified: i64 = sqlx::query("SELECT kms_notified FROM rounds WHERE round_id = $1")
        .bind(round.as_str())
        .fetch_one(&s.pool)
        .await
        .and_then(|r| r.try_get(0))?;
    if notified != 0 {
        return Ok(());
    }
    let n = contributions(&s.pool, round).await?.len() as u32;
    s.kms.mark_aggregated(round, n).await.map_err(kms_error)?;
    sqlx::query("UPDATE rounds SET kms_notified = 1 WHERE round_id = $1")
        .bind(round.as_str())
        .execute(&s.pool)
        .await?;
    Ok(())
}

/// `GET /v1/rounds/{round}/aggregate` — a client of the round, or an admin.
async fn aggregate(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(round): Path<String>,
) -> Result<Response, AppError> {
    caller.require(&[Role::Client, Role::Admin])?;
    let round = round_param(round)?;
    let row = require_round(&s.pool, &round).await?;
    if caller.role == Role::Client && !is_round_client(&s.pool, &round, &caller.subject).await? {
        return Err(AppError::new(
            ErrorCode::Forbidden,
            format!("{} is not a client of round {round}", caller.subject),
        ));
    }
    match row.state {
        RoundState::Published => {}
        RoundState::Failed => {
            return Err(AppError::new(
                ErrorCode::Conflict,
                format!("round {round} failed: {}", row.failure.unwrap_or_default()),
            )
            .with_field("round"));
        }
        other => {
            return Err(AppError::new(
                ErrorCode::Conflict,
                format!("round {round} is {}", state_name(other)),
            )
            .with_field("round"))
        }
    }
    let blobs = s.blobs.clone();
    let r = round.to_string();
    let bytes = tokio::task::spawn_blocking(move || blobs.get(&r, "aggregate.ct"))
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// One pass of the background work: close rounds past their deadline, finish publications
/// interrupted by a crash, and retry KMS notifications.
pub async fn tick(s: &AppState) {
    let due = sqlx::query(
        "SELECT round_id FROM rounds WHERE (state = 'open' AND deadline <= $1) OR state = 'aggregating' \
         OR (state = 'published' AND kms_notified = 0)",
    )
    .bind(unix_now())
    .fetch_all(&s.pool)
    .await;
    let rows = match due {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "deadline scan failed");
            return;
        }
    };
    for row in rows {
        let Ok(id) = row.try_get::<String, _>(0) else { continue };
        let Ok(round) = RoundId::parse(id) else { continue };
        if let Err(e) = publish(s, &round).await {
            tracing::warn!(round = %round, problem = ?e.problem(), "closing the round failed; will retry");
        }
    }
}
