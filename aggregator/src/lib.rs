//! # cryptflow-aggregator — the untrusted aggregator
//!
//! Holds rounds, accepts encrypted updates, folds them into a running sum in O(d) memory
//! whatever the number of clients, and publishes the compressed aggregate. It never holds a
//! secret key: it asks the KMS to create each round's key, and tells it when the round is
//! aggregated so that the KMS releases the key to the round's clients. See [`api`] for the
//! endpoints, their roles and the acceptance rules.
//!
//! Crash safety: a submission is acknowledged only after its ciphertext is fsynced in the
//! blob store and its row committed; the running sum is a cache rebuilt from those rows
//! (each once) after a restart; publication is idempotent and resumed by [`api::tick`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
pub mod blob;
pub mod kms_client;

use cryptflow_services::auth::verifier_from_files;
pub use cryptflow_services::auth::JwtKey;
use cryptflow_services::db::{self, Migrations};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;

pub use api::AppState;

/// The aggregator's migrations.
pub static MIGRATIONS: Migrations =
    Migrations { sqlite: &SQLITE_MIGRATIONS, postgres: &POSTGRES_MIGRATIONS };
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator =
    sqlx::migrate!("../migrations/aggregator/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator =
    sqlx::migrate!("../migrations/aggregator/postgres");

/// Configuration (`--config FILE`, then `CRYPTFLOW_AGGREGATOR__…` environment variables).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// API listen address.
    pub listen: String,
    /// Prometheus metrics listen address.
    pub metrics_listen: String,
    /// `sqlite://…` (embedded default) or `postgres://…`.
    pub database_url: String,
    /// Pool size.
    pub max_connections: u32,
    /// Directory of the blob store.
    pub blob_dir: PathBuf,
    /// Audience tokens must name.
    pub audience: String,
    /// Trusted signing keys.
    pub jwt_keys: Vec<JwtKey>,
    /// Base URL of the KMS.
    pub kms_url: String,
    /// File holding the aggregator's token for the KMS (role `aggregator`, audience `kms`).
    pub kms_token_file: PathBuf,
    /// Uploads held in memory at once; more get 429.
    pub max_concurrent_uploads: usize,
    /// Seconds between deadline scans.
    pub tick_secs: u64,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_timeout_secs: u64,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8082".into(),
            metrics_listen: "127.0.0.1:9082".into(),
            database_url: "sqlite://cryptflow-aggregator.db?mode=rwc".into(),
            max_connections: 8,
            blob_dir: PathBuf::from("blobs"),
            audience: "aggregator".into(),
            jwt_keys: Vec::new(),
            kms_url: "http://127.0.0.1:8081".into(),
            kms_token_file: PathBuf::from("aggregator-kms.jwt"),
            max_concurrent_uploads: 16,
            tick_secs: 1,
            shutdown_timeout_secs: 30,
        }
    }
}

/// Start-up failures.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StartError {
    /// Database.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// JWT keys.
    #[error(transparent)]
    Keys(#[from] cryptflow_services::auth::KeyError),
    /// I/O.
    #[error("{0}")]
    Io(String),
}

/// Counters exported at `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Submissions accepted.
    pub submissions: AtomicU64,
    /// Bytes of accepted submissions.
    pub submission_bytes: AtomicU64,
    /// Uploads refused with 429.
    pub uploads_throttled: AtomicU64,
    /// Time spent folding, microseconds.
    pub fold_micros: AtomicU64,
    /// Rounds created.
    pub rounds_created: AtomicU64,
    /// Rounds published.
    pub rounds_published: AtomicU64,
    /// Rounds failed.
    pub rounds_failed: AtomicU64,
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        cryptflow_services::http::render_counters(&[
            ("cryptflow_aggregator_submissions_total", "Submissions accepted.", &self.submissions),
            (
                "cryptflow_aggregator_submission_bytes_total",
                "Bytes of accepted submissions.",
                &self.submission_bytes,
            ),
            (
                "cryptflow_aggregator_uploads_throttled_total",
                "Uploads refused with 429.",
                &self.uploads_throttled,
            ),
            (
                "cryptflow_aggregator_fold_microseconds_total",
                "Time spent folding submissions.",
                &self.fold_micros,
            ),
            ("cryptflow_aggregator_rounds_created_total", "Rounds created.", &self.rounds_created),
            (
                "cryptflow_aggregator_rounds_published_total",
                "Rounds published.",
                &self.rounds_published,
            ),
            (
                "cryptflow_aggregator_rounds_failed_total",
                "Rounds failed at their deadline.",
                &self.rounds_failed,
            ),
        ])
    }
}

/// Builds the state from a configuration: reads keys, opens the database and checks it is
/// migrated (migrations run only through `cryptflow-aggregator migrate`, never on start).
pub async fn state_from_config(config: &AggregatorConfig) -> Result<AppState, StartError> {
    let verifier = verifier_from_files(&config.audience, &config.jwt_keys)?;
    let pool = db::connect(&config.database_url, config.max_connections).await?;
    db::require_migrated(&pool, &config.database_url, &MIGRATIONS).await?;
    let blobs = blob::BlobStore::open(&config.blob_dir)
        .map_err(|e| StartError::Io(format!("{}: {e}", config.blob_dir.display())))?;
    Ok(AppState {
        pool,
        verifier: Arc::new(verifier),
        kms: kms_client::KmsClient::new(&config.kms_url, config.kms_token_file.clone()),
        blobs,
        metrics: Arc::new(Metrics::default()),
        accumulators: Arc::default(),
        uploads: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_uploads.max(1))),
        publish_lock: Arc::default(),
    })
}

/// Serves the API on `listener` and the metrics on `metrics`, runs the deadline task every
/// `tick`, until `shutdown` resolves; then drains in-flight requests.
pub async fn launch(
    listener: TcpListener,
    metrics: TcpListener,
    state: AppState,
    tick: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let counters = state.metrics.clone();
    let metrics_task = cryptflow_services::http::spawn_metrics(
        metrics,
        move || counters.render(),
        stop_rx.clone(),
    );
    let ticker_state = state.clone();
    let mut rx = stop_rx;
    let ticker = tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        loop {
            tokio::select! {
                _ = interval.tick() => api::tick(&ticker_state).await,
                _ = rx.changed() => break,
            }
        }
    });
    let result = axum::serve(listener, api::router(state)).with_graceful_shutdown(shutdown).await;
    let _ = stop_tx.send(true);
    let _ = metrics_task.await;
    let _ = ticker.await;
    result
}
