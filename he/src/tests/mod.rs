//! Crate-level tests that need private access: interop with TFHE-rs, statistical noise,
//! property tests of the homomorphic sum, golden wire hashes and rejection paths.

mod golden;
mod interop;
mod noise;
mod props;
mod rejection;

use crate::{
    generate_keys_from_seed_insecure, BodiesPerMask, Encoding, ParameterSet, PublicKey, SecretKey,
};

pub(crate) fn toy_keys(l: u8, seed: u128) -> (SecretKey, PublicKey) {
    generate_keys_from_seed_insecure(
        ParameterSet::toy_insecure(),
        BodiesPerMask::try_new(l).unwrap(),
        seed,
    )
    .unwrap()
}

pub(crate) fn default_keys(l: u8, seed: u128) -> (SecretKey, PublicKey) {
    generate_keys_from_seed_insecure(
        ParameterSet::default_128(),
        BodiesPerMask::try_new(l).unwrap(),
        seed,
    )
    .unwrap()
}

/// An encoding with room for `k` unit-weight contributions.
pub(crate) fn encoding_for(k: u64) -> Encoding {
    Encoding::try_new(16, 40, 1.0, k, k as u128).unwrap()
}
