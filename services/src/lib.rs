//! # cryptflow-services — what CryptFlow's servers and SDK share
//!
//! Always compiled, and all the SDK sees:
//! - [`api`]: the JSON bodies of the services' REST APIs;
//! - [`protocol`]: the round protocol's rules — committee and roster files, the canonical spec
//!   hash the key managers sign, deposit statements, site keys and their tokens;
//! - [`ids`]: typed, validated identifiers ([`RoundId`], [`ClientId`], [`Sha256Digest`]);
//! - [`Role`]: who a token speaks for;
//! - [`problem`]: the RFC 7807 problem document every error response carries, and the
//!   stable [`ErrorCode`]s clients match on;
//! - [`private_fs`]: files (0600) and directories (0700) readable by their owner only.
//!
//! Behind the `server` feature, the plumbing the KMS and the aggregator share:
//! - [`auth`]: JWT verification (EdDSA, `kid` rotation, per-service audience, clock-skew
//!   leeway, roster-signed tokens at the key managers) and an axum extractor for the verified
//!   [`auth::Principal`];
//! - [`config`]: one loader for a TOML file plus `CRYPTFLOW_…` environment overrides;
//! - [`http`]: the one error type ([`http::AppError`]) that renders problem+json, hides
//!   internals behind an opaque 5xx and logs it once; a JSON body extractor whose rejections
//!   name the offending field;
//! - [`db`]: one sqlx pool for SQLite (the embedded default) and PostgreSQL, with per-database
//!   migrations and a fresh-database helper for tests;
//! - [`clock`]: time as a parameter ([`clock::Clock`]), so deadline tests need not sleep;
//! - [`serve`]: the one server loop — a connection cap sized from the descriptor limit that
//!   closes idle connections to admit new ones, header, body and send timeouts, counted;
//! - [`shutdown`]: a future that resolves on SIGTERM or Ctrl-C.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
pub mod ids;
pub mod private_fs;
pub mod problem;
pub mod protocol;
mod role;
pub mod sealed;

#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod clock;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod db;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod serve;
#[cfg(feature = "server")]
pub mod shutdown;

pub use ids::{ClientId, DigestError, IdError, RoundId, Sha256Digest};
pub use problem::{ErrorCode, Problem, PROBLEM_JSON};
pub use role::Role;
