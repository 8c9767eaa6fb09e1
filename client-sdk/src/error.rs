//! Errors, typed by culprit: the caller's input, a server's refusal, the network, or the
//! data a server sent back.

use cryptflow_services::Problem;
use thiserror::Error;

/// Everything the SDK can fail with.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The caller's update does not fit the round (layout, length, weight, values).
    #[error("invalid update: {0}")]
    Input(String),
    /// A server refused the request (4xx). Never retried (except 429, see [`RetryPolicy`]).
    /// `service` is `aggregator` or `kms-<x>` for key manager `x`.
    ///
    /// [`RetryPolicy`]: crate::RetryPolicy
    #[error("{service} refused the request ({}): {}", problem.status, problem.detail.as_deref().unwrap_or(&problem.title))]
    Refused {
        /// `aggregator` or `kms-<x>`.
        service: String,
        /// The server's problem document.
        problem: Box<Problem>,
    },
    /// A server kept failing (5xx) after every retry.
    #[error("{service} failed ({status}) after {attempts} attempts: {detail}")]
    Server {
        /// `aggregator` or `kms-<x>`.
        service: String,
        /// Last status.
        status: u16,
        /// Last problem detail (or body excerpt).
        detail: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The server could not be reached (or the connection broke) after every retry.
    #[error("cannot reach {service} after {attempts} attempts: {source}{}", causes(source))]
    Transport {
        /// `aggregator` or `kms-<x>`.
        service: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: reqwest::Error,
    },
    /// A server's TLS certificate is not acceptable (an unknown authority, another host,
    /// expired): never retried, since no retry changes it.
    #[error("{service}'s TLS certificate is refused: {detail}")]
    Certificate {
        /// `aggregator` or `kms-<x>`.
        service: String,
        /// What is wrong with it, and the fix.
        detail: String,
    },
    /// A server answered with something that is not what the protocol says (wrong size,
    /// undecodable object, a key that does not match the round, a hash mismatch).
    #[error("{service} sent an invalid response: {detail}")]
    Protocol {
        /// `aggregator` or `kms-<x>`.
        service: String,
        /// What was wrong.
        detail: String,
    },
    /// A key manager's signature, echo or release does not verify, or too few of them
    /// answered: the committee (or the aggregator relaying it) is not what the pinned
    /// committee file says.
    #[error("key-manager committee: {0}")]
    Committee(String),
    /// The client's own policy refuses the round (e.g. `min_clients` below the floor, a peer
    /// not allowed, an update already submitted to another round).
    #[error("client policy: {0}")]
    Policy(String),
    /// The round's privacy charge would take this site past its budget
    /// ([`ClientPolicy::dp_budget`](crate::ClientPolicy::dp_budget)): nothing was sent. A
    /// training stops here, cleanly.
    #[error("privacy budget: {0}")]
    Budget(String),
    /// The journal says this exact update was already submitted to this round (uploaded, its
    /// key shares deposited or attempted): nothing was sent. A new encryption could not
    /// replace it — the aggregator keeps one upload per client and round.
    #[error(
        "this update was already submitted to round `{0}` (per the journal); nothing was sent"
    )]
    AlreadySubmitted(String),
    /// The round is not in a state that allows this (e.g. fetching before publication).
    #[error("round `{round}` is {state}: {detail}")]
    RoundState {
        /// The round.
        round: String,
        /// Its state.
        state: String,
        /// What was attempted.
        detail: String,
    },
    /// Waiting for the round ran out of time; the message says what the round still waits for
    /// (uploads, its deadline, an operator's close).
    #[error("timed out waiting for round {0}")]
    Timeout(String),
    /// Encryption or decryption failed in the encryption core.
    #[error("encryption core: {0}")]
    Crypto(#[from] cryptflow_he::Error),
    /// The client was configured wrongly (bad URL, bad token).
    #[error("configuration: {0}")]
    Config(String),
    /// Evidence that a party lied about the aggregate: it is not the one the key managers
    /// recorded with the set, not the sum of the uploads the members signed (recomputed from
    /// them, or on sampled spans checked against the signed upload roots), an upload or span
    /// does not match what its member signed, the mean has a value no mean of clipped updates
    /// can have, a key manager holds another contributor set, or the releases disagree. Also a
    /// verification that could not be done ("cannot verify: …"): an upload the aggregator did
    /// not serve fails under every policy but [`crate::Verify::Off`]. Never retried, never a
    /// warning.
    #[error("the aggregate failed verification: {0}")]
    Verification(String),
}

impl ClientError {
    /// The server's problem document, for a refusal.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ClientError::Refused { problem, .. } => Some(problem),
            _ => None,
        }
    }

    /// HTTP status of a refusal or server failure.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { problem, .. } => Some(problem.status),
            ClientError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Shorthand.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// The chain of causes below an HTTP error (`: connection refused`, a certificate problem…):
/// reqwest's own message names only the request.
fn causes(e: &reqwest::Error) -> String {
    let mut out = String::new();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}
