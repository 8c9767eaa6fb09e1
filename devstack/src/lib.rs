//! # cryptflow-devstack — one local CryptFlow stack
//!
//! A key-manager committee of `n` nodes (threshold `t`) and an aggregator on loopback, each
//! with its own database (SQLite files by default, or fresh PostgreSQL databases), master key,
//! signing key and blob directory in a temporary directory; a consortium roster of sites with
//! their keys; an ephemeral token issuer. Every test, the overhead suite and the demo start
//! their servers through [`LocalStack::builder`] — there is no second place that builds them.
//!
//! The services run either **in this process** (their `launch` on fixed loopback ports) or as
//! **the real binaries** in separate processes ([`Builder::processes`]), for crash tests:
//! [`LocalStack::kill_node`] and [`LocalStack::kill_aggregator`] stop one abruptly (SIGKILL
//! for a process), and the `restart_…` methods bring it back on the same port, database and
//! blobs. Configuration files are written by serialising the services' own configuration
//! types, the way an operator's files are read.
//!
//! ```no_run
//! # async fn run() {
//! use cryptflow_devstack::LocalStack;
//! let stack = LocalStack::builder().nodes(3, 2).sites(4).start().await.unwrap();
//! let admin = stack.admin();
//! let site = stack.client("site-0");
//! // … create a round with `admin`, submit with `site`, fetch the mean …
//! stack.stop().await;
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use cryptflow_aggregator::AggregatorConfig;
use cryptflow_client::{Client, ClientPolicy, Layout, RetryPolicy, RoundRequest, Token, Weighting};
use cryptflow_kms::KmsConfig;
use cryptflow_services::auth::JwtKey;
use cryptflow_services::protocol::{
    Claims, Committee, CommitteeNode, Roster, RosterMember, SiteKey,
};
use cryptflow_services::{config, db, ClientId, Role, RoundId};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::net::TcpListener;

/// Why a stack could not start.
#[derive(Debug, thiserror::Error)]
#[error("local stack: {0}")]
pub struct StackError(String);

fn err(e: impl std::fmt::Display) -> StackError {
    StackError(e.to_string())
}

/// Where the services keep their data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// SQLite files in the stack's directory (the default).
    Sqlite,
    /// Fresh databases on the PostgreSQL server named by `CRYPTFLOW_TEST_DATABASE_URL`,
    /// dropped when the stack stops.
    Postgres,
}

impl Database {
    /// SQLite, and PostgreSQL when `CRYPTFLOW_TEST_DATABASE_URL` is set (CI sets it): what
    /// tests run against.
    pub fn for_tests() -> Vec<Database> {
        let mut out = vec![Database::Sqlite];
        if std::env::var(db::TEST_DATABASE_ENV).is_ok() {
            out.push(Database::Postgres);
        } else {
            eprintln!("skipping PostgreSQL: {} is not set", db::TEST_DATABASE_ENV);
        }
        out
    }
}

/// Where the aggregator keeps its blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blobs {
    /// A directory in the stack's directory (the default).
    Local,
    /// The S3-compatible server and bucket named by `CRYPTFLOW_TEST_S3_ENDPOINT` and
    /// `CRYPTFLOW_TEST_S3_BUCKET` (CI starts one), under a key prefix of this stack's own.
    S3,
}

/// The variable naming a local S3-compatible server for tests (`http://127.0.0.1:PORT`).
pub const TEST_S3_ENDPOINT_ENV: &str = "CRYPTFLOW_TEST_S3_ENDPOINT";
/// The variable naming the bucket on it.
pub const TEST_S3_BUCKET_ENV: &str = "CRYPTFLOW_TEST_S3_BUCKET";

impl Blobs {
    /// Whether the test S3 server is configured; says why not on stderr.
    pub fn s3_configured() -> bool {
        let set = std::env::var(TEST_S3_ENDPOINT_ENV).is_ok();
        if !set {
            eprintln!("skipping S3: {TEST_S3_ENDPOINT_ENV} is not set");
        }
        set
    }
}

/// A free TCP port on loopback (bound and released; the one place tests pick ports).
pub fn free_port() -> Result<u16, StackError> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct free TCP ports on loopback: all are held until every one is chosen, so the
/// services of one stack never share a port (a duplicate would leave the second service
/// unable to bind while the first answered its readiness probe).
pub fn free_ports(n: usize) -> Result<Vec<u16>, StackError> {
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(err)?;
    held.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(err)).collect()
}

/// A change to the aggregator's configuration before it starts.
type ConfigureAggregator = std::sync::Arc<dyn Fn(&mut AggregatorConfig) + Send + Sync>;

