//! The one error type of both services, and a JSON extractor that reports bad bodies as
//! problem documents naming the field.
//!
//! [`AppError`] renders as `application/problem+json`. Client errors carry their detail; a
//! server error shows only an opaque message and a correlation id, while the real cause is
//! logged once, here, inside the request's span.

use crate::problem::{ErrorCode, Problem, PROBLEM_JSON};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// An error response.
#[derive(Debug)]
pub struct AppError {
    // Boxed: handlers return `Result<_, AppError>` everywhere; keep the error path small.
    problem: Box<Problem>,
    /// The internal cause of a 5xx, logged when rendered and never sent.
    cause: Option<String>,
}

impl AppError {
    /// A client-visible error.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { problem: Box::new(Problem::new(code, detail)), cause: None }
    }

    /// Names the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.problem.field = Some(field.into());
        self
    }

    /// States the limit that was exceeded.
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.problem.limit = Some(limit);
        self
    }

    /// A 500 whose `cause` is logged but not shown.
    pub fn internal(cause: impl fmt::Display) -> Self {
        Self {
            problem: Box::new(Problem::new(ErrorCode::Internal, "internal error")),
            cause: Some(cause.to_string()),
        }
    }

    /// A 503 (a dependency is down); `cause` is logged but not shown.
    pub fn unavailable(cause: impl fmt::Display) -> Self {
        Self {
            problem: Box::new(Problem::new(
                ErrorCode::Unavailable,
                "a dependency is unavailable; retry later",
            )),
            cause: Some(cause.to_string()),
        }
    }

    /// States the server's clock (a credential refused for its time claims).
    pub fn with_server_time(mut self, now: u64) -> Self {
        self.problem.server_time = Some(now);
        self
    }

    /// The problem document that will be sent.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }
}

static INCIDENTS: AtomicU64 = AtomicU64::new(1);

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut problem = *self.problem;
        if let Some(cause) = self.cause {
            let incident = INCIDENTS.fetch_add(1, Ordering::Relaxed);
            tracing::error!(incident, status = problem.status, %cause, "request failed");
            problem.detail =
                Some(format!("{} (incident {incident})", problem.detail.unwrap_or_default()));
        }
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

impl From<sqlx::Error> for AppError {
    /// Database failures are the server's fault: an opaque 500, the cause logged.
    fn from(e: sqlx::Error) -> Self {
        AppError::internal(e)
    }
}

/// Parses the `{round}` path segment, or 400 naming `round`.
pub fn round_param(raw: String) -> Result<crate::RoundId, AppError> {
    crate::RoundId::parse(raw)
        .map_err(|e| AppError::new(ErrorCode::BadRequest, e.to_string()).with_field("round"))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The routes every service has: `/healthz`, `/readyz` (database ping), `/openapi.json`.
/// Merge into a service's router after `with_state`, then set the fallback.
pub fn probe_routes(pool: sqlx::AnyPool, openapi: &'static str) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let pool = pool.clone();
                async move {
                    crate::db::ping(&pool).await.map_err(AppError::unavailable)?;
                    Ok::<_, AppError>("ready")
                }
            }),
        )
        .route(
            "/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], openapi) }),
        )
}

/// Sets `TCP_NODELAY` on an accepted connection: responses written in two parts (headers, then a
/// streamed body) must not wait for the peer's delayed acknowledgement (40 ms on Linux).
/// [`crate::serve::Connections::serve`] sets it on every connection.
pub fn set_nodelay(stream: &mut tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// The 404 for unknown routes, as a problem document.
pub async fn not_found() -> AppError {
    AppError::new(ErrorCode::NotFound, "no such endpoint")
}

/// Prometheus text exposition of `(name, help, value)` counters.
pub fn render_counters(counters: &[(&str, &str, &std::sync::atomic::AtomicU64)]) -> String {
    counters
        .iter()
        .map(|(name, help, v)| {
            let v = v.load(std::sync::atomic::Ordering::Relaxed);
            format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n")
        })
        .collect()
}

/// `healthcheck` for container images without a shell or curl: GETs `path` from the service
/// listening on `listen` (a wildcard host is reached on loopback) and succeeds on a 2xx.
pub fn healthcheck(listen: &str, path: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let (host, port) = listen.rsplit_once(':').ok_or(format!("`{listen}` has no port"))?;
    let host = match host {
        "0.0.0.0" | "[::]" | "" => "127.0.0.1",
        h => h,
    };
    let addr = format!("{host}:{port}");
    let timeout = std::time::Duration::from_secs(3);
    let sock: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&addr)
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or(format!("{addr}: no address"))?;
    let mut stream =
        std::net::TcpStream::connect_timeout(&sock, timeout).map_err(|e| format!("{addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut head = [0u8; 32];
    let n = stream.read(&mut head).map_err(|e| format!("{addr}: {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    match line.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        Some(code) => Err(format!("{addr}{path}: HTTP {code}")),
        None => Err(format!("{addr}{path}: no HTTP answer")),
    }
}

/// Serves `GET /metrics` (rendered by `render`) on its own listener, under `connections`'
/// limits, until `stop` turns true.
pub fn spawn_metrics(
    listener: tokio::net::TcpListener,
    connections: &crate::serve::Connections,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move { render() }
        }),
    );
    let connections = connections.clone();
    tokio::spawn(async move { connections.serve(listener, app, stop).await })
}

