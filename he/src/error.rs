//! Errors, grouped by whose fault they are.
//!
//! - [`DecodeError`]: untrusted bytes are malformed (the sender's fault).
//! - [`Mismatch`]: two well-formed objects do not belong together (another key, parameter
//!   set, layout or scale) — the caller combined the wrong things.
//! - [`InvalidParameter`] and [`InputError`]: a value handed to the API is out of range.
//! - [`PlanError`]: the requested capacity cannot be met; names the violated bound.
//! - [`BudgetError`]: an operation would exceed the weight budget the plan guarantees.
//! - [`Error::Internal`]: a bug or an environment failure; never caused by input.

use thiserror::Error;

/// Every error `cryptflow-he` returns.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// Untrusted bytes were rejected by a decoder.
    #[error("malformed input: {0}")]
    Decode(#[from] DecodeError),
    /// Objects that do not belong together were combined.
    #[error("incompatible objects: {0}")]
    Mismatch(#[from] Mismatch),
    /// A parameter is out of range.
    #[error("invalid parameter: {0}")]
    InvalidParameter(#[from] InvalidParameter),
    /// An input vector cannot be encoded.
    #[error("invalid input: {0}")]
    Input(#[from] InputError),
    /// The capacity planner found no feasible encoding.
    #[error("infeasible plan: {0}")]
    Plan(#[from] PlanError),
    /// An operation would exceed the plan's guarantees.
    #[error("budget exceeded: {0}")]
    Budget(#[from] BudgetError),
    /// Internal failure (a bug or the environment, e.g. no OS entropy). Never input-driven.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Why a decoder rejected bytes. Every check runs before any allocation sized by the input.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the fixed header.
    #[error("truncated: need at least {needed} bytes, got {got}")]
    Truncated {
        /// Bytes required.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The magic bytes are not `CFHE`.
    #[error("bad magic: not a CryptFlow object")]
    BadMagic,
    /// Unsupported format version.
    #[error("unsupported format version {found} (this build reads {supported})")]
    UnsupportedVersion {
        /// Version in the input.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// The object kind byte is not the one expected.
    #[error("wrong object kind: expected {expected}, found {found}")]
    WrongKind {
        /// Expected kind name.
        expected: &'static str,
        /// Kind byte found.
        found: u8,
    },
    /// A field holds a value outside its domain.
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField {
        /// Field name as in `docs/wire-format.md`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A declared size exceeds a configured limit.
    #[error("field `{field}` = {value} exceeds the limit {limit}")]
    LimitExceeded {
        /// Field name.
        field: &'static str,
        /// Declared value.
        value: u64,
        /// Limit in force.
        limit: u64,
    },
    /// The total length does not match what the header declares.
    #[error("length mismatch: header declares {expected} bytes, got {got}")]
    LengthMismatch {
        /// Length implied by the header.
        expected: u64,
        /// Actual length.
        got: usize,
    },
    /// The embedded key id does not match the key material.
    #[error("key id does not match the key material")]
    KeyIdMismatch,
}

/// Which property differs between two objects that were combined.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mismatch {
    /// Different parameter sets.
    #[error("parameter set {left} vs {right}")]
    ParameterSet {
        /// Left-hand id.
        left: u16,
        /// Right-hand id.
        right: u16,
    },
    /// Encrypted under different keys.
    #[error("encrypted under another key")]
    Key,
    /// Different layout (bodies per mask or number of values).
    #[error("layout: {left} vs {right}")]
    Layout {
        /// Left-hand layout.
        left: String,
        /// Right-hand layout.
        right: String,
    },
    /// Different encodings or scale exponents.
    #[error("scale: {left} vs {right}")]
    Scale {
        /// Left-hand scale.
        left: String,
        /// Right-hand scale.
        right: String,
    },
    /// A compressed ciphertext uses other transport widths than required.
    #[error("transport widths: expected {expected}, found {found}")]
    Widths {
        /// Required widths.
        expected: String,
        /// Widths found.
        found: String,
    },
}

/// A parameter outside its domain.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidParameter {
    /// Ring degree not a power of two in [32, 2^15].
    #[error("ring degree {value} is not a power of two in [32, 32768]")]
    RingDegree {
        /// Value given.
        value: u64,
    },
    /// Noise bound exponent out of range.
    #[error("noise bound exponent {value} is not in [1, 40]")]
    NoiseBound {
        /// Value given.
        value: u64,
    },
    /// Bodies per mask out of range.
    #[error("bodies per mask {value} is not in [1, {max}]")]
    BodiesPerMask {
        /// Value given.
        value: u64,
        /// Largest allowed.
        max: u8,
    },
    /// Transport width out of range.
    #[error("transport width {value} is not in [1, 64]")]
    TransportBits {
        /// Value given.
        value: u64,
    },
    /// Unknown parameter set id.
    #[error("unknown parameter set id {id}")]
    UnknownParameterSet {
        /// Id given.
        id: u16,
    },
    /// A weight of zero (or over the plan's maximum).
    #[error("weight {value} is not in [1, {max}]")]
    Weight {
        /// Value given.
        value: u64,
        /// Largest allowed.
        max: u64,
    },
    /// An encoding field is out of range.
    #[error("encoding: {0}")]
    Encoding(String),
}

/// An input vector that cannot be encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputError {
    /// NaN or infinity at the given index.
    #[error("value at index {index} is not finite")]
    NonFinite {
        /// First offending index.
        index: usize,
    },
    /// Empty input.
    #[error("the input vector is empty")]
    Empty,
    /// Longer than the supported maximum.
    #[error("the input has {len} values, more than the limit {limit}")]
    TooLong {
        /// Length given.
        len: usize,
        /// Limit.
        limit: u64,
    },
    /// The output buffer has the wrong length.
    #[error("expected {expected} values, got {got}")]
    Length {
        /// Expected length.
        expected: u64,
        /// Actual length.
        got: usize,
    },
}

/// The capacity planner's refusal, naming the bound that cannot be met.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum PlanError {
    /// A request field is out of its domain.
    #[error("`{field}` {reason}")]
    InvalidRequest {
        /// Field name.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The sum of `max_clients · max_weight · clip_bound` at the requested precision does not
    /// fit below 2^62 together with the noise margin.
    #[error(
        "wrap-around bound violated: max_clients·max_weight·clip_bound·2^(precision+noise) needs \
         {needed_bits:.1} bits, only {available_bits} are available"
    )]
    Wraparound {
        /// Bits the sum would need.
        needed_bits: f64,
        /// Bits available (62).
        available_bits: u32,
    },
    /// The precision target cannot be met with the given transport widths.
    #[error("precision target {target:e} unreachable: best achievable is {achievable:e}")]
    Precision {
        /// Requested maximum absolute error of the mean.
        target: f64,
        /// Best achievable.
        achievable: f64,
    },
}

/// An arithmetic step that would break the plan's guarantees.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BudgetError {
    /// The total weight would exceed the plan's maximum (risk of wrap-around).
    #[error("total weight {value} would exceed the plan's maximum {max}")]
    TotalWeight {
        /// Resulting total weight.
        value: u128,
        /// Maximum allowed.
        max: u128,
    },
    /// The sum of squared weights would exceed the plan's noise budget.
    #[error("sum of squared weights {value} would exceed the noise budget {max}")]
    NoiseBudget {
        /// Resulting sum.
        value: u128,
        /// Maximum allowed.
        max: u128,
    },
    /// Contributor count overflow.
    #[error("too many contributors")]
    Contributors,
}