/// Builds a [`LocalStack`].
#[derive(Clone)]
pub struct Builder {
    nodes: u8,
    threshold: u8,
    sites: usize,
    readers: Vec<String>,
    min_set_size: u32,
    dp_policy: Option<cryptflow_services::protocol::DpPolicy>,
    database: Database,
    processes: bool,
    max_concurrent_uploads: usize,
    deposit_grace_secs: u64,
    tick_millis: u64,
    internal_listeners: bool,
    configure_aggregator: Option<ConfigureAggregator>,
    long_site_ids: bool,
    aggregator_replicas: usize,
    blobs: Blobs,
    descriptor_limit: Option<u64>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("nodes", &self.nodes)
            .field("threshold", &self.threshold)
            .field("sites", &self.sites)
            .field("database", &self.database)
            .field("processes", &self.processes)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// Aggregator replicas sharing one database and blob store (default 1); more than one
    /// needs PostgreSQL ([`Database::Postgres`]). Replica 0 is the one [`LocalStack::aggregator_url`]
    /// and the clients use.
    pub fn aggregator_replicas(mut self, n: usize) -> Self {
        self.aggregator_replicas = n.max(1);
        self
    }

    /// Where the aggregator keeps its blobs (default [`Blobs::Local`]).
    pub fn blobs(mut self, b: Blobs) -> Self {
        self.blobs = b;
        self
    }

    /// Sites named with the longest ids allowed (64 characters: `site-000…0042`) instead of
    /// `site-42` — for tests of size limits.
    pub fn long_site_ids(mut self, yes: bool) -> Self {
        self.long_site_ids = yes;
        self
    }

    /// Adjusts the aggregator's configuration (e.g. its upload timeouts) before it starts.
    pub fn configure_aggregator(
        mut self,
        f: impl Fn(&mut AggregatorConfig) + Send + Sync + 'static,
    ) -> Self {
        self.configure_aggregator = Some(std::sync::Arc::new(f));
        self
    }
    /// `n` key managers, threshold `t` (default 1 of 1).
    pub fn nodes(mut self, n: u8, t: u8) -> Self {
        self.nodes = n;
        self.threshold = t;
        self
    }
    /// Roster sites `site-0 … site-{k−1}` (default 8).
    pub fn sites(mut self, k: usize) -> Self {
        self.sites = k;
        self
    }
    /// Extra roster members that are readers (e.g. `server-app`).
    pub fn readers(mut self, ids: &[&str]) -> Self {
        self.readers = ids.iter().map(|s| (*s).to_owned()).collect();
        self
    }
    /// The roster's minimum set size `m` (default 2).
    pub fn min_set_size(mut self, m: u32) -> Self {
        self.min_set_size = m;
        self
    }
    /// The roster's DP floor (its `[dp]` table; default none).
    pub fn dp_policy(mut self, p: cryptflow_services::protocol::DpPolicy) -> Self {
        self.dp_policy = Some(p);
        self
    }
    /// The database (default SQLite).
    pub fn database(mut self, d: Database) -> Self {
        self.database = d;
        self
    }
    /// Run the real binaries as separate processes (for crash tests).
    pub fn processes(mut self, yes: bool) -> Self {
        self.processes = yes;
        self
    }
    /// The aggregator's upload concurrency (default 16).
    pub fn max_concurrent_uploads(mut self, n: usize) -> Self {
        self.max_concurrent_uploads = n;
        self
    }
    /// How long the aggregator waits for deposits after closing (default 10 s).
    pub fn deposit_grace_secs(mut self, s: u64) -> Self {
        self.deposit_grace_secs = s;
        self
    }
    /// Split the key managers' listeners (client endpoints apart from the internal ones).
    pub fn internal_listeners(mut self, yes: bool) -> Self {
        self.internal_listeners = yes;
        self
    }

    /// Starts each service process under `ulimit -n limit` (soft and hard), as a systemd
    /// service gets 1024 by default. Only with [`Builder::processes`].
    pub fn descriptor_limit(mut self, limit: u64) -> Self {
        self.descriptor_limit = Some(limit);
        self
    }

    /// Writes the files and starts the services.
    pub async fn start(self) -> Result<LocalStack, StackError> {
        LocalStack::start(self).await
    }
}

/// How a service runs.
enum Running {
    Task {
        stop: tokio::sync::oneshot::Sender<()>,
        handle: tokio::task::JoinHandle<std::io::Result<()>>,
    },
    Process(Child),
    Stopped,
}

/// One service: its configuration file and how it runs.
struct Service {
    binary: &'static str,
    config: PathBuf,
    url: String,
    running: Running,
}

/// The running stack. Stop it with [`LocalStack::stop`]; dropped, it kills what runs.
pub struct LocalStack {
    dir: tempfile::TempDir,
    issuer: SiteKey,
    sites: Vec<(ClientId, String)>,
    committee: Committee,
    nodes: Vec<Service>,
    /// Replicas of the aggregator (one by default).
    aggregators: Vec<Service>,
    databases: Vec<String>,
    processes: bool,
    bin_dir: Option<PathBuf>,
    descriptor_limit: Option<u64>,
}

