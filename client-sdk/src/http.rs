//! The SDK's HTTP plumbing: which service a request goes to, one attempt's outcome, the retry
//! loop, and size-capped body reads.

use crate::error::{ClientError, Result};
use crate::progress::{report, Progress, ProgressFn};
use crate::retry::RetryPolicy;
use cryptflow_services::{ErrorCode, Problem};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, StatusCode};
use std::future::Future;
use std::time::{Duration, Instant};

/// Which server a request goes to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Service {
    Aggregator,
    Kms(u8),
}

impl Service {
    pub(crate) fn name(self) -> String {
        match self {
            Service::Aggregator => "aggregator".into(),
            Service::Kms(x) => format!("kms-{x}"),
        }
    }
}

/// How one attempt ended.
pub(crate) enum Failure {
    /// Worth another attempt (after this server-requested delay, if any).
    Retry(ClientError, Option<Duration>),
    /// Final.
    Fatal(ClientError),
}

pub(crate) fn protocol(service: Service, detail: String) -> ClientError {
    ClientError::Protocol { service: service.name(), detail }
}

/// Runs `attempt` under the retry policy's time budget.
pub(crate) async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    service: Service,
    attempt: F,
) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = std::result::Result<T, Failure>>,
{
    let start = Instant::now();
    let mut n = 1u32;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(e, after)) => {
                let e = with_attempts(e, service, n);
                crate::quorum::note_failure(&e);
                let pause = policy.backoff(n, after);
                if start.elapsed() + pause > policy.budget {
                    return Err(e);
                }
                tokio::time::sleep(pause).await;
                n += 1;
            }
        }
    }
}

fn with_attempts(e: ClientError, service: Service, attempts: u32) -> ClientError {
    match e {
        ClientError::Server { status, detail, .. } => {
            ClientError::Server { service: service.name(), status, detail, attempts }
        }
        ClientError::Transport { source, .. } => {
            ClientError::Transport { service: service.name(), attempts, source }
        }
        other => other,
    }
}

/// Sends one request and sorts the answer: success (and 304) through, 5xx and 429 to retry,
/// other 4xx final with the server's problem document.
pub(crate) async fn send(
    service: Service,
    req: RequestBuilder,
) -> std::result::Result<Response, Failure> {
    let res = req.send().await.map_err(|e| transport(service, e))?;
    let status = res.status();
    if status.is_success() || status == StatusCode::NOT_MODIFIED {
        return Ok(res);
    }
    let retry_after = retry_after(res.headers());
    let text = read_body(service, res, 64 * 1024, None)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let problem = serde_json::from_str::<Problem>(&text).ok();
    if status.is_server_error() {
        let detail =
            problem.and_then(|p| p.detail).unwrap_or_else(|| text.chars().take(200).collect());
        return Err(Failure::Retry(
            ClientError::Server {
                service: service.name(),
                status: status.as_u16(),
                detail,
                attempts: 1,
            },
            retry_after,
        ));
    }
    let problem = problem.unwrap_or_else(|| {
        let code = ErrorCode::from_status(status.as_u16());
        let mut p = Problem::new(code, text.chars().take(200).collect::<String>());
        p.status = status.as_u16();
        p
    });
    let err = ClientError::Refused { service: service.name(), problem: Box::new(problem) };
    if status == StatusCode::TOO_MANY_REQUESTS {
        Err(Failure::Retry(err, retry_after))
    } else {
        Err(Failure::Fatal(err))
    }
}

pub(crate) fn transport(service: Service, e: reqwest::Error) -> Failure {
    if e.is_builder() {
        Failure::Fatal(ClientError::Config(e.to_string()))
    } else if let Some(problem) = certificate_problem(&e) {
        // No retry makes an untrusted certificate trusted (#30, item 4): say which and how.
        Failure::Fatal(ClientError::Certificate {
            service: service.name(),
            detail: format!(
                "{problem}. If the server's certificate is signed by your consortium's own \
                 authority, give its PEM with --ca-file / ca_file; if it is for another host or \
                 expired, the server's operator must replace it"
            ),
        })
    } else {
        Failure::Retry(
            ClientError::Transport { service: service.name(), attempts: 1, source: e },
            None,
        )
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Reads a response body of at most `limit` bytes (more is a protocol error, not an
/// allocation), reporting download progress against the declared length.
pub(crate) async fn read_body(
    service: Service,
    mut res: Response,
    limit: usize,
    progress: Option<&ProgressFn>,
) -> std::result::Result<Vec<u8>, Failure> {
    let declared = res.content_length();
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Failure::Fatal(protocol(
            service,
            format!("response of {} bytes exceeds the expected {limit}", declared.unwrap_or(0)),
        )));
    }
    let total = declared.unwrap_or(limit as u64);
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = res.chunk().await.map_err(|e| transport(service, e))? {
        if buf.len() + chunk.len() > limit {
            return Err(Failure::Fatal(protocol(
                service,
                format!("response exceeds the expected {limit} bytes"),
            )));
        }
        buf.extend_from_slice(&chunk);
        report(progress, Progress::Downloading { received: buf.len() as u64, total });
    }
    Ok(buf)
}

/// Decodes a JSON answer, or a protocol error naming the service.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    service: Service,
    body: &[u8],
) -> std::result::Result<T, Failure> {
    serde_json::from_slice(body)
        .map_err(|e| Failure::Fatal(protocol(service, format!("unexpected JSON: {e}"))))
}

/// The certificate failure under an HTTP error, in words, if that is what it is: rustls's
/// error is found through the cause chain and the `io::Error`s wrapped in it (an `io::Error`'s
/// `source` skips the error it wraps, so those are opened one by one).
fn certificate_problem(e: &reqwest::Error) -> Option<String> {
    fn tls<'a>(mut cause: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
        loop {
            if let Some(t) = cause.downcast_ref::<rustls::Error>() {
                return Some(t);
            }
            cause = cause.downcast_ref::<std::io::Error>()?.get_ref()?;
        }
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = next {
        if let Some(rustls::Error::InvalidCertificate(why)) = tls(cause) {
            use rustls::CertificateError as C;
            let what = match why {
                C::UnknownIssuer => {
                    "its certificate is signed by an authority this client does not trust"
                }
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    "its certificate is for another host name"
                }
                C::Expired | C::ExpiredContext { .. } => "its certificate has expired",
                C::NotValidYet | C::NotValidYetContext { .. } => {
                    "its certificate is not valid yet (or this machine's clock is behind)"
                }
                C::Revoked => "its certificate is revoked",
                _ => "its certificate is not acceptable",
            };
            return Some(format!("{what} ({why:?})"));
        }
        next = cause.source();
    }
    None
}
