//! A KMS and an aggregator in this process, for `cryptflow demo`: temporary SQLite databases
//! and blob directory, an ephemeral token-issuer key and master key, real HTTP listeners on
//! loopback. Everything is deleted when the stack stops.

use cryptflow_client::{Client, Token};
use cryptflow_services::auth::{generate_ed25519_pem, Issuer, Verifier, DEFAULT_LEEWAY};
use cryptflow_services::{db, ClientId, Role};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Lifetime of the demo's tokens.
const TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);

/// The running services.
pub struct LocalStack {
    /// KMS base URL.
    pub kms_url: String,
    /// Aggregator base URL.
    pub aggregator_url: String,
    issuer: Issuer,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
    pools: Vec<sqlx::AnyPool>,
    /// Deleted on drop, after the services stopped.
    _dir: tempfile::TempDir,
}

async fn listener() -> Result<TcpListener, String> {
    TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("cannot listen on loopback: {e}"))
}

fn url(l: &TcpListener) -> Result<String, String> {
    Ok(format!("http://{}", l.local_addr().map_err(|e| e.to_string())?))
}

impl LocalStack {
    /// Starts both services.
    pub async fn start() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("cryptflow-demo-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let (private, public) = generate_ed25519_pem().map_err(|e| e.to_string())?;
        let issuer = Issuer::from_pem("demo", private.as_bytes()).map_err(|e| e.to_string())?;
        let verifier = |aud: &str| -> Result<Arc<Verifier>, String> {
            Verifier::new(aud, DEFAULT_LEEWAY, [("demo", public.as_bytes())])
                .map(Arc::new)
                .map_err(|e| e.to_string())
        };
        let sqlite = |name: &str| format!("sqlite://{}?mode=rwc", dir.path().join(name).display());

        let kms_db = sqlite("kms.db");
        let kms_pool = db::connect(&kms_db, 4).await.map_err(|e| format!("KMS database: {e}"))?;
        db::migrate(&kms_pool, &kms_db, &cryptflow_kms::MIGRATIONS)
            .await
            .map_err(|e| format!("KMS migrations: {e}"))?;
        let kms_state = cryptflow_kms::AppState {
            pool: kms_pool.clone(),
            verifier: verifier("kms")?,
            master: Arc::new(cryptflow_kms::MasterKey::generate()),
            metrics: Arc::default(),
            audit_lock: Arc::default(),
        };
        let (api, metrics) = (listener().await?, listener().await?);
        let kms_url = url(&api)?;
        let (kms_stop, rx) = oneshot::channel::<()>();
        let kms_task =
            tokio::spawn(cryptflow_kms::launch(api, metrics, kms_state, 1 << 20, async {
                let _ = rx.await;
            }));

        let token_file = dir.path().join("aggregator-kms.jwt");
        let agg_token = issuer
            .mint(&id("aggregator")?, Role::Aggregator, "kms", TOKEN_TTL)
            .map_err(|e| e.to_string())?;
        std::fs::write(&token_file, agg_token).map_err(|e| format!("token file: {e}"))?;
        let agg_db = sqlite("aggregator.db");
        let agg_pool =
            db::connect(&agg_db, 4).await.map_err(|e| format!("aggregator database: {e}"))?;
        db::migrate(&agg_pool, &agg_db, &cryptflow_aggregator::MIGRATIONS)
            .await
            .map_err(|e| format!("aggregator migrations: {e}"))?;
        let state = cryptflow_aggregator::AppState {
            pool: agg_pool.clone(),
            verifier: verifier("aggregator")?,
            kms: cryptflow_aggregator::kms_client::KmsClient::new(&kms_url, token_file),
            blobs: cryptflow_aggregator::blob::BlobStore::open(dir.path().join("blobs"))
                .map_err(|e| format!("blob store: {e}"))?,
            metrics: Arc::default(),
            accumulators: Arc::default(),
            uploads: Arc::new(tokio::sync::Semaphore::new(64)),
            publish_lock: Arc::default(),
        };
        let (api, metrics) = (listener().await?, listener().await?);
        let aggregator_url = url(&api)?;
        let (agg_stop, rx) = oneshot::channel::<()>();
        let agg_task = tokio::spawn(cryptflow_aggregator::launch(
            api,
            metrics,
            state,
            Duration::from_millis(500),
            async {
                let _ = rx.await;
            },
        ));
        Ok(Self {
            kms_url,
            aggregator_url,
            issuer,
            stops: vec![agg_stop, kms_stop],
            tasks: vec![agg_task, kms_task],
            pools: vec![agg_pool, kms_pool],
            _dir: dir,
        })
    }

    /// An SDK client acting as `subject` with `role`, holding a token for each service.
    pub fn client(&self, subject: &str, role: Role) -> Result<Client, String> {
        let sub = id(subject)?;
        let mint = |aud: &str| {
            self.issuer.mint(&sub, role, aud, TOKEN_TTL).map(Token::new).map_err(|e| e.to_string())
        };
        Client::builder(&self.aggregator_url, &self.kms_url)
            .aggregator_token(mint("aggregator")?)
            .kms_token(mint("kms")?)
            .build()
            .map_err(|e| e.to_string())
    }

    /// Stops both services and deletes their data.
    pub async fn stop(mut self) -> Result<(), String> {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for t in self.tasks.drain(..) {
            t.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        }
        for p in &self.pools {
            p.close().await;
        }
        Ok(())
    }
}

fn id(s: &str) -> Result<ClientId, String> {
    ClientId::parse(s).map_err(|e| e.to_string())
}
