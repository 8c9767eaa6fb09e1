//! The KMS's HTTP API. Each handler states the roles it accepts.
//!
//! | method and path | roles | what |
//! |---|---|---|
//! | `PUT /v1/rounds/{round}/key` | aggregator, admin | create the round's key (idempotent) |
//! | `GET /v1/rounds/{round}/key` | any | metadata |
//! | `GET /v1/rounds/{round}/key/public` | any | public key (binary, strong ETag) |
//! | `POST /v1/rounds/{round}/key/aggregated` | aggregator | record the contributor count |
//! | `GET /v1/rounds/{round}/key/secret` | client of the round | release the secret key |
//! | `DELETE /v1/rounds/{round}/key` | admin | crypto-shred the key |
//! | `GET /v1/audit` | admin | the audit log |
//! | `GET /healthz`, `GET /readyz` | none | probes |

use crate::audit::{self, Event};
use crate::seal::{MasterKey, Sealed};
use crate::Metrics;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cryptflow_he::planner::{self, PlanRequest};
use cryptflow_he::{generate_keys, BodiesPerMask, ParameterSet, Wire};
use cryptflow_services::api::kms::{
    AuditEntry, KeyInfo, KeySpec, KeyState, MarkAggregated, MAX_ROUND_CLIENTS,
};
use cryptflow_services::auth::{Authenticated, Principal, Verifier};
use cryptflow_services::http::{not_found, probe_routes, round_param, unix_now, ApiJson, AppError};
use cryptflow_services::{ClientId, ErrorCode, Role, RoundId};
use serde::Deserialize;
use sqlx::{AnyPool, Row};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Database.
    pub pool: AnyPool,
    /// Token verification.
    pub verifier: Arc<Verifier>,
    /// Master key for sealing.
    pub master: Arc<MasterKey>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Serialises audit appends within this process (the sequence is also a primary key).
    pub audit_lock: Arc<tokio::sync::Mutex<()>>,
}

impl FromRef<AppState> for Arc<Verifier> {
    fn from_ref(s: &AppState) -> Self {
        s.verifier.clone()
    }
}

/// The router (without the metrics endpoint, which listens elsewhere).
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    routes(state, max_body_bytes, true)
}

/// The client-facing subset: key metadata, public key and secret-key release (and the
/// probes). With `internal_listen` set, the KMS serves this on `listen` and the full
/// [`router`] — aggregator and operator endpoints included — only on `internal_listen`, so a
/// network policy can keep everyone but the aggregator away from those.
pub fn public_router(state: AppState, max_body_bytes: usize) -> Router {
    routes(state, max_body_bytes, false)
}

fn routes(state: AppState, max_body_bytes: usize, internal: bool) -> Router {
    let key =
        if internal { put(create_key).get(key_info).delete(destroy_key) } else { get(key_info) };
    let mut r = Router::new()
        .route("/v1/rounds/{round}/key", key)
        .route("/v1/rounds/{round}/key/public", get(public_key))
        .route("/v1/rounds/{round}/key/secret", get(release_secret));
    if internal {
        r = r
            .route("/v1/rounds/{round}/key/aggregated", post(mark_aggregated))
            .route("/v1/audit", get(audit_log));
    }
    r.layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(state.clone())
        .merge(probe_routes(state.pool, OPENAPI))
        .fallback(not_found)
}

/// The OpenAPI document, checked in as `docs/kms-openapi.json`.
pub const OPENAPI: &str = include_str!("../../docs/kms-openapi.json");

/// Appends the audit entry for `action` to `tx` and commits: the key change and its record
/// land together or not at all.
async fn record(
    mut tx: sqlx::Transaction<'_, sqlx::Any>,
    at: i64,
    caller: &Principal,
    action: &str,
    round: &RoundId,
    detail: serde_json::Value,
) -> Result<(), AppError> {
    let event = Event {
        actor: caller.subject.as_str(),
        role: caller.role,
        action,
        round_id: Some(round.as_str()),
        detail,
    };
    audit::append(&mut tx, at, event).await?;
    Ok(tx.commit().await?)
}

