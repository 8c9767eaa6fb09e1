//! # cryptflow-he — the encryption core of CryptFlow (protocol version 2)
//!
//! Federated-learning clients encrypt their model updates, each under **its own fresh round
//! key**; an untrusted aggregator adds the ciphertexts; a committee of key managers holds
//! Shamir shares of the client keys and releases, for the recorded contributor set `S` only,
//! the shares of the **key sum** `K = Σ_{i∈S} k_i`, which opens the aggregate and nothing else.
//! This crate is the scheme, with no I/O, no async and no logging of values.
//!
//! ## The scheme (DESIGN §3)
//!
//! All arithmetic is in `R_q = Z_q[X]/(X^N + 1)`, `N = 2048`, `q = 2^64` (wrapping `u64`).
//!
//! - **Round setup** ([`RoundSetup`]): the [plan](planner) (encoding and transport width), a
//!   public 128-bit [`MaskSeed`] fixed when the round is created (by the aggregator and the key
//!   managers together, in two steps: `cryptflow-services`' protocol), and the update's size. Block
//!   `j`'s mask `A_j` is the `j`-th run of `N` words of tfhe's CSPRNG seeded with the seed —
//!   exactly how tfhe expands a seeded GLWE ciphertext list — with `j` one counter over the
//!   whole update. Nobody chooses a mask and no ciphertext carries one.
//! - **Client key** ([`ClientKey`]): `N` coefficients from the discrete Gaussian `D_{Z,σ_k}`,
//!   `σ_k = 2^17`, fresh per round, zeroized after use; shared among `n` key managers by
//!   Shamir's scheme over `F_p`, `p = 2^61 − 1`, threshold `t` ([`sharing`]).
//! - **Encryption** ([`Encryptor`]): for block `j` of `N` slots, `B_j = A_j·k + e_j + Δ·M_j`
//!   with `e_j` rounded Gaussian (`σ_e² = ` the variance of TUniform(17)), every word rounded
//!   from `2^64` to `2^w` and bit-packed. The upload is the packed bodies only: `w/8` bytes per
//!   value. One NTT product per block, blocks in parallel and streamable.
//! - **Aggregation** ([`RunningSum`]): lift each upload (shift back to `2^64`) and add,
//!   **unweighted**. The sum is on the `2^(64−w)` grid, so the aggregate is `w` bits per value.
//! - **Decryption** ([`decrypt_with_releases`], [`AggregateKey::decrypt`]): cross-check the
//!   releases, combine `t` of them into `K` by Lagrange interpolation, **range-check `K`**,
//!   compute `ΣB − A·K`, round to the `Δ` grid, and **check every residual** against the noise
//!   bound ([`Error::WrongAggregateKey`]).
//! - **Weighting** lives in the plaintext: a `samples` client encrypts `c·x` and its count `c`
//!   in the last slot; the mean is `Σc·x / Σc`. Ciphertexts and key releases are never
//!   weighted per client: a release `Σ w_i·share_i` with public distinct weights would expose
//!   individual keys (weights 100 and 250 give both keys from two releases).
//! - **Differential privacy** ([`dp`]): the exact discrete-Gaussian sampler (CKS20) clients
//!   use for their noise shares in distributed DP — integer and rational arithmetic only.
//!
//! ## Security argument
//!
//! **One upload is an RLWE sample at least as hard as a vetted instance.** Each block
//! `(A_j, B_ij)` is an RLWE sample (equivalently a GLWE ciphertext of dimension 1, which a
//! test decrypts with TFHE-rs) with `N = 2048`, `q = 2^64`, a discrete-Gaussian secret of
//! width `σ_k = 2^17` and a rounded-Gaussian error of variance `(2^35 + 1)/6` (`σ_e ≈
//! 2^16.2`). TFHE-rs 1.8 uses `N = 2048`, `q = 2^64` and TUniform(17) noise — the same
//! variance — with a *binary* secret for its compact public key
//! (`V1_8_PARAM_PKE_MESSAGE_2_CARRY_2_KS_PBS_TUNIFORM_2M128`) and vets that instance at 128
//! bits with the lattice estimator (Albrecht, Player, Scott, "On the concrete hardness of
//! Learning with Errors", J. Math. Cryptol. 2015; <https://github.com/malb/lattice-estimator>).
//! The attacks the estimator models get harder as the secret gets wider, so the wider
//! Gaussian secret is at least as hard; in the primal-uSVP model of DESIGN §3 the baseline
//! costs ≈ 2^109 (that model is coarser than the estimator's 128-bit figure, which is why it
//! is used only to compare instances). Masks come from AES-CTR under a seed fixed before any
//! client encrypts, so they are pseudorandom; the rounding of bodies to `w` bits is a public
//! function of the sample and only adds noise; each key encrypts each block once.
//!
//! **What the released key sum leaves hidden** (DESIGN §3). Whoever holds `K` and colludes with the aggregator and with all but `h` members of `S` learns the honest key
//! sum `K_H` and, from `ΣB − A·K`, the honest noise sum `E_H` (plus rounding). For `h = 2`:
//! `2B_1 − A·K_H − E_H − 2Δm_1 = A·(k_1 − k_2) + (e_1 − e_2)`, and for Gaussians the
//! difference of two equal-width samples is independent of their sum, so what remains is an
//! RLWE instance whose secret and error are Gaussian of widths `σ_k/√2` and `σ_e/√2` after
//! halving (modulus `2^63`) — the Hint-RLWE setting of Kim, Lee, Seo and Song (CRYPTO 2023),
//! which reduces RLWE with such linear hints to plain RLWE. DESIGN §3's primal-uSVP model
//! estimates it at ≈ 2^170, against ≈ 2^109 for the TFHE-rs baseline in the same model; `h >
//! 2` reduces to `h = 2` (give the attacker all but two honest keys). This is why the keys
//! and the noise are Gaussian: with **binary** keys and two honest clients, every coefficient
//! where `K_H` is 0 or 2 pins both keys (50.6 % measured), dropping the attack cost to ≈ 2^40;
//! with **TUniform** noise, a known `E_H` near the ends of its range pins the terms.
//! `σ_k ≥ √2·σ_e` keeps the residual secret at least as wide as the residual error.
//!
//! **Who learns what.** Fewer than `t` Shamir shares are independent of the key (perfect
//! secrecy over `F_p`); a release is an unweighted sum over the one recorded set; so a key
//! manager alone learns nothing, and the aggregator with fewer than `2t − n` corrupt key
//! managers obtains no `K` other than `K(S)` ([`sharing::CommitteeShape`]). The aggregate
//! reveals the sum of `S`'s updates — inherently, to whoever may read the mean.
//!
//! **Limits.** Unrounded decryptions leak noise and, with enough of them, keys
//! (Li–Micciancio, Eurocrypt 2021): residuals never leave [`decrypt`](AggregateKey::decrypt).
//! The aggregate's integrity against an aggregator that adds a multiple of `Δ` to every slot
//! is not protected (the self-check passes). Key sampling (a rejection sampler) and encoding
//! are not constant-time; they run on the client's own machine.
//!
//! ## Example
//!
//! ```
//! use cryptflow_he::planner::{plan, PlanRequest, Weighting};
//! use cryptflow_he::sharing::{CommitteeShape, Release};
//! use cryptflow_he::*;
//!
//! let params = ParameterSet::default_128();
//! let p = plan(&params, &PlanRequest { max_clients: 3, clip_bound: 1.0, max_abs_error: 1e-6,
//!     weighting: Weighting::Uniform, dp: None }).unwrap();
//! let setup = RoundSetup::try_new(p, MaskSeed::generate().unwrap(), 4).unwrap();
//! let committee = CommitteeShape::try_new(3, 2).unwrap();
//!
//! // Each client: a fresh key, one encryption, shares for the three key managers.
//! let updates = [[0.1f32, 0.2, 0.3, 0.4], [0.4, 0.5, 0.6, 0.7], [-0.2, 0.0, 0.9, 1.0]];
//! let mut sum = RunningSum::zero(&setup, 0..setup.slots()).unwrap();
//! let mut held: Vec<Vec<sharing::KeyShare>> = vec![Vec::new(); 3]; // by node
//! for u in &updates {
//!     let key = ClientKey::generate(&params).unwrap();
//!     let upload = key.encryptor(&setup, None).unwrap().encrypt(&u[..]).unwrap().ciphertext;
//!     sum.add_upload(&upload).unwrap(); // the aggregator's unweighted fold
//!     for (node, share) in key.share(committee).unwrap().into_iter().enumerate() {
//!         held[node].push(share);
//!     }
//! } // each key is dropped (zeroized) here
//! let aggregate = PackedCiphertext::aggregate(&setup, 3, sum.pack()).unwrap();
//!
//! // Two of the three key managers release their sums for the set; a reader decrypts.
//! let releases: Vec<Release> = held[..2]
//!     .iter()
//!     .map(|shares| Release::sum(shares[0].index(), shares).unwrap())
//!     .collect();
//! let (mean, _) = decrypt_with_releases(&setup, &aggregate, committee, &releases).unwrap();
//! let mean = mean.mean::<f32>();
//! assert!((mean[2] - 0.6).abs() < 1e-6);
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod ciphertext;
mod decrypt;
pub mod dp;
mod encoding;
mod encrypt;
mod error;
mod keys;
pub mod merkle;
pub mod noise;
mod ntt;
mod pack;
mod params;
pub mod planner;
mod random;
pub mod sharing;
pub mod wire;

#[cfg(test)]
mod tests;

pub use ciphertext::{CiphertextHeader, CiphertextKind, PackedCiphertext, RoundSetup, RunningSum};
pub use decrypt::{decrypt_with_releases, Clipping, Decrypted, DpMean, ReleaseReport};
pub use encoding::{ClipReport, Element, Segments, Values, MAX_VALUES};
pub use encrypt::{Encrypted, Encryptor};
pub use error::{DecodeError, Error, InputError, InvalidParameter, Mismatch, PlanError};
pub use keys::{AggregateKey, ClientKey};
#[cfg(any(test, feature = "insecure"))]
pub use params::TOY_INSECURE;
pub use params::{
    DeltaLog, ParameterSet, ParameterSetId, ParametersLiteral, RingDegree, TransportBits,
    DEFAULT_128, TUNIFORM17_VARIANCE,
};
pub use random::MaskSeed;
pub use wire::{DecodeLimits, Wire};
