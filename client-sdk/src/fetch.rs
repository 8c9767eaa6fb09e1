//! `fetch_mean`: download the aggregate (size-capped, digest checked against the transcript),
//! gather releases from every key manager that answers (each must echo the transcript's set —
//! a node holding another set is evidence of a split-set attack — and the aggregate's digest
//! it recorded with the set: any other aggregate is evidence too), verify the aggregate as the
//! policy says ([`crate::Verify`]: a reader recomputes it from the uploads the members
//! signed, or samples spans against the upload roots they signed), cross-check the releases (an inconsistent one is evidence), combine, range-check
//! the key sum and decrypt with the self-check — all inside `cryptflow-he` — refuse a mean
//! beyond the clip bound, and return it in the round's layout with its error bound. Evidence
//! of tampering is [`ClientError::Verification`], never a warning.

use crate::client::{
    aggregator_protocol, state_error, Client, Verify, AUTO_VERIFY_BYTES, DEFAULT_SAMPLED_SPANS,
    MAX_JSON_BYTES,
};
use crate::error::{ClientError, Result};
use crate::http::{decode, protocol, read_body, send, with_retries, Service};
use crate::progress::{report, Progress, ProgressFn};
use crate::update::ModelUpdate;
use cryptflow_he::sharing::Release;
use cryptflow_he::{
    decrypt_with_releases, Clipping, DecodeLimits, PackedCiphertext, RunningSum, Wire,
};
use cryptflow_services::api::kms::ReleaseResponse;
use cryptflow_services::api::round::{RoundInfo, RoundState, Transcript, UploadSpans};
use cryptflow_services::{RoundId, Sha256Digest};
use std::time::{Duration, Instant};

/// The float type a mean is written in, for its error bound.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OutputType {
    /// IEEE binary64 (unit roundoff 2^-53).
    F64,
    /// IEEE binary32 (2^-24).
    F32,
    /// IEEE binary16 (2^-11).
    F16,
    /// bfloat16 (2^-8).
    Bf16,
}

impl OutputType {
    /// Half an ulp relative to the value: the largest relative error of rounding to it.
    pub fn unit_roundoff(self) -> f64 {
        match self {
            Self::F64 => 0.0, // the mean is computed in f64; its rounding is in the bound
            Self::F32 => 2f64.powi(-24),
            Self::F16 => 2f64.powi(-11),
            Self::Bf16 => 2f64.powi(-8),
        }
    }
}

/// What a key manager did in a fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeOutcome {
    /// The node.
    pub x: u8,
    /// `None` if its release was used or cross-checked; else why not.
    pub problem: Option<String>,
}

/// Whether [`Client::fetch_mean`] verified the aggregate (see [`Verify`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Verification {
    /// Recomputed from the contributor set's uploads, each matching the digest its member
    /// signed, and equal to the aggregate the mean was decrypted from.
    Recomputed {
        /// Uploads fetched and summed.
        uploads: usize,
        /// Their bytes.
        bytes: u64,
        /// Time spent fetching and summing.
        time: Duration,
    },
    /// Checked on `spans` of the `of` verification spans, drawn with this client's own
    /// randomness after the roots were committed: each member's span matched the root it
    /// signed and their sum the aggregate's span. A deterrent, not a proof: an aggregator that
    /// changed one span is caught with probability `detection_probability` (`spans/of`, the
    /// worst case); one that changed more, more likely.
    Sampled {
        /// Spans checked.
        spans: u64,
        /// Spans in the round.
        of: u64,
        /// The chance a single tampered span was among those checked.
        detection_probability: f64,
        /// Uploads whose spans were fetched.
        uploads: usize,
        /// Span bytes fetched.
        bytes: u64,
        /// Time spent fetching and checking.
        time: Duration,
    },
    /// Not verified, and why (policy [`Verify::Off`], this client is not a roster reader).
    /// The mean was still range-checked, and the aggregate is the one the key managers
    /// recorded with the set — the one every verifying reader checks.
    NotVerified(String),
}