const ISSUER_KID: &str = "devstack";
const TOKEN_TTL: u64 = 12 * 3600;

impl LocalStack {
    /// A builder with the defaults: one key manager, eight sites, `m = 2`, SQLite, in-process.
    pub fn builder() -> Builder {
        Builder {
            nodes: 1,
            threshold: 1,
            sites: 8,
            readers: Vec::new(),
            min_set_size: 2,
            dp_policy: None,
            database: Database::Sqlite,
            processes: false,
            max_concurrent_uploads: 16,
            deposit_grace_secs: 10,
            tick_millis: 100,
            internal_listeners: false,
            configure_aggregator: None,
            long_site_ids: false,
            aggregator_replicas: 1,
            blobs: Blobs::Local,
            descriptor_limit: None,
        }
    }

    async fn start(b: Builder) -> Result<Self, StackError> {
        let dir = tempfile::Builder::new().prefix("cryptflow-stack-").tempdir().map_err(err)?;
        let root = dir.path().to_path_buf();
        let write = |name: &str, text: &str| -> Result<PathBuf, StackError> {
            let p = root.join(name);
            std::fs::write(&p, text).map_err(err)?;
            Ok(p)
        };
        // The issuer: its public key in every service's jwt_keys.
        let issuer = SiteKey::generate();
        let issuer_pub = write("issuer.pub", &issuer.public_pem().map_err(err)?)?;
        let jwt_keys =
            vec![JwtKey { kid: ISSUER_KID.into(), public_key_file: issuer_pub, roles: None }];
        // The roster.
        let mut sites = Vec::new();
        let mut members = Vec::new();
        let long = b.long_site_ids;
        let ids = (0..b.sites)
            .map(|i| (if long { format!("site-{i:0>59}") } else { format!("site-{i}") }, false))
            .chain(b.readers.iter().map(|r| (r.clone(), true)));
        for (id, reader) in ids {
            let key = SiteKey::generate();
            let cid = ClientId::parse(id).map_err(err)?;
            members.push(RosterMember { id: cid.clone(), public_key: key.public_key(), reader });
            sites.push((cid, key.to_pem().map_err(err)?.to_string()));
        }
        let roster = Roster::try_new(b.min_set_size, members)
            .and_then(|r| r.with_dp(b.dp_policy))
            .map_err(err)?;
        let roster_file = write("roster.toml", &roster.to_toml())?;
        // The committee: node keys and fixed ports.
        let mut node_keys = Vec::new();
        let mut committee_nodes = Vec::new();
        let mut ports = Vec::new();
        if b.aggregator_replicas > 1 && b.database != Database::Postgres {
            return Err(err(
                "aggregator replicas share a PostgreSQL database: use Database::Postgres",
            ));
        }
        // Every port of the stack at once: three per node, two per aggregator replica.
        let mut free =
            free_ports(3 * usize::from(b.nodes) + 2 * b.aggregator_replicas)?.into_iter();
        let mut next_port = move || free.next().ok_or_else(|| err("ran out of ports"));
        for x in 1..=b.nodes {
            let key = SiteKey::generate();
            let (public, internal, metrics) = (next_port()?, next_port()?, next_port()?);
            committee_nodes.push(CommitteeNode {
                x,
                url: format!("http://127.0.0.1:{public}"),
                public_key: key.public_key(),
            });
            node_keys.push(key);
            ports.push((public, internal, metrics));
        }
        let committee = Committee::try_new(b.threshold, committee_nodes).map_err(err)?;
        let committee_file = write("committee.toml", &committee.to_toml())?;
        let mut databases = Vec::new();
        for name in (1..=b.nodes).map(|x| format!("kms{x}")).chain(["agg".to_owned()]) {
            databases.push(match b.database {
                Database::Sqlite => {
                    format!("sqlite://{}?mode=rwc", root.join(format!("{name}.db")).display())
                }
                Database::Postgres => db::fresh_postgres_database(&name)
                    .await
                    .map_err(err)?
                    .ok_or_else(|| err(format!("{} is not set", db::TEST_DATABASE_ENV)))?,
            });
        }
        // Key managers.
        let mut node_configs = Vec::new();
        for (i, key) in node_keys.iter().enumerate() {
            let x = i as u8 + 1;
            let (public, internal, metrics) = ports[i];
            let master = cryptflow_kms::MasterKey::generate();
            let cfg = KmsConfig {
                listen: format!("127.0.0.1:{public}"),
                internal_listen: b.internal_listeners.then(|| format!("127.0.0.1:{internal}")),
                metrics_listen: format!("127.0.0.1:{metrics}"),
                database_url: databases[i].clone(),
                max_connections: 4,
                master_key_file: write(&format!("kms-{x}.master"), &master.to_hex())?,
                jwt_keys: jwt_keys.clone(),
                committee_file: committee_file.clone(),
                share_index: x,
                signing_key_file: write(&format!("kms-{x}.pem"), &key.to_pem().map_err(err)?)?,
                roster_file: roster_file.clone(),
                restore_witness_file: Some(root.join(format!("kms-{x}.witness"))),
                tick_secs: 1,
                ..KmsConfig::default()
            };
            let path = write(&format!("kms-{x}.toml"), &toml::to_string(&cfg).map_err(err)?)?;
            node_configs.push((path, cfg));
        }
        // The aggregator, with its own token for the key managers (and, when the listeners are
        // split, their internal URLs in its copy of the committee).
        let agg_token = issuer.mint(ISSUER_KID, &claims("aggregator", Role::Aggregator, "kms"));
        let agg_committee = if b.internal_listeners {
            let nodes = committee
                .nodes()
                .iter()
                .zip(&ports)
                .map(|(n, (_, internal, _))| CommitteeNode {
                    url: format!("http://127.0.0.1:{internal}"),
                    ..n.clone()
                })
                .collect();
            write(
                "committee-internal.toml",
                &Committee::try_new(b.threshold, nodes).map_err(err)?.to_toml(),
            )?
        } else {
            committee_file.clone()
        };
        let s3 = match b.blobs {
            Blobs::Local => None,
            Blobs::S3 => {
                let endpoint = std::env::var(TEST_S3_ENDPOINT_ENV)
                    .map_err(|_| err(format!("{TEST_S3_ENDPOINT_ENV} is not set")))?;
                let bucket =
                    std::env::var(TEST_S3_BUCKET_ENV).unwrap_or_else(|_| "cryptflow-test".into());
                let prefix =
                    root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                Some(cryptflow_aggregator::blob::S3Config {
                    bucket,
                    region: "us-east-1".into(),
                    endpoint: Some(endpoint.clone()),
                    allow_http: endpoint.starts_with("http://"),
                    virtual_hosted_style: false,
                    prefix,
                })
            }
        };
        let mut aggregators = Vec::new();
        for i in 0..b.aggregator_replicas {
            let (agg_port, agg_metrics) = (next_port()?, next_port()?);
            let mut agg_cfg = AggregatorConfig {
                listen: format!("127.0.0.1:{agg_port}"),
                metrics_listen: format!("127.0.0.1:{agg_metrics}"),
                database_url: databases[b.nodes as usize].clone(),
                max_connections: 8,
                blob_dir: root.join("blobs"),
                s3: s3.clone(),
                jwt_keys: jwt_keys.clone(),
                committee_file: agg_committee.clone(),
                kms_token_file: root.join("aggregator-kms.jwt"),
                max_concurrent_uploads: b.max_concurrent_uploads,
                deposit_grace_secs: b.deposit_grace_secs,
                tick_millis: b.tick_millis,
                ..AggregatorConfig::default()
            };
            if i == 0 {
                write("aggregator-kms.jwt", &agg_token)?;
            }
            if let Some(f) = &b.configure_aggregator {
                f(&mut agg_cfg);
            }
            let name =
                if i == 0 { "aggregator.toml".to_owned() } else { format!("aggregator-{i}.toml") };
            let agg_path = write(&name, &toml::to_string(&agg_cfg).map_err(err)?)?;
            aggregators.push(Service {
                binary: "cryptflow-aggregator",
                config: agg_path,
                url: format!("http://{}", agg_cfg.listen),
                running: Running::Stopped,
            });
        }

        if b.descriptor_limit.is_some() && !b.processes {
            // An in-process stack shares the test's descriptors: the limit would be ignored.
            return Err(err("descriptor_limit needs processes(true)"));
        }
        let bin_dir = if b.processes { Some(binaries()?) } else { None };
        let mut stack = Self {
            dir,
            issuer,
            sites,
            committee,
            nodes: node_configs
                .into_iter()
                .map(|(config, cfg)| Service {
                    binary: "cryptflow-kms",
                    config,
                    url: format!("http://{}", cfg.listen),
                    running: Running::Stopped,
                })
                .collect(),
            aggregators,
            databases: if b.database == Database::Postgres { databases } else { Vec::new() },
            processes: b.processes,
            bin_dir,
            descriptor_limit: b.descriptor_limit,
        };
        for x in 1..=b.nodes {
            stack.migrate_and_start_node(x).await?;
        }
        stack.restart_replica(0, true).await?;
        for i in 1..stack.aggregators.len() {
            stack.restart_replica(i, false).await?;
        }
        Ok(stack)
    }

