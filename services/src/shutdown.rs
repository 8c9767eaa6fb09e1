//! Graceful shutdown, and the logging set-up both binaries share.

use std::future::Future;
use std::time::Duration;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); `CRYPTFLOW_LOG_FORMAT=json` for
/// one JSON object per line.
pub fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("CRYPTFLOW_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs a server built by `start(stop)` until SIGTERM/Ctrl-C, then lets it drain in-flight
/// requests for at most `grace`.
pub async fn serve_until_signal<F, Fut>(start: F, grace: Duration) -> Result<(), String>
where
    F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(start(Box::pin(async move {
        let _ = rx.await;
    })));
    signal().await;
    let _ = tx.send(());
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("in-flight requests did not finish within {}s", grace.as_secs())),
    }
}

/// Resolves on SIGTERM (Kubernetes' stop signal) or Ctrl-C. Pass it to `launch` so the
/// server stops accepting, finishes in-flight requests, and exits.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