/// Parses a JSON body *after* the handler has authorised the caller (so a caller without the
/// role gets 403, not a complaint about its body): the content type must be JSON (415), the
/// body must parse (400) and fit `T` (422 naming the field).
pub fn parse_json<T: DeserializeOwned>(
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<T, AppError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            let m = m.trim();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        });
    if !json {
        return Err(AppError::new(
            ErrorCode::UnsupportedMediaType,
            "expected `Content-Type: application/json`",
        )
        .with_field("content-type"));
    }
    axum::Json::<T>::from_bytes(body).map(|axum::Json(v)| v).map_err(json_rejection)
}

/// Response middleware (`axum::middleware::map_response`) making every error answer a problem
/// document: axum's own rejections (a body over the limit, an unreadable body, a bad path
/// segment) answer plain text before a handler runs; they are rewritten with the status kept,
/// the code for it, their text as `detail` (and `field: body` for 413). Headers such as
/// `Retry-After` are kept. Responses that already are problem documents pass unchanged.
pub async fn problem_documents(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let code = ErrorCode::from_status(status.as_u16());
    let detail = if text.is_empty() { code.title().to_owned() } else { text };
    let mut error = AppError::new(code, detail);
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        error = error.with_field("body");
    }
    let mut fresh = error.into_response();
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in parts.headers.iter() {
        fresh.headers_mut().insert(name.clone(), value.clone());
    }
    *fresh.status_mut() = status;
    fresh
}

/// Middleware (`axum::middleware::from_fn_with_state(limit, refuse_declared_oversize)`)
/// refusing a request whose declared `Content-Length` exceeds `limit` with a 413 problem
/// document before a byte of its body is read. axum's `DefaultBodyLimit` only counts while
/// reading: a client announcing 80 MB would otherwise send 32 MB for nothing.
pub async fn refuse_declared_oversize(
    axum::extract::State(limit): axum::extract::State<usize>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => AppError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is {n} bytes; at most {limit} are accepted here"),
        )
        .with_field("body")
        .with_limit(limit as u64)
        .into_response(),
        _ => next.run(request).await,
    }
}

/// The 405 for a known path with another method, as a problem document.
pub async fn method_not_allowed() -> AppError {
    AppError::new(ErrorCode::MethodNotAllowed, "this endpoint does not take that method")
}

/// `Json<T>` whose rejections are problem documents: syntax errors, wrong types, missing or
/// unknown fields (with `deny_unknown_fields`), wrong content type and oversized bodies.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    // axum's message is "<what failed>: <path>: <serde message>"; keep from the path on.
    let text = rejection.body_text();
    let detail = text.split_once(": ").map_or(text.as_str(), |(_, rest)| rest).to_owned();
    match rejection {
        JsonRejection::MissingJsonContentType(_) => AppError::new(
            ErrorCode::UnsupportedMediaType,
            "expected `Content-Type: application/json`",
        )
        .with_field("content-type"),
        JsonRejection::JsonDataError(_) => {
            let field = field_of(&detail);
            AppError::new(ErrorCode::Unprocessable, detail).with_field(field)
        }
        // A syntax error inside a value (e.g. a number out of range) still has a path.
        JsonRejection::JsonSyntaxError(_) => {
            let field = field_of(&detail);
            AppError::new(ErrorCode::BadRequest, detail).with_field(field)
        }
        JsonRejection::BytesRejection(_) => {
            AppError::new(ErrorCode::PayloadTooLarge, "request body too large or unreadable")
                .with_field("body")
        }
        _ => AppError::new(ErrorCode::BadRequest, detail).with_field("body"),
    }
}

