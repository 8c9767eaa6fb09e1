//! Property tests (toy parameters, N = 64, so that many cases run): encryption, the
//! unweighted fold and decryption give the exact sum of the quantised messages in every
//! weighting mode; streaming any block partition gives the same bytes; partial sums merge;
//! and a block re-derived from changed input is refused before its bytes are returned.

use crate::planner::{plan, PlanRequest, Weighting};
use crate::{
    AggregateKey, ClientKey, Error, MaskSeed, PackedCiphertext, ParameterSet, RoundSetup,
    RunningSum,
};
use proptest::prelude::*;

fn setup(c: u32, weighting: Weighting, values: u64, seed: u128) -> RoundSetup {
    let params = ParameterSet::toy_insecure();
    let p = plan(
        &params,
        &PlanRequest { max_clients: c, clip_bound: 1.0, max_abs_error: 1e-5, weighting, dp: None },
    )
    .unwrap();
    RoundSetup::try_new(p, MaskSeed(seed.to_le_bytes()), values).unwrap()
}

/// What the encoder should produce for one value.
fn quantise(setup: &RoundSetup, x: f64, count: u64) -> i64 {
    (count as f64 * x.clamp(-1.0, 1.0) / setup.plan().step()).round() as i64
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn decryption_gives_the_exact_sum_of_messages(
        c in 1usize..6,
        values in 1usize..300,
        weighted in any::<bool>(),
        data in proptest::collection::vec(-2.0f64..2.0, 6 * 300),
        counts in proptest::collection::vec(1u64..50, 6),
        seed in any::<u128>(),
    ) {
        let weighting = if weighted {
            Weighting::Samples { min_count: 1, max_count: 50 }
        } else {
            Weighting::Uniform
        };
        let setup = setup(c as u32, weighting, values as u64, seed);
        let params = *setup.params();
        let keys: Vec<ClientKey> = (0..c).map(|_| ClientKey::generate(&params).unwrap()).collect();
        let mut sum = RunningSum::zero(&setup, 0..setup.slots()).unwrap();
        let mut expected = vec![0i64; values];
        let mut clipped = 0u64;
        let mut weight_total = 0u64;
        let mut exact_mean = vec![0f64; values];
        for (i, k) in keys.iter().enumerate() {
            let x = &data[i * values..(i + 1) * values];
            let count = weighted.then_some(counts[i]);
            let cw = count.unwrap_or(1);
            weight_total += cw;
            let out = k.encryptor(&setup, count).unwrap().encrypt(x).unwrap();
            clipped += out.clipping.clipped;
            for (e, (v, m)) in expected.iter_mut().zip(x.iter().zip(exact_mean.iter_mut())) {
                *e += quantise(&setup, *v, cw);
                *m += cw as f64 * v.clamp(-1.0, 1.0);
            }
            sum.add_upload(&out.ciphertext).unwrap();
        }
        prop_assert_eq!(clipped, data[..c * values].iter().filter(|v| v.abs() > 1.0).count() as u64);
        let agg = PackedCiphertext::aggregate(&setup, c as u32, sum.pack()).unwrap();
        let d = AggregateKey::sum_of(&keys).decrypt(&setup, &agg).unwrap();
        prop_assert_eq!(d.sums(), &expected[..]);
        prop_assert_eq!(d.total_weight(), weight_total);
        // The clipping slots: exact here (d ≤ M), and as many contributions as clipped.
        let c_report = d.clipping();
        prop_assert_eq!((c_report.values_at_least, c_report.values_at_most), (clipped, clipped));
        let clipping_clients = (0..c)
            .filter(|i| data[i * values..(i + 1) * values].iter().any(|v| v.abs() > 1.0))
            .count() as u32;
        prop_assert_eq!(c_report.contributions, clipping_clients);
        prop_assert_eq!(c_report.of_values, (c * values) as u64);
        let bound = d.error_bound();
        prop_assert!(bound <= setup.plan().max_abs_error());
        for (got, m) in d.mean::<f64>().iter().zip(&exact_mean) {
            let want = m / weight_total as f64;
            prop_assert!((got - want).abs() <= bound, "{} vs {} (bound {})", got, want, bound);
        }
    }

    #[test]
    fn any_block_partition_streams_the_same_bytes(
        blocks in 1u64..9,
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
        seed in any::<u128>(),
    ) {
        let values = blocks * 64 - 13;
        let setup = setup(4, Weighting::Uniform, values, seed);
        let key = ClientKey::generate(setup.params()).unwrap();
        let x: Vec<f32> = (0..values).map(|i| (i as f32 * 0.37).sin()).collect();
        let enc = key.encryptor(&setup, None).unwrap();
        let whole = enc.encrypt(&x[..]).unwrap().ciphertext;
        let mut points: Vec<u64> = cuts.iter().map(|c| c.index(blocks as usize) as u64).collect();
        points.extend([0, blocks]);
        points.sort_unstable();
        points.dedup();
        let mut streamed = Vec::new();
        for pair in points.windows(2) {
            let slots = setup.block_slots(pair[0]).start..setup.block_slots(pair[1] - 1).end;
            let r = setup.payload_range(slots);
            let mut out = vec![0u8; (r.end - r.start) as usize];
            enc.encrypt_blocks(&x[..], pair[0]..pair[1], &mut out).unwrap();
            streamed.extend(out);
        }
        prop_assert_eq!(&streamed, whole.payload());
        // Another key gives other bytes for the same values. (Another noise seed under the
        // same key usually does not: the rounding to w bits swallows noise of 2^16.)
        let other = ClientKey::generate(setup.params()).unwrap();
        let other = other.encryptor(&setup, None).unwrap().encrypt(&x[..]).unwrap().ciphertext;
        prop_assert_ne!(other.payload(), whole.payload());
    }

    #[test]
    fn partial_sums_over_batches_and_block_ranges_compose(c in 2usize..6, seed in any::<u128>()) {
        let n = 64u64;
        let values = 5 * n - 7;
        let setup = setup(c as u32, Weighting::Uniform, values, seed);
        let uploads: Vec<PackedCiphertext> = (0..c)
            .map(|i| {
                let k = ClientKey::generate(setup.params()).unwrap();
                let x: Vec<f64> = (0..values).map(|j| ((i as u64 * 31 + j) % 17) as f64 / 17.0).collect();
                k.encryptor(&setup, None).unwrap().encrypt(&x[..]).unwrap().ciphertext
            })
            .collect();
        let mut whole = RunningSum::zero(&setup, 0..setup.slots()).unwrap();
        uploads.iter().for_each(|u| whole.add_upload(u).unwrap());
        // Two batches, merged.
        let mut a = RunningSum::zero(&setup, 0..setup.slots()).unwrap();
        let mut b = a.clone();
        uploads[..1].iter().for_each(|u| a.add_upload(u).unwrap());
        uploads[1..].iter().for_each(|u| b.add_upload(u).unwrap());
        a.merge(&b).unwrap();
        prop_assert_eq!(a.pack(), whole.pack());
        // Block ranges, packed and concatenated.
        let mut packed = Vec::new();
        for range in [0..2 * n, 2 * n..3 * n, 3 * n..setup.slots()] {
            let mut part = RunningSum::zero(&setup, range).unwrap();
            uploads.iter().for_each(|u| part.add_upload(u).unwrap());
            packed.extend(part.pack());
        }
        prop_assert_eq!(packed, whole.pack());
    }
}

