//! The client: one handle on an aggregator and a KMS, with the caller's tokens.

use crate::error::{ClientError, Result};
use crate::progress::{report, Progress, ProgressFn};
use crate::retry::RetryPolicy;
use crate::update::ModelUpdate;
use bytes::Bytes;
use cryptflow_he::wire::compressed_ciphertext_len;
use cryptflow_he::{ClipReport, CompressedCiphertext, DecodeLimits, PublicKey, SecretKey, Wire};
use cryptflow_services::api::aggregator::{
    RoundInfo, RoundSpec, RoundState, SubmissionReceipt, Weighting,
};
use cryptflow_services::{ClientId, ErrorCode, Problem, RoundId};
use ndarray::Array1;
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, StatusCode};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Upload chunk size (and progress granularity).
const CHUNK: usize = 256 * 1024;
/// Largest public key accepted from a KMS (L = 32 at N = 2048 is 0.6 MB).
const MAX_PUBLIC_KEY_BYTES: usize = 8 << 20;
/// Largest secret key accepted from a KMS.
const MAX_SECRET_KEY_BYTES: usize = 1 << 20;
/// Largest JSON document accepted from a server.
const MAX_JSON_BYTES: usize = 16 << 20;

/// A bearer token (a compact JWT). Zeroized on drop, never printed.
#[derive(Clone)]
pub struct Token(Zeroizing<String>);

impl Token {
    /// Wraps a token, trimming surrounding whitespace (as read from a file).
    pub fn new(token: impl Into<String>) -> Self {
        let t: String = token.into();
        Self(Zeroizing::new(t.trim().to_owned()))
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Which server a request goes to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Service {
    Aggregator,
    Kms,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Aggregator => "aggregator",
            Service::Kms => "kms",
        }
    }
}

/// Builds a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    aggregator_url: String,
    kms_url: String,
    aggregator_token: Option<Token>,
    kms_token: Option<Token>,
    retry: RetryPolicy,
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl ClientBuilder {
    /// Token for the aggregator (audience `aggregator`).
    pub fn aggregator_token(mut self, token: Token) -> Self {
        self.aggregator_token = Some(token);
        self
    }

    /// Token for the KMS (audience `kms`); needed to fetch keys.
    pub fn kms_token(mut self, token: Token) -> Self {
        self.kms_token = Some(token);
        self
    }

    /// Retry policy (default: [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Connection timeout (default 10 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Longest silence while reading a response (default 120 s; a round's closing may take a
    /// while to fold the last uploads).
    pub fn read_timeout(mut self, t: Duration) -> Self {
        self.read_timeout = t;
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client> {
        let check = |name: &str, url: &str| -> Result<String> {
            let u = url.trim_end_matches('/');
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(ClientError::Config(format!(
                    "{name} URL `{url}` must start with http:// or https://"
                )));
            }
            Ok(u.to_owned())
        };
        let http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .build()
            .map_err(|e| ClientError::Config(format!("HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                aggregator_url: check("aggregator", &self.aggregator_url)?,
                kms_url: check("KMS", &self.kms_url)?,
                aggregator_token: self.aggregator_token,
                kms_token: self.kms_token,
                retry: RetryPolicy { max_attempts: self.retry.max_attempts.max(1), ..self.retry },
                keys: Mutex::default(),
            }),
        })
    }
}

struct Inner {
    http: reqwest::Client,
    aggregator_url: String,
    kms_url: String,
    aggregator_token: Option<Token>,
    kms_token: Option<Token>,
    retry: RetryPolicy,
    /// Public keys by round, with the ETag they were served with.
    keys: Mutex<HashMap<RoundId, Arc<PublicKey>>>,
}