    /// The stack's directory (configuration files, SQLite databases, blobs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// The aggregator's base URL.
    pub fn aggregator_url(&self) -> &str {
        &self.aggregators[0].url
    }
    /// Key manager `x`'s base URL.
    pub fn node_url(&self, x: u8) -> Option<&str> {
        self.nodes.get(x as usize - 1).map(|n| n.url.as_str())
    }
    /// The committee, as clients pin it.
    pub fn committee(&self) -> &Committee {
        &self.committee
    }
    /// The committee file's path.
    pub fn committee_file(&self) -> PathBuf {
        self.dir.path().join("committee.toml")
    }
    /// The configuration file of key manager `x`.
    pub fn node_config(&self, x: u8) -> Option<&Path> {
        self.nodes.get(x as usize - 1).map(|n| n.config.as_path())
    }
    /// The aggregator's configuration file.
    pub fn aggregator_config(&self) -> &Path {
        &self.aggregators[0].config
    }
    /// The roster's ids, sites first, readers after.
    pub fn site_ids(&self) -> Vec<ClientId> {
        self.sites.iter().map(|(id, _)| id.clone()).collect()
    }
    /// A site's roster key.
    pub fn site_key(&self, id: &str) -> Option<SiteKey> {
        self.sites
            .iter()
            .find(|(s, _)| s.as_str() == id)
            .and_then(|(_, pem)| SiteKey::from_pem(pem).ok())
    }
    /// A site's key as PEM (for writing key files, e.g. for the CLI or Python).
    pub fn site_key_pem(&self, id: &str) -> Option<String> {
        self.sites.iter().find(|(s, _)| s.as_str() == id).map(|(_, pem)| pem.clone())
    }