/// An upload a verifier could not fetch: verification fails, never skipped (the aggregator
/// could otherwise withhold the one upload that exposes it).
fn withheld(member: &cryptflow_services::ClientId, e: &ClientError) -> ClientError {
    ClientError::Verification(format!(
        "cannot verify: {member}'s upload cannot be fetched ({e}); an aggregator that withholds \
         an upload fails verification (fetch with verification off to read the mean unverified)"
    ))
}

/// Spans asked for in one request (each request is one pass over the upload at the server).
const SPANS_PER_REQUEST: usize = cryptflow_services::api::round::MAX_SPANS_PER_REQUEST;

/// The members' upload roots as the releases echo them.
#[derive(Debug)]
enum Roots {
    /// Every release echoes these, one per member of the set.
    Agreed(Vec<Sha256Digest>),
    /// No release echoes roots (deposits from before roots were signed).
    Absent,
    /// The releases disagree about some members' roots: why, naming them.
    Disagree(String),
}

/// What the releases say about the members' roots. A member that signed different roots at
/// different nodes (or a node misreporting one) makes span sampling impossible for its round,
/// naming the member — not every fetch (recomputing does not need roots).
fn agreed_roots(
    set: &[cryptflow_services::api::round::Contribution],
    echoed: &[(u8, Option<Vec<Sha256Digest>>)],
) -> Roots {
    let lists: Vec<(u8, &Vec<Sha256Digest>)> =
        echoed.iter().filter_map(|(x, r)| r.as_ref().map(|r| (*x, r))).collect();
    let Some((_, first)) = lists.first() else { return Roots::Absent };
    if lists.len() != echoed.len() {
        return Roots::Disagree("some key managers echo no upload roots".into());
    }
    let differing: Vec<String> = set
        .iter()
        .enumerate()
        .filter(|(i, _)| lists.iter().any(|(_, r)| r.get(*i) != first.get(*i)))
        .map(|(_, c)| c.client_id.to_string())
        .collect();
    if differing.is_empty() {
        Roots::Agreed((*first).clone())
    } else {
        Roots::Disagree(format!(
            "the key managers echo different upload roots for {} (the member signed different \
             roots at different key managers, or a key manager misreports one)",
            differing.join(", ")
        ))
    }
}

/// A uniform integer in `0..m` from the OS generator (rejection sampling: no modulo bias).
fn uniform_below(m: u64) -> u64 {
    use rand_core::RngCore;
    let zone = u64::MAX - (u64::MAX - m + 1) % m;
    loop {
        let v = rand_core::OsRng.next_u64();
        if v <= zone {
            return v % m;
        }
    }
}

/// The outcome of [`Client::fetch_mean`].
#[derive(Clone, Debug)]
pub struct Aggregate {
    /// The (weighted) mean of the contributions, in the round's layout, as `f64`.
    pub mean: ModelUpdate,
    /// The round as published.
    pub round: RoundInfo,
    /// Contributions in the aggregate.
    pub contributors: u32,
    /// `Σc`: the decrypted sum of the sample counts (`samples` rounds), or the number of
    /// contributions.
    pub total_weight: u64,
    /// The guaranteed bound on the error of `mean` (as `f64`) against the exact mean of the
    /// clipped contributions. See [`Self::max_abs_error_as`] for a narrower output type.
    pub max_abs_error: f64,
    /// The largest `|mean|`, for output-rounding bounds.
    pub largest: f64,
    /// How many contributions clipping changed, and how many values: decrypted with the mean,
    /// so every reader learns it. `max_abs_error` is against the *clipped* contributions; a mean
    /// that clipping shaped can be much further from the mean of the raw updates.
    pub clipping: Clipping,
    /// In a DP round: the noise of the mean and the noised count of clipped contributions
    /// (`clipping` then holds that count rounded, and every value as possibly scaled).
    /// `max_abs_error` is then the bound each value's noise and rounding stay within except
    /// with probability 2^-128, not a guarantee.
    pub dp: Option<cryptflow_he::DpMean>,
    /// What each key manager did.
    pub nodes: Vec<NodeOutcome>,
    /// Whether the aggregate was verified against the members' uploads.
    pub verification: Verification,
    /// Bytes of the aggregate downloaded.
    pub bytes: u64,
    /// Time spent downloading the aggregate and the releases.
    pub download_time: Duration,
    /// Time spent decrypting.
    pub decrypt_time: Duration,
}

