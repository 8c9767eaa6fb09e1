//! # cryptflow-he — the encryption core of CryptFlow
//!
//! Federated-learning clients encrypt their model updates under a per-round public key; an
//! untrusted aggregator adds and scales the ciphertexts; only holders of the round's secret
//! key can decrypt, and they see only the (weighted) sum. This crate is the scheme, with no
//! I/O, no async and no logging of values.
//!
//! ## The scheme
//!
//! RLWE public-key encryption over `R = Z_{2^64}[X]/(X^N + 1)` in the form TFHE-rs calls
//! *compact public-key encryption*:
//!
//! - **Keys** ([`generate_keys`]): secret `S_1..S_L` binary; public `(A, B_i = A·S_i + e_i)`,
//!   `A` uniform, `e_i` TUniform(17).
//! - **Encryption** ([`PublicKey::encrypt`]): per block of `L·N` values, sample a binary `U`,
//!   output `C = A·U + e1` and `D_i = B_i·U + e2_i + M_i`. One mask serves `L` bodies
//!   (Peikert–Vaikuntanathan–Waters amortisation, secure under the same RLWE assumption), so a
//!   block costs `(1 + L)·N` words. With `L = 1` a block is bit-for-bit TFHE-rs's
//!   `LweCompactCiphertextList`; a test proves that each side decrypts the other's.
//! - **Transport** ([`PublicKey::encrypt_compressed`], [`Ciphertext::compress`]): every word
//!   is rounded from `2^64` to `2^w` and bit-packed; the aggregator lifts it back by shifting.
//!   The mask and the bodies get separate widths (see [`TransportWidths`]).
//! - **Aggregation** ([`Ciphertext::weighted_add_compressed`], [`weighted_sum_compressed`]):
//!   `Σ c_k·ct_k` with integer weights, word-wise wrapping arithmetic, memory-bound; optional
//!   fixed-point scaling ([`Ciphertext::scale_assign`]).
//! - **Decryption** ([`SecretKey::decrypt`]): `D_i − C·S_i`, minus the key-dependent noise
//!   mean, rounded to the `Δ = 2^d` grid.
//! - **Encoding and planning** ([`Encoding`], [`planner`]): values clipped to `[−B, B]` (and
//!   the clipping reported) and encoded as `round(v·2^p)·Δ`; the planner picks `p`, `d` and
//!   the widths so that sums never wrap around and decryption fails with probability at most
//!   2^-128 per coefficient ([`noise`]).
//!
//! ## Parameters
//!
//! One vetted set, [`ParameterSet::default_128`]: `N = 2048`, binary secret, TUniform(17) noise
//! for the key and both encryption noises, `q = 2^64` — TFHE-rs 1.8's compact-PKE parameters
//! (`V1_8_PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128`), 128-bit security. `L` and the
//! transport widths change bandwidth and precision, not security. Toy sets exist only behind
//! the `insecure` feature.
//!
//! ## Security model and its limits
//!
//! - Ciphertexts are IND-CPA under RLWE: without the secret key, the aggregator (or anyone on
//!   the wire) learns nothing about any update, nor about the aggregate.
//! - **Whoever holds a round's secret key can decrypt every individual ciphertext of that
//!   round**, not only the aggregate. The aggregator must never hold it; the KMS releases it
//!   only to the round's clients, only after aggregation, and a client that receives it could
//!   decrypt another client's upload if it obtained that ciphertext. Threshold decryption,
//!   where no single party holds the key, is on the roadmap.
//! - **Unrounded decryptions leak the key** (Li–Micciancio, Eurocrypt 2021): exact-mode
//!   rounding happens before any value leaves [`SecretKey::decrypt`], and no public function
//!   returns an unrounded decryption.
//! - Ciphertexts are malleable: the aggregator can add anything it likes. Integrity of the
//!   aggregate (which ciphertexts went in) is a service-level concern (signed transcripts are
//!   on the roadmap).
//! - Metadata (number of values, weights, contributor count) travels in clear.
//! - The implementation is not constant-time with respect to messages in encoding and
//!   decoding; secret-key operations are data-independent NTT arithmetic.
//!
//! ## Example
//!
//! ```
//! use cryptflow_he::{planner, generate_keys, weighted_sum_compressed, BodiesPerMask,
//!     ParameterSet, Weight};
//!
//! let params = ParameterSet::default_128();
//! let bodies = BodiesPerMask::try_new(8).unwrap();
//! let plan = planner::plan(&params, &planner::PlanRequest {
//!     max_clients: 3,
//!     clip_bound: 1.0,
//!     max_weight: 1,
//!     bodies,
//!     target: planner::PlanTarget::Precision { max_abs_error: 1e-6 },
//! }).unwrap();
//! let (secret, public) = generate_keys(params, bodies).unwrap();
//!
//! let updates = [[0.1f32, 0.2, 0.3], [0.4, 0.5, 0.6], [-0.2, 0.0, 0.9]];
//! let uploads: Vec<_> = updates
//!     .iter()
//!     .map(|u| {
//!         let x = ndarray::arr1(u);
//!         public.encrypt_compressed(&plan.encoding, x.view(), plan.upload).unwrap().ciphertext
//!     })
//!     .collect();
//! let items: Vec<_> = uploads.iter().map(|c| (c, Weight::ONE)).collect();
//! let aggregate = weighted_sum_compressed(&params, &items).unwrap();
//! let mean = secret.decrypt(&aggregate).unwrap().weighted_mean::<f32>();
//! assert!((mean[2] - 0.6).abs() < 1e-6);
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod ciphertext;
mod decrypt;
mod encoding;
mod encrypt;
mod error;
mod keys;
pub mod noise;
mod ntt;
mod pack;
mod params;
pub mod planner;
mod random;
pub mod wire;

#[cfg(test)]
mod tests;

pub use ciphertext::{
    weighted_sum_compressed, Ciphertext, CiphertextHeader, CompressedCiphertext, Weight,
};
pub use decrypt::Decrypted;
pub use encoding::{ClipReport, Element, Encoding, MAX_VALUES};
pub use encrypt::Encrypted;
pub use error::{
    BudgetError, DecodeError, Error, InputError, InvalidParameter, Mismatch, PlanError,
};
#[cfg(any(test, feature = "insecure"))]
pub use keys::generate_keys_from_seed_insecure;
pub use keys::{generate_keys, KeyId, PublicKey, SecretKey};
#[cfg(any(test, feature = "insecure"))]
pub use params::TOY_INSECURE;
pub use params::{
    BodiesPerMask, NoiseBoundLog, ParameterSet, ParameterSetId, ParametersLiteral, RingDegree,
    TransportBits, TransportWidths, DEFAULT_128,
};
pub use wire::{DecodeLimits, Wire};
