//! The one HTTP server loop of both services: connection limits and timeouts on every
//! listener, sized from the process's descriptor limit.
//!
//! `axum::serve` accepts until the process runs out of descriptors, then sleeps a second per
//! failed accept while idle keep-alive connections stay open forever: 1,000 idle connections
//! to an aggregator started with `ulimit -n 1024` left `/healthz` unanswered and a round
//! creation blocked for a minute, with nothing in its log (issue #30). Here:
//!
//! - **A connection cap** shared by all of a process's listeners ([`Connections`]): the
//!   descriptor soft limit is first raised to the hard limit (as Go's runtime does), and the cap
//!   is that limit less a reserve for the database, blob files and outgoing calls
//!   ([`ConnectionLimits::from_descriptor_limit`]).
//! - **At the cap, the least recently active idle connection is closed** to make room (an HTTP
//!   server may close an idle keep-alive connection at any time; clients reconnect), so health
//!   and admin endpoints still answer while idle clients hold every slot. With no idle
//!   connection to close, the newcomer gets a `503` with `Retry-After` and is closed.
//! - **Timeouts**: a request's headers, and an idle keep-alive connection's next request, must
//!   arrive within `header_timeout`; a request body may stall at most `body_timeout` between
//!   chunks; a response may stall at most `send_timeout` on a peer that stops reading.
//! - Every limit hit is counted ([`ConnectionStats`], rendered with the service's metrics) and
//!   logged, at most once per ten seconds per kind, with the numbers that explain it.

use axum::body::Body;
use axum::extract::Request;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

/// Descriptors kept back from the connection cap for everything else a service opens
/// (database connections, blob and token files, calls to the key managers and S3): an eighth
/// of the limit, at least 64.
fn reserve(limit: u64) -> u64 {
    (limit / 8).max(64)
}

/// The limits every listener of a process applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections, across all of the process's listeners, before idle ones are closed
    /// to admit new ones.
    pub max_connections: usize,
    /// Time to receive a request's headers — and, on an idle keep-alive connection, for the
    /// next request to begin.
    pub header_timeout: Duration,
    /// Longest stall between two chunks of a request body.
    pub body_timeout: Duration,
    /// Longest stall writing a response to a peer that does not read.
    pub send_timeout: Duration,
}

impl ConnectionLimits {
    /// Default header timeout (idle keep-alive included), seconds.
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(20);
    /// Default body stall timeout.
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default send stall timeout.
    pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

    /// Raises the descriptor soft limit to the hard limit and sizes the cap from it:
    /// `limit − max(64, limit / 8)` connections (at least 16). Logs the figures.
    pub fn from_descriptor_limit() -> Self {
        let limit = raise_descriptor_limit();
        let max = limit.saturating_sub(reserve(limit)).max(16);
        let max_connections = usize::try_from(max).unwrap_or(usize::MAX);
        tracing::info!(
            descriptor_limit = limit,
            max_connections,
            "connection cap sized from the descriptor limit"
        );
        Self::with_max_connections(max_connections)
    }

    /// The default timeouts with a cap of `max_connections`.
    pub fn with_max_connections(max_connections: usize) -> Self {
        Self {
            max_connections,
            header_timeout: Self::HEADER_TIMEOUT,
            body_timeout: Self::BODY_TIMEOUT,
            send_timeout: Self::SEND_TIMEOUT,
        }
    }
}

/// The descriptor soft limit after raising it to the hard limit where allowed (capped at
/// 2^20); 1024 when it cannot be read.
fn raise_descriptor_limit() -> u64 {
    let (soft, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the descriptor limit; assuming 1024");
            return 1024;
        }
    };
    let want = hard.min(1 << 20);
    if soft >= want {
        return soft;
    }
    match rlimit::setrlimit(rlimit::Resource::NOFILE, want, hard) {
        Ok(()) => want,
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "cannot raise the descriptor soft limit");
            soft
        }
    }
}

