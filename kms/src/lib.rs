//! # cryptflow-kms — a key manager of the committee
//!
//! One of the `n` key managers of a consortium (DESIGN §4). It never sees a ciphertext. Its
//! configuration — not a round — fixes the **committee** (every node's share index and signing
//! key, threshold `t`), its own index and signing key, and the **roster** (members, their keys,
//! readers, the minimum set size `m`). It
//!
//! - registers a round for the aggregator and answers with a signature over the spec, which
//!   clients check against their pinned committee file;
//! - takes each member's **deposit** — its Shamir share of its round key for this node, with
//!   the signed digest of its upload — sealed at rest;
//! - records the **contributor set** once per round, refusing it unless every member holds a
//!   deposit here whose digest matches;
//! - **releases** to a member of that set (or a roster reader), authenticated by its roster
//!   key, the unweighted sum of the set's shares — never to the aggregator;
//! - shreds shares after their retention, audits everything in a hash chain, and refuses the
//!   rounds that were open at a backup it was restored from.
//!
//! Layout: [`routes`] (extract, authorise, map errors) → [`domain`] (the rules, pure) →
//! [`store`] (all SQL), with [`seal`] and [`audit`]. [`launch`] serves on given listeners so
//! tests bind port 0; the `cryptflow-kms` binary is a thin shell.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
pub mod domain;
pub mod keystore;
pub mod repeats;
pub mod restore;
pub mod routes;
pub mod seal;
pub mod store;
pub mod upkeep;

use cryptflow_services::api::kms::KmsRoundState;
pub use cryptflow_services::auth::JwtKey;
use cryptflow_services::auth::{verifier_from_files, Verifier};
use cryptflow_services::clock::{SharedClock, SystemClock};
use cryptflow_services::db::{self, Migrations};
use cryptflow_services::protocol::{Committee, Roster, SiteKey};
use cryptflow_services::serve::{ConnectionLimits, Connections};
use cryptflow_services::RoundId;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;

