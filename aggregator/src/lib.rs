//! # cryptflow-aggregator — the untrusted aggregator
//!
//! Holds rounds, takes encrypted uploads, and publishes their unweighted sum. It never holds a
//! key: each client encrypts under its own key and deposits shares of it with the key-manager
//! committee, which releases — to readers, never to the aggregator — only the key sum of the
//! contributor set the aggregator reports once. See [`routes`] for the endpoints and
//! [`lifecycle`] for a round's life.
//!
//! Layout: [`routes`] (extract, authorise, map errors) → [`domain`] (the rules, pure) →
//! [`store`] (all SQL); [`lifecycle`] drives the key managers ([`kms_client`]) and plans the
//! fold, whose jobs ([`fold`]) any replica runs ([`jobs`]) over the [`blob`] store (a local
//! directory, or an S3 bucket shared by every replica). Crash safety: an upload is
//! acknowledged only after its blob is durable (fsynced, or its multipart write completed)
//! and its row committed; the contributor set and its fold jobs are fixed in one transaction,
//! each job's output is a function of its inputs written under a fixed name, so a job re-run
//! after a crash or a lost lease replaces it atomically and nothing is counted twice.
//! Several replicas may share one PostgreSQL database and one bucket (DESIGN §7).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod blob;
pub mod domain;
pub mod fold;
pub mod jobs;
pub mod kms_client;
pub mod lifecycle;
pub mod routes;
pub mod store;
pub mod upload;

pub use cryptflow_services::auth::JwtKey;
use cryptflow_services::auth::{verifier_from_files, Verifier};
use cryptflow_services::clock::{SharedClock, SystemClock};
use cryptflow_services::db::{self, Migrations};
use cryptflow_services::protocol::Committee;
use cryptflow_services::serve::{ConnectionLimits, Connections};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;

pub use store::Store;

/// The aggregator's migrations.
pub static MIGRATIONS: Migrations =
    Migrations { sqlite: &SQLITE_MIGRATIONS, postgres: &POSTGRES_MIGRATIONS };
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator =
    sqlx::migrate!("../migrations/aggregator/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator =
    sqlx::migrate!("../migrations/aggregator/postgres");

/// When a temporary blob file in a directory replicas may share is a dead write: a live
/// upload writes one multipart part (5 MiB) at least every `PART_BYTES /
/// min_upload_bytes_per_sec` seconds (dropped otherwise) and a job one per few ranges; twice
/// that, and at least an hour (a day without a minimum rate).
fn stale_temporary_after(config: &AggregatorConfig) -> Duration {
    let part = match config.min_upload_bytes_per_sec {
        0 => 86_400,
        rate => 2 * blob::PART_BYTES as u64 / rate,
    };
    Duration::from_secs(part.max(3600))
}

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
    /// Directory of the blob store (uploads, partial sums and aggregates) when `s3` is not
    /// set: one replica.
    pub blob_dir: PathBuf,
    /// An S3-compatible bucket for the blobs instead of `blob_dir`: any number of replicas
    /// sharing one PostgreSQL database and this bucket.
    pub s3: Option<blob::S3Config>,
    /// Fold jobs this replica runs at once (each holds about `(fold_batch_uploads + 2)` ×
    /// 0.5 MiB).
    pub max_concurrent_jobs: usize,
    /// How long a fold job's lease lasts without renewal: a replica that dies holding one
    /// delays its job by at most this much.
    pub job_lease_secs: u64,
    /// Uploads summed by one fold job.
    pub fold_batch_uploads: u64,
    /// Blocks of `N` slots in one fold job's span (for rounds created from now on).
    pub fold_span_blocks: u64,
    /// Audience tokens must name.
    pub audience: String,
    /// Trusted token issuers.
    pub jwt_keys: Vec<JwtKey>,
    /// The committee file (the same the key managers and the clients have).
    pub committee_file: PathBuf,
    /// The aggregator's token for the key managers (role `aggregator`, audience `kms`).
    pub kms_token_file: PathBuf,
    /// Per-node token files, by share index, for committees whose nodes trust different
    /// issuers (e.g. `kms_token_files = { 2 = "node-2.jwt" }`; TOML keys are strings, so the
    /// share index is parsed from the key).
    #[serde(with = "node_keyed")]
    pub kms_token_files: BTreeMap<u8, PathBuf>,
    /// Uploads received at once. More wait (their bodies unread: TCP holds the senders back)
    /// up to `upload_queue_secs`, then get 503 with `Retry-After`.
    pub max_concurrent_uploads: usize,
    /// How long an upload waits for one of the `max_concurrent_uploads` slots.
    pub upload_queue_secs: u64,
    /// An upload that sends nothing for this long is dropped (408): a stalled client must not
    /// hold a slot.
    pub upload_idle_secs: u64,
    /// An upload slower than this on average (after its first 30 s) is dropped (408): a
    /// trickling client must not hold a slot either.
    pub min_upload_bytes_per_sec: u64,
    /// After a round closes, how long to wait for its uploads' key-share deposits.
    pub deposit_grace_secs: u64,
    /// The uploads' blobs are deleted this long after publication (the aggregate is kept).
    /// Until then readers can verify the aggregate by recomputing it from them
    /// (`GET /v1/rounds/{round}/submissions/{client}`); the default, 30 days, matches the key
    /// managers' `share_retention_secs`. 0 deletes them at publication: no reader can verify.
    pub upload_retention_secs: u64,
    /// A round whose contributor set fewer than `t` key managers have recorded this long after
    /// it closed fails (nodes unreachable for good must not keep it `aggregating` forever).
    pub publish_timeout_secs: u64,
    /// Milliseconds between passes of the background task.
    pub tick_millis: u64,
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
            s3: None,
            max_concurrent_jobs: 2,
            job_lease_secs: 30,
            fold_batch_uploads: 16,
            fold_span_blocks: fold::DEFAULT_SPAN_BLOCKS,
            audience: "aggregator".into(),
            jwt_keys: Vec::new(),
            committee_file: PathBuf::from("committee.toml"),
            kms_token_file: PathBuf::from("aggregator-kms.jwt"),
            kms_token_files: BTreeMap::new(),
            max_concurrent_uploads: 16,
            upload_queue_secs: 30,
            upload_idle_secs: 30,
            min_upload_bytes_per_sec: 16 << 10,
            deposit_grace_secs: 60,
            publish_timeout_secs: 86_400,
            upload_retention_secs: 30 * 86_400,
            tick_millis: 1000,
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
    /// I/O, the committee file.
    #[error("{0}")]
    Io(String),
}