    /// A token from the stack's issuer.
    pub fn token(&self, sub: &str, role: Role, aud: &str) -> String {
        self.issuer.mint(ISSUER_KID, &claims(sub, role, aud))
    }

    /// The issuer key (tests that need odd tokens).
    pub fn issuer(&self) -> (&SiteKey, &'static str) {
        (&self.issuer, ISSUER_KID)
    }

    /// An SDK client acting as roster site `id` (its aggregator token, roster key, the
    /// committee), with a patient retry policy and [`LocalStack::stack_policy`].
    pub fn client(&self, id: &str) -> Client {
        self.client_with(id, Role::Client, self.stack_policy())
    }

    /// The default [`ClientPolicy`] relaxed to take part in whatever this stack was built as:
    /// any committee shape (a single key manager, `(3, 2)`) and sets of two. Tests of the
    /// policy itself pass their own to [`LocalStack::client_with`].
    pub fn stack_policy(&self) -> ClientPolicy {
        ClientPolicy {
            min_contributors: 2,
            min_tolerated_colluding_nodes: 0,
            allow_single_key_manager: true,
            ..ClientPolicy::default()
        }
    }

    /// An SDK client acting as roster member `id` with `role` (client or reader) and `policy`.
    pub fn client_with(&self, id: &str, role: Role, policy: ClientPolicy) -> Client {
        self.client_of(id, role, policy, 0)
    }