pub use domain::Node;
pub use seal::MasterKey;
pub use store::Store;

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
    /// serves the client endpoints (round echo, deposits, releases, node info) and probes.
    pub internal_listen: Option<String>,
    /// Prometheus metrics listen address (a separate port).
    pub metrics_listen: String,
    /// `sqlite://…` (embedded default) or `postgres://…`.
    pub database_url: String,
    /// Pool size.
    pub max_connections: u32,
    /// File with the 64-hex-digit master key that seals deposits.
    pub master_key_file: PathBuf,
    /// Audience tokens must name.
    pub audience: String,
    /// Trusted issuer keys, for admin and aggregator tokens (several during a rotation).
    pub jwt_keys: Vec<JwtKey>,
    /// The committee file (the same on every node and client).
    pub committee_file: PathBuf,
    /// This node's share index `x` in the committee.
    pub share_index: u8,
    /// This node's Ed25519 signing key (PKCS#8 PEM); its public key is the committee's entry.
    pub signing_key_file: PathBuf,
    /// The roster file (the same on every node).
    pub roster_file: PathBuf,
    /// Shares are shredded this long after a round's registration.
    pub share_retention_secs: u64,
    /// Required: a file on storage outside the database's backups, where the node journals
    /// the rounds it registers, the sets it records and how far its audit log has come; on
    /// start it refuses the rounds a restored database has open (see `restore`).
    pub restore_witness_file: Option<PathBuf>,
    /// The round-key store (see `keystore`): each round's key, sealed by the master key, on
    /// storage outside the database's backups; shredding a round deletes its key here.
    /// Default: the restore witness's path with `.round-keys` appended.
    pub round_keys_file: Option<PathBuf>,
    /// Largest JSON body (registrations and contributor sets of 10^5 members are ~12 MB).
    pub max_body_bytes: usize,
    /// Seconds between retention scans.
    pub tick_secs: u64,
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
            committee_file: PathBuf::from("committee.toml"),
            share_index: 1,
            signing_key_file: PathBuf::from("node.pem"),
            roster_file: PathBuf::from("roster.toml"),
            share_retention_secs: 30 * 86_400,
            restore_witness_file: None,
            round_keys_file: None,
            max_body_bytes: 32 << 20,
            tick_secs: 60,
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
    /// The round-key store could not be read or written.
    #[error(transparent)]
    RoundKeys(#[from] keystore::KeyStoreError),
    /// JWT keys.
    #[error(transparent)]
    Keys(#[from] cryptflow_services::auth::KeyError),
    /// Committee, roster or signing key.
    #[error("{0}")]
    Consortium(String),
    /// I/O (reading files, binding sockets).
    #[error("{0}")]
    Io(String),
}

/// Counters exported at `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Rounds registered.
    pub rounds_registered: AtomicU64,
    /// Deposits stored.
    pub deposits: AtomicU64,
    /// Contributor sets recorded.
    pub sets_recorded: AtomicU64,
    /// Releases served.
    pub releases: AtomicU64,
    /// Requests refused (4xx) on deposits, sets and releases.
    pub refusals: AtomicU64,
    /// Requests refused for their credentials (401: a missing, forged, expired or replayed
    /// token, an issuer token in a roster member's name).
    pub credentials_refused: AtomicU64,
    /// Rounds shredded (destroyed, expired or refused after a restore).
    pub rounds_shredded: AtomicU64,
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        cryptflow_services::http::render_counters(&[
            (
                "cryptflow_kms_rounds_registered_total",
                "Rounds registered.",
                &self.rounds_registered,
            ),
            ("cryptflow_kms_deposits_total", "Key-share deposits stored.", &self.deposits),
            (
                "cryptflow_kms_sets_recorded_total",
                "Contributor sets recorded.",
                &self.sets_recorded,
            ),
            ("cryptflow_kms_releases_total", "Releases served to readers.", &self.releases),
            (
                "cryptflow_kms_refusals_total",
                "Deposit, set and release requests refused.",
                &self.refusals,
            ),
            (
                "cryptflow_kms_credentials_refused_total",
                "Requests refused for their credentials (401).",
                &self.credentials_refused,
            ),
            (
                "cryptflow_kms_rounds_shredded_total",
                "Rounds whose shares were shredded.",
                &self.rounds_shredded,
            ),
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

fn read(path: &Path) -> Result<String, StartError> {
    std::fs::read_to_string(path).map_err(|e| StartError::Io(format!("{}: {e}", path.display())))
}

/// Reads the committee, the roster and the signing key, and checks they fit together.
pub fn node_from_config(config: &KmsConfig) -> Result<Node, StartError> {
    let consortium = |e: String| StartError::Consortium(e);
    let committee = Committee::from_toml(&read(&config.committee_file)?)
        .map_err(|e| consortium(format!("{}: {e}", config.committee_file.display())))?;
    let roster = Roster::from_toml(&read(&config.roster_file)?)
        .map_err(|e| consortium(format!("{}: {e}", config.roster_file.display())))?;
    let pem = zeroize::Zeroizing::new(read(&config.signing_key_file)?);
    let signing = SiteKey::from_pem(&pem)
        .map_err(|e| consortium(format!("{}: {e}", config.signing_key_file.display())))?;
    Node::try_new(committee, config.share_index, signing, roster).map_err(consortium)
}

/// Shared state of the handlers. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    store: Store,
    verifier: Arc<Verifier>,
    master: Arc<MasterKey>,
    node: Arc<Node>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    retention_secs: u64,
    witness: Option<Arc<restore::Witness>>,
    repeats: Arc<repeats::Repeats>,
    round_keys: Arc<keystore::RoundKeys>,
    /// Held by a registration from making the round's key to recording the round, and by
    /// [`AppState::sweep_round_keys`]: a sweep never takes the key of a round being registered
    /// (its deposit key is already in the signed echo).
    registering: Arc<tokio::sync::Mutex<()>>,
}

impl AppState {
    /// Assembles the state from its parts (the issuer verifier gets the roster added).
    pub fn new(
        pool: sqlx::AnyPool,
        verifier: Verifier,
        master: MasterKey,
        node: Node,
        clock: SharedClock,
        retention_secs: u64,
        round_keys: keystore::RoundKeys,
    ) -> Self {
        let audience = node.audience();
        let verifier = verifier.with_roster(node.roster(), &audience);
        Self {
            store: Store::new(pool),
            verifier: Arc::new(verifier),
            master: Arc::new(master),
            node: Arc::new(node),
            clock,
            metrics: Arc::default(),
            retention_secs,
            witness: None,
            repeats: Arc::default(),
            round_keys: Arc::new(round_keys),
            registering: Arc::default(),
        }
    }

    /// See the field `registering`.
    pub(crate) async fn registration_guard(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.registering.lock().await
    }

    /// Shreds `round`: the database marks it `state` (destroyed, or refused after a restore)
    /// and drops its sealed shares — from then on no deposit is stored for it, the insert being
    /// conditional on an open round — then its key leaves the round-key store, after which its
    /// shares, wherever a copy of the database survives, open under nothing. A key that
    /// outlives this (the second step failed, or a deposit racing the shred made one) is removed
    /// by [`AppState::sweep_round_keys`] on the next tick.
    pub(crate) async fn shred(
        &self,
        round: &RoundId,
        state: KmsRoundState,
        actor: &store::Actor<'_>,
        action: &str,
    ) -> Result<(), String> {
        self.store
            .shred(round, state, self.clock.now(), actor, action)
            .await
            .map_err(|e| e.to_string())?;
        self.metrics.rounds_shredded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let keys = self.round_keys.clone();
        let id = round.as_str().to_owned();
        blocking(move || keys.shred(&id)).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Removes the round keys of rounds the database has shredded, refused or does not know:
    /// what a failed or raced [`AppState::shred`] left. Returns how many.
    pub(crate) async fn sweep_round_keys(&self) -> Result<u64, String> {
        let _registrations = self.registering.lock().await;
        let keys = self.round_keys.clone();
        let rounds = blocking(move || keys.rounds()).await.map_err(|e| e.to_string())?;
        let mut removed = 0;
        for id in rounds {
            let live = match RoundId::parse(id.clone()) {
                Ok(round) => {
                    self.store.round(&round).await.map_err(|e| e.to_string())?.is_some_and(|r| {
                        matches!(r.state, KmsRoundState::Open | KmsRoundState::SetRecorded)
                    })
                }
                Err(_) => false,
            };
            if !live {
                let keys = self.round_keys.clone();
                if blocking(move || keys.shred(&id)).await.map_err(|e| e.to_string())? {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// The key of `round`, made if the round has none — at registration: its deposit key pair
    /// is derived from it (file I/O off the async workers).
    pub(crate) async fn round_key_for(
        &self,
        round: &RoundId,
    ) -> Result<keystore::RoundKey, keystore::KeyStoreError> {
        let (keys, master, id) = (self.round_keys.clone(), self.master.clone(), round.to_string());
        blocking(move || keys.key_for(&id, &master)).await
    }

    /// The key of `round` for opening its shares ([`keystore::KeyStoreError::Missing`] once
    /// shredded).
    pub(crate) async fn round_key(
        &self,
        round: &RoundId,
    ) -> Result<keystore::RoundKey, keystore::KeyStoreError> {
        let (keys, master, id) = (self.round_keys.clone(), self.master.clone(), round.to_string());
        blocking(move || keys.key(&id, &master)).await
    }

    /// Keeps a restore witness (see [`restore`]).
    pub fn with_witness(mut self, witness: restore::Witness) -> Self {
        self.witness = Some(Arc::new(witness));
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }
    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
    /// This node.
    pub fn node(&self) -> &Node {
        &self.node
    }
}

impl axum::extract::FromRef<AppState> for Arc<Verifier> {
    fn from_ref(s: &AppState) -> Self {
        s.verifier.clone()
    }
}

/// The restore witness is not optional: without it a node restored from a backup could
/// record a second contributor set (see [`restore`]).
fn witness_path(config: &KmsConfig) -> Result<&std::path::Path, StartError> {
    config.restore_witness_file.as_deref().ok_or_else(|| {
        StartError::Io(
            "restore_witness_file is required: a journal on storage the database's backups do not \
             include (kms/src/restore.rs explains why)"
                .into(),
        )
    })
}

/// Runs key-store file I/O (fsyncs under a lock) on the blocking pool, not an async worker.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, keystore::KeyStoreError> + Send + 'static,
) -> Result<T, keystore::KeyStoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(keystore::KeyStoreError::File { path: "round-key store".into(), reason: e.to_string() })
    })
}

/// Where the round keys live: `round_keys_file`, or next to the restore witness.
pub fn round_keys_path(config: &KmsConfig) -> Result<PathBuf, StartError> {
    if let Some(p) = &config.round_keys_file {
        return Ok(p.clone());
    }
    let mut p = witness_path(config)?.as_os_str().to_owned();
    p.push(".round-keys");
    Ok(PathBuf::from(p))
}

/// What [`state_from_config`] reads besides the database, checked: the master key, the issuer
/// keys, the committee, this node's signing key and the roster. `check-config` runs it and
/// prints the returned warnings ([`Committee::shape_warnings`]).
pub fn check_config(config: &KmsConfig) -> Result<Vec<String>, StartError> {
    witness_path(config)?;
    keystore::RoundKeys::check(&round_keys_path(config)?)?;
    master_key(config)?;
    verifier_from_files(&config.audience, &config.jwt_keys)?;
    Ok(node_from_config(config)?.committee().shape_warnings())
}

/// Builds the state from a configuration: reads keys, committee and roster, opens the
/// database, checks it is migrated (migrations run only through `cryptflow-kms migrate`), and
/// runs the restore check.
pub async fn state_from_config(config: &KmsConfig) -> Result<AppState, StartError> {
    let master = master_key(config)?;
    let verifier = verifier_from_files(&config.audience, &config.jwt_keys)?;
    let node = node_from_config(config)?;
    let pool = db::connect(&config.database_url, config.max_connections).await?;
    db::require_migrated(&pool, &config.database_url, &MIGRATIONS).await?;
    let mut state = AppState::new(
        pool,
        verifier,
        master,
        node,
        Arc::new(SystemClock),
        config.share_retention_secs,
        keystore::RoundKeys::open(&round_keys_path(config)?)?,
    );
    let path = witness_path(config)?;
    state = state.with_witness(restore::Witness::new(path));
    upkeep::restore_check(&state).await.map_err(StartError::Io)?;
    Ok(state)
}

/// Serves the API on `listener` and the metrics on `metrics`, runs the retention task every
/// `tick`, until `shutdown` resolves, then drains in-flight requests.
pub async fn launch(
    listener: TcpListener,
    metrics: TcpListener,
    state: AppState,
    max_body_bytes: usize,
    tick: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = routes::router(state.clone(), max_body_bytes);
    serve(vec![(listener, app)], metrics, &state, tick, shutdown).await
}

/// Like [`launch`], with the endpoints split: the client-facing ones on `public`, all of them
/// on `internal` (see [`KmsConfig::internal_listen`]).
pub async fn launch_split(
    public: TcpListener,
    internal: TcpListener,
    metrics: TcpListener,
    state: AppState,
    max_body_bytes: usize,
    tick: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let apps = vec![
        (public, routes::public_router(state.clone(), max_body_bytes)),
        (internal, routes::router(state.clone(), max_body_bytes)),
    ];
    serve(apps, metrics, &state, tick, shutdown).await
}

/// Serves each router on its listener, the metrics on theirs, and the retention task; on
/// `shutdown` all drain.
async fn serve(
    apps: Vec<(TcpListener, axum::Router)>,
    metrics: TcpListener,
    state: &AppState,
    tick: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let connections = Connections::new(ConnectionLimits::from_descriptor_limit());
    let counters = state.metrics.clone();
    let stats = connections.stats().clone();
    let metrics_task = cryptflow_services::http::spawn_metrics(
        metrics,
        &connections,
        move || counters.render() + &stats.render("cryptflow_kms"),
        stop_rx.clone(),
    );
    let ticker_state = state.clone();
    let mut tick_rx = stop_rx.clone();
    let ticker = tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        loop {
            tokio::select! {
                _ = interval.tick() => upkeep::tick(&ticker_state).await,
                _ = tick_rx.changed() => break,
            }
        }
    });
    let servers: Vec<_> = apps
        .into_iter()
        .map(|(listener, app)| {
            let (connections, rx) = (connections.clone(), stop_rx.clone());
            tokio::spawn(async move { connections.serve(listener, app, rx).await })
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
    let _ = ticker.await;
    result
}

/// Re-wraps every round key in `round_keys` and every share still sealed under the master key
/// itself (deposited before round keys existed) from `old` to `new`; returns how many of each
/// (round keys, shares). Secrets exist in memory only while being re-wrapped. Resumable: what
/// is already under `new` is skipped; shares sealed under round keys are untouched.
pub async fn rotate_master_key(
    pool: &sqlx::AnyPool,
    round_keys: &keystore::RoundKeys,
    old: &MasterKey,
    new: &MasterKey,
) -> Result<(u64, u64), StartError> {
    let rewrapped = round_keys.rewrap(old, new)?;
    let err = |e: store::StoreError| StartError::Io(e.to_string());
    let mut tx = pool.begin().await.map_err(db::DbError::from)?;
    let mut count = 0;
    for (round, client, sealed, wrapped_by) in store::all_sealed(&mut tx).await.map_err(err)? {
        if wrapped_by == new.id() || wrapped_by.starts_with(keystore::ROUND_KEY_ID_PREFIX) {
            continue;
        }
        let share = old.open(&round, &client, &sealed)?;
        let resealed = new.seal(&round, &client, &share)?;
        store::reseal(&mut tx, &round, &client, resealed, new.id()).await.map_err(err)?;
        count += 1;
    }
    tx.commit().await.map_err(db::DbError::from)?;
    Ok((rewrapped, count))
}
