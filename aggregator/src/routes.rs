//! The aggregator's HTTP API: extract, authorise, call the rules, store, answer. Each handler
//! states the roles it accepts.
//!
//! | method and path | who | what |
//! |---|---|---|
//! | `POST /v1/rounds` | admin | create a round: plan it, fix its mask seed with the key managers, register it with them |
//! | `GET /v1/rounds/{round}` | admin, the round's members, readers | the round, its spec, the nodes' echoes, state, transcript |
//! | `POST /v1/rounds/{round}/close` | admin | close now and publish (or fail) |
//! | `PUT /v1/rounds/{round}/submissions/{client}` | the client itself, a member of the round | upload an encrypted update |
//! | `GET /v1/rounds/{round}/submissions/{client}` | admin, readers | a published round's upload of a member of its contributor set, for verifying the aggregate (members are refused: a holder of every upload and `t` colluding key managers could read updates); `410` once `upload_retention_secs` deleted it |
//! | `GET /v1/rounds/{round}/submissions/{client}/spans?at=…` | admin, readers | sampled verification spans of such an upload with their audit paths to the root its member signed |
//! | `GET /v1/rounds/{round}/aggregate` | admin, members of the contributor set, readers | the aggregate |
//! | `GET /healthz`, `/readyz`, `/openapi.json` | none | probes, this API's description |
//!
//! Accepting an upload: the caller is authorised, the declared length checked against the
//! round's exact upload size, the 64-byte header read and checked against the round (every
//! field names itself on a mismatch), the rest streamed to a blob while hashed — the upload is
//! never held whole — and the upload admitted atomically (up to `max_clients`) with its
//! SHA-256, which the client deposits, signed, with the key managers. Only then is it
//! acknowledged.

use crate::domain;
use crate::fold::{aggregate_blob, upload_blob};
use crate::lifecycle;
use crate::store::{Admission, RoundRow, UploadRow};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cryptflow_services::api::round::{
    RoundInfo, RoundRequest, RoundState, SeedDerivation, SubmissionReceipt, Transcript, UploadSpans,
};
use cryptflow_services::api::Base64Bytes;
use cryptflow_services::auth::{Authenticated, Principal};
use cryptflow_services::http::{
    method_not_allowed, not_found, parse_json, probe_routes, problem_documents,
    refuse_declared_oversize, round_param, AppError,
};
use cryptflow_services::protocol;
use cryptflow_services::{ClientId, ErrorCode, Role, RoundId, Sha256Digest};
use std::sync::atomic::Ordering;

/// The OpenAPI document, checked in as `docs/aggregator-openapi.json`.
pub const OPENAPI: &str = include_str!("../../docs/aggregator-openapi.json");

/// Largest JSON body (a round request listing 10^5 clients is ~3 MB).
const MAX_JSON_BODY: usize = 32 << 20;

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/rounds",
            post(create_round).layer(axum::middleware::from_fn_with_state(
                MAX_JSON_BODY,
                refuse_declared_oversize,
            )),
        )
        .route("/v1/rounds/{round}", get(round_info))
        .route("/v1/rounds/{round}/close", post(close_round))
        .route(
            "/v1/rounds/{round}/submissions/{client}",
            // Uploads stream to disk; their size is checked against the round, not a global cap.
            put(submit).layer(axum::extract::DefaultBodyLimit::disable()).get(upload),
        )
        .route("/v1/rounds/{round}/submissions/{client}/spans", get(upload_spans))
        .route("/v1/rounds/{round}/aggregate", get(aggregate))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BODY))
        .with_state(state.clone())
        .merge(probe_routes(state.store.pool().clone(), OPENAPI))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(axum::middleware::map_response(problem_documents))
}

fn db(e: crate::store::StoreError) -> AppError {
    AppError::internal(e)
}

async fn require_round(s: &AppState, round: &RoundId) -> Result<RoundRow, AppError> {
    s.store.round(round).await.map_err(db)?.ok_or_else(|| {
        AppError::new(ErrorCode::NotFound, format!("no round {round}")).with_field("round")
    })
}