/// A CryptFlow client. Cheap to clone; clones share the connection pool and key cache.
///
/// ```no_run
/// # async fn run() -> Result<(), cryptflow_client::ClientError> {
/// use cryptflow_client::{Client, ModelUpdate, SubmitOptions, Token};
/// use cryptflow_services::{ClientId, RoundId};
/// let client = Client::builder("http://127.0.0.1:8082", "http://127.0.0.1:8081")
///     .aggregator_token(Token::new(std::fs::read_to_string("site-0.aggregator.jwt").unwrap()))
///     .kms_token(Token::new(std::fs::read_to_string("site-0.kms.jwt").unwrap()))
///     .build()?;
/// let round = RoundId::parse("round-1").unwrap();
/// let me = ClientId::parse("site-0").unwrap();
/// let update = ModelUpdate::from(ndarray::Array1::<f64>::zeros(1000));
/// client.submit(&round, &me, &update, SubmitOptions::default()).await?;
/// let info = client.wait_for_aggregate(&round, std::time::Duration::from_secs(600)).await?;
/// let mean = client.fetch_mean(&round, None).await?.mean;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("aggregator_url", &self.inner.aggregator_url)
            .field("kms_url", &self.inner.kms_url)
            .finish_non_exhaustive()
    }
}

/// Options of [`Client::submit`].
#[derive(Clone, Debug, Default)]
pub struct SubmitOptions {
    /// The client's weight: required (1..=max_weight) for `samples` and `private` rounds,
    /// absent or 1 for `uniform` rounds.
    pub weight: Option<u64>,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
}

/// An encrypted update, ready to upload (see [`Client::encrypt`]).
#[derive(Clone, Debug)]
pub struct EncryptedUpdate {
    /// The serialised compressed ciphertext.
    pub bytes: Bytes,
    /// How many values were clipped to the round's bound.
    pub clipping: ClipReport,
    /// The public weight to declare on upload (`samples` rounds).
    pub public_weight: Option<u64>,
    /// Time spent encrypting.
    pub encrypt_time: Duration,
}

/// The outcome of [`Client::submit`].
#[derive(Clone, Debug)]
pub struct Submission {
    /// The aggregator's receipt (hash of what it stored).
    pub receipt: SubmissionReceipt,
    /// How many values were clipped.
    pub clipping: ClipReport,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Time spent encrypting.
    pub encrypt_time: Duration,
    /// Time spent uploading (retries included).
    pub upload_time: Duration,
}

/// The outcome of [`Client::fetch_mean`].
#[derive(Clone, Debug)]
pub struct Aggregate {
    /// The (weighted) mean of the contributions, in the round's layout.
    pub mean: ModelUpdate,
    /// The round as published.
    pub round: RoundInfo,
    /// Contributions in the aggregate.
    pub contributors: u32,
    /// Sum of the weights (public weights; for `private` rounds the decrypted weight sum).
    pub total_weight: f64,
    /// The planner's guarantee: no coordinate of `mean` is further than this from the exact
    /// mean of the (clipped) contributions.
    pub max_abs_error: f64,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Time spent downloading the aggregate and the key.
    pub download_time: Duration,
    /// Time spent decrypting.
    pub decrypt_time: Duration,
}

/// How one attempt ended.
enum Failure {
    /// Worth another attempt (after this server-requested delay, if any).
    Retry(ClientError, Option<Duration>),
    /// Final.
    Fatal(ClientError),
}