/// Checks a spec and runs the planner; errors are 422 naming the field or bound.
fn validate(spec: &KeySpec) -> Result<(BodiesPerMask, planner::Plan), AppError> {
    let bad = |field: &str, detail: String| {
        AppError::new(ErrorCode::Unprocessable, detail).with_field(field)
    };
    let bodies = BodiesPerMask::try_new(spec.bodies)
        .map_err(|e| bad("bodies", e.to_string()).with_limit(BodiesPerMask::MAX as u64))?;
    if spec.clients.is_empty() || spec.clients.len() > MAX_ROUND_CLIENTS {
        return Err(bad("clients", format!("must list 1 to {MAX_ROUND_CLIENTS} clients"))
            .with_limit(MAX_ROUND_CLIENTS as u64));
    }
    let unique: HashSet<&ClientId> = spec.clients.iter().collect();
    if unique.len() != spec.clients.len() {
        return Err(bad("clients", "lists a client twice".into()));
    }
    if spec.min_clients == 0 || spec.min_clients > spec.max_clients {
        return Err(bad(
            "min_clients",
            format!("must be in [1, max_clients = {}]", spec.max_clients),
        ));
    }
    if spec.min_clients as usize > spec.clients.len() {
        return Err(bad(
            "min_clients",
            format!("exceeds the {} allowed clients", spec.clients.len()),
        ));
    }
    let request = PlanRequest {
        max_clients: spec.max_clients,
        clip_bound: spec.clip_bound,
        max_weight: spec.max_weight,
        bodies,
        target: spec.target,
    };
    let plan = planner::plan(&ParameterSet::default_128(), &request).map_err(|e| {
        let field = match &e {
            cryptflow_he::PlanError::InvalidRequest { field, .. } => (*field).to_owned(),
            cryptflow_he::PlanError::Precision { .. } => "target".to_owned(),
            _ => "spec".to_owned(),
        };
        bad(&field, e.to_string())
    })?;
    Ok((bodies, plan))
}

/// A stored key row, without the sealed secret.
struct KeyRow {
    key_id: String,
    spec: KeySpec,
    state: KeyState,
    contributors: Option<u32>,
    created_at: i64,
}

fn state_of(s: &str) -> Result<KeyState, AppError> {
    match s {
        "active" => Ok(KeyState::Active),
        "aggregated" => Ok(KeyState::Aggregated),
        "destroyed" => Ok(KeyState::Destroyed),
        other => Err(AppError::internal(format!("unknown key state {other:?} in the database"))),
    }
}

async fn load(pool: &AnyPool, round: &RoundId) -> Result<Option<KeyRow>, AppError> {
    let row = sqlx::query("SELECT key_id, spec_json, state, contributors, created_at FROM round_keys WHERE round_id = $1")
        .bind(round.as_str())
        .fetch_optional(pool)
        .await
        ?;
    let Some(row) = row else { return Ok(None) };
    let spec_json: String = row.try_get("spec_json")?;
    let spec = serde_json::from_str(&spec_json).map_err(AppError::internal)?;
    let contributors: Option<i64> = row.try_get("contributors")?;
    Ok(Some(KeyRow {
        key_id: row.try_get("key_id")?,
        spec,
        state: state_of(&row.try_get::<String, _>("state")?)?,
        contributors: contributors.map(|c| c as u32),
        created_at: row.try_get("created_at")?,
    }))
}

/// The row, or 404 if absent and 410 if destroyed.
async fn live(pool: &AnyPool, round: &RoundId) -> Result<KeyRow, AppError> {
    match load(pool, round).await? {
        None => Err(AppError::new(ErrorCode::NotFound, format!("round {round} has no key"))
            .with_field("round")),
        Some(row) if row.state == KeyState::Destroyed => {
            Err(AppError::new(ErrorCode::Gone, format!("the key of round {round} was destroyed"))
                .with_field("round"))
        }
        Some(row) => Ok(row),
    }
}

fn info(round: RoundId, row: KeyRow) -> Result<KeyInfo, AppError> {
    let (_, plan) = validate(&row.spec)?;
    Ok(KeyInfo {
        round_id: round,
        key_id: row.key_id,
        state: row.state,
        spec: row.spec,
        plan,
        contributors: row.contributors,
        created_at: row.created_at,
    })
}