    /// A fresh journal file for a client of site `id`, in the stack's directory. Each client
    /// the stack builds gets its own, so tests stay independent of each other's updates; a
    /// test of the journal itself keeps one client (or passes one path to several).
    pub fn journal_path(&self, id: &str) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir.path().join("journals").join(format!("{id}-{n}.jsonl"))
    }

    /// An SDK client acting as roster site `id` that talks to aggregator replica `replica`.
    pub fn client_via(&self, id: &str, replica: usize) -> Client {
        self.client_of(id, Role::Client, self.stack_policy(), replica)
    }

    fn client_of(&self, id: &str, role: Role, policy: ClientPolicy, replica: usize) -> Client {
        let url = self.aggregators.get(replica).unwrap_or(&self.aggregators[0]).url.as_str();
        let mut b = Client::builder(url)
            .aggregator_token(Token::new(self.token(id, role, "aggregator")))
            .committee(self.committee.clone())
            .reader(role == Role::Reader)
            .policy(policy)
            .straggler_grace(Duration::from_secs(1))
            .retry(RetryPolicy { budget: Duration::from_secs(60), ..RetryPolicy::default() });
        if let (Ok(cid), Some(key)) = (ClientId::parse(id), self.site_key(id)) {
            b = b.site(cid, key).journal(self.journal_path(id));
        }
        // Building only fails for a malformed URL, which the stack never makes.
        b.build().unwrap_or_else(unreachable_client)
    }

    /// A round request for all of the stack's sites: a flat vector of `d` values, `min`–`max`
    /// contributors, uniform weighting, clip 1, mean error ≤ 1e-6, deadline in an hour —
    /// what most tests start from (adjust the fields they are about).
    pub fn round_request(&self, round: &str, d: u64, min: u32, max: u32) -> RoundRequest {
        RoundRequest {
            // Tests name rounds with valid ids; an invalid one is the test's bug.
            round_id: RoundId::parse(round).unwrap_or_else(|e| panic_in_test(&e.to_string())),
            layout: Layout::Dimension(d),
            clients: self.site_ids(),
            min_clients: min,
            max_clients: max,
            deadline: None,
            deadline_in_secs: Some(3600),
            weighting: Weighting::Uniform,
            clip_bound: 1.0,
            max_abs_error: 1e-6,
            dp: None,
        }
    }

    /// An SDK client with an admin token.
    pub fn admin(&self) -> Client {
        Client::builder(&self.aggregators[0].url)
            .aggregator_token(Token::new(self.token("ops", Role::Admin, "aggregator")))
            .committee(self.committee.clone())
            .retry(RetryPolicy { budget: Duration::from_secs(60), ..RetryPolicy::default() })
            .build()
            .unwrap_or_else(unreachable_client)
    }

    async fn migrate_and_start_node(&mut self, x: u8) -> Result<(), StackError> {
        let path = self.nodes[x as usize - 1].config.clone();
        let cfg: KmsConfig =
            config::load(Some(&path), "CRYPTFLOW_DEVSTACK_UNUSED__").map_err(err)?;
        let pool = db::connect(&cfg.database_url, 1).await.map_err(err)?;
        db::migrate(&pool, &cfg.database_url, &cryptflow_kms::MIGRATIONS).await.map_err(err)?;
        pool.close().await;
        self.restart_node(x).await
    }

    /// Stops key manager `x` abruptly (SIGKILL for a process; the task aborted in-process).
    pub async fn kill_node(&mut self, x: u8) {
        if let Some(n) = self.nodes.get_mut(x as usize - 1) {
            kill(&mut n.running).await;
        }
    }

    /// Starts key manager `x` again (same port, database, keys).
    pub async fn restart_node(&mut self, x: u8) -> Result<(), StackError> {
        let (processes, bin_dir, limit) =
            (self.processes, self.bin_dir.clone(), self.descriptor_limit);
        let n = self.nodes.get_mut(x as usize - 1).ok_or_else(|| err(format!("no node {x}")))?;
        kill(&mut n.running).await;
        n.running = if processes {
            spawn(bin_dir.as_deref(), n.binary, &n.config, limit)?
        } else {
            let cfg: KmsConfig =
                config::load(Some(&n.config), "CRYPTFLOW_DEVSTACK_UNUSED__").map_err(err)?;
            let state = cryptflow_kms::state_from_config(&cfg).await.map_err(err)?;
            let listener = bind(&cfg.listen).await?;
            let metrics = bind(&cfg.metrics_listen).await?;
            let internal = match &cfg.internal_listen {
                Some(a) => Some(bind(a).await?),
                None => None,
            };
            let (stop, rx) = tokio::sync::oneshot::channel::<()>();
            let tick = Duration::from_secs(cfg.tick_secs.max(1));
            let shutdown = async move {
                let _ = rx.await;
            };
            let handle = tokio::spawn(async move {
                match internal {
                    Some(i) => {
                        cryptflow_kms::launch_split(
                            listener,
                            i,
                            metrics,
                            state,
                            cfg.max_body_bytes,
                            tick,
                            shutdown,
                        )
                        .await
                    }
                    None => {
                        cryptflow_kms::launch(
                            listener,
                            metrics,
                            state,
                            cfg.max_body_bytes,
                            tick,
                            shutdown,
                        )
                        .await
                    }
                }
            });
            Running::Task { stop, handle }
        };
        wait_ready(&n.url, "CryptFlow KMS").await
    }

    /// Stops the aggregator (replica 0) abruptly.
    pub async fn kill_aggregator(&mut self) {
        self.kill_replica(0).await;
    }

    /// Starts the aggregator (replica 0) again (same port, database, blobs).
    pub async fn restart_aggregator(&mut self) -> Result<(), StackError> {
        self.restart_replica(0, false).await
    }

    /// The base URLs of the aggregator's replicas.
    pub fn aggregator_urls(&self) -> Vec<String> {
        self.aggregators.iter().map(|a| a.url.clone()).collect()
    }

    /// Stops aggregator replica `i` abruptly (SIGKILL for a process).
    pub async fn kill_replica(&mut self, i: usize) {
        if let Some(a) = self.aggregators.get_mut(i) {
            kill(&mut a.running).await;
        }
    }

    /// Starts aggregator replica `i` again (same port, database, blobs).
    pub async fn restart_replica(&mut self, i: usize, migrate: bool) -> Result<(), StackError> {
        let processes = self.processes;
        let bin_dir = self.bin_dir.clone();
        let limit = self.descriptor_limit;
        let a = self.aggregators.get_mut(i).ok_or_else(|| err(format!("no replica {i}")))?;
        kill(&mut a.running).await;
        let cfg: AggregatorConfig =
            config::load(Some(&a.config), "CRYPTFLOW_DEVSTACK_UNUSED__").map_err(err)?;
        if migrate {
            let pool = db::connect(&cfg.database_url, 1).await.map_err(err)?;
            db::migrate(&pool, &cfg.database_url, &cryptflow_aggregator::MIGRATIONS)
                .await
                .map_err(err)?;
            pool.close().await;
        }
        a.running = if processes {
            spawn(bin_dir.as_deref(), a.binary, &a.config, limit)?
        } else {
            let state = cryptflow_aggregator::state_from_config(&cfg).await.map_err(err)?;
            let listener = bind(&cfg.listen).await?;
            let metrics = bind(&cfg.metrics_listen).await?;
            let (stop, rx) = tokio::sync::oneshot::channel::<()>();
            let tick = Duration::from_millis(cfg.tick_millis.max(10));
            let handle = tokio::spawn(cryptflow_aggregator::launch(
                listener,
                metrics,
                state,
                tick,
                async move {
                    let _ = rx.await;
                },
            ));
            Running::Task { stop, handle }
        };
        wait_ready(&a.url, "CryptFlow aggregator").await
    }

    /// The metrics listener (`host:port`) of aggregator replica 0.
    pub fn aggregator_metrics_addr(&self) -> Result<String, StackError> {
        let a = self.aggregators.first().ok_or_else(|| err("no aggregator"))?;
        let cfg: AggregatorConfig =
            config::load(Some(&a.config), "CRYPTFLOW_DEVSTACK_UNUSED__").map_err(err)?;
        Ok(cfg.metrics_listen)
    }

    /// The process id of the aggregator (replica 0), in process mode (for memory readings).
    pub fn aggregator_pid(&self) -> Option<u32> {
        self.replica_pid(0)
    }

    /// The process id of aggregator replica `i`, in process mode.
    pub fn replica_pid(&self, i: usize) -> Option<u32> {
        match &self.aggregators.get(i)?.running {
            Running::Process(c) => Some(c.id()),
            _ => None,
        }
    }

    /// The URL of the aggregator's database (PostgreSQL or SQLite), e.g. to watch its jobs.
    pub fn aggregator_database_url(&self) -> Result<String, StackError> {
        let cfg: AggregatorConfig =
            config::load(Some(&self.aggregators[0].config), "CRYPTFLOW_DEVSTACK_UNUSED__")
                .map_err(err)?;
        Ok(cfg.database_url)
    }

    /// Stops every service gracefully and drops the PostgreSQL databases.
    pub async fn stop(mut self) {
        for a in &mut self.aggregators {
            stop(&mut a.running).await;
        }
        for n in &mut self.nodes {
            stop(&mut n.running).await;
        }
        for url in &self.databases {
            let _ = db::drop_test_database(url).await;
        }
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        for r in self
            .aggregators
            .iter_mut()
            .map(|a| &mut a.running)
            .chain(self.nodes.iter_mut().map(|n| &mut n.running))
        {
            match std::mem::replace(r, Running::Stopped) {
                Running::Process(mut c) => {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                Running::Task { handle, .. } => handle.abort(),
                Running::Stopped => {}
            }
        }
    }
}

