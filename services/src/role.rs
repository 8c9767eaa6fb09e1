//! Roles carried in tokens.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Who a token speaks for. Every endpoint states which roles it accepts.
///
/// ```
/// use cryptflow_services::Role;
/// assert_eq!(serde_json::to_string(&Role::Aggregator).unwrap(), "\"aggregator\"");
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Operators: create and close rounds, destroy keys, read the audit log.
    Admin,
    /// Federated-learning participants: upload updates, deposit key shares, read the mean
    /// of the rounds they contributed to.
    Client,
    /// The aggregator service, towards the key managers. Never a reader of any release.
    Aggregator,
    /// A roster member the consortium allows to read the mean of a round it did not
    /// contribute to (e.g. a Flower ServerApp that applies the mean).
    Reader,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Client => "client",
            Role::Aggregator => "aggregator",
            Role::Reader => "reader",
        })
    }
}