/// Round metadata is for admins, the round's members and readers only.
fn may_see(row: &RoundRow, caller: &Principal) -> Result<(), AppError> {
    match caller.role {
        Role::Admin | Role::Reader => Ok(()),
        Role::Client if row.spec.clients.binary_search(&caller.subject).is_ok() => Ok(()),
        _ => Err(AppError::new(
            ErrorCode::Forbidden,
            format!("{} is not a member of round {}", caller.subject, row.spec.round_id),
        )),
    }
}

fn info(row: RoundRow) -> RoundInfo {
    let transcript = match (row.state, &row.set, row.aggregate_sha256) {
        (RoundState::Published, Some(set), Some(sha)) => Some(Transcript {
            contributors: set.clone(),
            aggregate_sha256: sha,
            recorded_by: row.recorded_by.clone(),
        }),
        _ => None,
    };
    RoundInfo {
        request: row.request,
        spec: row.spec,
        deadline: row.deadline,
        state: row.state,
        uploads: row.admitted,
        echoes: row.echoes,
        transcript,
        failure: row.failure,
    }
}

/// `POST /v1/rounds` — admin. 201 created and registered with at least `t` key managers, 200
/// for the same request again, 409 for another one with the same id; 422 naming the field or
/// the planner's bound (with the nearest feasible setting); 503 if too few key managers
/// could be reached — for the seed's nonces (nothing stored) or to register (the round is
/// kept and retried) — repeat the request.
async fn create_round(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    caller.require(&[Role::Admin])?;
    let request: RoundRequest = parse_json(&headers, &body)?;
    let now = s.clock.now();
    let round = request.round_id.clone();
    let (row, created) = match s.store.round(&round).await.map_err(db)? {
        Some(existing) if existing.request != request => {
            return Err(AppError::new(
                ErrorCode::Conflict,
                format!("round {round} exists with another request"),
            )
            .with_field("round_id"))
        }
        Some(existing) => (existing, false),
        None => {
            let deadline = domain::deadline(&request, now)?;
            let spec = domain::round_spec(&request, SeedDerivation::default())?;
            if let Some(max) = s.blobs.max_blob_bytes() {
                let len = protocol::setup(&spec).map_err(AppError::internal)?.upload_len();
                if len > max {
                    return Err(AppError::new(
                        ErrorCode::Unprocessable,
                        format!(
                            "an upload of this round would be {len} bytes; this aggregator's S3 \
                             store holds blobs of at most {max} bytes (one CopyObject): split the \
                             model over several rounds"
                        ),
                    )
                    .with_field("layout")
                    .with_limit(max));
                }
            }
            // The request is valid: the key managers help fix the seed (two steps).
            let spec = match lifecycle::fix_seed(&s, spec).await {
                Ok(spec) => spec,
                // Another replica (or an earlier attempt of this request) may have created the
                // round meanwhile: its nodes then refuse new nonces. Answer with that round.
                Err(e) => match s.store.round(&round).await.map_err(db)? {
                    Some(existing) => {
                        lifecycle::forget_seed(&s, &round);
                        if existing.request != request {
                            return Err(AppError::new(
                                ErrorCode::Conflict,
                                format!("round {round} exists with another request"),
                            )
                            .with_field("round_id"));
                        }
                        return see_registered(&s, existing, false).await;
                    }
                    None => return Err(e),
                },
            };
            let inserted = s
                .store
                .insert_round(&request, &spec, deadline, now, s.tuning.fold_span_blocks)
                .await
                .map_err(db)?;
            lifecycle::forget_seed(&s, &round);
            let row = require_round(&s, &round).await?;
            if !inserted && row.request != request {
                return Err(AppError::new(
                    ErrorCode::Conflict,
                    format!("round {round} exists with another request"),
                )
                .with_field("round_id"));
            }
            if inserted {
                s.metrics.rounds_created.fetch_add(1, Ordering::Relaxed);
            }
            (row, inserted)
        }
    };
    see_registered(&s, row, created).await
}

