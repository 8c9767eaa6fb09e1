//! The client: one handle on an aggregator and the key-manager committee, acting as one site
//! (or an operator), with its credentials.

use crate::error::{ClientError, Result};
use crate::http::{decode, protocol, read_body, send, with_retries, Failure, Service};
use crate::retry::RetryPolicy;
use cryptflow_he::sharing::CommitteeShape;
use cryptflow_services::api::kms::RegisteredRound;
use cryptflow_services::api::round::{RoundInfo, RoundRequest, RoundState};
use cryptflow_services::protocol::{Committee, SiteKey};
use cryptflow_services::{ClientId, Role, RoundId};
use reqwest::header::CONTENT_TYPE;
use reqwest::RequestBuilder;
use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Largest JSON document accepted from a server (a round of 10^5 clients is ~15 MB).
pub(crate) const MAX_JSON_BYTES: usize = 64 << 20;

/// A bearer token (a compact JWT). Zeroized on drop, never printed.
#[derive(Clone)]
pub struct Token(Zeroizing<String>);

impl Token {
    /// Wraps a token, trimming surrounding whitespace (as read from a file).
    pub fn new(token: impl Into<String>) -> Self {
        let t: String = token.into();
        Self(Zeroizing::new(t.trim().to_owned()))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What a client refuses to take part in, checked before anything is sent.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientPolicy {
    /// Refuse rounds whose `min_clients` (and key managers' `m`) allow fewer contributors
    /// than this. With `min_clients = 1` the mean *is* a single update; with 2 each of the two
    /// learns the other's from the mean; in general `min_contributors − 2` members colluding
    /// with the aggregator learn nothing about a chosen other member's update beyond the mean,
    /// `min_contributors − 1` of them learn it. Default 3: one colluding member tolerated.
    pub min_contributors: u32,
    /// Refuse to submit under a committee that tolerates fewer than this many key managers
    /// colluding with the aggregator (`2t − n − 1`, see
    /// [`CommitteeShape::tolerated_colluding`]).
    /// Default 1: `(4, 3)`, `(3, 3)`, `(5, 4)`, `(7, 5)` pass, `(3, 2)` and `(5, 3)` are refused.
    pub min_tolerated_colluding_nodes: u8,
    /// Accept a committee of one key manager (`n = 1`), which reads every update if it sides
    /// with the aggregator. Default `false`: a single node is refused whatever
    /// `min_tolerated_colluding_nodes` says.
    pub allow_single_key_manager: bool,
    /// If set, refuse rounds listing a client outside this set.
    pub allowed_peers: Option<BTreeSet<ClientId>>,
    /// Whether [`Client::fetch_mean`] recomputes the aggregate from the members' uploads.
    pub verify: Verify,
    /// Refuse rounds without distributed differential privacy. Default `false`.
    pub require_dp: bool,
    /// In a DP round, refuse noise sized against fewer than this many colluding members
    /// (`t_c`). Default 1 (the least any DP round declares: every member knows its own share).
    pub min_dp_colluders: u32,
    /// In a DP round, refuse noise sized for fewer than this many honest shares (`m_h`).
    /// Default 1.
    pub min_dp_honest_shares: u32,
    /// The site's privacy budget: refuse a round whose charge would take the journal's spend
    /// (every DP round this site uploaded to, in any training) past `ε` at `δ`, and — once
    /// set — every round without DP. Default none.
    pub dp_budget: Option<DpBudget>,
}

/// A site's privacy budget, `(ε, δ)`: the spend its journal records may not pass `ε` at `δ`
/// (Rényi DP at the accountant's orders, converted as `dp-accounting` does).
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct DpBudget {
    /// `ε > 0`.
    pub epsilon: f64,
    /// `δ ∈ (0, 1)`.
    pub delta: f64,
}

impl DpBudget {
    /// Checks `ε > 0` (finite) and `δ ∈ (0, 1)`.
    ///
    /// # Errors
    /// [`crate::ClientError::Config`] naming `dp_epsilon` or `dp_delta`.
    pub fn try_new(epsilon: f64, delta: f64) -> crate::Result<Self> {
        if !(epsilon.is_finite() && epsilon > 0.0) {
            return Err(crate::ClientError::Config(format!(
                "dp_epsilon = {epsilon}: must be a positive number"
            )));
        }
        if !(delta > 0.0 && delta < 1.0) {
            return Err(crate::ClientError::Config(format!(
                "dp_delta = {delta}: must be in (0, 1)"
            )));
        }
        Ok(Self { epsilon, delta })
    }
}

impl Default for ClientPolicy {
    /// At least three contributors, a committee that tolerates one colluding key manager (no
    /// single key manager), any peers, verification where cheap ([`Verify::Auto`]).
    fn default() -> Self {
        Self {
            min_contributors: 3,
            min_tolerated_colluding_nodes: 1,
            allow_single_key_manager: false,
            allowed_peers: None,
            verify: Verify::Auto,
            require_dp: false,
            min_dp_colluders: 1,
            min_dp_honest_shares: 1,
            dp_budget: None,
        }
    }
}

impl ClientPolicy {
    /// Why this policy refuses to submit under a committee of `shape`, if it does: a single key
    /// manager without [`ClientPolicy::allow_single_key_manager`], or fewer tolerated colluding
    /// nodes than [`ClientPolicy::min_tolerated_colluding_nodes`]. The text names the setting
    /// and both numbers that matter (`2t − n − 1`, and `t − 1` against a verifier).
    pub fn committee_refusal(&self, shape: CommitteeShape) -> Option<String> {
        let (n, t) = (shape.nodes(), shape.threshold());
        if n == 1 {
            return (!self.allow_single_key_manager).then(|| {
                "the committee is a single key manager (n = 1): if it sides with the aggregator it \
                 reads every update; this site's policy refuses it unless allow_single_key_manager \
                 is set"
                    .to_owned()
            });
        }
        let tolerated = shape.tolerated_colluding();
        let k = u16::from(self.min_tolerated_colluding_nodes);
        (tolerated < self.min_tolerated_colluding_nodes).then(|| {
            format!(
                "the committee (n, t) = ({n}, {t}) tolerates {tolerated} key manager(s) colluding \
                 with the aggregator (2t − n − 1) and {} colluding with a verifier (t − 1); this \
                 site's policy needs min_tolerated_colluding_nodes = {k} — e.g. (n, t) = ({}, {}) \
                 tolerates {k} with one node down",
                shape.tolerated_colluding_with_verifier(),
                k + 3,
                k + 2
            )
        })
    }
}

/// Whether and how [`Client::fetch_mean`] verifies the aggregate. **Recomputing** fetches
/// every upload of the contributor set, checks each against the digest its member signed in
/// its deposits (and the key managers recorded with the set), sums them as the aggregator
/// should have, and compares — a proof. **Sampling** checks `s` verification spans drawn with
/// this client's own randomness: each member's span against the upload root it signed, their
/// sum against the aggregate's span — a deterrent, caught with probability `s/#spans` for a
/// single tampered span. Only roster readers (and admins) may fetch uploads: a verifier holds
/// every member's ciphertext, so it and `t` colluding key managers could read updates.
/// Whatever the policy, the aggregate must be the one the key managers recorded with the set
/// (every release echoes its digest), so a reader that does not verify reads the aggregate
/// every verifying reader checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Never (the mean is still range-checked against the clip bound).
    Off,
    /// When this client is a roster reader: recompute if the uploads total at most
    /// [`AUTO_VERIFY_BYTES`], else sample [`DEFAULT_SAMPLED_SPANS`] spans. Other clients:
    /// [`crate::Verification::NotVerified`] says why not.
    Auto,
    /// Always recompute: a client that cannot fails ([`ClientError::Verification`]).
    Always,
    /// Sample this many spans (every span if the round has fewer).
    Spans(u32),
}

/// The most upload bytes (`|S|` uploads of the round's size) [`Verify::Auto`] downloads to
/// recompute an aggregate: 1 GiB (e.g. 8 uploads of 10^6 values at 28 bits are 28 MB).
pub const AUTO_VERIFY_BYTES: u64 = 1 << 30;

/// Spans [`Verify::Auto`] samples above [`AUTO_VERIFY_BYTES`]: 128 (of the `d/2048` spans of
/// a round of `d` values; about `|S|·128·256·w` bytes, 7.6 MB for 8 uploads at 29 bits).
pub const DEFAULT_SAMPLED_SPANS: u32 = 128;

/// Builds a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    aggregator_url: String,
    aggregator_token: Option<Token>,
    committee: Option<Committee>,
    site: Option<(ClientId, Arc<SiteKey>)>,
    reader: bool,
    retry: RetryPolicy,
    connect_timeout: Duration,
    read_timeout: Duration,
    policy: ClientPolicy,
    journal: Option<PathBuf>,
    roots: Vec<Vec<u8>>,
    grace: Duration,
}

