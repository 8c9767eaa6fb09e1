//! The aggregator's client of the key-manager committee: register a round with each node,
//! ask each which deposits it holds, report the contributor set. Nodes never talk to each
//! other; the aggregator talks to each, and a node that is down is retried by the background
//! task. Each node may trust another token issuer, so the token is per node: the file named
//! for its share index in `kms_token_files`, else `kms_token_file`, re-read on every call so
//! it can be renewed without a restart.

use cryptflow_services::api::kms::{ContributorSet, DepositList, RegisteredRound, SpecEcho};
use cryptflow_services::api::round::{Contribution, RoundSpec, SeedNonce, SeedNonceRequest};
use cryptflow_services::protocol::Committee;
use cryptflow_services::{Problem, RoundId, Sha256Digest};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// Largest answer read from a key manager (a deposit list of 10^5 members is ~12 MB).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// A failed call to one node.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KmsError {
    /// The node answered with a problem document (4xx: our request was refused).
    #[error("key manager {x} refused ({}): {}", problem.status, problem.detail.as_deref().unwrap_or(""))]
    Refused {
        /// The node.
        x: u8,
        /// Its problem document.
        problem: Box<Problem>,
    },
    /// The node refused the aggregator's own credentials (401: expired or unknown token; 403:
    /// a token without the aggregator role).
    #[error("key manager {x} refused the aggregator's token from {file}: {detail}; renew it (README, \"Tokens\")")]
    Credentials {
        /// The node.
        x: u8,
        /// The token file used.
        file: String,
        /// The node's reason.
        detail: String,
    },
    /// The node is unreachable or failed (5xx, network): retry later.
    #[error("key manager {x} unavailable: {detail}")]
    Unavailable {
        /// The node.
        x: u8,
        /// What happened.
        detail: String,
    },
    /// The token file cannot be read (the cause kept: "too many open files" is not "no such
    /// file", #30).
    #[error("cannot read the token file {file} for the key managers: {reason}")]
    Token {
        /// The file.
        file: String,
        /// The operating system's reason.
        reason: String,
    },
}

impl KmsError {
    /// The node concerned.
    pub fn node(&self) -> Option<u8> {
        match self {
            Self::Refused { x, .. } | Self::Credentials { x, .. } | Self::Unavailable { x, .. } => {
                Some(*x)
            }
            Self::Token { .. } => None,
        }
    }
}

/// Talks to every node of the committee.
#[derive(Clone, Debug)]
pub struct KmsNodes {
    committee: Committee,
    token_file: PathBuf,
    token_files: BTreeMap<u8, PathBuf>,
    http: reqwest::Client,
}

impl KmsNodes {
    /// A client of `committee`'s nodes, authenticating with the token in `token_file` (or the
    /// per-node file of `token_files`).
    pub fn new(
        committee: Committee,
        token_file: PathBuf,
        token_files: BTreeMap<u8, PathBuf>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self { committee, token_file, token_files, http }
    }

    /// The committee.
    pub fn committee(&self) -> &Committee {
        &self.committee
    }

    fn token(&self, x: u8) -> Result<(String, PathBuf), KmsError> {
        let file = self.token_files.get(&x).unwrap_or(&self.token_file).clone();
        std::fs::read_to_string(&file).map(|t| (t.trim().to_owned(), file.clone())).map_err(|e| {
            KmsError::Token { file: file.display().to_string(), reason: e.to_string() }
        })
    }

    fn url(&self, x: u8, path: &str) -> Result<String, KmsError> {
        let node = self
            .committee
            .node(x)
            .ok_or(KmsError::Unavailable { x, detail: "not in the committee".into() })?;
        Ok(format!("{}{path}", node.url.trim_end_matches('/')))
    }

