//! `submit`: check the round against the pinned committee and the client's policy, draw a
//! fresh key, encrypt **once** while streaming the upload and hashing it, deposit signed key
//! shares with every key manager that is up, and drop (zeroize) the key.
//!
//! The upload is never held whole: chunks of blocks are encrypted as the connection takes
//! them. A retry (a lost answer, a 5xx after the aggregator stored the upload, a 429)
//! re-derives the chunks from the same key and noise seed, and the encryptor checks each
//! against the digest it recorded on the first pass before handing it over — a changed input
//! stops the retry instead of sending a second encryption (DESIGN §3, invariant 1).

use crate::client::{aggregator_protocol, state_error, Client, MAX_JSON_BYTES};
use crate::error::{ClientError, Result};
use crate::http::{decode, read_body, send, with_retries, Failure, Service};
use crate::journal::Journal;
use crate::progress::{report, Progress, ProgressFn};
use crate::quorum;
use crate::update::ModelUpdate;
use bytes::Bytes;
use cryptflow_he::merkle::RootHasher;
use cryptflow_he::{ClientKey, ClipReport, Encryptor, RoundSetup};
use cryptflow_services::api::kms::{Deposit, DepositReceipt};
use cryptflow_services::api::round::{RoundInfo, RoundState, SubmissionReceipt};
use cryptflow_services::api::Base64Bytes;
use cryptflow_services::protocol::{self, Committee};
use cryptflow_services::sealed::{self, SealContext};
use cryptflow_services::{ClientId, RoundId, Sha256Digest};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Blocks encrypted per upload chunk (about 0.9 MB at 28 bits per value).
const BLOCKS_PER_CHUNK: u64 = 128;

/// Options of [`Client::submit`].
#[derive(Clone, Debug, Default)]
pub struct SubmitOptions {
    /// The contribution's sample count: required in `samples` rounds (within the round's
    /// range), refused otherwise.
    pub count: Option<u64>,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
    /// Submit even if the journal says this update went to another round already.
    pub allow_resubmission: bool,
    /// The experiment this submission belongs to, for the journal: the same update is refused
    /// in a second round of one experiment, but a deterministic re-run under a new name is not
    /// a resubmission. Naming a new experiment for the *same* rounds' updates gives up the
    /// journal's protection for them — only for genuine re-runs.
    pub experiment: Option<String>,
}

/// The outcome of [`Client::submit`].
#[derive(Clone, Debug)]
pub struct Submission {
    /// The aggregator's receipt (digest of what it stored).
    pub receipt: SubmissionReceipt,
    /// How many values were clipped to the round's bound.
    pub clipping: ClipReport,
    /// Bytes uploaded.
    pub bytes: u64,
    /// The key managers that accepted this client's deposit.
    pub deposited_with: Vec<u8>,
    /// Time spent encrypting and uploading (streamed together; retries included).
    pub upload_time: Duration,
    /// Time spent depositing key shares.
    pub deposit_time: Duration,
}

/// A round checked against the pinned committee: every node that answered echoes the same
/// signed spec as the aggregator shows.
#[derive(Clone, Debug)]
pub struct VerifiedRound {
    /// The round as the aggregator shows it.
    pub info: RoundInfo,
    /// What the spec implies for encryption.
    pub setup: RoundSetup,
    /// The spec hash every verified node signed.
    pub spec_hash: Sha256Digest,
    /// The nodes whose echo verified (at least `t`).
    pub nodes: Vec<u8>,
    /// Those of them still taking deposits for the round.
    pub open: Vec<u8>,
    /// The key managers' minimum set size `m`.
    pub min_set_size: u32,
    /// Each verified node's deposit key for the round, from its signed echo: deposits are
    /// sealed to it (`cryptflow_services::sealed`).
    pub deposit_keys: std::collections::BTreeMap<u8, Vec<u8>>,
}

