//! # cryptflow-kms — the key-management service
//!
//! Creates one key pair per round, keeps the secret key sealed under a master key, serves
//! the public key, and releases the secret key only to an authorised client of the round,
//! and only after the aggregator reported the round aggregated with at least its minimum
//! number of contributors. Keys are destroyed on request (crypto-shredding). Every key event
//! goes into a hash-chained audit log. See [`api`] for the endpoints and their roles.
//!
//! The library exposes [`launch`] so tests start the real service on port 0; the
//! `cryptflow-kms` binary is a thin shell (`serve`, `migrate`, `verify-audit`,
//! `rotate-master-key`, `generate-master-key`).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
pub mod audit;
pub mod seal;

use cryptflow_services::auth::verifier_from_files;
pub use cryptflow_services::auth::JwtKey;
use cryptflow_services::db::{self, Migrations};
use serde::{Deserialize, Serialize};
use sqlx::{AnyPool, Row};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use thiserror::Error;
use tokio::net::TcpListener;

pub use api::AppState;
pub use seal::MasterKey;

/// The KMS's migrations.
pub static MIGRATIONS: Migrations =
    Migrations { sqlite: &SQLITE_MIGRATIONS, postgres: &POSTGRES_MIGRATIONS };
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/kms/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/kms/postgres");

/// Configuration (`--config FILE`, then `CRYPTFLOW_KMS__…` environment variables).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KmsConfig {
    /// API listen address.
    pub listen: String,
    /// If set, the aggregator's and operators' endpoints are served only here, and `listen`
    /// serves the client endpoints (key metadata, public key, secret release) and probes.
    pub internal_listen: Option<String>,
    /// Prometheus metrics listen address (a separate port).
    pub metrics_listen: String,
    /// `sqlite://…` (embedded default) or `postgres://…`.
    pub database_url: String,
    /// Pool size.
    pub max_connections: u32,
    /// File with the 64-hex-digit master key.
    pub master_key_file: PathBuf,
    /// Audience tokens must name.
    pub audience: String,
    /// Trusted signing keys (several during a rotation).
    pub jwt_keys: Vec<JwtKey>,
    /// Largest JSON body accepted.
    pub max_body_bytes: usize,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_timeout_secs: u64,
}

impl Default for KmsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".into(),
            internal_listen: None,
            metrics_listen: "127.0.0.1:9081".into(),
            database_url: "sqlite://cryptflow-kms.db?mode=rwc".into(),
            max_connections: 8,
            master_key_file: PathBuf::from("master.key"),
            audience: "kms".into(),
            jwt_keys: Vec::new(),
            max_body_bytes: 1 << 20,
            shutdown_timeout_secs: 30,
        }
    }
}

/// Start-up failures.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StartError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] cryptflow_services::config::ConfigError),
    /// Database.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// Master key.
    #[error(transparent)]
    Seal(#[from] seal::SealError),
    /// JWT keys.
    #[error(transparent)]
    Keys(#[from] cryptflow_services::auth::KeyError),
    /// I/O (reading key files, binding sockets).
    #[error("{0}")]
    Io(String),
}

/// Counters exported at `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Keys created.
    pub keys_created: AtomicU64,
    /// Secret keys released.
    pub keys_released: AtomicU64,
    /// Keys destroyed.
    pub keys_destroyed: AtomicU64,
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        cryptflow_services::http::render_counters(&[
            ("cryptflow_kms_keys_created_total", "Round keys created.", &self.keys_created),
            (
                "cryptflow_kms_keys_released_total",
                "Secret keys released to clients.",
                &self.keys_released,
            ),
            ("cryptflow_kms_keys_destroyed_total", "Round keys destroyed.", &self.keys_destroyed),
        ])
    }
}

/// Environment secret that, when set, holds the master key (64 hex digits) instead of
/// `master_key_file`.
pub const MASTER_KEY_ENV: &str = "CRYPTFLOW_KMS_MASTER_KEY";

/// The master key: from [`MASTER_KEY_ENV`] if set, else from `master_key_file`.
pub fn master_key(config: &KmsConfig) -> Result<MasterKey, seal::SealError> {
    match std::env::var(MASTER_KEY_ENV) {
        Ok(hex) => MasterKey::from_hex(&zeroize::Zeroizing::new(hex), MASTER_KEY_ENV),
        Err(_) => MasterKey::from_file(&config.master_key_file),
    }
}