/// The field a serde message is about: the `path: ` prefix serde_path_to_error adds (which
/// already ends with an unknown field's name), extended by the name in "missing field `x`"
/// (whose path is the parent object).
fn field_of(detail: &str) -> String {
    let (path, message) = match detail.split_once(": ") {
        Some((p, m)) if !p.contains(' ') && p != "." => (Some(p), m),
        _ => (None, detail),
    };
    let named = |marker: &str| message.split(marker).nth(1).and_then(|r| r.split('`').next());
    if let Some(missing) = named("missing field `") {
        return path.map_or_else(|| missing.to_owned(), |p| format!("{p}.{missing}"));
    }
    path.or_else(|| named("unknown field `")).unwrap_or("body").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::post;
    use axum::Router;
    use http_body_util::BodyExt;
    use serde::Deserialize;
    use tower::ServiceExt;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body1 {
        name: String,
        size: u32,
    }

    async fn handler(ApiJson(b): ApiJson<Body1>) -> Result<String, AppError> {
        if b.size > 10 {
            return Err(AppError::new(ErrorCode::Unprocessable, "size too large")
                .with_field("size")
                .with_limit(10));
        }
        if b.name == "boom" {
            return Err(AppError::internal("database password is hunter2"));
        }
        Ok(b.name)
    }

    async fn call(body: &str, content_type: &str) -> (u16, String, Option<Problem>) {
        let app = Router::new().route("/", post(handler));
        let res = app
            .oneshot(
                axum::http::Request::post("/")
                    .header("content-type", content_type)
                    .body(Body::from(body.to_owned()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = res.status().as_u16();
        let ct = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, ct, serde_json::from_slice(&bytes).ok())
    }

    #[tokio::test]
    async fn bad_bodies_become_problems_naming_the_field() {
        let (s, ct, p) = call(r#"{"name":"a","size":1,"extra":2}"#, "application/json").await;
        let p = p.unwrap();
        assert_eq!((s, ct.as_str()), (422, PROBLEM_JSON));
        assert_eq!(p.field.as_deref(), Some("extra"), "{p:?}");
        let (s, _, p) = call(r#"{"name":"a"}"#, "application/json").await;
        assert_eq!((s, p.unwrap().field.as_deref()), (422, Some("size")));
        let (s, _, p) = call(r#"{"name":"a","size":"x"}"#, "application/json").await;
        assert_eq!(s, 422);
        assert!(p.unwrap().detail.unwrap().contains("size"));
        let (s, _, p) = call(r#"{"name":"#, "application/json").await;
        let p = p.unwrap();
        assert_eq!((s, p.code, p.field.as_deref()), (400, ErrorCode::BadRequest, Some("name")));
        let (s, _, p) = call(r#"{"name" 1}"#, "application/json").await;
        assert_eq!((s, p.unwrap().field.as_deref()), (400, Some("body")));
        // A syntax error inside a value names the value (issue #12: `clip_bound` of NaN).
        for bad in [r#"{"name":"a","size":1e999}"#, r#"{"name":"a","size":NaN}"#] {
            let (s, _, p) = call(bad, "application/json").await;
            assert_eq!((s, p.unwrap().field.as_deref()), (400, Some("size")), "{bad}");
        }
        let (s, _, p) = call(r#"{"name":"a","size":1}"#, "text/plain").await;
        assert_eq!((s, p.unwrap().code), (415, ErrorCode::UnsupportedMediaType));
        let (s, _, p) = call(r#"{"name":"a","size":11}"#, "application/json").await;
        let p = p.unwrap();
        assert_eq!((s, p.field.as_deref(), p.limit), (422, Some("size"), Some(10)));
    }

    #[tokio::test]
    async fn internal_errors_are_opaque() {
        let (s, _, p) = call(r#"{"name":"boom","size":1}"#, "application/json").await;
        let p = p.unwrap();
        assert_eq!(s, 500);
        let detail = p.detail.unwrap();
        assert!(!detail.contains("hunter2"), "{detail}");
        assert!(detail.contains("incident"));
    }
}