/// `PUT /v1/rounds/{round}/key` — aggregator or admin. 201 when created, 200 when an identical
/// key exists, 409 when a different one does, 410 when it was destroyed.
async fn create_key(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(round): Path<String>,
    ApiJson(spec): ApiJson<KeySpec>,
) -> Result<Response, AppError> {
    caller.require(&[Role::Aggregator, Role::Admin])?;
    let round = round_param(round)?;
    let (bodies, _) = validate(&spec)?;
    if let Some(existing) = load(&s.pool, &round).await? {
        return existing_or_conflict(round, existing, &spec);
    }
    // Key generation is CPU work: off the async runtime.
    let (public, secret) = tokio::task::spawn_blocking(move || {
        generate_keys(ParameterSet::default_128(), bodies).map(|(sk, pk)| {
            let mut secret = Zeroizing::new(Vec::new());
            sk.encode_into(&mut secret);
            (pk, secret)
        })
    })
    .await
    .map_err(AppError::internal)?
    .map_err(AppError::internal)?;
    let key_id = public.id().to_string();
    let sealed = s.master.seal(round.as_str(), &key_id, &secret).map_err(AppError::internal)?;
    drop(secret);
    let spec_json = serde_json::to_string(&spec).map_err(AppError::internal)?;
    let at = unix_now();

    let _guard = s.audit_lock.lock().await;
    let mut tx = s.pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO round_keys (round_id, key_id, spec_json, public_key, sealed_secret, nonce, master_key_id, state, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8) ON CONFLICT (round_id) DO NOTHING",
    )
    .bind(round.as_str())
    .bind(&key_id)
    .bind(&spec_json)
    .bind(public.to_bytes())
    .bind(sealed.ciphertext)
    .bind(sealed.nonce)
    .bind(s.master.id())
    .bind(at)
    .execute(&mut *tx)
    .await
    ?
    .rows_affected();
    if inserted == 0 {
        // A concurrent create won: answer as if it had come first.
        tx.rollback().await?;
        drop(_guard);
        let existing =
            load(&s.pool, &round).await?.ok_or_else(|| AppError::internal("key row vanished"))?;
        return existing_or_conflict(round, existing, &spec);
    }
    for client in &spec.clients {
        sqlx::query("INSERT INTO round_clients (round_id, client_id) VALUES ($1, $2)")
            .bind(round.as_str())
            .bind(client.as_str())
            .execute(&mut *tx)
            .await?;
    }
    record(tx, at, &caller, "key.create", &round, serde_json::json!({ "key_id": key_id, "clients": spec.clients.len(), "min_clients": spec.min_clients })).await?;
    s.metrics.keys_created.fetch_add(1, Ordering::Relaxed);
    tracing::info!(round = %round, key_id = %key_id, "round key created");
    let row = KeyRow { key_id, spec, state: KeyState::Active, contributors: None, created_at: at };
    Ok((StatusCode::CREATED, Json(info(round, row)?)).into_response())
}

fn existing_or_conflict(
    round: RoundId,
    existing: KeyRow,
    spec: &KeySpec,
) -> Result<Response, AppError> {
    if existing.state == KeyState::Destroyed {
        return Err(AppError::new(
            ErrorCode::Gone,
            format!("the key of round {round} was destroyed"),
        )
        .with_field("round"));
    }
    if &existing.spec != spec {
        return Err(AppError::new(
            ErrorCode::Conflict,
            format!("round {round} already has a key with a different spec"),
        )
        .with_field("round"));
    }
    Ok((StatusCode::OK, Json(info(round, existing)?)).into_response())
}

/// `GET /v1/rounds/{round}/key` — any authenticated role.
async fn key_info(
    State(s): State<AppState>,
    Authenticated(_caller): Authenticated,
    Path(round): Path<String>,
) -> Result<Json<KeyInfo>, AppError> {
    let round = round_param(round)?;
    let row = live(&s.pool, &round).await?;
    Ok(Json(info(round, row)?))
}

/// `GET /v1/rounds/{round}/key/public` — any authenticated role. The key never changes, so it
/// is served with a strong ETag (its key id) and `If-None-Match` gets a 304.
async fn public_key(
    State(s): State<AppState>,
    Authenticated(_caller): Authenticated,
    Path(round): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let round = round_param(round)?;
    let row = live(&s.pool, &round).await?;
    let etag = format!("\"{}\"", row.key_id);
    let etag_value = HeaderValue::from_str(&etag).map_err(AppError::internal)?;
    let cache = HeaderValue::from_static("private, max-age=31536000, immutable");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag_value), (header::CACHE_CONTROL, cache)],
        )
            .into_response());
    }
    let bytes: Vec<u8> = sqlx::query("SELECT public_key FROM round_keys WHERE round_id = $1")
        .bind(round.as_str())
        .fetch_one(&s.pool)
        .await
        .and_then(|r| r.try_get(0))?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
            (header::ETAG, etag_value),
            (header::CACHE_CONTROL, cache),
        ],
        bytes,
    )
        .into_response())
}