/// A misuse of the harness by a test (e.g. an invalid round id): fail the test, loudly.
#[allow(clippy::panic)]
fn panic_in_test(why: &str) -> ! {
    panic!("local stack: {why}")
}

/// The stack only builds well-formed clients; a failure is a bug here.
fn unreachable_client(e: cryptflow_client::ClientError) -> Client {
    panic_in_test(&format!("the local stack built an invalid client: {e}"))
}

fn claims(sub: &str, role: Role, aud: &str) -> Claims {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Claims { sub: sub.into(), role, aud: aud.into(), exp: now + TOKEN_TTL, iat: now, nbf: None }
}

async fn bind(addr: &str) -> Result<TcpListener, StackError> {
    // A port just released by a killed task may take a moment to be free again.
    for _ in 0..50 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return Ok(l);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    TcpListener::bind(addr).await.map_err(|e| err(format!("{addr}: {e}")))
}

/// Waits until `base` is ready and is the service expected (its OpenAPI title): a port taken
/// by another service must not pass for this one.
async fn wait_ready(base: &str, title: &str) -> Result<(), StackError> {
    let http = reqwest::Client::new();
    for _ in 0..400 {
        if http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            let api: serde_json::Value = http
                .get(format!("{base}/openapi.json"))
                .send()
                .await
                .map_err(err)?
                .json()
                .await
                .map_err(err)?;
            let found = api["info"]["title"].as_str().unwrap_or_default();
            return if found == title {
                Ok(())
            } else {
                Err(err(format!("{base} answers as `{found}`, not `{title}` (its port was taken)")))
            };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(err(format!("{base} did not become ready")))
}

async fn kill(r: &mut Running) {
    match std::mem::replace(r, Running::Stopped) {
        Running::Process(mut c) => {
            let _ = c.kill();
            let _ = c.wait();
        }
        Running::Task { handle, .. } => {
            handle.abort();
            let _ = handle.await;
        }
        Running::Stopped => {}
    }
}

async fn stop(r: &mut Running) {
    match std::mem::replace(r, Running::Stopped) {
        Running::Task { stop, handle } => {
            let _ = stop.send(());
            let _ = handle.await;
        }
        other => {
            let mut other = other;
            kill(&mut other).await;
        }
    }
}

/// The variable naming a directory (absolute path) of prebuilt `cryptflow-kms` and
/// `cryptflow-aggregator` binaries for [`Builder::processes`] stacks, used as they are — they
/// must be built from the same checkout (`.ci/run` points it at the release binaries it has
/// just built). Unset, the stack asks cargo, which rebuilds what changed.
pub const BINARIES_VAR: &str = "CRYPTFLOW_DEVSTACK_BINARIES";

/// The directory of the server binaries, checked (and built if need be) once per process:
/// every later stack reuses the answer. [`BINARIES_VAR`] if set; else next to the running
/// executable (where `cargo test --workspace` builds them), built by cargo on demand.
fn binaries() -> Result<PathBuf, StackError> {
    static DIR: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| find_or_build_binaries().map_err(|e| e.to_string())).clone().map_err(err)
}

