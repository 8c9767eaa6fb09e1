//! Receiving an upload: the body streamed, its 64-byte header checked against the round
//! before the rest is read, the payload hashed on the way (whole and per fold span) and
//! (optionally) streamed to a blob — never held whole.

use crate::store::RoundRow;
use crate::AppState;
use axum::body::Body;
use axum::http::{header, HeaderMap};
use cryptflow_he::wire::{read_header, DecodeLimits, HEADER_LEN};
use cryptflow_he::CiphertextKind;
use cryptflow_services::http::AppError;
use cryptflow_services::{ErrorCode, Sha256Digest};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

/// An upload received: its digest, its digest per fold span, and (when stored) the blob
/// writer holding it, unfinished.
pub(crate) struct Received {
    pub sha256: Sha256Digest,
    pub span_sha256: Vec<Sha256Digest>,
    /// The root over verification spans its member should have signed (stored uploads only).
    pub upload_root: Option<Sha256Digest>,
    pub blob: Option<crate::blob::BlobWriter>,
}

/// Streams the body, the header first, checked against the round, then the payload, hashed on
/// the way; exactly `expected` bytes. With `store`, into a blob writer (returned unfinished).
pub(crate) async fn receive(
    s: &AppState,
    row: &RoundRow,
    setup: &cryptflow_he::RoundSetup,
    expected: u64,
    body: Body,
    store: bool,
) -> Result<Received, AppError> {
    let mut writer = if store {
        Some(s.blobs.writer(row.spec.round_id.as_str()).map_err(AppError::internal)?)
    } else {
        None
    };
    // Span digests only for an upload that is stored: a retry is hashed for its receipt only.
    let mut spans = store.then(|| crate::fold::SpanHasher::new(setup, row.span_blocks));
    let mut root = store.then(|| cryptflow_he::merkle::RootHasher::new(setup));
    let mut digest = Sha256::new();
    let mut head: Vec<u8> = Vec::with_capacity(HEADER_LEN);
    let mut received = 0u64;
    let mut stream = body.into_data_stream();
    let (idle, min_rate) = (
        std::time::Duration::from_secs(s.tuning.upload_idle_secs.max(1)),
        s.tuning.min_upload_bytes_per_sec,
    );
    let started = std::time::Instant::now();
    loop {
        let Ok(next) = tokio::time::timeout(idle, stream.next()).await else {
            s.metrics.uploads_too_slow.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(too_slow(format!("no data for {} s", idle.as_secs())));
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| {
            AppError::new(ErrorCode::BadRequest, format!("the upload broke off: {e}"))
                .with_field("body")
        })?;
        received += chunk.len() as u64;
        let secs = started.elapsed().as_secs();
        if secs >= 30 && received < min_rate.saturating_mul(secs) {
            s.metrics.uploads_too_slow.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(too_slow(format!(
                "{received} bytes in {secs} s, below {min_rate} bytes/s (min_upload_bytes_per_sec)"
            )));
        }
        if received > expected {
            return Err(AppError::new(
                ErrorCode::PayloadTooLarge,
                format!("an upload of this round is exactly {expected} bytes"),
            )
            .with_field("body")
            .with_limit(expected));
        }
        let mut take = 0;
        if head.len() < HEADER_LEN {
            take = (HEADER_LEN - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
            if head.len() == HEADER_LEN {
                check_header(setup, &head)?;
            }
        }
        digest.update(&chunk);
        if let Some(spans) = &mut spans {
            spans.update(&chunk[take..]);
        }
        if let Some(root) = &mut root {
            root.update(&chunk);
        }
        if let Some(w) = &mut writer {
            w.write(chunk).await.map_err(AppError::internal)?;
        }
    }
    if received != expected {
        return Err(AppError::new(
            ErrorCode::BadRequest,
            format!("{received} bytes; an upload of this round is exactly {expected}"),
        )
        .with_field("body")
        .with_limit(expected));
    }
    Ok(Received {
        sha256: Sha256Digest(digest.finalize().into()),
        span_sha256: spans.map(crate::fold::SpanHasher::finish).unwrap_or_default(),
        upload_root: root
            .map(|r| r.finish().map(Sha256Digest).map_err(AppError::internal))
            .transpose()?,
        blob: writer,
    })
}

fn check_header(setup: &cryptflow_he::RoundSetup, head: &[u8]) -> Result<(), AppError> {
    let limits = DecodeLimits { max_slots: setup.slots() };
    let header = read_header(head, &limits)
        .map_err(|e| AppError::new(ErrorCode::BadRequest, e.to_string()).with_field("body"))?;
    header.check_belongs(setup, CiphertextKind::Upload).map_err(|e| {
        let field = match &e {
            cryptflow_he::Mismatch::Round { field } => format!("body.{field}"),
            _ => "body".to_owned(),
        };
        AppError::new(ErrorCode::Unprocessable, format!("the upload is not for this round: {e}"))
            .with_field(field)
    })
}

/// A declared `Content-Length` must be the round's exact upload size: 413 above, 400 below,
/// before a byte of the body is read.
pub(crate) fn check_declared_length(headers: &HeaderMap, expected: u64) -> Result<(), AppError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(d) if d != expected => {
            let code =
                if d > expected { ErrorCode::PayloadTooLarge } else { ErrorCode::BadRequest };
            Err(AppError::new(code, format!("an upload of this round is exactly {expected} bytes"))
                .with_field("body")
                .with_limit(expected))
        }
        _ => Ok(()),
    }
}

