//! One call to every key manager at once, without waiting out the ones that are down.

use crate::error::Result;
use futures_util::StreamExt;
use std::future::Future;
use std::time::Duration;

/// How long the key managers still missing get once enough of them answered, by default
/// ([`ClientBuilder::straggler_grace`](crate::ClientBuilder::straggler_grace)).
pub(crate) const GRACE: Duration = Duration::from_secs(5);

/// Runs one call per node concurrently (each under its own retry policy) and returns every
/// node's outcome, sorted by node. Once `enough` calls succeeded, the others get [`GRACE`]
/// more rather than their whole retry budget; a node with no outcome by then gets `None`.
pub(crate) async fn gather<T, F>(
    calls: Vec<(u8, F)>,
    enough: usize,
    grace: Duration,
) -> Vec<(u8, Option<Result<T>>)>
where
    F: Future<Output = Result<T>>,
{
    let nodes: Vec<u8> = calls.iter().map(|(x, _)| *x).collect();
    let mut pending: futures_util::stream::FuturesUnordered<_> =
        calls.into_iter().map(|(x, f)| async move { (x, f.await) }).collect();
    let mut outcomes: Vec<(u8, Option<Result<T>>)> = Vec::with_capacity(nodes.len());
    let mut succeeded = 0;
    let mut stop_at: Option<tokio::time::Instant> = None;
    loop {
        let next = match stop_at {
            None => pending.next().await,
            Some(at) => tokio::time::timeout_at(at, pending.next()).await.unwrap_or(None),
        };
        let Some((x, outcome)) = next else { break };
        succeeded += usize::from(outcome.is_ok());
        outcomes.push((x, Some(outcome)));
        if succeeded >= enough && stop_at.is_none() {
            stop_at = Some(tokio::time::Instant::now() + grace);
        }
    }
    for x in nodes {
        if !outcomes.iter().any(|(y, _)| *y == x) {
            outcomes.push((x, None));
        }
    }
    outcomes.sort_by_key(|(x, _)| *x);
    outcomes
}

/// What a node without an outcome is reported as.
pub(crate) fn no_answer(grace: Duration) -> String {
    format!("no answer within {:.1} s after enough key managers had answered", grace.as_secs_f64())
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
        assert!(matches!(out[0], (1, Some(Ok(1)))));
        assert!(matches!(out[1], (2, Some(Ok(2)))));
        assert!(matches!(out[2], (3, None)));
        assert!(matches!(out[3], (4, Some(Err(_)))));
        // Without enough successes, everyone is waited for.
        let start = tokio::time::Instant::now();
        let out = gather(vec![call(1, 1, true), call(2, 30, false)], 2, GRACE).await;
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        assert!(out.iter().all(|(_, o)| o.is_some()));
    }
}