impl Client {
    /// Checks a round against the pinned committee: asks every key manager for its echo of the
    /// round, verifies each signature with the pinned key and that each node holds the spec the
    /// aggregator shows; needs `t` agreeing nodes (a node that is down is skipped).
    pub async fn verify_round(&self, info: RoundInfo) -> Result<VerifiedRound> {
        let committee = self.committee()?;
        let round = info.spec.round_id.clone();
        // The layout is not in the spec itself, only its digest: the one shown must be the one
        // the key managers signed, and describe the spec's number of values.
        if protocol::layout_digest(&info.request.layout) != info.spec.layout_sha256
            || info.request.layout.values() != Some(info.spec.values)
        {
            return Err(aggregator_protocol(format!(
                "the layout shown for round {round} is not the one registered with the key managers"
            )));
        }
        let t = committee.shape().threshold() as usize;
        let calls = committee
            .nodes()
            .iter()
            .map(|n| {
                let (client, round, x) = (self.clone(), round.clone(), n.x);
                (x, async move { client.node_round(x, &round).await })
            })
            .collect();
        let mut verified = Vec::new();
        let mut deposit_keys = std::collections::BTreeMap::new();
        let mut open = Vec::new();
        let mut hashes = std::collections::BTreeSet::new();
        let mut m = 0;
        let mut unreachable = Vec::new();
        let mut refused_roster_token = 0;
        let mut clocks_differ = None;
        for (x, outcome) in quorum::gather(calls, t, self.inner.grace).await {
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(why) => {
                    unreachable.push(format!("{x} ({why})"));
                    continue;
                }
            };
            match outcome {
                Ok(reg) => {
                    if reg.echo.share_index != x {
                        return Err(ClientError::Committee(format!(
                            "key manager {x} answered with node {}'s echo",
                            reg.echo.share_index
                        )));
                    }
                    if reg.spec != info.spec {
                        return Err(ClientError::Committee(format!(
                            "key manager {x} holds another spec for round {round} than the aggregator shows"
                        )));
                    }
                    let hash = protocol::verify_echo(committee, &reg.spec, &reg.echo)
                        .map_err(|e| ClientError::Committee(format!("key manager {x}: {e}")))?;
                    // A signed but unusable deposit key: this node cannot take a deposit (the
                    // others may still be t), like a node that is down.
                    if let Err(e) = sealed::check_deposit_key(&reg.echo.deposit_key.0) {
                        unreachable.push(format!("{x} ({e})"));
                        continue;
                    }
                    hashes.insert(hash);
                    m = m.max(reg.echo.min_set_size);
                    if reg.state == cryptflow_services::api::kms::KmsRoundState::Open {
                        open.push(x);
                    }
                    verified.push(x);
                    deposit_keys.insert(x, reg.echo.deposit_key.0);
                }
                // A node that does not hold the round (restored from a backup, restarted
                // before the aggregator re-registered it) or answers nonsense is not counted;
                // t others may still agree. Only a node holding another spec is fatal.
                Err(e) => {
                    if let ClientError::Config(why) = &e {
                        clocks_differ.get_or_insert_with(|| why.clone());
                    }
                    refused_roster_token += usize::from(matches!(
                        &e,
                        // A refusal for time claims is about clocks, not the key.
                        ClientError::Refused { problem, .. }
                            if problem.status == 401 && problem.server_time.is_none()
                    ));
                    unreachable.push(format!("{x} ({e})"));
                }
            }
        }
        if let (true, Some(why)) = (verified.len() < t, clocks_differ) {
            // This machine's clock, or a node's, is off by more than a client bridges (#30).
            return Err(ClientError::Config(why));
        }
        if verified.len() < t
            && !unreachable.is_empty()
            && refused_roster_token == unreachable.len()
        {
            // Every node refused this site's roster token: a key that is not this site's (a
            // profile pointing at another site's key file), not a committee failure (#30).
            let (me, _) = self.site()?;
            return Err(ClientError::Config(format!(
                "the key managers refused {me}'s roster credentials ({}): the key file given \
                 (--key-file / key_file) must be {me}'s own roster key, the one whose public key \
                 is {me}'s entry in the consortium's roster",
                unreachable.join(", ")
            )));
        }
        if verified.len() < t {
            return Err(ClientError::Committee(format!(
                "only {} of the {t} key managers needed confirmed round {round}; not confirmed: {}",
                verified.len(),
                unreachable.join(", ")
            )));
        }
        if hashes.len() != 1 {
            return Err(ClientError::Committee(format!(
                "the key managers signed different spec hashes for round {round} (different rosters or m)"
            )));
        }
        let spec_hash =
            hashes.into_iter().next().ok_or_else(|| ClientError::Committee("no echo".into()))?;
        let setup = protocol::setup(&info.spec).map_err(|e| aggregator_protocol(e.to_string()))?;
        Ok(VerifiedRound {
            info,
            setup,
            spec_hash,
            nodes: verified,
            open,
            min_set_size: m,
            deposit_keys,
        })
    }

    /// The site's privacy budget against its journal's spend plus this round's charge (a
    /// site with a budget refuses rounds without DP). Checked before anything is sent.
    fn check_budget(
        &self,
        journal: &Journal,
        round: &VerifiedRound,
        charge: Option<&cryptflow_he::dp::accounting::Charge>,
    ) -> Result<()> {
        let Some(budget) = self.inner.policy.dp_budget else { return Ok(()) };
        let budget = crate::DpBudget::try_new(budget.epsilon, budget.delta)?;
        let id = &round.info.spec.round_id;
        let Some(charge) = charge else {
            return Err(ClientError::Policy(format!(
                "round {id} has no differential privacy; this site has a privacy budget (ε = {} at δ = {}), so \
                 it takes part only in DP rounds",
                budget.epsilon, budget.delta
            )));
        };
        let ledger = journal.ledger()?;
        let spent = ledger.epsilon(budget.delta)?;
        let after = cryptflow_he::dp::accounting::epsilon(&ledger.spent.plus(charge), budget.delta)
            .map_err(|e| ClientError::Config(format!("dp_delta: {e}")))?
            .0;
        if after > budget.epsilon {
            return Err(ClientError::Budget(format!(
                "round {id} would take this site's privacy spend from ε = {spent:.4} to ε = {after:.4} at \
                 δ = {}, past its budget ε = {} ({} DP rounds in its journal)",
                budget.delta, budget.epsilon, ledger.rounds
            )));
        }
        Ok(())
    }

    /// This site's privacy ledger: the DP rounds its journal records and their summed charge.
    ///
    /// # Errors
    /// [`ClientError::Config`] without a journal, or if it cannot be read.
    pub fn ledger(&self) -> Result<crate::Ledger> {
        let path = self.inner.journal.as_ref().ok_or_else(|| {
            ClientError::Config(
                "the privacy ledger is the journal: set one (`ClientBuilder::journal`)".into(),
            )
        })?;
        Journal::new(path).ledger()
    }

    /// The client's policy, checked before anything is sent.
    fn check_policy(&self, round: &VerifiedRound, me: &ClientId) -> Result<()> {
        let spec = &round.info.spec;
        if spec.clients.binary_search(me).is_err() {
            return Err(ClientError::Policy(format!(
                "{me} is not a member of round {}",
                spec.round_id
            )));
        }
        let policy = &self.inner.policy;
        // The key managers enforce max(min_clients, m), but a round that declares it would
        // publish fewer is refused as declared: it is a misconfiguration or an attempt.
        if spec.min_clients < policy.min_contributors {
            return Err(ClientError::Policy(format!(
                "round {} declares min_clients = {} (the key managers' m is {}); this client's policy \
                 needs at least {} — with fewer, the mean reveals individual updates",
                spec.round_id, spec.min_clients, round.min_set_size, policy.min_contributors
            )));
        }
        match spec.plan.dp() {
            None if policy.require_dp => {
                return Err(ClientError::Policy(format!(
                    "round {} has no differential privacy; this client's policy requires it",
                    spec.round_id
                )));
            }
            Some(dp) if dp.colluders() < policy.min_dp_colluders => {
                return Err(ClientError::Policy(format!(
                    "round {}'s noise withstands {} colluding members (colluders); this client's \
                     policy needs at least {}",
                    spec.round_id,
                    dp.colluders(),
                    policy.min_dp_colluders
                )));
            }
            Some(dp) if dp.honest_shares() < policy.min_dp_honest_shares => {
                return Err(ClientError::Policy(format!(
                    "round {}'s noise is sized for {} honest shares (honest_shares); this client's \
                     policy needs at least {}",
                    spec.round_id,
                    dp.honest_shares(),
                    policy.min_dp_honest_shares
                )));
            }
            _ => {}
        }
        if let Some(allowed) = &policy.allowed_peers {
            if let Some(stranger) = spec.clients.iter().find(|c| *c != me && !allowed.contains(*c))
            {
                return Err(ClientError::Policy(format!(
                    "round {} lists `{stranger}`, not an allowed peer",
                    spec.round_id
                )));
            }
        }
        Ok(())
    }

    /// Encrypts `update` for the round and uploads it as this site, then deposits signed key
    /// shares with the committee (see the [module docs](self)).
    pub async fn submit(
        &self,
        round: &RoundId,
        update: impl Into<Arc<ModelUpdate>>,
        options: SubmitOptions,
    ) -> Result<Submission> {
        let update: Arc<ModelUpdate> = update.into();
        let (me, _) = self.site()?;
        let me = me.clone();
        // The committee's shape is local knowledge: refused before any request.
        if let Some(why) = self.inner.policy.committee_refusal(self.committee()?.shape()) {
            return Err(ClientError::Policy(format!("round {round}: {why}")));
        }
        // A site submits only with its journal (#24): without one nothing stops the same update
        // going to two rounds, whose means then differ by it. Refused before any request.
        let journal = self.inner.journal.as_ref().map(Journal::new).ok_or_else(|| {
            ClientError::Config(
                "a site submits only with a journal of which update went to which round (the same update \
                 in two rounds is exposed by their two means): set one — `ClientBuilder::journal`, the \
                 CLI's `--journal-file` or profile `journal_file`, Python's `journal_file`"
                    .into(),
            )
        })?;
        let info = self.round(round).await?;
        if &info.spec.round_id != round {
            return Err(aggregator_protocol(format!(
                "asked for round {round}, got {}",
                info.spec.round_id
            )));
        }
        if info.state != RoundState::Open {
            return Err(state_error(&info, "it no longer accepts uploads"));
        }
        // Named tensors in any order are taken in the round's; the journal's fingerprint is
        // of that order, so a reordering is the same update.
        let update = ModelUpdate::in_layout_order(update, &info.request.layout)?;
        update.check_layout(&info.request.layout)?;
        let fingerprint = journal.check(
            round,
            &update,
            options.experiment.as_deref(),
            options.allow_resubmission,
        )?;
        let verified = self.verify_round(info).await?;
        // The seed mixes the aggregator's committed contribution with t nodes' signed nonces
        // (#24): nothing is encrypted under a seed the aggregator fixed alone, or reused. Checked
        // after the echoes, so that a wrong committee file is reported as such.
        protocol::check_seed(self.committee()?, &verified.info.spec).map_err(|e| {
            aggregator_protocol(format!(
                "round {round}'s mask seed was not fixed with the key managers: {e}"
            ))
        })?;
        // Nothing is uploaded for a round fewer than t key managers still take deposits for
        // (its key shares destroyed by an admin, or a set already recorded).
        let t = self.committee()?.shape().threshold() as usize;
        if verified.open.len() < t {
            return Err(ClientError::RoundState {
                round: round.to_string(),
                state: "closed at the key managers".into(),
                detail: format!(
                    "only key managers {:?} still take deposits for it, {t} are needed",
                    verified.open
                ),
            });
        }
        self.check_policy(&verified, &me)?;
        let charge = verified.info.spec.plan.dp().map(|d| d.charge());
        // A DP round's budget check and its charge happen under the journal's lock: two
        // submissions at once cannot both spend what is left.
        let _held = match (&charge, self.inner.policy.dp_budget) {
            (Some(_), Some(_)) => Some(journal.lock(self.retry().budget).await?),
            _ => None,
        };
        self.check_budget(&journal, &verified, charge.as_ref())?;
        let update = update.standard_layout();
        let progress = options.progress.as_ref();
        let key = ClientKey::generate(verified.setup.params())?;
        let encryptor = Arc::new(key.encryptor(&verified.setup, options.count)?);
        report(progress, Progress::Encrypting { values: verified.setup.slots() });
        let start = Instant::now();
        let (receipt, digests, clipping) = self
            .upload(round, &me, &verified.setup, encryptor.clone(), update.clone(), progress)
            .await?;
        let digest = digests.sha256;
        if receipt.upload_sha256 != digest {
            return Err(aggregator_protocol(format!(
                "the receipt's digest {} is not the upload's {digest}",
                receipt.upload_sha256
            )));
        }
        let upload_time = start.elapsed();
        drop(encryptor);
        // Journaled before the deposits: once a deposit may have reached a node, the update
        // may end up in a set — even if this process dies or loses the answers.
        journal.record(round, &fingerprint, charge.as_ref())?;
        let start = Instant::now();
        let deposited_with = self.deposit(&verified, &me, &key, &digests, progress).await?;
        drop(key); // zeroized: the key existed only for this encryption and these shares
        Ok(Submission {
            receipt,
            clipping,
            bytes: verified.setup.upload_len(),
            deposited_with,
            upload_time,
            deposit_time: start.elapsed(),
        })
    }

    /// Streams the upload (header, then chunks of blocks encrypted on the fly) under the retry
    /// policy; returns the receipt, the upload's digests and the clip report.
    async fn upload(
        &self,
        round: &RoundId,
        me: &ClientId,
        setup: &RoundSetup,
        encryptor: Arc<Encryptor>,
        update: Arc<ModelUpdate>,
        progress: Option<&ProgressFn>,
    ) -> Result<(SubmissionReceipt, UploadDigests, ClipReport)> {
        let path = format!("/v1/rounds/{round}/submissions/{me}");
        let total = setup.upload_len();
        let outcome: Arc<Mutex<StreamOutcome>> = Arc::default();
        let receipt = with_retries(self.retry(), Service::Aggregator, || async {
            let body = upload_stream(
                *setup,
                encryptor.clone(),
                update.clone(),
                progress.cloned(),
                outcome.clone(),
            );
            let req = self
                .aggregator(reqwest::Method::PUT, &path)?
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, total)
                .body(body);
            let res = send(Service::Aggregator, req)
                .await
                .map_err(|f| stream_error_is_fatal(f, &outcome))?;
            decode::<SubmissionReceipt>(
                Service::Aggregator,
                &read_body(Service::Aggregator, res, MAX_JSON_BYTES, None).await?,
            )
        })
        .await?;
        let (digests, clipping) = outcome.lock().ok().and_then(|o| o.done).ok_or_else(|| {
            aggregator_protocol("the server answered before the whole upload was sent")
        })?;
        Ok((receipt, digests, clipping))
    }

    /// Deposits this client's signed share with every key manager that registered the round;
    /// needs `t` of them.
    async fn deposit(
        &self,
        round: &VerifiedRound,
        me: &ClientId,
        key: &ClientKey,
        digests: &UploadDigests,
        progress: Option<&ProgressFn>,
    ) -> Result<Vec<u8>> {
        let upload = &digests.sha256;
        let committee: &Committee = self.committee()?;
        let (_, site) = self.site()?;
        let bodies = deposit_bodies(round, me, site, key, committee, digests)?;
        let round_id = &round.info.spec.round_id;
        let path = format!("/v1/rounds/{round_id}/deposits/{me}");
        let calls = bodies
            .iter()
            .map(|(x, body)| {
                let (client, path, x) = (self.clone(), path.clone(), *x);
                let call = async move {
                    let service = Service::Kms(x);
                    with_retries(client.retry(), service, || async {
                        let res = client
                            .send_kms(x, reqwest::Method::PUT, &path, |r| {
                                r.header(CONTENT_TYPE, "application/json").body(body.to_vec())
                            })
                            .await?;
                        decode::<DepositReceipt>(
                            service,
                            &read_body(service, res, MAX_JSON_BYTES, None).await?,
                        )
                    })
                    .await
                };
                (x, call)
            })
            .collect();
        let nodes = committee.shape().nodes();
        let t = committee.shape().threshold() as usize;
        // Every node that is up gets its share; one that is down does not hold the client
        // past quorum::GRACE once `t` have theirs.
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for (x, outcome) in quorum::gather(calls, t, self.inner.grace).await {
            match outcome {
                Ok(Ok(r)) if r.upload_sha256 == *upload && r.share_index == x => {
                    done.push(x);
                    report(progress, Progress::Depositing { done: done.len() as u8, nodes });
                }
                Ok(Ok(_)) => failed.push(format!("{x} (its receipt names another upload)")),
                Ok(Err(e)) => failed.push(format!("{x} ({e})")),
                Err(why) => failed.push(format!("{x} ({why})")),
            }
        }
        if done.len() < t {
            return Err(ClientError::Committee(format!(
                "the key shares reached {} key managers, {t} are needed; failed: {}",
                done.len(),
                failed.join(", ")
            )));
        }
        Ok(done)
    }
}