impl Aggregate {
    /// The error bound of the mean once rounded to `output`: the mean's own bound plus half
    /// an ulp of the largest value.
    ///
    /// ```
    /// # use cryptflow_client::{Aggregate, OutputType};
    /// # fn f(a: &Aggregate) {
    /// let in_f32 = a.max_abs_error_as(OutputType::F32);
    /// assert!(in_f32 >= a.max_abs_error);
    /// # }
    /// ```
    pub fn max_abs_error_as(&self, output: OutputType) -> f64 {
        self.max_abs_error + self.largest * output.unit_roundoff()
    }
}

impl Client {
    /// Downloads the published aggregate and the committee's releases for its set, and decrypts
    /// the mean (see the [module docs](self)). This client must be a member of the set, or a
    /// roster reader.
    pub async fn fetch_mean(
        &self,
        round: &RoundId,
        progress: Option<&ProgressFn>,
    ) -> Result<Aggregate> {
        let info = self.round(round).await?;
        if &info.spec.round_id != round {
            return Err(aggregator_protocol(format!(
                "asked for round {round}, got {}",
                info.spec.round_id
            )));
        }
        if info.state != RoundState::Published {
            return Err(state_error(&info, "the aggregate is not published yet"));
        }
        let transcript = info
            .transcript
            .clone()
            .ok_or_else(|| aggregator_protocol("a published round without its transcript"))?;
        // The spec, plan and layout the mean is decoded with are the ones t key managers
        // signed, not merely what the aggregator shows.
        let verified = self.verify_round(info).await?;
        let (info, setup) = (verified.info, verified.setup);
        let start = Instant::now();
        let aggregate = self.download_aggregate(round, &setup, &transcript, progress).await?;
        let downloaded = setup.upload_len();
        let (releases, nodes, roots) =
            self.gather_releases(round, &transcript, setup.ring_degree()).await?;
        let download_time = start.elapsed();
        // The releases echo the transcript's set: its digests are what the members signed.
        let verification =
            self.verify_aggregate(round, &setup, &transcript, &roots, &aggregate).await?;
        report(progress, Progress::Decrypting);
        let start = Instant::now();
        let shape = self.committee()?.shape();
        let (decrypted, checked) = tokio::task::spawn_blocking(move || {
            decrypt_with_releases(&setup, &aggregate, shape, &releases)
        })
        .await
        .map_err(|e| ClientError::Config(format!("decryption task failed: {e}")))?
        .map_err(|e| match e {
            cryptflow_he::Error::KeyOutOfRange
            | cryptflow_he::Error::WrongAggregateKey
            | cryptflow_he::Error::InconsistentReleases
            // Evidence, like a failed verification (#24): someone lied.
            | cryptflow_he::Error::CountOutOfRange => ClientError::Verification(format!(
                "{e}: the releases and the aggregate do not fit together (the aggregator changed \
                 the aggregate, a key manager released a wrong value, or a member uploaded a \
                 malformed count or clipping slot)"
            )),
            other => ClientError::Crypto(other),
        })?;
        let culprit = checked.culprit.map(|x| x.get());
        if checked.inconsistent {
            // Evidence, never a warning (#24): the mean decrypted from the other releases may
            // be right, but a party lied. Without verifiable sharing, a contributor that dealt
            // inconsistent shares to a node looks the same as a faulty node.
            let who = match culprit {
                Some(x) => format!(
                    "key manager {x}'s release disagrees with the others' (the node is faulty or \
                     malicious, or a contributor's shares to it were inconsistent)"
                ),
                None => "the releases disagree and fewer than t + 2 of them cannot tell which \
                         is wrong"
                    .into(),
            };
            return Err(ClientError::Verification(format!(
                "inconsistent releases for round {round}: {who}"
            )));
        }
        let max_abs_error = decrypted.error_bound();
        let mean: Vec<f64> = decrypted.mean::<f64>();
        let largest = mean.iter().fold(0f64, |m, v| m.max(v.abs()));
        // Every value of a mean of clipped updates lies within the clip bound, up to the error
        // bound: anything beyond was put there (issue #24) — by the aggregator, or by a member
        // that did not clip (a recomputed aggregate rules out the first).
        let clip = setup.plan().clip_bound();
        if let Some((j, v)) =
            mean.iter().enumerate().find(|(_, v)| v.is_nan() || v.abs() > clip + max_abs_error)
        {
            let who = match verification {
                Verification::Recomputed { .. } => {
                    "the aggregate is the sum of the signed uploads, so a member uploaded values \
                     it did not clip"
                }
                Verification::Sampled { .. } | Verification::NotVerified(_) => {
                    "the aggregator changed the aggregate, or a member uploaded values it did not \
                     clip"
                }
            };
            return Err(ClientError::Verification(format!(
                "value {j} of the mean is {v}, beyond the clip bound ±{clip} (plus the error \
                 bound {max_abs_error:.3e}) that every mean of clipped updates lies within: {who}"
            )));
        }
        let (contributors, total_weight) = (decrypted.contributors(), decrypted.total_weight());
        let clipping = decrypted.clipping();
        let dp = decrypted.dp().cloned();
        drop(decrypted);
        Ok(Aggregate {
            mean: ModelUpdate::from_flat(&info.request.layout, mean)?,
            contributors,
            total_weight,
            max_abs_error,
            largest,
            clipping,
            dp,
            nodes,
            verification,
            bytes: downloaded,
            download_time,
            decrypt_time: start.elapsed(),
            round: info,
        })
    }