/// Registers a stored round with the nodes that have not echoed it; answers 201 (`created`)
/// or 200 once `t` have.
async fn see_registered(
    s: &AppState,
    row: crate::store::RoundRow,
    created: bool,
) -> Result<Response, AppError> {
    let round = row.spec.round_id.clone();
    let (echoes, errors) = lifecycle::register_missing(s, &row).await?;
    let t = s.kms.committee().shape().threshold();
    if echoes.len() < t as usize {
        let problem = lifecycle::registration_problem(t, echoes.len(), &errors);
        if problem.problem().status == 422 || problem.problem().status == 409 {
            // A node refused the spec itself (e.g. a client not on its roster): the round can
            // never be completed. If no node registered it, it is forgotten and a corrected
            // request may reuse the id; otherwise it fails (a node holds its spec).
            let forgotten =
                echoes.is_empty() && s.store.forget_unregistered(&round).await.map_err(db)?;
            if !forgotten {
                let why = problem.problem().detail.clone().unwrap_or_default();
                s.store.fail(&round, &why).await.map_err(db)?;
            }
        }
        return Err(problem);
    }
    tracing::info!(round = %round, nodes = echoes.len(), "round created");
    let row = require_round(s, &round).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(info(row))).into_response())
}

/// `GET /v1/rounds/{round}` — admin, the round's members, readers.
async fn round_info(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(round): Path<String>,
) -> Result<Json<RoundInfo>, AppError> {
    let round = round_param(round)?;
    let row = require_round(&s, &round).await?;
    may_see(&row, &caller)?;
    Ok(Json(info(row)))
}

/// `POST /v1/rounds/{round}/close` — admin. Closes now and takes the first publication step;
/// the answer shows the state reached (`aggregating` while deposits are awaited).
async fn close_round(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(round): Path<String>,
) -> Result<Json<RoundInfo>, AppError> {
    caller.require(&[Role::Admin])?;
    let round = round_param(round)?;
    let row = require_round(&s, &round).await?;
    if matches!(row.state, RoundState::Open | RoundState::Aggregating) {
        lifecycle::close(&s, &round).await?;
    }
    Ok(Json(info(require_round(&s, &round).await?)))
}