/// An upload's SHA-256 (the aggregator's receipt names it) and its root over verification
/// spans (`cryptflow_he::merkle`), both signed in the deposits.
#[derive(Copy, Clone, Debug)]
struct UploadDigests {
    sha256: Sha256Digest,
    root: Sha256Digest,
}

/// What the upload stream reports back: the digests and clip report once complete, or the
/// error that stopped encryption (never retried: a changed input means withdrawing).
#[derive(Default)]
struct StreamOutcome {
    done: Option<(UploadDigests, ClipReport)>,
    stopped: Option<cryptflow_he::Error>,
}

/// An attempt whose body stream stopped on an encryption error is final.
fn stream_error_is_fatal(f: Failure, outcome: &Mutex<StreamOutcome>) -> Failure {
    match outcome.lock().ok().and_then(|mut o| o.stopped.take()) {
        Some(e) => Failure::Fatal(ClientError::Crypto(e)),
        None => f,
    }
}

/// The upload body: the header, then chunks of `BLOCKS_PER_CHUNK` blocks, each encrypted on a
/// blocking thread when the connection asks for it. Sets `outcome` to the digest and clip
/// report once the last byte is produced.
fn upload_stream(
    setup: RoundSetup,
    encryptor: Arc<Encryptor>,
    update: Arc<ModelUpdate>,
    progress: Option<ProgressFn>,
    outcome: Arc<Mutex<StreamOutcome>>,
) -> reqwest::Body {
    struct State {
        next: Option<u64>,
        digest: Sha256,
        root: RootHasher,
        clipping: ClipReport,
        sent: u64,
    }
    let header = Bytes::from(encryptor.header_bytes());
    let total = setup.upload_len();
    let blocks = setup.blocks();
    let mut first = Sha256::new();
    first.update(&header);
    let mut root = RootHasher::new(&setup);
    root.update(&header);
    let state = State {
        next: Some(0),
        digest: first,
        root,
        clipping: ClipReport::default(),
        sent: header.len() as u64,
    };
    let chunks = futures_util::stream::unfold(state, move |mut st| {
        let (encryptor, update, progress, outcome) =
            (encryptor.clone(), update.clone(), progress.clone(), outcome.clone());
        async move {
            let start = st.next?;
            let end = (start + BLOCKS_PER_CHUNK).min(blocks);
            let slots = setup.block_slots(start).start..setup.block_slots(end - 1).end;
            let range = setup.payload_range(slots);
            let len = (range.end - range.start) as usize;
            let encrypted = tokio::task::spawn_blocking(move || {
                let mut out = vec![0u8; len];
                let values = update.values();
                encryptor.encrypt_blocks(&values, start..end, &mut out).map(|clip| (out, clip))
            })
            .await;
            let (bytes, clip) = match encrypted {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    let text = e.to_string();
                    if let Ok(mut o) = outcome.lock() {
                        o.stopped = Some(e);
                    }
                    return Some((Err(std::io::Error::other(text)), State { next: None, ..st }));
                }
                Err(e) => {
                    return Some((
                        Err(std::io::Error::other(e.to_string())),
                        State { next: None, ..st },
                    ))
                }
            };
            st.digest.update(&bytes);
            st.root.update(&bytes);
            st.clipping = st.clipping.merge(clip);
            st.sent += bytes.len() as u64;
            report(progress.as_ref(), Progress::Uploading { sent: st.sent, total });
            if end == blocks {
                let sha256 = Sha256Digest(std::mem::take(&mut st.digest).finalize().into());
                let root = std::mem::replace(&mut st.root, RootHasher::new(&setup)).finish();
                match (root, outcome.lock()) {
                    (Ok(root), Ok(mut o)) => {
                        o.done =
                            Some((UploadDigests { sha256, root: Sha256Digest(root) }, st.clipping))
                    }
                    (Err(e), Ok(mut o)) => o.stopped = Some(e),
                    _ => {}
                }
                st.next = None;
            } else {
                st.next = Some(end);
            }
            Some((Ok(Bytes::from(bytes)), st))
        }
    });
    let head = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(header) });
    reqwest::Body::wrap_stream(futures_util::StreamExt::chain(head, chunks))
}