/// Counters of the connection limits, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Idle connections closed to admit a new one at the cap.
    pub evicted: AtomicU64,
    /// Connections refused (503) at the cap with none idle.
    pub refused: AtomicU64,
    /// Failed accepts (e.g. the process is out of descriptors).
    pub accept_errors: AtomicU64,
    /// Connections closed because headers (or an idle connection's next request) did not come.
    pub header_timeouts: AtomicU64,
    /// Request bodies that stalled past the body timeout.
    pub body_timeouts: AtomicU64,
    /// Responses that stalled past the send timeout.
    pub send_timeouts: AtomicU64,
    open: AtomicUsize,
}

impl ConnectionStats {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition, names prefixed with `prefix` (e.g. `cryptflow_aggregator`).
    pub fn render(&self, prefix: &str) -> String {
        let counters = [
            ("connections_accepted_total", "Connections accepted.", &self.accepted),
            (
                "connections_evicted_total",
                "Idle connections closed to admit a new one at the connection cap.",
                &self.evicted,
            ),
            (
                "connections_refused_total",
                "Connections refused (503) at the connection cap with none idle.",
                &self.refused,
            ),
            (
                "accept_errors_total",
                "Failed accepts (e.g. out of file descriptors).",
                &self.accept_errors,
            ),
            (
                "header_timeouts_total",
                "Connections closed waiting for a request's headers (idle keep-alive included).",
                &self.header_timeouts,
            ),
            (
                "body_timeouts_total",
                "Request bodies stalled past the body timeout.",
                &self.body_timeouts,
            ),
            (
                "send_timeouts_total",
                "Responses stalled past the send timeout.",
                &self.send_timeouts,
            ),
        ];
        let names: Vec<String> = counters.iter().map(|(n, _, _)| format!("{prefix}_{n}")).collect();
        let list: Vec<(&str, &str, &AtomicU64)> =
            counters.iter().zip(&names).map(|((_, h, v), n)| (n.as_str(), *h, *v)).collect();
        let mut text = crate::http::render_counters(&list);
        text.push_str(&format!(
            "# HELP {prefix}_connections_open Connections open now.\n# TYPE {prefix}_connections_open gauge\n{prefix}_connections_open {}\n",
            self.open()
        ));
        text
    }
}

/// One open connection, as the cap sees it.
struct Entry {
    close: Arc<Notify>,
    busy: Arc<AtomicUsize>,
    last_active: Arc<AtomicU64>,
    closing: bool,
}

/// The connections of one process, across its listeners: the cap, the registry the cap closes
/// idle connections from, and the counters.
#[derive(Clone)]
pub struct Connections {
    limits: Arc<ConnectionLimits>,
    stats: Arc<ConnectionStats>,
    open: Arc<Mutex<HashMap<u64, Entry>>>,
    next_id: Arc<AtomicU64>,
    epoch: Instant,
    last_log: Arc<[AtomicU64; 4]>,
    /// Orders activity across connections (a strictly increasing stamp, unlike a clock).
    activity: Arc<AtomicU64>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("limits", &self.limits)
            .field("open", &self.stats.open())
            .finish()
    }
}

/// Kinds of limit events, for rate-limited logging.
#[derive(Clone, Copy)]
enum Event {
    Evicted = 0,
    Refused = 1,
    AcceptError = 2,
    Timeout = 3,
}