    async fn send(
        &self,
        x: u8,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, KmsError> {
        let (token, file) = self.token(x)?;
        let res = req
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| KmsError::Unavailable { x, detail: e.to_string() })?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        if status.is_server_error() {
            return Err(KmsError::Unavailable { x, detail: format!("HTTP {status}") });
        }
        let problem: Problem = Self::json(x, res).await.unwrap_or_else(|_| {
            let mut p =
                Problem::new(cryptflow_services::ErrorCode::BadRequest, format!("HTTP {status}"));
            p.status = status.as_u16();
            p
        });
        // 401: the token is not accepted; 403: it is, but not with the aggregator role.
        if matches!(status.as_u16(), 401 | 403) {
            return Err(KmsError::Credentials {
                x,
                file: file.display().to_string(),
                detail: problem.detail.unwrap_or_default(),
            });
        }
        Err(KmsError::Refused { x, problem: Box::new(problem) })
    }

    /// Reads a JSON answer of at most `MAX_ANSWER_BYTES` (a node cannot make the aggregator
    /// allocate more).
    async fn json<T: serde::de::DeserializeOwned>(
        x: u8,
        mut res: reqwest::Response,
    ) -> Result<T, KmsError> {
        let bad = |detail: String| KmsError::Unavailable { x, detail };
        if res.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
            return Err(bad(format!("an answer over {MAX_ANSWER_BYTES} bytes")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| bad(e.to_string()))? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(bad(format!("an answer over {MAX_ANSWER_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| bad(format!("bad answer: {e}")))
    }

    /// Node `x`'s nonce for the round's mask seed, given the commitment to the aggregator's
    /// contribution; its signature is checked against the committee file here, so that a
    /// misconfigured node is reported now rather than by every client later.
    pub async fn seed_nonce(
        &self,
        x: u8,
        round: &RoundId,
        commitment: &Sha256Digest,
    ) -> Result<SeedNonce, KmsError> {
        let url = self.url(x, &format!("/v1/rounds/{round}/seed-nonce"))?;
        let body = SeedNonceRequest { commitment: *commitment };
        let res = self.send(x, self.http.post(url).json(&body)).await?;
        let nonce: SeedNonce = Self::json(x, res).await?;
        let bad = |detail: String| KmsError::Unavailable { x, detail };
        let node = self.committee.node(x).ok_or_else(|| bad("not in the committee".into()))?;
        if nonce.share_index != x {
            return Err(bad(format!("it answered with node {}'s nonce", nonce.share_index)));
        }
        cryptflow_services::protocol::verify(
            &node.public_key,
            &cryptflow_services::protocol::seed_nonce_statement(x, round, commitment, &nonce.nonce),
            &nonce.signature,
            "a seed nonce",
        )
        .map_err(|e| bad(format!("its seed nonce does not verify: {e}")))?;
        Ok(nonce)
    }

    /// Registers the round with node `x`; returns its echo.
    pub async fn register(&self, x: u8, spec: &RoundSpec) -> Result<SpecEcho, KmsError> {
        let url = self.url(x, &format!("/v1/rounds/{}", spec.round_id))?;
        let res = self.send(x, self.http.put(url).json(spec)).await?;
        let round: RegisteredRound = Self::json(x, res).await?;
        Ok(round.echo)
    }

    /// The deposits node `x` holds for the round.
    pub async fn deposits(&self, x: u8, round: &RoundId) -> Result<DepositList, KmsError> {
        let url = self.url(x, &format!("/v1/rounds/{round}/deposits"))?;
        let res = self.send(x, self.http.get(url)).await?;
        Self::json(x, res).await
    }

    /// Reports the contributor set and the aggregate's digest to node `x` (idempotent for the
    /// same pair).
    pub async fn record_set(
        &self,
        x: u8,
        round: &RoundId,
        set: &[Contribution],
        aggregate: &Sha256Digest,
    ) -> Result<(), KmsError> {
        let url = self.url(x, &format!("/v1/rounds/{round}/contributors"))?;
        let body = ContributorSet { contributors: set.to_vec(), aggregate_sha256: *aggregate };
        self.send(x, self.http.put(url).json(&body)).await.map(|_| ())
    }
}