/// Counters exported at `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Uploads admitted.
    pub submissions: AtomicU64,
    /// Bytes of admitted uploads.
    pub submission_bytes: AtomicU64,
    /// Uploads refused for want of a slot (429 or 503).
    pub uploads_throttled: AtomicU64,
    /// Uploads that waited for a slot.
    pub uploads_queued: AtomicU64,
    /// Uploads dropped as stalled or too slow (408).
    pub uploads_too_slow: AtomicU64,
    /// Calls a key manager refused for the aggregator's own credentials (expired or wrong
    /// token: an operator must renew it).
    pub kms_credential_failures: AtomicU64,
    /// Time spent in fold jobs, microseconds.
    pub fold_micros: AtomicU64,
    /// Fold jobs this replica completed.
    pub jobs_completed: AtomicU64,
    /// Fold jobs that failed here (retried, or their round failed).
    pub jobs_failed: AtomicU64,
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
            ("cryptflow_aggregator_submissions_total", "Uploads admitted.", &self.submissions),
            (
                "cryptflow_aggregator_submission_bytes_total",
                "Bytes of admitted uploads.",
                &self.submission_bytes,
            ),
            (
                "cryptflow_aggregator_uploads_throttled_total",
                "Uploads refused for want of a slot (429 or 503).",
                &self.uploads_throttled,
            ),
            (
                "cryptflow_aggregator_uploads_queued_total",
                "Uploads that waited for a slot.",
                &self.uploads_queued,
            ),
            (
                "cryptflow_aggregator_uploads_too_slow_total",
                "Uploads dropped as stalled or too slow (408).",
                &self.uploads_too_slow,
            ),
            (
                "cryptflow_aggregator_kms_credential_failures_total",
                "Key-manager calls refused for the aggregator's own token.",
                &self.kms_credential_failures,
            ),
            (
                "cryptflow_aggregator_fold_microseconds_total",
                "Time spent in fold jobs.",
                &self.fold_micros,
            ),
            (
                "cryptflow_aggregator_fold_jobs_completed_total",
                "Fold jobs this replica completed.",
                &self.jobs_completed,
            ),
            (
                "cryptflow_aggregator_fold_jobs_failed_total",
                "Fold jobs that failed on this replica.",
                &self.jobs_failed,
            ),
            ("cryptflow_aggregator_rounds_created_total", "Rounds created.", &self.rounds_created),
            (
                "cryptflow_aggregator_rounds_published_total",
                "Rounds published.",
                &self.rounds_published,
            ),
            ("cryptflow_aggregator_rounds_failed_total", "Rounds failed.", &self.rounds_failed),
        ])
    }
}