    /// Verifies the aggregate as the policy asks ([`Verify`]): recomputed from every upload of
    /// the set (each exactly the round's size and hashing to the digest its member signed in
    /// its deposits, which the key managers recorded), or checked on spans sampled with this
    /// client's own randomness (each member's span against the root it signed, their sum
    /// against the aggregate's span). An upload or span that cannot be fetched fails the
    /// verification (withheld): never skipped.
    async fn verify_aggregate(
        &self,
        round: &RoundId,
        setup: &cryptflow_he::RoundSetup,
        transcript: &Transcript,
        roots: &Roots,
        aggregate: &PackedCiphertext,
    ) -> Result<Verification> {
        let policy = self.inner.policy.verify;
        let uploads = transcript.contributors.len();
        let total = setup.upload_len().saturating_mul(uploads as u64);
        let members_cannot = "only roster readers may fetch the members' uploads to verify the \
                              aggregate (a verifier holds every member's ciphertext)";
        let sample = match policy {
            Verify::Off => return Ok(Verification::NotVerified("verification is off".into())),
            // Asking a member's client to verify is a configuration mistake, not evidence.
            Verify::Always | Verify::Spans(_) if !self.inner.reader => {
                return Err(ClientError::Config(format!("cannot verify: {members_cannot}")))
            }
            Verify::Auto if !self.inner.reader => {
                return Ok(Verification::NotVerified(members_cannot.into()))
            }
            Verify::Auto if total > AUTO_VERIFY_BYTES => Some(DEFAULT_SAMPLED_SPANS),
            Verify::Spans(s) => Some(s),
            Verify::Auto | Verify::Always => None,
        };
        match sample {
            Some(0) => Err(ClientError::Config(
                "cannot verify by sampling 0 spans: ask for at least one".into(),
            )),
            Some(s) => match roots {
                Roots::Agreed(roots) => {
                    self.verify_spans(round, setup, transcript, roots, aggregate, s).await
                }
                Roots::Absent => Err(ClientError::Verification(
                    "cannot verify by sampling spans: the key managers echo no upload roots for \
                     this set (deposited before roots were signed); recompute it instead \
                     (--verify)"
                        .into(),
                )),
                Roots::Disagree(why) => Err(ClientError::Verification(format!(
                    "cannot verify by sampling spans: {why}; recompute it instead (--verify)"
                ))),
            },
            None => self.recompute(round, setup, transcript, aggregate).await,
        }
    }

