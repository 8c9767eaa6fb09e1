//! The clipping slots: every reader of a mean learns how many contributions clipping changed
//! and how many values, exactly when the update is small enough and as a range otherwise —
//! in uniform and in `samples` rounds, across block boundaries, for retried blocks, and
//! after a refused non-finite value.

use super::{gaussian_plan, setup_for};
use crate::planner::{plan, PlanRequest, Weighting};
use crate::{AggregateKey, ClientKey, PackedCiphertext, ParameterSet, RoundSetup, RunningSum};

/// Encrypts `inputs` (one per client, with `counts` in `samples` rounds), sums, decrypts.
fn decrypt(setup: &RoundSetup, inputs: &[Vec<f64>], counts: &[Option<u64>]) -> crate::Decrypted {
    let params = ParameterSet::default_128();
    let keys: Vec<ClientKey> =
        inputs.iter().map(|_| ClientKey::generate(&params).unwrap()).collect();
    let mut sum = RunningSum::zero(setup, 0..setup.slots()).unwrap();
    for ((k, x), c) in keys.iter().zip(inputs).zip(counts) {
        let e = k.encryptor(setup, *c).unwrap();
        // Block by block, last block first: the clipping slots need the whole update.
        let mut payload = vec![0u8; setup.payload_len() as usize];
        for b in (0..setup.blocks()).rev() {
            let r = setup.payload_range(setup.block_slots(b));
            e.encrypt_blocks(&x[..], b..b + 1, &mut payload[r.start as usize..r.end as usize])
                .unwrap();
        }
        let header = setup.header(crate::CiphertextKind::Upload, 1);
        sum.add_upload(&PackedCiphertext { header, payload }).unwrap();
    }
    let agg = PackedCiphertext::aggregate(setup, inputs.len() as u32, sum.pack()).unwrap();
    AggregateKey::sum_of(&keys).decrypt(setup, &agg).unwrap()
}

#[test]
fn clipping_is_counted_exactly_under_encryption() {
    let params = ParameterSet::default_128();
    let n = params.ring_degree().get();
    // The values end one slot before a block boundary: the clipping slots straddle it.
    let d = 2 * n - 1;
    let setup = setup_for(gaussian_plan(&params, 4, 1e-6), d as u64, 5);
    assert_eq!(setup.plan().clipping_unit(d as u64), 1);
    let clean: Vec<f64> = (0..d).map(|i| (i as f64 / d as f64) - 0.5).collect();
    let mut wild = clean.clone();
    for i in (0..d).step_by(100) {
        wild[i] = 3.0 * if i % 200 == 0 { 1.0 } else { -1.0 };
    }
    let clipped = d.div_ceil(100) as u64;
    let mut one = clean.clone();
    one[d - 1] = 1.5;
    let out = decrypt(&setup, &[clean.clone(), wild, one, clean], &[None; 4]);
    let c = out.clipping();
    assert_eq!(c.contributions, 2);
    assert_eq!((c.values_at_least, c.values_at_most), (clipped + 1, clipped + 1));
    assert_eq!(c.of_values, 4 * d as u64);
    assert_eq!(out.len(), d, "the clipping slots are not values of the mean");
    // Nothing clipped: zero, and said so.
    let quiet = decrypt(&setup, &[vec![0.25; d], vec![-0.25; d]], &[None; 2]);
    assert!(!quiet.clipping().any());
    assert_eq!(quiet.clipping().values_at_most, 0);
}

