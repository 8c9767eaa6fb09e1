//! Proof that our blocks are TFHE-rs GLWE ciphertexts (dimension 1, polynomial size N) under
//! the client's key, and that our masks are tfhe's seeded-list masks:
//!
//! - our `(A_j, B_ij)` decrypts under tfhe's `decrypt_glwe_ciphertext_list` with `k_i`, and
//!   tfhe's phases equal ours bit for bit;
//! - tfhe's `encrypt_seeded_glwe_ciphertext_list` with the same seed and `k_i` as its GLWE
//!   secret key decrypts with ours: masks expanded by tfhe's `decompress_…` equal ours, the
//!   phases are equal bit for bit, and our full decryption returns the messages.

use super::{gaussian_plan, setup_for};
use crate::decrypt::raw_phases;
use crate::pack;
use crate::random::expand_mask;
use crate::{AggregateKey, ClientKey, PackedCiphertext, ParameterSet, RunningSum};
use tfhe::core_crypto::commons::math::random::{CompressionSeed, Seed};
use tfhe::core_crypto::prelude::*;

const BLOCKS: usize = 3;

fn tfhe_key(key: &ClientKey) -> GlweSecretKeyOwned<u64> {
    let n = key.params().ring_degree().get();
    GlweSecretKey::from_container(
        key.coefficients().iter().map(|&c| c as u64).collect::<Vec<_>>(),
        PolynomialSize(n),
    )
}

#[test]
fn tfhe_decrypts_ours_with_the_same_phases() {
    let params = ParameterSet::default_128();
    let n = params.ring_degree().get();
    let setup = setup_for(gaussian_plan(&params, 8, 1e-6), (BLOCKS * n) as u64, 0x5EED);
    let key = ClientKey::from_seed_insecure(&params, 11).unwrap();
    let values: Vec<f64> = (0..BLOCKS * n).map(|i| ((i * 37) % 201) as f64 / 100.0 - 1.0).collect();
    let up = key.encryptor(&setup, None).unwrap().encrypt(&values[..]).unwrap().ciphertext;

    // Lift the packed bodies and pair each block with its mask: a tfhe GLWE list.
    let mut bodies = vec![0u64; BLOCKS * n];
    pack::unpack_lift_add(up.payload(), setup.transport().get(), &mut bodies);
    let mut words = Vec::with_capacity(2 * BLOCKS * n);
    for b in 0..BLOCKS {
        let mut mask = vec![0u64; n];
        expand_mask(setup.seed(), b as u64, &mut mask).unwrap();
        words.extend_from_slice(&mask);
        words.extend_from_slice(&bodies[b * n..(b + 1) * n]);
    }
    let list = GlweCiphertextList::from_container(
        words,
        GlweSize(2),
        PolynomialSize(n),
        CiphertextModulus::new_native(),
    );
    let mut theirs = PlaintextList::new(0u64, PlaintextCount(BLOCKS * n));
    decrypt_glwe_ciphertext_list(&tfhe_key(&key), &list, &mut theirs);
    let ours = raw_phases(&AggregateKey::sum_of([&key]), &setup, &bodies);
    assert_eq!(theirs.as_ref(), &ours[..], "phases differ");

    // And tfhe's phases round to our messages.
    let delta = setup.plan().delta().get();
    for (i, (phase, v)) in theirs.as_ref().iter().zip(&values).enumerate() {
        let m = (phase.wrapping_add(1 << (delta - 1)) as i64) >> delta;
        assert_eq!(m, (v / setup.plan().step()).round() as i64, "slot {i}");
    }
}

#[test]
fn we_decrypt_tfhes_seeded_encryption_with_the_same_seed() {
    let params = ParameterSet::default_128();
    let n = params.ring_degree().get();
    let seed_value = 0x0123_4567_89ab_cdef_0011_2233_4455_6677u128;
    // Whole blocks: the values and the two clipping slots (none clipped: both 0).
    let values = (BLOCKS * n) as u64 - crate::planner::CLIPPING_SLOTS;
    let setup = setup_for(gaussian_plan(&params, 8, 1e-6), values, seed_value);
    let key = ClientKey::from_seed_insecure(&params, 12).unwrap();
    let delta = setup.plan().delta().get();
    let messages: Vec<i64> = (0..(BLOCKS * n) as i64)
        .map(|i| if i < values as i64 { (i * 7919) % 2001 - 1000 } else { 0 })
        .collect();
    let plaintexts = PlaintextList::from_container(
        messages.iter().map(|&m| (m as u64) << delta).collect::<Vec<_>>(),
    );
    let mut list = SeededGlweCiphertextList::new(
        0u64,
        GlweSize(2),
        PolynomialSize(n),
        GlweCiphertextCount(BLOCKS),
        CompressionSeed::from(Seed(seed_value)),
        CiphertextModulus::new_native(),
    );
    let mut seeder = new_seeder();
    let noise = Gaussian::from_standard_dev(StandardDev(params.noise_std() / 2f64.powi(64)), 0.0);
    encrypt_seeded_glwe_ciphertext_list(
        &tfhe_key(&key),
        &mut list,
        &plaintexts,
        noise,
        seeder.as_mut(),
    );

    // tfhe's masks, expanded from the seed, are ours.
    let bodies: Vec<u64> = list.as_ref().to_vec();
    let expanded = list.decompress_into_glwe_ciphertext_list();
    for (b, glwe) in expanded.iter().enumerate() {
        let mut mask = vec![0u64; n];
        expand_mask(setup.seed(), b as u64, &mut mask).unwrap();
        assert_eq!(glwe.get_mask().as_ref(), &mask[..], "mask of block {b}");
    }
    // Phases equal bit for bit.
    let mut theirs = PlaintextList::new(0u64, PlaintextCount(BLOCKS * n));
    decrypt_glwe_ciphertext_list(&tfhe_key(&key), &expanded, &mut theirs);
    let k = AggregateKey::sum_of([&key]);
    assert_eq!(theirs.as_ref(), &raw_phases(&k, &setup, &bodies)[..]);

    // Our decryption of their bodies, sent at the round's width, gives the messages.
    let w = setup.transport().get();
    let mut payload = vec![0u8; setup.payload_len() as usize];
    pack::switch_and_pack(&bodies, w, &mut payload);
    let upload =
        PackedCiphertext { header: setup.header(crate::CiphertextKind::Upload, 1), payload };
    let mut sum = RunningSum::zero(&setup, 0..setup.slots()).unwrap();
    sum.add_upload(&upload).unwrap();
    let agg = PackedCiphertext::aggregate(&setup, 1, sum.pack()).unwrap();
    assert_eq!(k.decrypt(&setup, &agg).unwrap().sums(), &messages[..values as usize]);
}