impl Connections {
    /// Connections under `limits`.
    pub fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits: Arc::new(limits),
            stats: Arc::new(ConnectionStats::default()),
            open: Arc::new(Mutex::new(HashMap::new())),
            next_id: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            last_log: Arc::new(Default::default()),
            activity: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The counters (render them with the service's metrics).
    pub fn stats(&self) -> &Arc<ConnectionStats> {
        &self.stats
    }

    /// The limits applied.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// A stamp later than every earlier one.
    fn stamp(&self) -> u64 {
        self.activity.fetch_add(1, Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// True at most once per ten seconds per kind: limit events are logged, not flooded.
    fn should_log(&self, event: Event) -> bool {
        let now = self.now_ms() + 10_000;
        let slot = &self.last_log[event as usize];
        let last = slot.load(Ordering::Relaxed);
        now >= last + 10_000
            && slot.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent (plain inserts and
        // removes), so a poisoned lock is used as is.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the least recently active idle connection to close; false if none is idle.
    fn evict_one(&self) -> bool {
        let mut open = self.registry();
        let victim = open
            .iter()
            .filter(|(_, e)| !e.closing && e.busy.load(Ordering::Relaxed) == 0)
            .min_by_key(|(_, e)| e.last_active.load(Ordering::Relaxed))
            .map(|(id, _)| *id);
        let Some(id) = victim else { return false };
        if let Some(e) = open.get_mut(&id) {
            e.closing = true;
            e.close.notify_one();
        }
        true
    }

    /// Connections counted against the cap (those asked to close no longer are).
    fn live(&self) -> usize {
        self.registry().values().filter(|e| !e.closing).count()
    }

    /// Serves `app` on `listener` under the limits until `shutdown` turns true; then stops
    /// accepting, asks every connection to finish its request and close, and waits for them.
    pub async fn serve(
        &self,
        listener: TcpListener,
        app: axum::Router,
        mut shutdown: watch::Receiver<bool>,
    ) -> io::Result<()> {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .keep_alive(true);
        let builder = Arc::new(builder);
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            // Reap finished connection tasks as we go.
            while tasks.try_join_next().is_some() {}
            let mut stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    self.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    let closed = self.evict_one();
                    if closed {
                        self.stats.evicted.fetch_add(1, Ordering::Relaxed);
                    }
                    if self.should_log(Event::AcceptError) {
                        tracing::warn!(
                            error = %e,
                            open = self.stats.open(),
                            max_connections = self.limits.max_connections,
                            closed_an_idle_connection = closed,
                            "cannot accept a connection"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(if closed { 5 } else { 50 })).await;
                    continue;
                }
            };
            crate::http::set_nodelay(&mut stream);
            self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            if self.live() >= self.limits.max_connections {
                if self.evict_one() {
                    self.stats.evicted.fetch_add(1, Ordering::Relaxed);
                    if self.should_log(Event::Evicted) {
                        tracing::warn!(
                            open = self.stats.open(),
                            max_connections = self.limits.max_connections,
                            "connection cap reached: closing the least recently active idle \
                             connection to admit a new one (raise the descriptor limit, \
                             `ulimit -n`, for more)"
                        );
                    }
                } else {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    if self.should_log(Event::Refused) {
                        tracing::warn!(
                            open = self.stats.open(),
                            max_connections = self.limits.max_connections,
                            "connection cap reached with every connection busy: refusing \
                             new connections with 503"
                        );
                    }
                    tasks.spawn(refuse(stream));
                    continue;
                }
            }
            let entry = self.register();
            tasks.spawn(self.clone().connection(
                stream,
                entry,
                app.clone(),
                builder.clone(),
                shutdown.clone(),
            ));
        }
        // Shutting down: refuse new connections at once (the kernel would otherwise keep
        // completing handshakes nobody accepts), then every connection finishes its request
        // and closes.
        drop(listener);
        {
            let open = self.registry();
            for e in open.values() {
                e.close.notify_one();
            }
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    /// Enters a new connection in the registry (before its task starts, so a burst of
    /// accepts cannot overshoot the cap).
    fn register(&self) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        let busy = Arc::new(AtomicUsize::new(0));
        let last_active = Arc::new(AtomicU64::new(self.stamp()));
        self.registry().insert(
            id,
            Entry {
                close: close.clone(),
                busy: busy.clone(),
                last_active: last_active.clone(),
                closing: false,
            },
        );
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        Registration { id, close, busy, last_active, connections: self.clone() }
    }

    async fn connection(
        self,
        stream: TcpStream,
        entry: Registration,
        app: axum::Router,
        builder: Arc<hyper::server::conn::http1::Builder>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // `entry` leaves the registry when dropped, whether this task ends or is aborted.
        let (close, busy, last_active) =
            (entry.close.clone(), entry.busy.clone(), entry.last_active.clone());

        let service = {
            let this = self.clone();
            hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                let guard = Busy::start(busy.clone(), last_active.clone(), this.clone());
                let stats = this.stats.clone();
                let this = this.clone();
                let timeout = this.limits.body_timeout;
                let request = request.map(|body| {
                    Body::new(tower_http::timeout::TimeoutBody::new(timeout, body).map_err(
                        move |e| {
                            if e.is::<tower_http::timeout::TimeoutError>() {
                                stats.body_timeouts.fetch_add(1, Ordering::Relaxed);
                                if this.should_log(Event::Timeout) {
                                    tracing::warn!(
                                        timeout_secs = timeout.as_secs(),
                                        "a request body stalled past the body timeout"
                                    );
                                }
                            }
                            e
                        },
                    ))
                });
                let app = app.clone();
                async move {
                    let response = tower::ServiceExt::oneshot(app, request).await?;
                    // The connection counts as busy until the response body is sent (or
                    // dropped): the guard lives in the body.
                    Ok::<_, std::convert::Infallible>(
                        response.map(move |body| Body::new(Guarded { body, _busy: guard })),
                    )
                }
            })
        };
        let io = TokioIo::new(SendTimeout::new(
            stream,
            self.limits.send_timeout,
            entry.last_active.clone(),
            self.clone(),
        ));
        let conn = builder.serve_connection(io, service);
        let mut conn = std::pin::pin!(conn);
        let mut asked = false;
        let result = loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                _ = close.notified(), if !asked => {
                    asked = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = shutdown.wait_for(|s| *s), if !asked => {
                    asked = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        };
        if let Err(e) = result {
            self.note_error(&e);
        }
        drop(entry);
    }

    fn note_error(&self, e: &hyper::Error) {
        let send_timeout = std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut);
        if send_timeout {
            self.stats.send_timeouts.fetch_add(1, Ordering::Relaxed);
            if self.should_log(Event::Timeout) {
                tracing::warn!(
                    timeout_secs = self.limits.send_timeout.as_secs(),
                    "closed a connection whose peer stopped reading a response"
                );
            }
        } else if e.is_timeout() {
            // Idle keep-alive connections end this way all the time: counted, not logged.
            self.stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// A registered connection's handles; dropping it removes the connection from the registry.
struct Registration {
    id: u64,
    close: Arc<Notify>,
    busy: Arc<AtomicUsize>,
    last_active: Arc<AtomicU64>,
    connections: Connections,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connections.registry().remove(&self.id);
        self.connections.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request in progress on a connection; its drop marks the connection's last activity.
struct Busy {
    busy: Arc<AtomicUsize>,
    last_active: Arc<AtomicU64>,
    connections: Connections,
}

impl Busy {
    fn start(
        busy: Arc<AtomicUsize>,
        last_active: Arc<AtomicU64>,
        connections: Connections,
    ) -> Self {
        busy.fetch_add(1, Ordering::Relaxed);
        last_active.store(connections.stamp(), Ordering::Relaxed);
        Self { busy, last_active, connections }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.last_active.store(self.connections.stamp(), Ordering::Relaxed);
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its connection counted busy until sent or dropped, passing on
/// the inner body's size (so hyper still sets `Content-Length`) and end.
struct Guarded {
    body: Body,
    _busy: Busy,
}

impl hyper::body::Body for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Answers a connection refused at the cap with a `503` problem document and closes it.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let problem = crate::Problem::new(
        crate::ErrorCode::Unavailable,
        "the server is at its connection limit with every connection busy; retry shortly",
    );
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let body = body.as_slice();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: {}\r\nRetry-After: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crate::PROBLEM_JSON,
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Accept errors that concern one connection only (it was reset before we took it).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A stream whose writes fail with `TimedOut` once the peer has accepted nothing for
/// `timeout` (its receive window stayed full): a reader that stops reading cannot hold a
/// connection, a task and a response's buffers forever.
///
/// Bytes arriving mark the connection active, so one whose next request is on its way is not
/// taken for idle and closed at the cap.
struct SendTimeout {
    stream: TcpStream,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    last_active: Arc<AtomicU64>,
    connections: Connections,
}

impl SendTimeout {
    fn new(
        stream: TcpStream,
        timeout: Duration,
        last_active: Arc<AtomicU64>,
        connections: Connections,
    ) -> Self {
        Self { stream, timeout, stalled: None, last_active, connections }
    }

    fn on_write<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep =
                    self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer stopped reading the response",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for SendTimeout {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last_active.store(this.connections.stamp(), Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for SendTimeout {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.on_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.on_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_flush(cx);
        this.on_write(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_cap_leaves_a_reserve() {
        assert_eq!(reserve(1024), 128);
        assert_eq!(reserve(256), 64);
        assert_eq!(reserve(1 << 20), 1 << 17);
    }

    const MS: Duration = Duration::from_millis(300);

    /// A server under `limits` with `/ok`, `/echo` (reads the body), `/big` (64 MiB) and
    /// `/hold` (answers when `release` is notified).
    async fn server(limits: ConnectionLimits) -> (String, Connections, Arc<Notify>) {
        let release = Arc::new(Notify::new());
        let r = release.clone();
        let app = axum::Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/echo",
                post(|body: axum::body::Bytes| async move { format!("{}", body.len()) }),
            )
            .route("/big", get(|| async { vec![7u8; 64 << 20] }))
            .route(
                "/hold",
                get(move || {
                    let r = r.clone();
                    async move {
                        r.notified().await;
                        "released"
                    }
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Connections::new(limits);
        let (_tx, rx) = watch::channel(false);
        let c = connections.clone();
        tokio::spawn(async move {
            let _keep = _tx;
            c.serve(listener, app, rx).await
        });
        (addr, connections, release)
    }

    fn limits(max_connections: usize) -> ConnectionLimits {
        ConnectionLimits { max_connections, header_timeout: MS, body_timeout: MS, send_timeout: MS }
    }

    fn unlimited_timeouts(max_connections: usize) -> ConnectionLimits {
        ConnectionLimits::with_max_connections(max_connections)
    }

    async fn request(s: &mut TcpStream, path: &str) -> String {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// True when the server closed `s` within five seconds.
    async fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
        let (addr, connections, _) = server(limits(64)).await;
        let mut s = TcpStream::connect(&addr).await.unwrap();
        assert!(request(&mut s, "/ok").await.starts_with("HTTP/1.1 200"));
        assert!(closed(&mut s).await);
        assert_eq!(connections.stats().header_timeouts.load(Ordering::Relaxed), 1);
        // So is a connection that never sends a request.
        let mut silent = TcpStream::connect(&addr).await.unwrap();
        assert!(closed(&mut silent).await);
    }

    #[tokio::test]
    async fn a_stalled_request_body_is_cut_and_counted() {
        let (addr, connections, _) = server(limits(64)).await;
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the server gives up on the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
        assert_eq!(connections.stats().body_timeouts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_is_closed_after_the_send_timeout() {
        let (addr, connections, _) = server(limits(64)).await;
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        // Never read: the 64 MiB answer fills both sockets' buffers and stalls.
        let t = Instant::now();
        while connections.stats().send_timeouts.load(Ordering::Relaxed) == 0 {
            assert!(t.elapsed() < Duration::from_secs(10), "the stalled send was never cut");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while connections.stats().open() > 0 {
            assert!(t.elapsed() < Duration::from_secs(10), "the connection stayed open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn at_the_cap_the_least_recently_active_idle_connection_makes_room() {
        let (addr, connections, _) = server(unlimited_timeouts(3)).await;
        let mut idle = Vec::new();
        for _ in 0..3 {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            assert!(request(&mut s, "/ok").await.starts_with("HTTP/1.1 200"));
            idle.push(s);
        }
        // The oldest becomes the most recently active.
        assert!(request(&mut idle[0], "/ok").await.starts_with("HTTP/1.1 200"));
        let mut fresh = TcpStream::connect(&addr).await.unwrap();
        assert!(request(&mut fresh, "/ok").await.starts_with("HTTP/1.1 200"));
        assert!(closed(&mut idle[1]).await, "the least recently active connection is closed");
        assert!(request(&mut idle[0], "/ok").await.starts_with("HTTP/1.1 200"));
        assert_eq!(connections.stats().evicted.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn at_the_cap_with_every_connection_busy_a_newcomer_gets_503() {
        let (addr, connections, release) = server(unlimited_timeouts(2)).await;
        let mut busy = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            busy.push(s);
        }
        while connections.registry().values().filter(|e| e.busy.load(Ordering::Relaxed) > 0).count()
            < 2
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut late = TcpStream::connect(&addr).await.unwrap();
        let answer = request(&mut late, "/ok").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("Retry-After: 1"), "{answer}");
        assert_eq!(connections.stats().refused.load(Ordering::Relaxed), 1);
        // The busy ones finish normally.
        release.notify_waiters();
        for s in &mut busy {
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).contains("released"));
        }
    }
}