impl ClientBuilder {
    /// Also trusts the certificate authorities in this PEM bundle for HTTPS (a company CA, a
    /// test cluster's self-signed Ingress), besides the public web roots.
    pub fn root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.roots.push(pem.into());
        self
    }

    /// Token for the aggregator (audience `aggregator`, from the consortium's issuer).
    pub fn aggregator_token(mut self, token: Token) -> Self {
        self.aggregator_token = Some(token);
        self
    }

    /// The committee file's contents, as pinned by this site: needed to submit and to fetch.
    pub fn committee(mut self, committee: Committee) -> Self {
        self.committee = Some(committee);
        self
    }

    /// This site's roster identity: its client id and signing key (`cryptflow keygen`). It
    /// signs deposits and authenticates the site at the key managers.
    pub fn site(mut self, id: ClientId, key: SiteKey) -> Self {
        self.site = Some((id, Arc::new(key)));
        self
    }

    /// Fetch means as a roster *reader* (a member the consortium lets read rounds it did not
    /// contribute to), not as a contributor.
    pub fn reader(mut self, reader: bool) -> Self {
        self.reader = reader;
        self
    }

    /// Retry policy (default: [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Once `t` key managers answered (a deposit, an echo, a release), how long the others
    /// still get before they are reported missing (default 5 s): a node that is down must
    /// not hold every submission for the whole retry budget.
    pub fn straggler_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Connection timeout (default 10 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Longest silence while reading a response (default 120 s; never longer than the retry
    /// budget, nor shorter than 5 s).
    pub fn read_timeout(mut self, t: Duration) -> Self {
        self.read_timeout = t;
        self
    }

    /// The client policy (default: [`ClientPolicy::default`]).
    pub fn policy(mut self, policy: ClientPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// A journal file recording which update went to which round, so the same update is never
    /// submitted to two rounds (their two means would differ by it). Required to submit:
    /// [`Client::submit`] without one is a [`ClientError::Config`](crate::ClientError::Config).
    /// Created owner-only (0600) with its directory; JSON lines, appended after each upload.
    pub fn journal(mut self, path: impl Into<PathBuf>) -> Self {
        self.journal = Some(path.into());
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client> {
        let u = self.aggregator_url.trim_end_matches('/');
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(ClientError::Config(format!(
                "aggregator URL `{}` must start with http:// or https://",
                self.aggregator_url
            )));
        }
        // A server that accepts and then says nothing must not hold a caller past its retry
        // budget: silence longer than the budget (at least MIN_SILENCE, for servers that
        // fsync before answering) ends the attempt, and with it the budget (#30, item 5).
        let silence = self.read_timeout.min(self.retry.budget.max(MIN_SILENCE));
        let mut http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout.min(self.retry.budget.max(MIN_SILENCE)))
            .read_timeout(silence);
        for pem in &self.roots {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientError::Config(format!("CA certificates: {e}")))?;
            if certs.is_empty() {
                return Err(ClientError::Config(
                    "CA certificates: no certificate in the PEM".into(),
                ));
            }
            for c in certs {
                http = http.add_root_certificate(c);
            }
        }
        let http = http.build().map_err(|e| ClientError::Config(format!("HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                aggregator_url: u.to_owned(),
                aggregator_token: self.aggregator_token,
                committee: self.committee,
                site: self.site,
                reader: self.reader,
                retry: self.retry,
                policy: self.policy,
                journal: self.journal,
                grace: self.grace,
                clock_offsets: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            }),
        })
    }
}