fn too_slow(detail: String) -> AppError {
    AppError::new(ErrorCode::RequestTimeout, format!("the upload was dropped: {detail}"))
        .with_field("body")
}

/// An upload slot, held while the body is received; frees the client's place when dropped.
pub(crate) struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    client: cryptflow_services::ClientId,
    uploading:
        std::sync::Arc<std::sync::Mutex<std::collections::HashSet<cryptflow_services::ClientId>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut set) = self.uploading.lock() {
            set.remove(&self.client);
        }
    }
}

/// Takes one of the `max_concurrent_uploads` slots for `client`, waiting up to
/// `upload_queue_secs` (the body stays unread meanwhile, so the sender is held back by TCP,
/// not buffered here). A client gets one slot at a time. The refusal is a response to return:
/// 429 (this client's other upload is in flight) or 503, both with `Retry-After`.
pub(crate) async fn take_slot(
    s: &AppState,
    client: &cryptflow_services::ClientId,
) -> Result<Slot, axum::response::Response> {
    use axum::response::IntoResponse;
    use std::sync::atomic::Ordering;
    let busy = |code: ErrorCode, detail: &str| {
        s.metrics.uploads_throttled.fetch_add(1, Ordering::Relaxed);
        let mut r = AppError::new(code, detail.to_owned()).into_response();
        r.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("2"));
        r
    };
    {
        let Ok(mut set) = s.uploading.lock() else {
            return Err(AppError::internal("upload registry poisoned").into_response());
        };
        if !set.insert(client.clone()) {
            return Err(busy(
                ErrorCode::TooManyRequests,
                "another upload of this client is in flight",
            ));
        }
    }
    let release_place = || {
        if let Ok(mut set) = s.uploading.lock() {
            set.remove(client);
        }
    };
    let slot =
        |permit| Slot { _permit: permit, client: client.clone(), uploading: s.uploading.clone() };
    if let Ok(permit) = s.uploads.clone().try_acquire_owned() {
        return Ok(slot(permit));
    }
    s.metrics.uploads_queued.fetch_add(1, Ordering::Relaxed);
    let wait = std::time::Duration::from_secs(s.tuning.upload_queue_secs);
    match tokio::time::timeout(wait, s.uploads.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(slot(permit)),
        _ => {
            release_place();
            Err(busy(ErrorCode::Unavailable, "every upload slot stayed busy; retry"))
        }
    }
}