impl Client {
    /// Starts building a client for an aggregator and a KMS (base URLs).
    pub fn builder(aggregator_url: impl Into<String>, kms_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            aggregator_url: aggregator_url.into(),
            kms_url: kms_url.into(),
            aggregator_token: None,
            kms_token: None,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(120),
        }
    }

    fn request(
        &self,
        service: Service,
        method: reqwest::Method,
        path: &str,
    ) -> Result<RequestBuilder> {
        let (base, token) = match service {
            Service::Aggregator => (&self.inner.aggregator_url, &self.inner.aggregator_token),
            Service::Kms => (&self.inner.kms_url, &self.inner.kms_token),
        };
        let token = token.as_ref().ok_or_else(|| {
            ClientError::Config(format!("no token for the {} was configured", service.name()))
        })?;
        Ok(self.inner.http.request(method, format!("{base}{path}")).bearer_auth(token.expose()))
    }

    /// Runs `attempt` under the retry policy.
    async fn with_retries<T, F, Fut>(&self, service: Service, attempt: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        let policy = &self.inner.retry;
        let mut n = 1;
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(e, after)) => {
                    if n >= policy.max_attempts {
                        return Err(with_attempts(e, service, n));
                    }
                    tokio::time::sleep(policy.backoff(n, after)).await;
                    n += 1;
                }
            }
        }
    }

    /// Sends a request built by `build` (under retries) and decodes a JSON answer.
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        service: Service,
        build: impl Fn() -> Result<RequestBuilder>,
    ) -> Result<T> {
        self.with_retries(service, || async {
            let res = send(service, build().map_err(Failure::Fatal)?).await?;
            let body = read_body(service, res, MAX_JSON_BYTES, None).await?;
            serde_json::from_slice(&body).map_err(|e| {
                Failure::Fatal(ClientError::Protocol {
                    service: service.name(),
                    detail: format!("unexpected JSON: {e}"),
                })
            })
        })
        .await
    }

    /// GETs a binary body of at most `limit` bytes (under retries).
    async fn get_bytes(
        &self,
        service: Service,
        path: &str,
        limit: usize,
        progress: Option<&ProgressFn>,
    ) -> Result<Vec<u8>> {
        self.with_retries(service, || async {
            let req = self.request(service, reqwest::Method::GET, path).map_err(Failure::Fatal)?;
            let res = send(service, req).await?;
            read_body(service, res, limit, progress).await
        })
        .await
    }

    /// Creates a round (admin token). Creating the same round twice returns it; a
    /// different spec under the same id is refused (409).
    pub async fn create_round(&self, spec: &RoundSpec) -> Result<RoundInfo> {
        self.json(Service::Aggregator, || {
            Ok(self.request(Service::Aggregator, reqwest::Method::POST, "/v1/rounds")?.json(spec))
        })
        .await
    }

    /// The round's state, plan and (once published) transcript.
    pub async fn round(&self, round: &RoundId) -> Result<RoundInfo> {
        let path = format!("/v1/rounds/{round}");
        self.json(Service::Aggregator, || {
            self.request(Service::Aggregator, reqwest::Method::GET, &path)
        })
        .await
    }

    /// Closes a round now and publishes its aggregate (admin token); fails the round if it
    /// has fewer than `min_clients` contributions.
    pub async fn close_round(&self, round: &RoundId) -> Result<RoundInfo> {
        let path = format!("/v1/rounds/{round}/close");
        self.json(Service::Aggregator, || {
            self.request(Service::Aggregator, reqwest::Method::POST, &path)
        })
        .await
    }

    /// The round's public key, from the KMS, checked against the key id the aggregator
    /// announced for the round. Cached per round; a cached key is revalidated with its ETag
    /// only when the round names another key.
    pub async fn public_key(&self, round: &RoundInfo) -> Result<Arc<PublicKey>> {
        let id = &round.spec.round_id;
        let cached = self.cached_key(id);
        if let Some(pk) = &cached {
            if pk.id().to_string() == round.key_id {
                return Ok(pk.clone());
            }
        }
        let path = format!("/v1/rounds/{id}/key/public");
        let fetched = self
            .with_retries(Service::Kms, || async {
                let mut req = self
                    .request(Service::Kms, reqwest::Method::GET, &path)
                    .map_err(Failure::Fatal)?;
                if let Some(pk) = &cached {
                    req = req.header(IF_NONE_MATCH, format!("\"{}\"", pk.id()));
                }
                let res = send(Service::Kms, req).await?;
                if res.status() == StatusCode::NOT_MODIFIED {
                    return Ok(None);
                }
                let etag = res.headers().get(ETAG).cloned();
                let body = read_body(Service::Kms, res, MAX_PUBLIC_KEY_BYTES, None).await?;
                let pk = PublicKey::from_bytes(&body).map_err(|e| {
                    Failure::Fatal(protocol(Service::Kms, format!("undecodable public key: {e}")))
                })?;
                if let Some(tag) = etag.as_ref().and_then(|t| t.to_str().ok()) {
                    if tag.trim_matches('"') != pk.id().to_string() {
                        return Err(Failure::Fatal(protocol(
                            Service::Kms,
                            "the public key's ETag is not its key id".into(),
                        )));
                    }
                }
                Ok(Some(pk))
            })
            .await?;
        let pk = match (fetched, cached) {
            (Some(pk), _) => Arc::new(pk),
            (None, Some(pk)) => pk,
            (None, None) => {
                return Err(protocol(Service::Kms, "304 for a key never fetched".into()))
            }
        };
        if pk.id().to_string() != round.key_id {
            return Err(protocol(
                Service::Kms,
                format!(
                    "the KMS's key for round `{id}` is {}, the aggregator announced {}",
                    pk.id(),
                    round.key_id
                ),
            ));
        }
        if pk.bodies() != round.plan.bodies {
            return Err(protocol(Service::Kms, "the key's L differs from the round's plan".into()));
        }
        if let Ok(mut keys) = self.inner.keys.lock() {
            keys.insert(id.clone(), pk.clone());
        }
        Ok(pk)
    }

    fn cached_key(&self, round: &RoundId) -> Option<Arc<PublicKey>> {
        self.inner.keys.lock().ok().and_then(|k| k.get(round).cloned())
    }

    /// Encrypts an update for a round: checks it against the round's layout and weighting,
    /// applies the weight as the round's mode says, and encrypts (in parallel over blocks,
    /// on a blocking thread) and compresses to the plan's upload widths.
    pub async fn encrypt(
        &self,
        round: &RoundInfo,
        update: &ModelUpdate,
        weight: Option<u64>,
        progress: Option<&ProgressFn>,
    ) -> Result<EncryptedUpdate> {
        update.check_layout(&round.spec.layout)?;
        let need_weight = |max: u64| -> Result<u64> {
            match weight {
                Some(w) if (1..=max).contains(&w) => Ok(w),
                Some(w) => Err(ClientError::Input(format!(
                    "weight {w} is outside the round's range 1..={max}"
                ))),
                None => Err(ClientError::Input(format!(
                    "the round is weighted; give a weight in 1..={max}"
                ))),
            }
        };
        let (values, public_weight) = match round.spec.weighting {
            Weighting::Uniform => {
                if weight.is_some_and(|w| w != 1) {
                    return Err(ClientError::Input(
                        "the round is unweighted (uniform); do not give a weight".into(),
                    ));
                }
                (update.iter().collect::<Vec<f64>>(), None)
            }
            Weighting::Samples { max_weight } => {
                let w = need_weight(max_weight)?;
                (update.iter().collect(), Some(w))
            }
            Weighting::Private { max_weight } => {
                let w = need_weight(max_weight)?;
                let wf = w as f64;
                let mut v: Vec<f64> = Vec::with_capacity(update.len() + 1);
                v.extend(update.iter().map(|x| x * wf));
                v.push(wf);
                (v, None)
            }
        };
        let pk = self.public_key(round).await?;
        report(progress, Progress::Encrypting { values: values.len() as u64 });
        let plan = round.plan;
        let start = Instant::now();
        let encrypted = tokio::task::spawn_blocking(move || {
            pk.encrypt_compressed(&plan.encoding, Array1::from(values).view(), plan.upload)
        })
        .await
        .map_err(|e| ClientError::Config(format!("encryption task failed: {e}")))??;
        let bytes = Bytes::from(encrypted.ciphertext.to_bytes());
        let encrypt_time = start.elapsed();
        report(progress, Progress::Encrypted { bytes: bytes.len() as u64 });
        Ok(EncryptedUpdate { bytes, clipping: encrypted.clipping, public_weight, encrypt_time })
    }

    /// Uploads an encrypted update as `client`, streaming it in chunks with progress.
    /// Re-uploading the same ciphertext (e.g. after a lost answer) returns the same receipt.
    pub async fn upload(
        &self,
        round: &RoundId,
        client: &ClientId,
        update: &EncryptedUpdate,
        progress: Option<&ProgressFn>,
    ) -> Result<SubmissionReceipt> {
        let mut path = format!("/v1/rounds/{round}/submissions/{client}");
        if let Some(w) = update.public_weight {
            path.push_str(&format!("?weight={w}"));
        }
        let total = update.bytes.len() as u64;
        self.with_retries(Service::Aggregator, || async {
            let body = stream_body(update.bytes.clone(), progress.cloned());
            let req = self
                .request(Service::Aggregator, reqwest::Method::PUT, &path)
                .map_err(Failure::Fatal)?
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, total)
                .body(body);
            let res = send(Service::Aggregator, req).await?;
            let body = read_body(Service::Aggregator, res, MAX_JSON_BYTES, None).await?;
            serde_json::from_slice(&body).map_err(|e| {
                Failure::Fatal(protocol(Service::Aggregator, format!("unexpected receipt: {e}")))
            })
        })
        .await
    }

    /// Encrypts and uploads `update` as `client` (see [`Client::encrypt`], [`Client::upload`]).
    /// Checks the receipt's hash against what was sent.
    pub async fn submit(
        &self,
        round: &RoundId,
        client: &ClientId,
        update: &ModelUpdate,
        options: SubmitOptions,
    ) -> Result<Submission> {
        let info = self.round(round).await?;
        if info.state != RoundState::Open {
            return Err(state_error(&info, "it no longer accepts submissions"));
        }
        let progress = options.progress.as_ref();
        let encrypted = self.encrypt(&info, update, options.weight, progress).await?;
        let start = Instant::now();
        let receipt = self.upload(round, client, &encrypted, progress).await?;
        let upload_time = start.elapsed();
        let sent = hex::encode(Sha256::digest(&encrypted.bytes));
        if receipt.sha256 != sent {
            return Err(protocol(
                Service::Aggregator,
                format!("the receipt's hash {} is not the upload's {sent}", receipt.sha256),
            ));
        }
        Ok(Submission {
            receipt,
            clipping: encrypted.clipping,
            bytes: encrypted.bytes.len() as u64,
            encrypt_time: encrypted.encrypt_time,
            upload_time,
        })
    }

    /// Polls the round until it is published (returns it) or fails (error), at most `timeout`.
    pub async fn wait_for_aggregate(
        &self,
        round: &RoundId,
        timeout: Duration,
    ) -> Result<RoundInfo> {
        let until = Instant::now() + timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            let info = self.round(round).await?;
            match info.state {
                RoundState::Published => return Ok(info),
                RoundState::Failed => {
                    return Err(state_error(&info, "no aggregate will be published"))
                }
                RoundState::Open | RoundState::Aggregating => {}
            }
            if Instant::now() + pause > until {
                return Err(ClientError::Timeout(round.to_string()));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Downloads the published aggregate and the round's secret key (the KMS releases it
    /// only to the round's clients, once aggregated), checks both against the round's
    /// transcript, decrypts and returns the mean in the round's layout.
    pub async fn fetch_mean(
        &self,
        round: &RoundId,
        progress: Option<&ProgressFn>,
    ) -> Result<Aggregate> {
        let info = self.round(round).await?;
        if info.state != RoundState::Published {
            return Err(state_error(&info, "the aggregate is not published yet"));
        }
        let pk = self.public_key(&info).await?;
        let start = Instant::now();
        let expected = compressed_ciphertext_len(
            pk.params(),
            info.plan.bodies,
            info.encrypted_values,
            info.plan.download,
        )
        .ok_or_else(|| protocol(Service::Aggregator, "the round's size is invalid".into()))?;
        let expected = usize::try_from(expected)
            .map_err(|_| protocol(Service::Aggregator, "the aggregate is too large".into()))?;
        let path = format!("/v1/rounds/{round}/aggregate");
        let bytes = self.get_bytes(Service::Aggregator, &path, expected, progress).await?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let downloaded = bytes.len() as u64;
        if info.aggregate_sha256.as_deref() != Some(digest.as_str()) {
            return Err(protocol(
                Service::Aggregator,
                "the aggregate's hash differs from the published transcript".into(),
            ));
        }
        let ct = CompressedCiphertext::from_vec_with_limits(
            bytes,
            &DecodeLimits { max_values: info.encrypted_values },
        )
        .map_err(|e| protocol(Service::Aggregator, format!("undecodable aggregate: {e}")))?;
        let header = ct.header();
        let contributors = header.contributors();
        if header.key_id() != pk.id()
            || header.value_count() != info.encrypted_values
            || header.contributors() as usize != info.contributions.len()
        {
            return Err(protocol(
                Service::Aggregator,
                "the aggregate's header does not match the published round".into(),
            ));
        }
        let secret_path = format!("/v1/rounds/{round}/key/secret");
        let secret = self.get_bytes(Service::Kms, &secret_path, MAX_SECRET_KEY_BYTES, None).await?;
        let secret = Zeroizing::new(secret);
        let sk = SecretKey::from_bytes(&secret)
            .map_err(|e| protocol(Service::Kms, format!("undecodable secret key: {e}")))?;
        drop(secret);
        if sk.id() != pk.id() {
            return Err(protocol(Service::Kms, "the secret key is not the round's".into()));
        }
        let download_time = start.elapsed();
        report(progress, Progress::Decrypting);
        let start = Instant::now();
        let weighting = info.spec.weighting.clone();
        let d = usize::try_from(info.spec.layout.values().unwrap_or(0))
            .map_err(|_| protocol(Service::Aggregator, "the layout is too large".into()))?;
        let (flat, total_weight) = tokio::task::spawn_blocking(move || {
            let decrypted = sk.decrypt_compressed(&ct)?;
            Ok::<_, cryptflow_he::Error>(match weighting {
                Weighting::Private { .. } => {
                    let sums = decrypted.sum::<f64>();
                    let w = sums.get(d).copied().unwrap_or(0.0);
                    (sums.iter().take(d).map(|s| s / w).collect::<Vec<f64>>(), w)
                }
                _ => (
                    decrypted.weighted_mean::<f64>().to_vec(),
                    decrypted.header().total_weight() as f64,
                ),
            })
        })
        .await
        .map_err(|e| ClientError::Config(format!("decryption task failed: {e}")))??;
        if total_weight.is_nan() || total_weight <= 0.0 {
            return Err(protocol(Service::Aggregator, "the aggregate's weight is zero".into()));
        }
        let mean = ModelUpdate::from_flat(&info.spec.layout, &flat)?;
        Ok(Aggregate {
            mean,
            contributors,
            total_weight,
            max_abs_error: info.plan.encoding.max_quantisation_error(),
            bytes: downloaded,
            download_time,
            decrypt_time: start.elapsed(),
            round: info,
        })
    }
}

fn protocol(service: Service, detail: String) -> ClientError {
    ClientError::Protocol { service: service.name(), detail }
}

fn state_error(info: &RoundInfo, detail: &str) -> ClientError {
    let state = serde_json::to_value(info.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let detail = match &info.failure {
        Some(f) => format!("{detail} ({f})"),
        None => detail.to_owned(),
    };
    ClientError::RoundState { round: info.spec.round_id.to_string(), state, detail }
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

/// Sends one request and sorts the answer: success (and 304) through, 5xx and 429 to
/// retry, other 4xx final with the server's problem document.
async fn send(service: Service, req: RequestBuilder) -> std::result::Result<Response, Failure> {
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
        let code = match status.as_u16() {
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            409 => ErrorCode::Conflict,
            410 => ErrorCode::Gone,
            413 => ErrorCode::PayloadTooLarge,
            415 => ErrorCode::UnsupportedMediaType,
            422 => ErrorCode::Unprocessable,
            429 => ErrorCode::TooManyRequests,
            _ => ErrorCode::BadRequest,
        };
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

fn transport(service: Service, e: reqwest::Error) -> Failure {
    if e.is_builder() {
        Failure::Fatal(ClientError::Config(e.to_string()))
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
async fn read_body(
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

/// The upload body: the ciphertext in chunks, reporting each as it is taken.
fn stream_body(bytes: Bytes, progress: Option<ProgressFn>) -> reqwest::Body {
    let total = bytes.len() as u64;
    let chunks = (0..bytes.len().div_ceil(CHUNK)).map(move |i| {
        let end = ((i + 1) * CHUNK).min(bytes.len());
        let chunk = bytes.slice(i * CHUNK..end);
        if let Some(p) = &progress {
            p.report(Progress::Uploading { sent: end as u64, total });
        }
        Ok::<_, std::io::Error>(chunk)
    });
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}