/// Builds the state from a configuration: reads keys, opens the database and checks it is
/// migrated (migrations run only through `cryptflow-kms migrate`, never on start).
pub async fn state_from_config(config: &KmsConfig) -> Result<AppState, StartError> {
    let master = master_key(config)?;
    let verifier = verifier_from_files(&config.audience, &config.jwt_keys)?;
    let pool = db::connect(&config.database_url, config.max_connections).await?;
    db::require_migrated(&pool, &config.database_url, &MIGRATIONS).await?;
    Ok(AppState {
        pool,
        verifier: Arc::new(verifier),
        master: Arc::new(master),
        metrics: Arc::new(Metrics::default()),
        audit_lock: Arc::new(tokio::sync::Mutex::new(())),
    })
}

/// Serves the API on `listener` and the metrics on `metrics` until `shutdown` resolves, then
/// drains in-flight requests.
pub async fn launch(
    listener: TcpListener,
    metrics: TcpListener,
    state: AppState,
    max_body_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = api::router(state.clone(), max_body_bytes);
    serve(vec![(listener, app)], metrics, &state, shutdown).await
}

/// Like [`launch`], with the endpoints split: the client-facing ones on `public`, all of them
/// on `internal` (see [`KmsConfig::internal_listen`]).
pub async fn launch_split(
    public: TcpListener,
    internal: TcpListener,
    metrics: TcpListener,
    state: AppState,
    max_body_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let apps = vec![
        (public, api::public_router(state.clone(), max_body_bytes)),
        (internal, api::router(state.clone(), max_body_bytes)),
    ];
    serve(apps, metrics, &state, shutdown).await
}

/// Serves each router on its listener and the metrics on theirs; on `shutdown` all drain.
async fn serve(
    apps: Vec<(TcpListener, axum::Router)>,
    metrics: TcpListener,
    state: &AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let counters = state.metrics.clone();
    let metrics_task = cryptflow_services::http::spawn_metrics(
        metrics,
        move || counters.render(),
        stop_rx.clone(),
    );
    let servers: Vec<_> = apps
        .into_iter()
        .map(|(listener, app)| {
            let mut rx = stop_rx.clone();
            tokio::spawn(std::future::IntoFuture::into_future(
                axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                }),
            ))
        })
        .collect();
    shutdown.await;
    let _ = stop_tx.send(true);
    let mut result = Ok(());
    for s in servers {
        let r = s.await.map_err(std::io::Error::other).and_then(|r| r);
        result = result.and(r);
    }
    let _ = metrics_task.await;
    result
}

/// Re-wraps every sealed key from `old` to `new` in one transaction; returns how many. The
/// secret keys exist in memory only while being re-wrapped.
pub async fn rotate_master_key(
    pool: &AnyPool,
    old: &MasterKey,
    new: &MasterKey,
) -> Result<u64, StartError> {
    let mut tx = pool.begin().await.map_err(db::DbError::from)?;
    let rows = sqlx::query("SELECT round_id, key_id, sealed_secret, nonce, master_key_id FROM round_keys WHERE sealed_secret IS NOT NULL")
        .fetch_all(&mut *tx)
        .await
        .map_err(db::DbError::from)?;
    let mut count = 0;
    for row in rows {
        let round: String = row.try_get("round_id").map_err(db::DbError::from)?;
        let key_id: String = row.try_get("key_id").map_err(db::DbError::from)?;
        let wrapped_by: String = row.try_get("master_key_id").map_err(db::DbError::from)?;
        if wrapped_by == new.id() {
            continue; // already rotated (an interrupted earlier run)
        }
        let sealed = seal::Sealed {
            ciphertext: row.try_get("sealed_secret").map_err(db::DbError::from)?,
            nonce: row.try_get("nonce").map_err(db::DbError::from)?,
        };
        let secret = old.open(&round, &key_id, &sealed)?;
        let resealed = new.seal(&round, &key_id, &secret)?;
        sqlx::query("UPDATE round_keys SET sealed_secret = $1, nonce = $2, master_key_id = $3 WHERE round_id = $4")
            .bind(resealed.ciphertext)
            .bind(resealed.nonce)
            .bind(new.id())
            .bind(&round)
            .execute(&mut *tx)
            .await
            .map_err(db::DbError::from)?;
        count += 1;
    }
    tx.commit().await.map_err(db::DbError::from)?;
    Ok(count)
}