/// The timings of the round lifecycle.
#[derive(Copy, Clone, Debug)]
pub struct Tuning {
    /// See [`AggregatorConfig::deposit_grace_secs`].
    pub deposit_grace_secs: u64,
    /// See [`AggregatorConfig::upload_retention_secs`].
    pub upload_retention_secs: u64,
    /// See [`AggregatorConfig::publish_timeout_secs`].
    pub publish_timeout_secs: u64,
    /// See [`AggregatorConfig::upload_queue_secs`].
    pub upload_queue_secs: u64,
    /// See [`AggregatorConfig::upload_idle_secs`].
    pub upload_idle_secs: u64,
    /// See [`AggregatorConfig::min_upload_bytes_per_sec`].
    pub min_upload_bytes_per_sec: u64,
    /// See [`AggregatorConfig::job_lease_secs`].
    pub job_lease_secs: u64,
    /// See [`AggregatorConfig::fold_batch_uploads`].
    pub fold_batch_uploads: u64,
    /// See [`AggregatorConfig::fold_span_blocks`].
    pub fold_span_blocks: u64,
    /// See [`AggregatorConfig::max_concurrent_jobs`].
    pub max_concurrent_jobs: usize,
}

/// Shared state of the handlers and the background task. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    store: Store,
    verifier: Arc<Verifier>,
    kms: kms_client::KmsNodes,
    blobs: blob::BlobStore,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    uploads: Arc<tokio::sync::Semaphore>,
    /// Clients with an upload in flight (one each: a client cannot take several slots).
    uploading: Arc<std::sync::Mutex<std::collections::HashSet<cryptflow_services::ClientId>>>,
    publish_lock: Arc<tokio::sync::Mutex<()>>,
    tuning: Tuning,
    /// This replica's name in job leases (`<host>-<pid>`).
    replica: Arc<str>,
    /// What fold jobs need of their rounds (see [`jobs::FoldContext`]).
    fold_contexts: Arc<
        std::sync::Mutex<std::collections::HashMap<cryptflow_services::RoundId, jobs::FoldContext>>,
    >,
    /// The seed contribution drawn for each round being created (with the order it was drawn
    /// in), until it is stored with the spec: a retried creation asks the key managers under
    /// the same commitment (and gets the same nonces) instead of spending one of the few
    /// commitments a node answers per round.
    pending_seeds: Arc<
        std::sync::Mutex<
            std::collections::HashMap<
                cryptflow_services::RoundId,
                (cryptflow_services::api::round::SeedPart, u64),
            >,
        >,
    >,
}

impl axum::extract::FromRef<AppState> for Arc<Verifier> {
    fn from_ref(s: &AppState) -> Self {
        s.verifier.clone()
    }
}

impl AppState {
    /// Assembles the state.
    pub fn new(
        store: Store,
        verifier: Verifier,
        kms: kms_client::KmsNodes,
        blobs: blob::BlobStore,
        clock: SharedClock,
        max_concurrent_uploads: usize,
        tuning: Tuning,
    ) -> Self {
        Self {
            store,
            verifier: Arc::new(verifier),
            kms,
            blobs,
            clock,
            metrics: Arc::default(),
            uploads: Arc::new(tokio::sync::Semaphore::new(max_concurrent_uploads.max(1))),
            uploading: Arc::default(),
            publish_lock: Arc::default(),
            tuning,
            replica: replica_name().into(),
            fold_contexts: Arc::default(),
            pending_seeds: Arc::default(),
        }
    }

