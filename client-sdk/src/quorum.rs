//! One call to every key manager at once, without waiting out the ones that are down.

use crate::error::{ClientError, Result};
use futures_util::StreamExt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the key managers still missing get once enough of them answered, by default
/// ([`ClientBuilder::straggler_grace`](crate::ClientBuilder::straggler_grace)).
pub(crate) const GRACE: Duration = Duration::from_secs(5);

/// How often a gather looks at what the calls still running last saw.
const LOOK: Duration = Duration::from_millis(50);

/// The last failed attempt of a call still being retried, as the retry loop
/// ([`with_retries`](crate::http::with_retries)) records it for the [`gather`] running it.
#[derive(Clone, Debug, Default)]
pub(crate) struct LastFailure(Arc<Mutex<Option<Seen>>>);

#[derive(Clone, Debug)]
struct Seen {
    message: String,
    /// The node could not be connected to (refused, unroutable): it is down now, and waiting
    /// for it past a quorum only delays the caller.
    unreachable: bool,
}

tokio::task_local! {
    /// Set by [`gather`] around each of its calls.
    static LAST_FAILURE: LastFailure;
}

/// Records a failed attempt for the gather running this call, if any.
pub(crate) fn note_failure(e: &ClientError) {
    let unreachable = matches!(e, ClientError::Transport { source, .. } if source.is_connect());
    let _ = LAST_FAILURE.try_with(|f| {
        if let Ok(mut seen) = f.0.lock() {
            *seen = Some(Seen { message: e.to_string(), unreachable });
        }
    });
}

impl LastFailure {
    fn seen(&self) -> Option<Seen> {
        self.0.lock().ok().and_then(|s| s.clone())
    }
}

/// Runs one call per node concurrently (each under its own retry policy) and returns every
/// node's outcome, sorted by node. Once `enough` calls succeeded, the others get `grace` more
/// rather than their whole retry budget — none at all for a node whose last attempt could not
/// connect. A node with no outcome by then gets `Err(why)`: its last failure, or that it did
/// not answer in time.
pub(crate) async fn gather<T, F>(
    calls: Vec<(u8, F)>,
    enough: usize,
    grace: Duration,
) -> Vec<(u8, std::result::Result<Result<T>, String>)>
where
    F: Future<Output = Result<T>>,
{
    let notes: Vec<(u8, LastFailure)> =
        calls.iter().map(|(x, _)| (*x, LastFailure::default())).collect();
    let mut pending: futures_util::stream::FuturesUnordered<_> = calls
        .into_iter()
        .zip(notes.iter().map(|(_, n)| n.clone()))
        .map(|((x, f), note)| LAST_FAILURE.scope(note, async move { (x, f.await) }))
        .collect();
    let mut outcomes: Vec<(u8, std::result::Result<Result<T>, String>)> =
        Vec::with_capacity(notes.len());
    let mut succeeded = 0;
    let mut stop_at: Option<tokio::time::Instant> = None;
    loop {
        let next = match stop_at {
            None => pending.next().await,
            Some(at) => {
                let look = (tokio::time::Instant::now() + LOOK).min(at);
                match tokio::time::timeout_at(look, pending.next()).await {
                    Ok(next) => next,
                    Err(_) if look >= at => None,
                    Err(_) => {
                        let waiting =
                            notes.iter().filter(|(x, _)| !outcomes.iter().any(|(y, _)| y == x));
                        if waiting.clone().all(|(_, n)| n.seen().is_some_and(|s| s.unreachable)) {
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        let Some((x, outcome)) = next else { break };
        succeeded += usize::from(outcome.is_ok());
        outcomes.push((x, Ok(outcome)));
        if succeeded >= enough && stop_at.is_none() {
            stop_at = Some(tokio::time::Instant::now() + grace);
        }
    }
    for (x, note) in notes {
        if !outcomes.iter().any(|(y, _)| *y == x) {
            let why = match note.seen() {
                Some(s) if s.unreachable => {
                    format!("{} (not waited for: enough key managers had answered)", s.message)
                }
                Some(s) => format!(
                    "still failing {:.1} s after enough key managers had answered: {}",
                    grace.as_secs_f64(),
                    s.message
                ),
                None => format!(
                    "no answer within {:.1} s after enough key managers had answered",
                    grace.as_secs_f64()
                ),
            };
            outcomes.push((x, Err(why)));
        }
    }
    outcomes.sort_by_key(|(x, _)| *x);
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ClientError;

    #[tokio::test(start_paused = true)]
    async fn a_slow_node_gets_the_grace_then_is_reported_missing() {
        let call = |x: u8, secs: u64, ok: bool| {
            (x, async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                if ok {
                    Ok(x)
                } else {
                    Err(ClientError::Config("down".into()))
                }
            })
        };
        let start = tokio::time::Instant::now();
        let out = gather(
            vec![call(1, 1, true), call(2, 2, true), call(3, 600, true), call(4, 3, false)],
            2,
            GRACE,
        )
        .await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(2) + GRACE,
            "stopped GRACE after the second success"
        );
        assert!(matches!(out[0], (1, Ok(Ok(1)))));
        assert!(matches!(out[1], (2, Ok(Ok(2)))));
        assert!(matches!(&out[2], (3, Err(why)) if why.contains("no answer within 5.0 s")));
        assert!(matches!(out[3], (4, Ok(Err(_)))));
        // Without enough successes, everyone is waited for.
        let start = tokio::time::Instant::now();
        let out = gather(vec![call(1, 1, true), call(2, 30, false)], 2, GRACE).await;
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        assert!(out.iter().all(|(_, o)| o.is_ok()));
    }

    #[tokio::test]
    async fn a_node_that_refuses_connections_is_not_waited_for() {
        use crate::http::{send, with_retries, Service};
        use crate::RetryPolicy;
        use std::pin::Pin;
        type Call = Pin<Box<dyn Future<Output = Result<u8>>>>;
        // A port nothing listens on: every attempt is refused, and retried for a minute.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let refused: Call = Box::pin(async move {
            let policy = RetryPolicy { budget: Duration::from_secs(60), ..RetryPolicy::default() };
            let http = reqwest::Client::new();
            with_retries(&policy, Service::Kms(3), || async {
                send(Service::Kms(3), http.get(format!("http://127.0.0.1:{port}/"))).await?;
                Ok(3)
            })
            .await
        });
        let answer = |x: u8, ms: u64| -> Call {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(x)
            })
        };
        let start = std::time::Instant::now();
        let out =
            gather(vec![(1, answer(1, 300)), (2, answer(2, 400)), (3, refused)], 2, GRACE).await;
        // Before, the refusing node was waited for the whole grace and reported as not
        // answering in time.
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
        let (_, why) = &out[2];
        let why = why.as_ref().err().unwrap();
        assert!(why.contains("kms-3") && why.contains("not waited for"), "{why}");
    }
}