    /// Recomputes the whole aggregate from the set's uploads (see [`Self::verify_aggregate`]).
    async fn recompute(
        &self,
        round: &RoundId,
        setup: &cryptflow_he::RoundSetup,
        transcript: &Transcript,
        aggregate: &PackedCiphertext,
    ) -> Result<Verification> {
        let uploads = transcript.contributors.len();
        let start = Instant::now();
        let expected = usize::try_from(setup.upload_len())
            .map_err(|_| aggregator_protocol("an upload is too large"))?;
        let mut sum = RunningSum::zero(setup, 0..setup.slots())?;
        for c in &transcript.contributors {
            let member = &c.client_id;
            let path = format!("/v1/rounds/{round}/submissions/{member}");
            let bytes = with_retries(self.retry(), Service::Aggregator, || async {
                let res = send(Service::Aggregator, self.aggregator(reqwest::Method::GET, &path)?)
                    .await?;
                read_body(Service::Aggregator, res, expected, None).await
            })
            .await
            .map_err(|e| withheld(member, &e))?;
            if Sha256Digest::of(&bytes) != c.upload_sha256 {
                return Err(ClientError::Verification(format!(
                    "the aggregator served an upload for {member} that is not the one {member} \
                     signed (SHA-256 {} instead of {})",
                    Sha256Digest::of(&bytes),
                    c.upload_sha256
                )));
            }
            let upload = PackedCiphertext::from_vec_with_limits(
                bytes,
                &DecodeLimits { max_slots: setup.slots() },
            )
            .map_err(|e| {
                ClientError::Verification(format!("{member}'s signed upload does not decode: {e}"))
            })?;
            sum.add_upload(&upload).map_err(|e| {
                ClientError::Verification(format!("{member}'s signed upload does not fit: {e}"))
            })?;
        }
        let recomputed = sum.pack();
        if let Some(at) = recomputed.iter().zip(aggregate.payload()).position(|(a, b)| a != b) {
            let differing =
                recomputed.iter().zip(aggregate.payload()).filter(|(a, b)| a != b).count();
            return Err(ClientError::Verification(format!(
                "the aggregate is not the sum of the {uploads} uploads the members signed: \
                 {differing} of its {} payload bytes differ, the first at byte {at}",
                recomputed.len()
            )));
        }
        if recomputed.len() != aggregate.payload().len() {
            return Err(ClientError::Verification(
                "the aggregate's length differs from the sum of the uploads".into(),
            ));
        }
        let bytes = setup.upload_len().saturating_mul(uploads as u64);
        Ok(Verification::Recomputed { uploads, bytes, time: start.elapsed() })
    }