#[test]
fn clipping_in_samples_rounds_and_large_updates_is_a_range() {
    let params = ParameterSet::default_128();
    // A coarse round (ε = 0.01, M = 102 at counts up to 2) of 5,000 values: a unit of 50
    // values, so counts are ranges.
    let p = plan(
        &params,
        &PlanRequest {
            max_clients: 3,
            clip_bound: 1.0,
            max_abs_error: 0.01,
            weighting: Weighting::Samples { min_count: 1, max_count: 2 },
            dp: None,
        },
    )
    .unwrap();
    let d = 5000usize;
    let unit = p.clipping_unit(d as u64);
    assert!(unit > 1, "{unit}");
    let setup = setup_for(p, d as u64, 9);
    let mut a = vec![0.1; d];
    a[..7].iter_mut().for_each(|v| *v = 2.0); // 7 clipped
    let mut b = vec![-0.1; d];
    b[..d / 2].iter_mut().for_each(|v| *v = -9.0); // 2,500 clipped
    let out = decrypt(&setup, &[a, b, vec![0.0; d]], &[Some(1), Some(2), Some(2)]);
    let c = out.clipping();
    assert_eq!(c.contributions, 2);
    assert!(c.values_at_least <= 2507 && 2507 <= c.values_at_most, "{c:?}");
    assert!(c.values_at_most - c.values_at_least <= 2 * (unit - 1), "{c:?}");
    assert_eq!(out.total_weight(), 5, "the count slot is still the last");
}

#[test]
fn a_retried_block_re_derives_its_clipping_slots_and_a_changed_input_is_refused() {
    let params = ParameterSet::default_128();
    let n = params.ring_degree().get();
    let d = n + 10; // the slots in the second, last block
    let setup = setup_for(gaussian_plan(&params, 2, 1e-6), d as u64, 3);
    let key = ClientKey::generate(&params).unwrap();
    let e = key.encryptor(&setup, None).unwrap();
    let last = setup.blocks() - 1;
    let r = setup.payload_range(setup.block_slots(last));
    let len = (r.end - r.start) as usize;
    let mut x = vec![0.5; d];
    x[3] = 2.0; // in the first block: the last block's slots still count it
    let (mut first, mut again) = (vec![0u8; len], vec![0u8; len]);
    e.encrypt_blocks(&x[..], last..last + 1, &mut first).unwrap();
    e.encrypt_blocks(&x[..], last..last + 1, &mut again).unwrap();
    assert_eq!(first, again, "a retry sends the same bytes");
    // The count is taken once: a retry of the slots' block after the input changed elsewhere
    // re-sends the bytes first sent (never a second encryption of that block with other
    // slot values). (The SDK encrypts an immutable update; a block whose own values changed is
    // refused by its digest, as before.)
    x[4] = -3.0;
    match e.encrypt_blocks(&x[..], last..last + 1, &mut again) {
        Ok(_) => assert_eq!(again, first),
        Err(err) => assert!(matches!(err, crate::Error::ChangedInput { .. }), "{err}"),
    }
    x[d - 1] = 7.0; // in the slots' block itself
    let err = e.encrypt_blocks(&x[..], last..last + 1, &mut again).unwrap_err();
    assert!(matches!(err, crate::Error::ChangedInput { .. }), "{err}");
}

#[test]
fn a_non_finite_value_is_refused_and_a_corrected_input_counted_afresh() {
    let params = ParameterSet::default_128();
    let d = 100;
    let setup = setup_for(gaussian_plan(&params, 2, 1e-6), d as u64, 4);
    let key = ClientKey::generate(&params).unwrap();
    let e = key.encryptor(&setup, None).unwrap();
    let mut x = vec![0.5; d];
    x[7] = f64::NAN;
    let mut out = vec![0u8; setup.payload_len() as usize];
    assert!(e.encrypt_blocks(&x[..], 0..1, &mut out).is_err());
    // Corrected, with a clipped value: counted (before, the count taken with the NaN was kept).
    x[7] = 9.0;
    let mut sum = RunningSum::zero(&setup, 0..setup.slots()).unwrap();
    let report = e.encrypt_blocks(&x[..], 0..1, &mut out).unwrap();
    assert_eq!(report.clipped, 1);
    let header = setup.header(crate::CiphertextKind::Upload, 1);
    sum.add_upload(&PackedCiphertext { header, payload: out }).unwrap();
    let other = ClientKey::generate(&params).unwrap();
    let y = vec![0.0; d];
    sum.add_upload(&other.encryptor(&setup, None).unwrap().encrypt(&y[..]).unwrap().ciphertext)
        .unwrap();
    let agg = PackedCiphertext::aggregate(&setup, 2, sum.pack()).unwrap();
    let c = AggregateKey::sum_of([&key, &other]).decrypt(&setup, &agg).unwrap().clipping();
    assert_eq!((c.contributions, c.values_at_most), (1, 1));
}