#[test]
fn a_block_re_derived_from_changed_input_is_refused_and_wiped() {
    let setup = setup(4, Weighting::Uniform, 200, 1);
    let key = ClientKey::generate(setup.params()).unwrap();
    let enc = key.encryptor(&setup, None).unwrap();
    let x = vec![0.25f64; 200];
    let first = enc.encrypt(&x[..]).unwrap().ciphertext;
    // Re-deriving block 1 from the same input: same bytes (a retry may resend them).
    let r = setup.payload_range(setup.block_slots(1));
    let mut again = vec![0u8; (r.end - r.start) as usize];
    enc.encrypt_blocks(&x[..], 1..2, &mut again).unwrap();
    assert_eq!(again, first.payload()[r.start as usize..r.end as usize]);
    // The input changed between passes: refused, and nothing of the block is returned.
    let mut y = x.clone();
    y[70] = -0.5;
    let err = enc.encrypt_blocks(&y[..], 1..2, &mut again).unwrap_err();
    assert!(matches!(err, Error::ChangedInput { block: 1 }), "{err}");
    assert!(again.iter().all(|&b| b == 0));
    // Unchanged blocks of the changed input still match (block 0 has no changed value).
    let r0 = setup.payload_range(setup.block_slots(0));
    let mut b0 = vec![0u8; (r0.end - r0.start) as usize];
    enc.encrypt_blocks(&y[..], 0..1, &mut b0).unwrap();
}

#[test]
fn inputs_of_the_wrong_length_or_values_are_refused() {
    let setup = setup(4, Weighting::Uniform, 100, 1);
    let key = ClientKey::generate(setup.params()).unwrap();
    let enc = key.encryptor(&setup, None).unwrap();
    assert!(enc.encrypt(&vec![0.0f64; 99][..]).is_err());
    let mut x = vec![0.0f64; 100];
    x[42] = f64::INFINITY;
    let err = enc.encrypt(&x[..]).unwrap_err().to_string();
    assert!(err.contains("42"), "{err}");
}