    /// Checks `s` spans drawn with this client's OS randomness, after the roots were
    /// committed (see [`Self::verify_aggregate`]).
    async fn verify_spans(
        &self,
        round: &RoundId,
        setup: &cryptflow_he::RoundSetup,
        transcript: &Transcript,
        roots: &[Sha256Digest],
        aggregate: &PackedCiphertext,
        s: u32,
    ) -> Result<Verification> {
        use cryptflow_he::merkle;
        let start = Instant::now();
        let spans = setup.blocks();
        let at = merkle::sample_spans(spans, u64::from(s), uniform_below);
        let header: [u8; cryptflow_he::wire::HEADER_LEN] = setup
            .header(cryptflow_he::CiphertextKind::Upload, 1)
            .to_bytes()
            .try_into()
            .map_err(|_| ClientError::Config("a ciphertext header is not 64 bytes".into()))?;
        let mut fetched = 0u64;
        // Member by member, span bytes in the order of `at`.
        let mut parts: Vec<Vec<Vec<u8>>> = Vec::with_capacity(roots.len());
        for (c, root) in transcript.contributors.iter().zip(roots) {
            let member = &c.client_id;
            let mut got = Vec::with_capacity(at.len());
            for batch in at.chunks(SPANS_PER_REQUEST) {
                let list: Vec<String> = batch.iter().map(u64::to_string).collect();
                let path =
                    format!("/v1/rounds/{round}/submissions/{member}/spans?at={}", list.join(","));
                let answer = with_retries(self.retry(), Service::Aggregator, || async {
                    let res =
                        send(Service::Aggregator, self.aggregator(reqwest::Method::GET, &path)?)
                            .await?;
                    decode::<UploadSpans>(
                        Service::Aggregator,
                        &read_body(Service::Aggregator, res, MAX_JSON_BYTES, None).await?,
                    )
                })
                .await
                .map_err(|e| withheld(member, &e))?;
                if answer.spans.len() != batch.len() {
                    return Err(ClientError::Verification(format!(
                        "asked for {} spans of {member}'s upload, the aggregator served {}",
                        batch.len(),
                        answer.spans.len()
                    )));
                }
                for (&j, span) in batch.iter().zip(answer.spans) {
                    let path: Vec<merkle::Hash> = span.path.iter().map(|d| d.0).collect();
                    if span.index != j
                        || !merkle::verify_span(&root.0, &header, spans, j, &span.bytes.0, &path)
                    {
                        return Err(ClientError::Verification(format!(
                            "span {j} of {member}'s upload, as the aggregator serves it, does not \
                             match the upload root {member} signed ({root}): the aggregator \
                             changed the upload, or {member} signed the root of something else"
                        )));
                    }
                    fetched += span.bytes.0.len() as u64;
                    got.push(span.bytes.0);
                }
            }
            parts.push(got);
        }
        for (k, &j) in at.iter().enumerate() {
            let r = merkle::span_range(setup, j);
            let h = cryptflow_he::wire::HEADER_LEN;
            let mine = aggregate
                .payload()
                .get(r.start - h..r.end - h)
                .ok_or_else(|| aggregator_protocol("the aggregate is shorter than the round's"))?;
            let members: Vec<&[u8]> = parts.iter().map(|p| p[k].as_slice()).collect();
            if !merkle::span_sums_to(setup, j, &members, mine)? {
                return Err(ClientError::Verification(format!(
                    "span {j} of the aggregate is not the sum of that span of the {} uploads the \
                     members signed",
                    members.len()
                )));
            }
        }
        Ok(Verification::Sampled {
            spans: at.len() as u64,
            of: spans,
            detection_probability: merkle::detection_probability(spans, at.len() as u64),
            uploads: roots.len(),
            bytes: fetched,
            time: start.elapsed(),
        })
    }