    /// This replica's name in job leases.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// `<host>-<pid>`: the pod's name under Kubernetes (`HOSTNAME`), unique per process.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "aggregator".into());
    format!("{host}-{}", std::process::id())
}

/// A map keyed by share index, written with string keys (as TOML and environment variables
/// have them).
mod node_keyed {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    pub fn serialize<S: Serializer>(map: &BTreeMap<u8, PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        map.iter().map(|(x, p)| (x.to_string(), p)).collect::<BTreeMap<_, _>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u8, PathBuf>, D::Error> {
        BTreeMap::<String, PathBuf>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                let x = k.trim().parse::<u8>().map_err(|_| {
                    serde::de::Error::custom(format!("`{k}` is not a share index (1 to 255)"))
                })?;
                Ok((x, v))
            })
            .collect()
    }
}

/// What [`state_from_config`] reads besides the database, checked: issuer keys, the committee
/// (every node named in `kms_token_files` on it) and the token files. `check-config` runs it.
pub fn check_config(config: &AggregatorConfig) -> Result<Committee, StartError> {
    for (name, value) in [
        ("max_concurrent_jobs", config.max_concurrent_jobs as u64),
        ("fold_batch_uploads", config.fold_batch_uploads),
        ("fold_span_blocks", config.fold_span_blocks),
        ("job_lease_secs", config.job_lease_secs),
        ("max_concurrent_uploads", config.max_concurrent_uploads as u64),
    ] {
        if value == 0 {
            return Err(StartError::Io(format!("{name} must be at least 1")));
        }
    }
    verifier_from_files(&config.audience, &config.jwt_keys)?;
    let text = std::fs::read_to_string(&config.committee_file)
        .map_err(|e| StartError::Io(format!("{}: {e}", config.committee_file.display())))?;
    let committee = Committee::from_toml(&text)
        .map_err(|e| StartError::Io(format!("{}: {e}", config.committee_file.display())))?;
    if let Some(x) = config.kms_token_files.keys().find(|x| committee.node(**x).is_none()) {
        return Err(StartError::Io(format!(
            "kms_token_files names node {x}, which is not in {}",
            config.committee_file.display()
        )));
    }
    for f in std::iter::once(&config.kms_token_file).chain(config.kms_token_files.values()) {
        let token = std::fs::read_to_string(f)
            .map_err(|e| StartError::Io(format!("{}: {e}", f.display())))?;
        if token.trim().split('.').count() != 3 {
            return Err(StartError::Io(format!("{}: not a compact JWT", f.display())));
        }
    }
    Ok(committee)
}

/// Builds the state from a configuration: reads keys and the committee, opens the database
/// and checks it is migrated (migrations run only through `cryptflow-aggregator migrate`),
/// opens the blob store (removing temporary files a crash left).
pub async fn state_from_config(config: &AggregatorConfig) -> Result<AppState, StartError> {
    let committee = check_config(config)?;
    let verifier = verifier_from_files(&config.audience, &config.jwt_keys)?;
    let pool = db::connect(&config.database_url, config.max_connections).await?;
    db::require_migrated(&pool, &config.database_url, &MIGRATIONS).await?;
    let backend = db::Backend::of(&config.database_url)?;
    let blobs = match &config.s3 {
        Some(s3) => {
            blob::BlobStore::open_s3(s3).map_err(|e| StartError::Io(format!("[s3]: {e}")))?
        }
        None => {
            // SQLite: one replica owns the directory, and every temporary file in it is a dead
            // write of its own. With PostgreSQL, replicas may share it: only stale ones.
            let stale_after = match backend {
                db::Backend::Sqlite => Duration::ZERO,
                db::Backend::Postgres => stale_temporary_after(config),
            };
            let (blobs, removed) = blob::BlobStore::open_local(&config.blob_dir, stale_after)
                .map_err(|e| StartError::Io(format!("{}: {e}", config.blob_dir.display())))?;
            if removed > 0 {
                tracing::info!(removed, "removed temporary blobs left by a crash");
            }
            blobs
        }
    };
    blobs.check().await.map_err(|e| StartError::Io(format!("{}: {e}", blobs.describe())))?;
    let kms = kms_client::KmsNodes::new(
        committee,
        config.kms_token_file.clone(),
        config.kms_token_files.clone(),
    );
    let store = Store::new(pool, backend);
    if backend == db::Backend::Sqlite {
        // SQLite means one replica: its leases are its own previous run's (which a crash
        // ended); waiting job_lease_secs for them would only delay its rounds.
        let freed = store.release_all_leases().await.map_err(|e| StartError::Io(e.to_string()))?;
        if freed > 0 {
            tracing::info!(freed, "freed the fold-job leases of the previous run");
        }
    }
    Ok(AppState::new(
        store,
        verifier,
        kms,
        blobs,
        Arc::new(SystemClock),
        config.max_concurrent_uploads,
        Tuning {
            deposit_grace_secs: config.deposit_grace_secs,
            upload_retention_secs: config.upload_retention_secs,
            publish_timeout_secs: config.publish_timeout_secs,
            upload_queue_secs: config.upload_queue_secs,
            upload_idle_secs: config.upload_idle_secs,
            min_upload_bytes_per_sec: config.min_upload_bytes_per_sec,
            job_lease_secs: config.job_lease_secs,
            fold_batch_uploads: config.fold_batch_uploads.max(1),
            fold_span_blocks: config.fold_span_blocks.max(1),
            max_concurrent_jobs: config.max_concurrent_jobs,
        },
    ))
}