/// `POST /v1/rounds/{round}/key/aggregated` — aggregator only. Idempotent for the same count.
async fn mark_aggregated(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(round): Path<String>,
    ApiJson(body): ApiJson<MarkAggregated>,
) -> Result<Json<KeyInfo>, AppError> {
    caller.require(&[Role::Aggregator])?;
    let round = round_param(round)?;
    let row = live(&s.pool, &round).await?;
    if body.contributors > row.spec.max_clients {
        return Err(AppError::new(
            ErrorCode::Unprocessable,
            "more contributors than the round's max_clients",
        )
        .with_field("contributors")
        .with_limit(row.spec.max_clients as u64));
    }
    if row.state == KeyState::Aggregated {
        return if row.contributors == Some(body.contributors) {
            Ok(Json(info(round, row)?))
        } else {
            Err(AppError::new(
                ErrorCode::Conflict,
                "round already marked aggregated with another count",
            )
            .with_field("contributors"))
        };
    }
    let at = unix_now();
    let _guard = s.audit_lock.lock().await;
    let mut tx = s.pool.begin().await?;
    let updated = sqlx::query(
        "UPDATE round_keys SET state = 'aggregated', contributors = $1, aggregated_at = $2 WHERE round_id = $3 AND state = 'active'",
    )
    .bind(body.contributors as i64)
    .bind(at)
    .bind(round.as_str())
    .execute(&mut *tx)
    .await
    ?
    .rows_affected();
    if updated != 1 {
        tx.rollback().await?;
        return Err(AppError::new(
            ErrorCode::Conflict,
            "the key changed state concurrently; retry",
        )
        .with_field("round"));
    }
    record(
        tx,
        at,
        &caller,
        "key.aggregated",
        &round,
        serde_json::json!({ "contributors": body.contributors }),
    )
    .await?;
    let row = KeyRow { state: KeyState::Aggregated, contributors: Some(body.contributors), ..row };
    Ok(Json(info(round, row)?))
}

/// `GET /v1/rounds/{round}/key/secret` — a client allowed in the round, once the round is
/// aggregated with at least `min_clients` contributors. Every release is audited.
async fn release_secret(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(round): Path<String>,
) -> Result<Response, AppError> {
    caller.require(&[Role::Client])?;
    let round = round_param(round)?;
    let row = live(&s.pool, &round).await?;
    let allowed = sqlx::query("SELECT 1 FROM round_clients WHERE round_id = $1 AND client_id = $2")
        .bind(round.as_str())
        .bind(caller.subject.as_str())
        .fetch_optional(&s.pool)
        .await?
        .is_some();
    if !allowed {
        return Err(AppError::new(
            ErrorCode::Forbidden,
            format!("{} is not a client of round {round}", caller.subject),
        ));
    }
    if row.state != KeyState::Aggregated {
        return Err(AppError::new(ErrorCode::Conflict, "the round is not aggregated yet")
            .with_field("round"));
    }
    let contributors = row.contributors.unwrap_or(0);
    if contributors < row.spec.min_clients {
        return Err(AppError::new(
            ErrorCode::Conflict,
            format!(
                "only {contributors} contributors; the key is released from {}",
                row.spec.min_clients
            ),
        )
        .with_field("contributors")
        .with_limit(row.spec.min_clients as u64));
    }
    let sealed_row = sqlx::query(
        "SELECT sealed_secret, nonce FROM round_keys WHERE round_id = $1 AND state = 'aggregated'",
    )
    .bind(round.as_str())
    .fetch_optional(&s.pool)
    .await?
    .ok_or_else(|| AppError::new(ErrorCode::Gone, "the key was destroyed"))?;
    let sealed = Sealed {
        ciphertext: sealed_row.try_get("sealed_secret")?,
        nonce: sealed_row.try_get("nonce")?,
    };
    let secret = s.master.open(round.as_str(), &row.key_id, &sealed).map_err(AppError::internal)?;
    {
        let _guard = s.audit_lock.lock().await;
        let tx = s.pool.begin().await?;
        record(
            tx,
            unix_now(),
            &caller,
            "key.release",
            &round,
            serde_json::json!({ "key_id": row.key_id }),
        )
        .await?;
    }
    s.metrics.keys_released.fetch_add(1, Ordering::Relaxed);
    tracing::info!(round = %round, client = %caller.subject, "secret key released");
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream"), (header::CACHE_CONTROL, "no-store")],
        secret.to_vec(),
    )
        .into_response())
}

/// `DELETE /v1/rounds/{round}/key` — admin. Crypto-shreds the sealed secret key.
async fn destroy_key(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(round): Path<String>,
) -> Result<StatusCode, AppError> {
    caller.require(&[Role::Admin])?;
    let round = round_param(round)?;
    let row = live(&s.pool, &round).await?;
    let at = unix_now();
    let _guard = s.audit_lock.lock().await;
    let mut tx = s.pool.begin().await?;
    sqlx::query(
        "UPDATE round_keys SET state = 'destroyed', sealed_secret = NULL, nonce = NULL, destroyed_at = $1 WHERE round_id = $2",
    )
    .bind(at)
    .bind(round.as_str())
    .execute(&mut *tx)
    .await
    ?;
    record(tx, at, &caller, "key.destroy", &round, serde_json::json!({ "key_id": row.key_id }))
        .await?;
    s.metrics.keys_destroyed.fetch_add(1, Ordering::Relaxed);
    Ok(StatusCode::NO_CONTENT)
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
    Ok(Json(audit::list(&s.pool, q.after, q.limit).await?))
}