    /// The aggregate: exactly the round's size, the digest the transcript names, as many
    /// contributors as the transcript lists.
    async fn download_aggregate(
        &self,
        round: &RoundId,
        setup: &cryptflow_he::RoundSetup,
        transcript: &Transcript,
        progress: Option<&ProgressFn>,
    ) -> Result<PackedCiphertext> {
        let expected = usize::try_from(setup.upload_len())
            .map_err(|_| aggregator_protocol("the aggregate is too large"))?;
        let path = format!("/v1/rounds/{round}/aggregate");
        let bytes = with_retries(self.retry(), Service::Aggregator, || async {
            let res =
                send(Service::Aggregator, self.aggregator(reqwest::Method::GET, &path)?).await?;
            read_body(Service::Aggregator, res, expected, progress).await
        })
        .await?;
        if Sha256Digest::of(&bytes) != transcript.aggregate_sha256 {
            return Err(aggregator_protocol(
                "the aggregate's digest differs from the published transcript",
            ));
        }
        let aggregate = PackedCiphertext::from_vec_with_limits(
            bytes,
            &DecodeLimits { max_slots: setup.slots() },
        )
        .map_err(|e| aggregator_protocol(format!("undecodable aggregate: {e}")))?;
        if aggregate.header().contributors() as usize != transcript.contributors.len() {
            return Err(aggregator_protocol(
                "the aggregate's contributor count differs from the transcript",
            ));
        }
        Ok(aggregate)
    }

    /// Every node's release for the transcript's set (a node that is down gets
    /// `quorum::GRACE` once `t` answered: releases beyond `t` strengthen the cross-check),
    /// and what happened at each node; at least `t` releases or an error naming why not.
    async fn gather_releases(
        &self,
        round: &RoundId,
        transcript: &Transcript,
        ring_degree: usize,
    ) -> Result<(Vec<Release>, Vec<NodeOutcome>, Roots)> {
        let committee = self.committee()?;
        let t = committee.shape().threshold() as usize;
        let calls = committee
            .nodes()
            .iter()
            .map(|n| {
                let (client, x) = (self.clone(), n.x);
                let path = format!("/v1/rounds/{round}/release");
                let call = async move {
                    let service = Service::Kms(x);
                    with_retries(client.retry(), service, || async {
                        let res = client.send_kms(x, reqwest::Method::GET, &path, |r| r).await?;
                        decode::<ReleaseResponse>(
                            service,
                            &read_body(service, res, MAX_JSON_BYTES, None).await?,
                        )
                    })
                    .await
                };
                (x, call)
            })
            .collect();
        let mut releases = Vec::new();
        let mut nodes = Vec::new();
        let mut other_sets = Vec::new();
        let mut other_aggregates = Vec::new();
        let mut roots: Vec<(u8, Option<Vec<Sha256Digest>>)> = Vec::new();
        for (x, outcome) in crate::quorum::gather(calls, t, self.inner.grace).await {
            let checked = outcome.and_then(|o| {
                o.and_then(|r| {
                    if r.round_id == *round && r.contributors != transcript.contributors {
                        other_sets.push((x, r.contributors.len()));
                    } else if r.round_id == *round
                        && r.aggregate_sha256 != transcript.aggregate_sha256
                    {
                        other_aggregates.push((x, r.aggregate_sha256));
                    }
                    let echoed = r.upload_roots.clone();
                    check_release(x, r, round, transcript, ring_degree).map(|r| (r, echoed))
                })
                .map_err(|e| e.to_string())
            });
            match checked {
                Ok((r, echoed)) => {
                    releases.push(r);
                    roots.push((x, echoed));
                    nodes.push(NodeOutcome { x, problem: None });
                }
                Err(problem) => nodes.push(NodeOutcome { x, problem: Some(problem) }),
            }
        }
        if !other_sets.is_empty() {
            // A node records one set per round: one holding another set than the transcript's
            // was told another by the aggregator — the split-set attack, whose two means
            // differ by a chosen update (#24). Evidence, never a warning.
            let seen: Vec<String> = other_sets
                .iter()
                .map(|(x, n)| format!("key manager {x} recorded a set of {n} members"))
                .collect();
            return Err(ClientError::Verification(format!(
                "the key managers recorded different contributor sets for round {round}: the \
                 transcript lists {} members, {} — the aggregator reported different sets to \
                 different key managers (two means whose difference isolates an update), or \
                 that key manager is lying about its set",
                transcript.contributors.len(),
                seen.join(", ")
            )));
        }
        if let Some((x, recorded)) = other_aggregates.first() {
            // Each node records one aggregate digest with the set: an aggregate that is not
            // the recorded one was made for this reader — the one every other reader (and
            // every verifier) checks is another (#24). Evidence, never a warning.
            return Err(ClientError::Verification(format!(
                "the aggregate served for round {round} (SHA-256 {}) is not the one the key \
                 managers recorded with its contributor set (key manager {x} recorded {recorded}): \
                 the aggregator served this reader an aggregate other than the one it committed \
                 (or reported different aggregates to different key managers), or key manager \
                 {x} misreports what it recorded",
                transcript.aggregate_sha256
            )));
        }
        if releases.len() < t {
            let why: Vec<String> = nodes
                .iter()
                .filter_map(|n| n.problem.as_ref().map(|p| format!("{}: {p}", n.x)))
                .collect();
            return Err(ClientError::Committee(format!(
                "{} releases, {t} needed; {}",
                releases.len(),
                why.join("; ")
            )));
        }
        Ok((releases, nodes, agreed_roots(&transcript.contributors, &roots)))
    }
}

