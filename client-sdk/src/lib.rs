//! `cryptflow-client`: the async Rust SDK for CryptFlow's encrypted federated averaging
//! (protocol version 2).
//!
//! A [`Client`] acts as one training site: it talks to the aggregator with the site's token
//! and to the key-manager committee with the site's roster key, and it pins the committee
//! file (every node's URL, share index and signing key). A site:
//!
//! 1. [`Client::submit`]s its [`ModelUpdate`] — a flat vector or named tensors of `f32` or
//!    `f64` — with its sample count in `samples` rounds. The SDK checks the round against the
//!    pinned committee (every key manager that answers must echo the same signed spec) and its
//!    [`ClientPolicy`] before sending anything, draws a fresh key, encrypts **once** while
//!    streaming the upload (never holding it whole; a retry re-derives identical bytes),
//!    deposits signed Shamir shares of the key with the key managers, and drops the key.
//! 2. [`Client::wait_for_aggregate`]s until the round is published (fetchable).
//! 3. [`Client::fetch_mean`]s: downloads the aggregate, gathers the key managers' releases for
//!    the recorded set, cross-checks and combines them, range-checks the key sum and decrypts
//!    with a self-check, and returns the mean in the round's layout with its error bound.
//!
//! An operator (admin token) creates and closes rounds with [`Client::create_round`] and
//! [`Client::close_round`].
//!
//! What the servers learn: the aggregator sees uploads under per-client keys it cannot open,
//! who uploaded and when; a key manager sees key shares but never a ciphertext. Readers (the
//! set's members, or roster readers) learn the mean and only the mean. Retries use a time
//! budget ([`RetryPolicy`]); errors are typed by culprit ([`ClientError`]).
//!
//! The SDK depends on the encryption core, the wire types and the protocol rules only; it
//! pulls in no server crate.

mod client;
mod error;
mod fetch;
mod http;
mod journal;
mod progress;
mod quorum;
mod retry;
mod submit;
mod update;

pub use client::{
    Client, ClientBuilder, ClientPolicy, DpBudget, Token, Verify, AUTO_VERIFY_BYTES,
    DEFAULT_SAMPLED_SPANS, MAX_CLOCK_SKEW_SECS,
};
pub use error::{ClientError, Result};
pub use fetch::{Aggregate, NodeOutcome, OutputType, Verification};
pub use journal::Ledger;
pub use progress::{Progress, ProgressFn};
pub use retry::RetryPolicy;
pub use submit::{Submission, SubmitOptions, VerifiedRound};
pub use update::{ModelUpdate, Tensor, TensorValues};

// Re-exported so that SDK users need no direct dependency for the types in its signatures.
pub use cryptflow_he::planner::Weighting;
pub use cryptflow_he::Clipping;
pub use cryptflow_services::api::round::{
    Layout, RoundInfo, RoundRequest, RoundSpec, RoundState, SubmissionReceipt, TensorLayout,
    Transcript,
};
pub use cryptflow_services::protocol::{Committee, SiteKey};
pub use cryptflow_services::{ClientId, Problem, RoundId};