fn find_or_build_binaries() -> Result<PathBuf, StackError> {
    if let Some(dir) = std::env::var_os(BINARIES_VAR) {
        let dir = PathBuf::from(dir);
        if !dir.is_absolute() {
            // Tests run in their own crate's directory: a relative path would mean another
            // place in each of them.
            return Err(err(format!("{BINARIES_VAR}={}: give an absolute path", dir.display())));
        }
        for b in ["cryptflow-kms", "cryptflow-aggregator"] {
            if !dir.join(b).is_file() {
                return Err(err(format!("{BINARIES_VAR}={}: no {b} there", dir.display())));
            }
        }
        return Ok(dir);
    }
    let exe = std::env::current_exe().map_err(err)?;
    let mut dir =
        exe.parent().map(Path::to_path_buf).ok_or_else(|| err("no executable directory"))?;
    if dir.ends_with("deps") {
        dir.pop();
    }
    // Under cargo (tests, `cargo run`), always ask cargo: binaries left from an older build
    // would silently run old code. Elsewhere (a copied binary), build only what is missing.
    let missing = ["cryptflow-kms", "cryptflow-aggregator"].iter().any(|b| !dir.join(b).exists());
    if missing || std::env::var_os("CARGO").is_some() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "cryptflow-kms", "-p", "cryptflow-aggregator", "--bins"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let ok = cmd.status().map_err(err)?.success();
        if !ok {
            return Err(err("building the server binaries failed"));
        }
    }
    Ok(dir)
}

fn spawn(
    bin_dir: Option<&Path>,
    binary: &str,
    config: &Path,
    descriptor_limit: Option<u64>,
) -> Result<Running, StackError> {
    let dir = bin_dir.ok_or_else(|| err("no binary directory"))?;
    let mut cmd = match descriptor_limit {
        // The shell execs the binary: the child's pid is the service's.
        Some(limit) => {
            let mut c = Command::new("sh");
            c.args(["-c", "ulimit -n \"$0\" && exec \"$@\""])
                .arg(limit.to_string())
                .arg(dir.join(binary));
            c
        }
        None => Command::new(dir.join(binary)),
    };
    // An S3-compatible test server takes any credentials; a real one's come from the
    // environment the tests run in.
    for (k, v) in
        [("AWS_ACCESS_KEY_ID", "cryptflow-test"), ("AWS_SECRET_ACCESS_KEY", "cryptflow-test")]
    {
        if std::env::var_os(k).is_none() && std::env::var_os(TEST_S3_ENDPOINT_ENV).is_some() {
            cmd.env(k, v);
        }
    }
    let child = cmd
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", std::env::var("CRYPTFLOW_DEVSTACK_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| err(format!("{binary}: {e}")))?;
    Ok(Running::Process(child))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ports_of_one_stack_are_distinct() {
        let ports = free_ports(500).unwrap();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
    }

    #[tokio::test]
    async fn readiness_names_a_service_that_is_not_the_one_expected() {
        // What a port collision looked like: the aggregator's URL answered by a key manager.
        let stack = LocalStack::builder().start().await.unwrap();
        let kms = stack.node_url(1).unwrap().to_owned();
        wait_ready(&kms, "CryptFlow KMS").await.unwrap();
        let e = wait_ready(&kms, "CryptFlow aggregator").await.unwrap_err();
        assert!(e.to_string().contains("answers as `CryptFlow KMS`"), "{e}");
        wait_ready(stack.aggregator_url(), "CryptFlow aggregator").await.unwrap();
        stack.stop().await;
    }
}