/// Serves the API on `listener` and the metrics on `metrics`, runs the background task every
/// `tick`, until `shutdown` resolves; then drains in-flight requests.
pub async fn launch(
    listener: TcpListener,
    metrics: TcpListener,
    state: AppState,
    tick: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut limits = ConnectionLimits::from_descriptor_limit();
    // Uploads have their own stall limit (408 naming it); the server's must not cut first.
    let upload_idle = Duration::from_secs(state.tuning.upload_idle_secs.saturating_add(10));
    limits.body_timeout = limits.body_timeout.max(upload_idle);
    let connections = Connections::new(limits);
    let counters = state.metrics.clone();
    let stats = connections.stats().clone();
    let metrics_task = cryptflow_services::http::spawn_metrics(
        metrics,
        &connections,
        move || counters.render() + &stats.render("cryptflow_aggregator"),
        stop_rx.clone(),
    );
    let workers: Vec<_> = (0..state.tuning.max_concurrent_jobs)
        .map(|_| tokio::spawn(jobs::worker(state.clone(), tick, stop_rx.clone())))
        .collect();
    let ticker_state = state.clone();
    let mut rx = stop_rx;
    let ticker = tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => lifecycle::tick(&ticker_state).await,
                _ = rx.changed() => break,
            }
        }
    });
    let (http_tx, http_rx) = tokio::sync::watch::channel(false);
    let (result, ()) =
        tokio::join!(connections.serve(listener, routes::router(state), http_rx), async {
            shutdown.await;
            let _ = http_tx.send(true);
        });
    let _ = stop_tx.send(true);
    let _ = metrics_task.await;
    let _ = ticker.await;
    // A job in progress is abandoned: its lease expires and another replica re-runs it.
    for w in workers {
        w.abort();
        let _ = w.await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_would_stop_the_fold_are_refused() {
        for key in
            ["max_concurrent_jobs", "fold_batch_uploads", "fold_span_blocks", "job_lease_secs"]
        {
            let cfg: AggregatorConfig = toml::from_str(&format!("{key} = 0")).unwrap();
            let e = check_config(&cfg).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("at least 1"), "{e}");
        }
    }

    #[test]
    fn per_node_token_files_are_keyed_by_share_index() {
        let cfg: AggregatorConfig =
            toml::from_str("[kms_token_files]\n2 = \"node-2.jwt\"\n3 = \"node-3.jwt\"\n").unwrap();
        assert_eq!(cfg.kms_token_files.get(&2), Some(&PathBuf::from("node-2.jwt")));
        assert_eq!(cfg.kms_token_files.len(), 2);
        let back: AggregatorConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back.kms_token_files, cfg.kms_token_files);
        let err =
            toml::from_str::<AggregatorConfig>("[kms_token_files]\ntwo = \"x.jwt\"\n").unwrap_err();
        assert!(err.to_string().contains("`two` is not a share index"), "{err}");
    }
}
