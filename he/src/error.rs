//! Errors, grouped by whose fault they are.
//!
//! - [`DecodeError`]: untrusted bytes are malformed (the sender's fault).
//! - [`Mismatch`]: two well-formed objects do not belong together (another round, plan,
//!   share index or length) — the caller combined the wrong things.
//! - [`InvalidParameter`] and [`InputError`]: a value handed to the API is out of range.
//! - [`PlanError`]: the requested capacity cannot be met; names the violated bound and the
//!   nearest feasible setting.
//! - The decryption outcomes a lying party causes: [`Error::KeyOutOfRange`],
//!   [`Error::WrongAggregateKey`], [`Error::InconsistentReleases`], [`Error::CountOutOfRange`].
//! - [`Error::ChangedInput`]: the caller re-encrypted a block with other values (refused).
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
    /// A block was produced again from other values than the first time: a second
    /// encryption under the same key and block would hand the aggregator the difference of
    /// the two messages (DESIGN §3, invariant 1). Nothing of the block was returned.
    #[error("block {block} re-encrypted from changed input; withdraw from the round")]
    ChangedInput {
        /// The block.
        block: u64,
    },
    /// The key sum failed the range check: a release was shifted (e.g. by a multiple of `Δ`).
    #[error("the combined key sum is out of range: a key manager's release is wrong")]
    KeyOutOfRange,
    /// The residual self-check failed: the key sum does not open this aggregate (a wrong
    /// release, or an aggregate that is not the sum of the set's uploads).
    #[error("the key sum does not decrypt this aggregate")]
    WrongAggregateKey,
    /// A DP round's decrypted sum lies beyond the bound honest contributions keep to (their
    /// clipped, rounded updates and noise shares, except with probability 2^-128): a
    /// contributor sent a larger message.
    #[error("slot {slot} of the decrypted DP sum is beyond the bound {bound:.3e} honest contributions keep to: a contributor sent more than its clipped update and noise share")]
    SumOutOfRange {
        /// The slot.
        slot: u64,
        /// The bound, in grid units.
        bound: f64,
    },
    /// The decrypted sum of the counts, or of the clipping slots, lies outside what the
    /// contributors can declare.
    #[error("the decrypted sample counts or clipping counts lie outside the round's range")]
    CountOutOfRange,
    /// Fewer releases than the threshold.
    #[error("{have} releases, {need} needed")]
    NotEnoughReleases {
        /// Releases available.
        have: usize,
        /// The threshold.
        need: usize,
    },
    /// The releases disagree and no subset of threshold size decrypts the aggregate.
    #[error("the key managers' releases disagree and no threshold subset decrypts the aggregate")]
    InconsistentReleases,
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
    /// A ciphertext of another round, plan or kind.
    #[error("the ciphertext's `{field}` is not this round's")]
    Round {
        /// The header field that differs.
        field: &'static str,
    },
    /// Shares or releases of different (or repeated, or out-of-committee) nodes.
    #[error("share index {left} does not fit with {right}")]
    ShareIndex {
        /// Expected or first index.
        left: u8,
        /// Found or second index.
        right: u8,
    },
    /// Different lengths.
    #[error("length {left} vs {right}")]
    Length {
        /// Expected length.
        left: usize,
        /// Found length.
        right: usize,
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
    /// Noise or key width out of range.
    #[error("noise: {reason}")]
    Noise {
        /// Which bound.
        reason: &'static str,
    },
    /// Transport width out of range.
    #[error("transport width {value} is not in [1, 64]")]
    TransportBits {
        /// Value given.
        value: u64,
    },
    /// Scale exponent out of range.
    #[error("delta exponent {value} is not in [1, 62]")]
    DeltaLog {
        /// Value given.
        value: u64,
    },
    /// Unknown parameter set id.
    #[error("unknown parameter set id {id}")]
    UnknownParameterSet {
        /// Id given.
        id: u16,
    },
    /// A mask seed that is not 32 hex digits.
    #[error("a mask seed is 32 hexadecimal digits")]
    MaskSeed,
    /// A share index outside `1..=16`.
    #[error("share index {value} is not in [1, {max}]")]
    ShareIndex {
        /// Value given.
        value: u8,
        /// Largest allowed.
        max: u8,
    },
    /// A committee shape outside `1 ≤ n ≤ 16`, `n/2 < t ≤ n`.
    #[error("committee: {reason}")]
    Committee {
        /// What is wrong.
        reason: String,
    },
}

/// An input that cannot be encoded or used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputError {
    /// NaN or infinity at the given index.
    #[error("value at index {index} is not finite")]
    NonFinite {
        /// First offending index.
        index: u64,
    },
    /// Empty input.
    #[error("the input is empty")]
    Empty,
    /// Longer than the supported maximum.
    #[error("the input has {len} values, more than the limit {limit}")]
    TooLong {
        /// Length given.
        len: u64,
        /// Limit.
        limit: u64,
    },
    /// Not the length the round expects.
    #[error("expected {expected} values, got {got}")]
    Length {
        /// Expected length.
        expected: u64,
        /// Actual length.
        got: u64,
    },
    /// A `samples` round needs the contribution's sample count.
    #[error("the round weights by sample count: give the count")]
    CountRequired,
    /// An unweighted round takes no count.
    #[error("the round is unweighted: give no sample count")]
    CountNotExpected,
    /// A sample count outside the round's range.
    #[error("sample count {count} is not in [{min}, {max}]")]
    Count {
        /// Count given.
        count: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A field element not below `p`.
    #[error("element {index} is not below p = 2^61 − 1")]
    NotInField {
        /// Position.
        index: u64,
    },
    /// A slot or block range that does not fit the round.
    #[error("the range {start}..{end} does not fit the round's blocks")]
    SlotRange {
        /// Start.
        start: u64,
        /// End.
        end: u64,
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
    /// No encoding fits 64 bits: the sums need `message_bits` (plus a sign bit) above a noise
    /// and range-check margin of `margin_bits`.
    #[error(
        "no encoding fits in 64 bits: the sum of max_clients contributions at this error needs \
         {message_bits:.1} bits + a sign bit + a {margin_bits}-bit margin for noise and the \
         key-sum range check = {needed_bits:.1}; nearest feasible: {nearest}"
    )]
    Infeasible {
        /// Bits needed in all.
        needed_bits: f64,
        /// Bits of the largest sum.
        message_bits: f64,
        /// Bits below the messages (`δ`) the range check and the noise need at least.
        margin_bits: u8,
        /// The nearest settings that would fit.
        nearest: String,
    },
}