/// A node's release, checked: for the transcript's set, decodable, of its own index.
fn check_release(
    x: u8,
    r: ReleaseResponse,
    round: &RoundId,
    transcript: &Transcript,
    ring_degree: usize,
) -> Result<Release> {
    if &r.round_id != round {
        return Err(protocol(Service::Kms(x), format!("a release for round {}", r.round_id)));
    }
    if r.contributors != transcript.contributors {
        return Err(protocol(
            Service::Kms(x),
            "it released for another contributor set than the aggregator's transcript".into(),
        ));
    }
    if r.aggregate_sha256 != transcript.aggregate_sha256 {
        return Err(protocol(
            Service::Kms(x),
            "it recorded another aggregate than the one served to this reader".into(),
        ));
    }
    if r.upload_roots.as_ref().is_some_and(|roots| roots.len() != r.contributors.len()) {
        return Err(protocol(Service::Kms(x), "it echoes one upload root per member".into()));
    }
    let release = Release::from_bytes(&r.release.0)
        .map_err(|e| protocol(Service::Kms(x), format!("undecodable release: {e}")))?;
    if release.index().get() != x || r.share_index != x {
        return Err(protocol(Service::Kms(x), "a release of another share index".into()));
    }
    if release.len() != ring_degree {
        return Err(protocol(
            Service::Kms(x),
            format!("a release of {} values; the round's ring has {ring_degree}", release.len()),
        ));
    }
    Ok(release)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cryptflow_services::api::round::Contribution;
    use cryptflow_services::ClientId;

    #[test]
    fn roots_that_differ_between_nodes_name_the_member_and_stop_only_sampling() {
        let set: Vec<Contribution> = ["a", "b"]
            .iter()
            .map(|id| Contribution {
                client_id: ClientId::parse(*id).unwrap(),
                upload_sha256: Sha256Digest([0; 32]),
            })
            .collect();
        let (r1, r2, r3) = (Sha256Digest([1; 32]), Sha256Digest([2; 32]), Sha256Digest([3; 32]));
        let agreed = agreed_roots(&set, &[(1, Some(vec![r1, r2])), (2, Some(vec![r1, r2]))]);
        assert!(matches!(agreed, Roots::Agreed(ref r) if r == &vec![r1, r2]), "{agreed:?}");
        match agreed_roots(&set, &[(1, Some(vec![r1, r2])), (2, Some(vec![r1, r3]))]) {
            Roots::Disagree(why) => assert!(why.contains("for b ") && !why.contains("a,"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(agreed_roots(&set, &[(1, None), (2, None)]), Roots::Absent));
        assert!(matches!(
            agreed_roots(&set, &[(1, Some(vec![r1, r2])), (2, None)]),
            Roots::Disagree(_)
        ));
    }
}