/// `PUT /v1/rounds/{round}/submissions/{client}` — the client itself, a member of the round.
/// 201 admitted, 200 the same upload again, 409 another upload, a copy of another member's
/// upload, or a closed/full round, 413
/// too large (with the limit), 400 truncated or malformed, 408 stalled or too slow, 422 a
/// header of another round (naming the field), 429 this client's other upload is in flight,
/// 503 no upload slot within `upload_queue_secs` (both with `Retry-After`).
async fn submit(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((round, client)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let (round, client, row) = uploader(&s, &caller, round, client).await?;
    let setup = protocol::setup(&row.spec).map_err(AppError::internal)?;
    let expected = setup.upload_len();
    crate::upload::check_declared_length(&headers, expected)?;
    let existing = s.store.upload(&round, &client).await.map_err(db)?;
    if row.state != RoundState::Open && existing.is_none() {
        return repeat_or_closed(&s, &row, &client, None).await;
    }
    // Every body read holds a slot, retries included: no client reads past the limit.
    let _slot = match crate::upload::take_slot(&s, &client).await {
        Ok(slot) => slot,
        Err(busy) => return Ok(busy),
    };
    if let Some(existing) = existing {
        // A retry of the admitted upload gets its receipt, which needs the body's digest:
        // read and hashed, not stored.
        let sent = crate::upload::receive(&s, &row, &setup, expected, body, false).await?;
        return repeat_or_closed(&s, &row, &client, Some((existing.sha256, sent.sha256))).await;
    }
    let received = crate::upload::receive(&s, &row, &setup, expected, body, true).await?;
    let sha256 = received.sha256;
    let Some(blob) = received.blob else { return Err(AppError::internal("no blob writer")) };
    if let Some(existing) = s.store.upload(&round, &client).await.map_err(db)? {
        drop(blob);
        return repeat_or_closed(&s, &row, &client, Some((existing.sha256, sha256))).await;
    }
    // Written (fsynced, or completed in the bucket) before the row that admits it.
    if let Err(e) = blob.finish(&upload_blob(client.as_str(), &sha256)).await {
        // A round that finished meanwhile cleans up its temporary objects: say so, not 500.
        let row = require_round(&s, &round).await?;
        if row.state != RoundState::Open {
            return repeat_or_closed(&s, &row, &client, None).await;
        }
        return Err(AppError::internal(e));
    }
    let admitted = s
        .store
        .admit(
            &round,
            &UploadRow {
                client_id: client.clone(),
                sha256,
                bytes: expected,
                span_sha256: received.span_sha256,
                upload_root: received.upload_root,
            },
            row.spec.max_clients,
            s.clock.now(),
        )
        .await
        .map_err(db)?;
    let uploads = match admitted {
        Admission::Admitted(uploads) => uploads,
        Admission::CopyOf(original) => {
            // Its blob stays unreferenced under this client's name; retention removes it.
            return Err(AppError::new(
                ErrorCode::Conflict,
                format!(
                    "this upload is byte for byte {original}'s upload to round {round}: an upload is a fresh \
                     encryption under the uploading client's own key, so a copy is never one"
                ),
            )
            .with_field("body"));
        }
        Admission::Refused => {
            // A concurrent identical upload won, or the round closed or filled meanwhile.
            let existing = s.store.upload(&round, &client).await.map_err(db)?;
            let row = require_round(&s, &round).await?;
            return repeat_or_closed(&s, &row, &client, existing.map(|e| (e.sha256, sha256))).await;
        }
    };
    s.metrics.submissions.fetch_add(1, Ordering::Relaxed);
    s.metrics.submission_bytes.fetch_add(expected, Ordering::Relaxed);
    if uploads >= row.spec.max_clients {
        let (state, r) = (s.clone(), round.clone());
        tokio::spawn(async move {
            if let Err(e) = lifecycle::close(&state, &r).await {
                tracing::warn!(round = %r, problem = ?e.problem(), "closing at max_clients failed; the background task retries");
            }
        });
    }
    let receipt =
        SubmissionReceipt { round_id: round, client_id: client, upload_sha256: sha256, uploads };
    Ok((StatusCode::CREATED, Json(receipt)).into_response())
}

/// The round and client of an upload, checked: a client uploading as itself, a member of the
/// round.
async fn uploader(
    s: &AppState,
    caller: &Principal,
    round: String,
    client: String,
) -> Result<(RoundId, ClientId, RoundRow), AppError> {
    caller.require(&[Role::Client])?;
    let round = round_param(round)?;
    let client = ClientId::parse(client)
        .map_err(|e| AppError::new(ErrorCode::BadRequest, e.to_string()).with_field("client"))?;
    if caller.subject != client {
        return Err(AppError::new(
            ErrorCode::Forbidden,
            format!("{} may not upload as {client}", caller.subject),
        ));
    }
    let row = require_round(s, &round).await?;
    if !s.store.is_member(&round, &client).await.map_err(db)? {
        return Err(AppError::new(
            ErrorCode::Forbidden,
            format!("{client} is not a member of round {round}"),
        ));
    }
    Ok((round, client, row))
}

/// The answer to an upload that cannot be admitted: 200 with the receipt if it is the one
/// already admitted (a retry: nothing is counted twice), else 409 saying why.
async fn repeat_or_closed(
    s: &AppState,
    row: &RoundRow,
    client: &ClientId,
    existing: Option<(Sha256Digest, Sha256Digest)>,
) -> Result<Response, AppError> {
    let existing = match existing {
        Some(pair) => Some(pair),
        None => s
            .store
            .upload(&row.spec.round_id, client)
            .await
            .map_err(db)?
            .map(|u| (u.sha256, u.sha256)),
    };
    match existing {
        Some((recorded, sent)) if recorded == sent => {
            let receipt = SubmissionReceipt {
                round_id: row.spec.round_id.clone(),
                client_id: client.clone(),
                upload_sha256: recorded,
                uploads: row.admitted,
            };
            Ok((StatusCode::OK, Json(receipt)).into_response())
        }
        Some((recorded, _)) => Err(AppError::new(
            ErrorCode::Conflict,
            format!(
                "{client} already uploaded an update to this round (sha256 {recorded}); one upload per \
                 client and round. A retry of those same bytes is answered 200, but a new encryption — even \
                 of the same values — is a different upload (fresh key and noise) and is refused"
            ),
        )
        .with_field("client")),
        None if row.state == RoundState::Open => Err(AppError::new(
            ErrorCode::Conflict,
            format!("round {} already admitted its max_clients = {} uploads", row.spec.round_id, row.spec.max_clients),
        )
        .with_field("round")
        .with_limit(row.spec.max_clients as u64)),
        None => Err(AppError::new(ErrorCode::Conflict, format!("round {} is closed", row.spec.round_id)).with_field("round")),
    }
}

/// `GET /v1/rounds/{round}/aggregate` — admin, members of the contributor set, readers; once
/// published.
async fn aggregate(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(round): Path<String>,
) -> Result<Response, AppError> {
    let round = round_param(round)?;
    let row = require_round(&s, &round).await?;
    may_see(&row, &caller)?;
    let (Some(set), Some(sha)) = (&row.set, row.aggregate_sha256) else {
        return Err(not_ready(&row));
    };
    if row.state != RoundState::Published {
        return Err(not_ready(&row));
    }
    if caller.role == Role::Client && !set.iter().any(|c| c.client_id == caller.subject) {
        return Err(AppError::new(
            ErrorCode::Forbidden,
            format!("{} is not in the round's contributor set", caller.subject),
        ));
    }
    let (len, stream) =
        s.blobs.stream(round.as_str(), &aggregate_blob(&sha)).await.map_err(AppError::internal)?;
    Ok(blob_response(len, stream))
}

/// `GET /v1/rounds/{round}/submissions/{client}` (admin, readers): a published round's upload
/// of a contributor, as admitted (its SHA-256 is the one in the transcript, which the member
/// signed), for a reader recomputing the aggregate.
async fn upload(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((round, client)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let (_, stream) = served_upload(&s, &caller, round, client).await?;
    let (len, stream) = stream;
    Ok(blob_response(len, stream))
}

/// `GET /v1/rounds/{round}/submissions/{client}/spans?at=3,17,…` (admin, readers): the
/// verification spans `at` of a contributor's upload, each with its audit path to the upload's
/// root, which the member signed in its deposits (for a reader sampling spans instead of
/// fetching every upload). One pass over the upload; at most
/// [`MAX_SPANS_PER_REQUEST`](cryptflow_services::api::round::MAX_SPANS_PER_REQUEST) spans.
async fn upload_spans(
    State(s): State<AppState>,
    Authenticated(caller): Authenticated,
    Path((round, client)): Path<(String, String)>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<UploadSpans>, AppError> {
    use cryptflow_services::api::round::{UploadSpan, MAX_SPANS_PER_REQUEST};
    let (row, (len, mut stream)) = served_upload(&s, &caller, round, client).await?;
    let setup = protocol::setup(&row.spec).map_err(AppError::internal)?;
    let spans = setup.blocks();
    let bad = |why: String| AppError::new(ErrorCode::BadRequest, why).with_field("at");
    let text = query.get("at").ok_or_else(|| bad("name the spans: ?at=0,5,…".into()))?;
    let at: Vec<u64> = text
        .split(',')
        .map(|v| v.trim().parse::<u64>().ok().filter(|&j| j < spans))
        .collect::<Option<_>>()
        .ok_or_else(|| bad(format!("at: comma-separated span indices below {spans}")))?;
    if at.is_empty() || at.len() > MAX_SPANS_PER_REQUEST {
        return Err(bad(format!("at most {MAX_SPANS_PER_REQUEST} spans per request"))
            .with_limit(MAX_SPANS_PER_REQUEST as u64));
    }
    if len != setup.upload_len() {
        return Err(AppError::internal(format!("a stored upload of {len} bytes")));
    }
    let mut hasher = cryptflow_he::merkle::RootHasher::new(&setup).keeping_leaves();
    let wanted: std::collections::BTreeSet<u64> = at.iter().copied().collect();
    let mut bytes: std::collections::BTreeMap<u64, Vec<u8>> = std::collections::BTreeMap::new();
    // Span j covers bytes span_range(j); a chunk overlaps the spans from the one holding its
    // first byte to the one holding its last.
    let span_len = cryptflow_he::merkle::span_range(&setup, 0).len().max(1);
    let span_of =
        |byte: usize| (byte.saturating_sub(cryptflow_he::wire::HEADER_LEN) / span_len) as u64;
    let mut offset = 0usize;
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        let chunk = chunk.map_err(AppError::internal)?;
        hasher.update(&chunk);
        let chunk_range = offset..offset + chunk.len();
        if chunk.is_empty() {
            continue;
        }
        for &j in wanted.range(span_of(chunk_range.start)..=span_of(chunk_range.end - 1)) {
            let r = cryptflow_he::merkle::span_range(&setup, j);
            let (from, to) = (r.start.max(chunk_range.start), r.end.min(chunk_range.end));
            if from < to {
                bytes.entry(j).or_default().extend_from_slice(&chunk[from - offset..to - offset]);
            }
        }
        offset = chunk_range.end;
    }
    let (_, leaves) = hasher.finish_with_leaves().map_err(AppError::internal)?;
    let paths = cryptflow_he::merkle::proofs(&leaves, &at);
    let spans = at
        .iter()
        .zip(paths)
        .map(|(&j, path)| UploadSpan {
            index: j,
            bytes: Base64Bytes(bytes.get(&j).cloned().unwrap_or_default()),
            path: path.into_iter().map(Sha256Digest).collect(),
        })
        .collect();
    Ok(Json(UploadSpans { spans }))
}

type BlobStream =
    (u64, futures_util::stream::BoxStream<'static, Result<Bytes, crate::blob::BlobError>>);

/// A published round's upload of a contributor, for a reader (admins included): the round and
/// the blob's length and bytes. 410 once deleted after the retention.
async fn served_upload(
    s: &AppState,
    caller: &Principal,
    round: String,
    client: String,
) -> Result<(RoundRow, BlobStream), AppError> {
    let round = round_param(round)?;
    let client = ClientId::parse(client)
        .map_err(|e| AppError::new(ErrorCode::BadRequest, e.to_string()).with_field("client"))?;
    if !matches!(caller.role, Role::Admin | Role::Reader) {
        return Err(AppError::new(
            ErrorCode::Forbidden,
            "uploads are served to the round's readers only (who verify the aggregate): a holder \
             of every upload and t colluding key managers could read updates",
        ));
    }
    let row = require_round(s, &round).await?;
    let (Some(set), RoundState::Published) = (&row.set, row.state) else {
        return Err(not_ready(&row));
    };
    let Some(c) = set.iter().find(|c| c.client_id == client) else {
        return Err(AppError::new(
            ErrorCode::NotFound,
            format!("{client} is not in round {round}'s contributor set"),
        )
        .with_field("client"));
    };
    let gone = || {
        AppError::new(
            ErrorCode::Gone,
            format!(
                "round {round}'s uploads were deleted after upload_retention_secs ({} s); the \
                 aggregate can no longer be verified",
                s.tuning.upload_retention_secs
            ),
        )
    };
    if row.uploads_deleted {
        return Err(gone());
    }
    let found =
        match s.blobs.stream(round.as_str(), &upload_blob(client.as_str(), &c.upload_sha256)).await
        {
            Ok(found) => found,
            Err(crate::blob::BlobError::Store(object_store::Error::NotFound { .. })) => {
                return Err(gone())
            }
            Err(e) => return Err(AppError::internal(e)),
        };
    Ok((row, found))
}

/// A blob streamed as `application/octet-stream` with its length.
fn blob_response(
    len: u64,
    stream: futures_util::stream::BoxStream<'static, Result<Bytes, crate::blob::BlobError>>,
) -> Response {
    let stream = futures_util::TryStreamExt::map_err(stream, std::io::Error::other);
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

fn not_ready(row: &RoundRow) -> AppError {
    let detail = match (row.state, &row.failure) {
        (RoundState::Failed, Some(why)) => format!("round {} failed: {why}", row.spec.round_id),
        (state, _) => format!("round {} is {}", row.spec.round_id, crate::store::state_name(state)),
    };
    AppError::new(ErrorCode::Conflict, detail).with_field("round")
}