/// The shortest silence an attempt is allowed however small the retry budget.
const MIN_SILENCE: Duration = Duration::from_secs(5);

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) aggregator_url: String,
    pub(crate) aggregator_token: Option<Token>,
    pub(crate) committee: Option<Committee>,
    pub(crate) site: Option<(ClientId, Arc<SiteKey>)>,
    pub(crate) reader: bool,
    pub(crate) retry: RetryPolicy,
    pub(crate) policy: ClientPolicy,
    pub(crate) journal: Option<PathBuf>,
    pub(crate) grace: Duration,
    /// Per key manager, how far its clock is ahead of this machine's (seconds), learnt from
    /// its refusals; roster tokens for it are minted against its clock.
    pub(crate) clock_offsets: std::sync::Mutex<std::collections::BTreeMap<u8, i64>>,
}

/// The largest clock difference with a key manager that a client bridges, seconds: beyond it
/// a request fails naming the difference. Bridging means minting roster tokens against the
/// key manager's stated clock; bounding it bounds how far in the future a token minted
/// against a lying clock (plain HTTP) could become valid.
pub const MAX_CLOCK_SKEW_SECS: u64 = 900;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A CryptFlow client. Cheap to clone; clones share the connection pool.
///
/// ```no_run
/// # async fn run() -> Result<(), cryptflow_client::ClientError> {
/// use cryptflow_client::{Client, ModelUpdate, SubmitOptions, Token};
/// use cryptflow_services::protocol::{Committee, SiteKey};
/// use cryptflow_services::{ClientId, RoundId};
/// let committee = Committee::from_toml(&std::fs::read_to_string("committee.toml").unwrap()).unwrap();
/// let key = SiteKey::from_pem(&std::fs::read_to_string("site-0.key").unwrap()).unwrap();
/// let client = Client::builder("https://aggregator.example")
///     .aggregator_token(Token::new(std::fs::read_to_string("site-0.jwt").unwrap()))
///     .committee(committee)
///     .site(ClientId::parse("site-0").unwrap(), key)
///     .journal("site-0.journal")
///     .build()?;
/// let round = RoundId::parse("round-1").unwrap();
/// let update = ModelUpdate::from(ndarray::Array1::<f32>::zeros(1000));
/// client.submit(&round, update, SubmitOptions::default()).await?;
/// client.wait_for_aggregate(&round, std::time::Duration::from_secs(600)).await?;
/// let mean = client.fetch_mean(&round, None).await?.mean;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("aggregator_url", &self.inner.aggregator_url)
            .field("site", &self.inner.site.as_ref().map(|(id, _)| id))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts building a client for an aggregator (base URL).
    pub fn builder(aggregator_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            aggregator_url: aggregator_url.into(),
            aggregator_token: None,
            committee: None,
            site: None,
            reader: false,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(120),
            policy: ClientPolicy::default(),
            journal: None,
            roots: Vec::new(),
            grace: crate::quorum::GRACE,
        }
    }

    /// What this client refuses to take part in.
    pub fn policy(&self) -> &ClientPolicy {
        &self.inner.policy
    }

    pub(crate) fn committee(&self) -> Result<&Committee> {
        self.inner
            .committee
            .as_ref()
            .ok_or_else(|| ClientError::Config("no committee file was configured".into()))
    }

    pub(crate) fn site(&self) -> Result<(&ClientId, &SiteKey)> {
        self.inner.site.as_ref().map(|(id, k)| (id, k.as_ref())).ok_or_else(|| {
            ClientError::Config("no site identity (client id and key) was configured".into())
        })
    }

    pub(crate) fn retry(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// A request to the aggregator, with the aggregator token.
    pub(crate) fn aggregator(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> std::result::Result<RequestBuilder, Failure> {
        let token = self.inner.aggregator_token.as_ref().ok_or_else(|| {
            Failure::Fatal(ClientError::Config("no token for the aggregator was configured".into()))
        })?;
        Ok(self
            .inner
            .http
            .request(method, format!("{}{path}", self.inner.aggregator_url))
            .bearer_auth(token.expose()))
    }

    /// A request to key manager `x`, with a fresh roster token of this site.
    pub(crate) fn kms(
        &self,
        x: u8,
        method: reqwest::Method,
        path: &str,
    ) -> std::result::Result<RequestBuilder, Failure> {
        let node = self.committee().map_err(Failure::Fatal)?.node(x).ok_or_else(|| {
            Failure::Fatal(ClientError::Config(format!("no node {x} in the committee")))
        })?;
        let (id, key) = self.site().map_err(Failure::Fatal)?;
        let role = if self.inner.reader { Role::Reader } else { Role::Client };
        let now = unix_now().saturating_add_signed(self.clock_offset(x));
        Ok(self
            .inner
            .http
            .request(method, format!("{}{path}", node.url.trim_end_matches('/')))
            .bearer_auth(key.roster_token_at(
                id,
                role,
                &cryptflow_services::protocol::node_audience(node),
                now,
            )))
    }

    fn clock_offset(&self, x: u8) -> i64 {
        let offsets = self.inner.clock_offsets.lock().unwrap_or_else(|p| p.into_inner());
        offsets.get(&x).copied().unwrap_or(0)
    }

    /// Sends a request to key manager `x` (built by `build` on a fresh [`Client::kms`]
    /// request). When the node refuses the roster token for its time claims and states its
    /// clock, the two clocks differ: within [`MAX_CLOCK_SKEW_SECS`] the request is sent once
    /// more with a token minted against the node's clock (and later ones are too); beyond it,
    /// a configuration error says by how much they differ.
    pub(crate) async fn send_kms(
        &self,
        x: u8,
        method: reqwest::Method,
        path: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> std::result::Result<reqwest::Response, Failure> {
        let service = Service::Kms(x);
        let first = send(service, build(self.kms(x, method.clone(), path)?)).await;
        let server_time = match &first {
            Err(Failure::Fatal(ClientError::Refused { problem, .. })) if problem.status == 401 => {
                problem.server_time
            }
            _ => None,
        };
        let Some(server) = server_time else { return first };
        let local = unix_now();
        let skew = i64::try_from(server).unwrap_or(i64::MAX) - i64::try_from(local).unwrap_or(0);
        if skew.unsigned_abs() > MAX_CLOCK_SKEW_SECS {
            return Err(Failure::Fatal(ClientError::Config(clock_message(x, local, server))));
        }
        let before = {
            let mut offsets = self.inner.clock_offsets.lock().unwrap_or_else(|p| p.into_inner());
            offsets.insert(x, skew)
        };
        if before == Some(skew) {
            // Already minted against its clock: the refusal is about something else.
            return first;
        }
        send(service, build(self.kms(x, method, path)?)).await
    }

    /// GETs a JSON document from the aggregator (under retries).
    pub(crate) async fn aggregator_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T> {
        with_retries(self.retry(), Service::Aggregator, || async {
            let res =
                send(Service::Aggregator, self.aggregator(reqwest::Method::GET, path)?).await?;
            decode(
                Service::Aggregator,
                &read_body(Service::Aggregator, res, MAX_JSON_BYTES, None).await?,
            )
        })
        .await
    }

    /// Creates a round (admin): the aggregator plans it and registers it with the key
    /// managers. Repeating the same request after a lost answer returns the same round.
    pub async fn create_round(&self, request: &RoundRequest) -> Result<RoundInfo> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Input(e.to_string()))?;
        with_retries(self.retry(), Service::Aggregator, || async {
            let req = self
                .aggregator(reqwest::Method::POST, "/v1/rounds")?
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
            let res = send(Service::Aggregator, req).await?;
            decode(
                Service::Aggregator,
                &read_body(Service::Aggregator, res, MAX_JSON_BYTES, None).await?,
            )
        })
        .await
    }

    /// A round, as the aggregator shows it (admins, the round's members, readers).
    pub async fn round(&self, round: &RoundId) -> Result<RoundInfo> {
        self.aggregator_json(&format!("/v1/rounds/{round}")).await
    }

    /// Closes a round now (admin) and returns it.
    pub async fn close_round(&self, round: &RoundId) -> Result<RoundInfo> {
        let path = format!("/v1/rounds/{round}/close");
        with_retries(self.retry(), Service::Aggregator, || async {
            let res =
                send(Service::Aggregator, self.aggregator(reqwest::Method::POST, &path)?).await?;
            decode(
                Service::Aggregator,
                &read_body(Service::Aggregator, res, MAX_JSON_BYTES, None).await?,
            )
        })
        .await
    }

    /// The round as key manager `x` holds it (spec, its echo, state).
    pub async fn node_round(&self, x: u8, round: &RoundId) -> Result<RegisteredRound> {
        let service = Service::Kms(x);
        let path = format!("/v1/rounds/{round}");
        with_retries(self.retry(), service, || async {
            let res = self.send_kms(x, reqwest::Method::GET, &path, |r| r).await?;
            decode(service, &read_body(service, res, MAX_JSON_BYTES, None).await?)
        })
        .await
    }

    /// Polls the round until it is published — the key managers recorded its set, so the
    /// mean can be fetched — and returns it; fails if the round fails or `timeout` passes.
    /// Transient refusals and outages while waiting are waited through.
    pub async fn wait_for_aggregate(
        &self,
        round: &RoundId,
        timeout: Duration,
    ) -> Result<RoundInfo> {
        let until = Instant::now() + timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            // What the round looks like, for the timeout's message.
            let waits = match self.round(round).await {
                Ok(info) => match info.state {
                    RoundState::Published => return Ok(info),
                    RoundState::Failed => {
                        return Err(state_error(&info, "no aggregate will be published"))
                    }
                    RoundState::Open | RoundState::Aggregating => waiting_for(&info),
                },
                // An outage while waiting is waited through.
                Err(e @ (ClientError::Server { .. } | ClientError::Transport { .. }))
                    if Instant::now() < until =>
                {
                    format!("(its state could not be read: {e})")
                }
                Err(e) => return Err(e),
            };
            if Instant::now() + pause > until {
                return Err(ClientError::Timeout(format!("`{round}` {waits}")));
            }
            tokio::time::sleep(pause).await;
            // At most half a second late for a publication or a failure.
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

/// What a round that is not published yet waits for, in words: its uploads against its
/// bounds, and what publishes it.
pub(crate) fn waiting_for(info: &RoundInfo) -> String {
    let s = &info.spec;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let left = info.deadline - now;
    let deadline = if left >= 0 {
        format!("its deadline in {} (by this machine's clock)", human_duration(left))
    } else {
        format!("its deadline, passed {} ago (by this machine's clock)", human_duration(-left))
    };
    match info.state {
        RoundState::Open => format!(
            "(open: {} of {}–{} uploads; it publishes once {} sites have uploaded, at {deadline} \
             with at least {}, or when an operator closes it)",
            info.uploads, s.min_clients, s.max_clients, s.max_clients, s.min_clients
        ),
        RoundState::Aggregating => format!(
            "(aggregating {} uploads: summing them and waiting for the key managers to record \
             the contributor set, i.e. for every contributor's key shares to be deposited)",
            info.uploads
        ),
        RoundState::Published => "(published)".into(),
        RoundState::Failed => {
            format!("(failed: {})", info.failure.as_deref().unwrap_or("no reason given"))
        }
    }
}

/// `90 s`, `12 min`, `3.5 h`.
fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{:.1} h", s as f64 / 3600.0),
    }
}

pub(crate) fn state_error(info: &RoundInfo, detail: &str) -> ClientError {
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

pub(crate) fn aggregator_protocol(detail: impl Into<String>) -> ClientError {
    protocol(Service::Aggregator, detail.into())
}

/// "clocks differ by N s", with both clocks, the bound and the fix.
fn clock_message(x: u8, local: u64, server: u64) -> String {
    let (by, side) =
        if server > local { (server - local, "behind") } else { (local - server, "ahead of") };
    format!(
        "clocks differ by {by} s: this machine's clock is {side} key manager {x}'s ({local} vs \
         {server} s since the Unix epoch), more than the {MAX_CLOCK_SKEW_SECS} s a client \
         bridges; set the right time on the machine that is wrong (e.g. enable NTP with \
         `timedatectl set-ntp true`)"
    )
}
