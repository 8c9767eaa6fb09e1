//! The aggregator's client of the KMS: create a round's key, fetch its public key, report
//! the round aggregated. The bearer token (role `aggregator`, audience `kms`) is re-read from
//! its file on every call, so it can be rotated without a restart.

use cryptflow_services::api::kms::{KeyInfo, KeySpec, MarkAggregated};
use cryptflow_services::{Problem, RoundId};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// A failed KMS call.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KmsError {
    /// The KMS answered with a problem document (4xx: our request was refused).
    #[error("KMS refused ({status}): {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem's detail.
        detail: String,
        /// The problem's field, if any.
        field: Option<String>,
    },
    /// The KMS is unreachable or failed (5xx, network): retry later.
    #[error("KMS unavailable: {0}")]
    Unavailable(String),
    /// The token file cannot be read.
    #[error("cannot read the KMS token file {0}")]
    Token(String),
}

/// Talks to one KMS.
#[derive(Clone, Debug)]
pub struct KmsClient {
    base: String,
    token_file: PathBuf,
    http: reqwest::Client,
}

impl KmsClient {
    /// A client of the KMS at `base` (e.g. `http://kms:8081`), authenticating with the token in
    /// `token_file`.
    pub fn new(base: &str, token_file: PathBuf) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self { base: base.trim_end_matches('/').to_owned(), token_file, http }
    }

    fn token(&self) -> Result<String, KmsError> {
        std::fs::read_to_string(&self.token_file)
            .map(|t| t.trim().to_owned())
            .map_err(|_| KmsError::Token(self.token_file.display().to_string()))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, KmsError> {
        let res = req
            .bearer_auth(self.token()?)
            .send()
            .await
            .map_err(|e| KmsError::Unavailable(e.to_string()))?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        if status.is_server_error() {
            return Err(KmsError::Unavailable(format!("HTTP {status}")));
        }
        let problem: Option<Problem> = res.json().await.ok();
        Err(KmsError::Refused {
            status: status.as_u16(),
            detail: problem.as_ref().and_then(|p| p.detail.clone()).unwrap_or_default(),
            field: problem.and_then(|p| p.field),
        })
    }

    /// Creates (idempotently) the round's key.
    pub async fn create_key(&self, round: &RoundId, spec: &KeySpec) -> Result<KeyInfo, KmsError> {
        let url = format!("{}/v1/rounds/{round}/key", self.base);
        let res = self.send(self.http.put(url).json(spec)).await?;
        res.json().await.map_err(|e| KmsError::Unavailable(e.to_string()))
    }

    /// The round's public key, in wire format.
    pub async fn public_key(&self, round: &RoundId) -> Result<Vec<u8>, KmsError> {
        let url = format!("{}/v1/rounds/{round}/key/public", self.base);
        let res = self.send(self.http.get(url)).await?;
        res.bytes().await.map(|b| b.to_vec()).map_err(|e| KmsError::Unavailable(e.to_string()))
    }

    /// Reports the round aggregated with `contributors` contributions (idempotent).
    pub async fn mark_aggregated(
        &self,
        round: &RoundId,
        contributors: u32,
    ) -> Result<(), KmsError> {
        let url = format!("{}/v1/rounds/{round}/key/aggregated", self.base);
        self.send(self.http.post(url).json(&MarkAggregated { contributors })).await.map(|_| ())
    }
}
