//! `cryptflow-client`: the async Rust SDK for CryptFlow's encrypted federated averaging.
//!
//! A [`Client`] talks to an aggregator and a KMS with the caller's tokens (one per service,
//! minted by your identity provider or `cryptflow token mint`). A training site:
//!
//! 1. [`Client::submit`]s its [`ModelUpdate`] — a flat `ndarray` vector or named tensors —
//!    with a weight if the round is weighted. The SDK checks it against the round's layout,
//!    fetches and caches the round's public key from the KMS (checked against the key id
//!    the aggregator announced), encrypts in parallel on a blocking thread, and streams the
//!    ciphertext up with progress, retrying connection failures, 5xx and 429 with
//!    exponential backoff ([`RetryPolicy`]); 4xx refusals come back at once as
//!    [`ClientError::Refused`] with the server's problem document.
//! 2. [`Client::wait_for_aggregate`]s until the round is published.
//! 3. [`Client::fetch_mean`]s: downloads the aggregate (size-capped by the plan, hash checked
//!    against the published transcript), fetches the round's secret key (released only to
//!    the round's clients, after aggregation), decrypts, and returns the mean in the same
//!    layout it submitted.
//!
//! An operator (admin token) creates and closes rounds with [`Client::create_round`] and
//! [`Client::close_round`].
//!
//! What the servers learn: the aggregator sees ciphertexts, public weights (`samples`
//! rounds) and who contributed; the KMS sees no data. Whoever holds a round's secret key —
//! the round's clients, after aggregation — learns the aggregate, and only the aggregate.
//!
//! The SDK depends on the encryption core and the wire types only; it pulls in no server
//! crate.

mod client;
mod error;
mod progress;
mod retry;
mod update;

pub use client::{
    Aggregate, Client, ClientBuilder, EncryptedUpdate, Submission, SubmitOptions, Token,
};
pub use error::{ClientError, Result};
pub use progress::{Progress, ProgressFn};
pub use retry::RetryPolicy;
pub use update::{ModelUpdate, Tensor};

// Re-exported so that SDK users need no direct dependency for the types in its signatures.
pub use cryptflow_services::api::aggregator::{
    Layout, RoundInfo, RoundSpec, RoundState, SubmissionReceipt, TensorLayout, Weighting,
};
pub use cryptflow_services::{ClientId, Problem, RoundId};