/// The signed deposit for every node, serialised (zeroized on drop).
fn deposit_bodies(
    round: &VerifiedRound,
    me: &ClientId,
    site: &cryptflow_services::protocol::SiteKey,
    key: &ClientKey,
    committee: &Committee,
    upload: &UploadDigests,
) -> Result<Vec<(u8, zeroize::Zeroizing<Vec<u8>>)>> {
    let shares = key.share(committee.shape())?;
    let round_id = &round.info.spec.round_id;
    let mut bodies = Vec::new();
    for share in &shares {
        let x = share.index().get();
        let bytes = zeroize::Zeroizing::new(cryptflow_he::Wire::to_bytes(share));
        let statement = protocol::deposit_statement(
            round_id,
            &round.spec_hash,
            x,
            me,
            &Sha256Digest::of(&bytes),
            &upload.sha256,
            &upload.root,
        );
        let mut deposit = Deposit {
            upload_sha256: upload.sha256,
            upload_root: upload.root,
            share: Base64Bytes(bytes.to_vec()),
            signature: site.sign(&statement),
        };
        // Sealed to the node's deposit key for this round, from its verified echo: only that
        // node opens it, and only until the round is shredded. A node whose echo did not
        // verify gets nothing.
        let Some(node_key) = round.deposit_keys.get(&x) else {
            zeroize::Zeroize::zeroize(&mut deposit.share.0);
            continue;
        };
        let ctx = SealContext {
            round: round_id,
            spec_hash: &round.spec_hash,
            committee: &committee.digest(),
            x,
            node_key,
        };
        let sealed = sealed::seal(&ctx, me, &deposit);
        zeroize::Zeroize::zeroize(&mut deposit.share.0);
        let sealed = sealed.map_err(|e| ClientError::Committee(format!("key manager {x}: {e}")))?;
        let body = serde_json::to_vec(&sealed).map_err(|e| ClientError::Input(e.to_string()))?;
        bodies.push((x, zeroize::Zeroizing::new(body)));
    }
    drop(shares);
    Ok(bodies)
}
