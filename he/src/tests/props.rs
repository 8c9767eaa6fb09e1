//! Property tests: round trips and the homomorphic weighted sum against plaintext arithmetic,
//! for random K, weights, lengths (including lengths that are not multiples of L·N), clipping
//! and planner-chosen widths. Decryption is exact, so sums are compared as integers.

use super::toy_keys;
use crate::planner::{plan, PlanRequest, PlanTarget};
use crate::{
    weighted_sum_compressed, BodiesPerMask, Ciphertext, Encoding, ParameterSet, Weight, Wire,
};
use ndarray::Array1;
use proptest::prelude::*;

fn quantise(v: f64, e: &Encoding) -> i64 {
    let b = e.clip_bound();
    (v.clamp(-b, b) * 2f64.powi(e.precision_bits() as i32)).round() as i64
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn encrypt_decrypt_round_trip(
        l in 1u8..5,
        values in proptest::collection::vec(-3.0f64..3.0, 1..700),
        seed in any::<u64>(),
    ) {
        let (sk, pk) = toy_keys(l, seed as u128);
        let params = ParameterSet::toy_insecure();
        let request = PlanRequest {
            max_clients: 1, clip_bound: 2.0, max_weight: 1,
            bodies: BodiesPerMask::try_new(l).unwrap(),
            target: PlanTarget::Precision { max_abs_error: 1e-5 },
        };
        let p = plan(&params, &request).unwrap();
        let x = Array1::from(values.clone());
        let full = pk.encrypt(&p.encoding, x.view()).unwrap();
        let clipped = values.iter().filter(|v| v.abs() > 2.0).count() as u64;
        prop_assert_eq!(full.clipping.clipped, clipped);
        let compressed = pk.encrypt_compressed(&p.encoding, x.view(), p.upload).unwrap();
        for ct in [full.ciphertext, compressed.ciphertext.lift().unwrap()] {
            let back = sk.decrypt(&ct).unwrap().weighted_mean::<f64>();
            for (v, b) in values.iter().zip(back.iter()) {
                let expected = quantise(*v, &p.encoding) as f64 / 2f64.powi(p.encoding.precision_bits() as i32);
                prop_assert_eq!(*b, expected);
            }
        }
    }

    #[test]
    fn weighted_sum_equals_plaintext_sum(
        k in 1usize..6,
        l in 1u8..4,
        len in 1usize..900,
        max_weight in 1u64..5,
        seed in any::<u64>(),
        precision in prop_oneof![Just(1e-3), Just(1e-6)],
    ) {
        let (sk, pk) = toy_keys(l, seed as u128);
        let params = ParameterSet::toy_insecure();
        let request = PlanRequest {
            max_clients: k as u32, clip_bound: 1.0, max_weight,
            bodies: BodiesPerMask::try_new(l).unwrap(),
            target: PlanTarget::Precision { max_abs_error: precision },
        };
        let p = plan(&params, &request).unwrap();
        let mut rng = proptest::test_runner::TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha);
        let inputs: Vec<Vec<f64>> = (0..k)
            .map(|_| (0..len).map(|_| rng.random_range(-1.2..1.2)).collect())
            .collect();
        let weights: Vec<u64> = (0..k).map(|i| 1 + (seed.wrapping_add(i as u64) % max_weight)).collect();
        let ups: Vec<_> = inputs
            .iter()
            .map(|x| pk.encrypt_compressed(&p.encoding, Array1::from(x.clone()).view(), p.upload).unwrap().ciphertext)
            .collect();
        // Every upload survives the wire.
        let ups: Vec<_> = ups.iter().map(|c| crate::CompressedCiphertext::from_bytes(&c.to_bytes()).unwrap()).collect();
        let items: Vec<_> = ups.iter().zip(&weights).map(|(c, &w)| (c, Weight::try_new(w).unwrap())).collect();
        let sum = weighted_sum_compressed(&params, &items).unwrap();
        // The aggregate also survives compression for download.
        let down = sum.compress(&params, p.download);
        let decrypted = sk.decrypt_compressed(&down).unwrap();
        prop_assert_eq!(decrypted.header().contributors() as usize, k);
        let total_weight: u64 = weights.iter().sum();
        prop_assert_eq!(decrypted.header().total_weight(), total_weight);
        let sums = decrypted.sum::<f64>();
        let means = decrypted.weighted_mean::<f64>();
        let scale = 2f64.powi(p.encoding.precision_bits() as i32);
        for j in 0..len {
            let exact: i64 = (0..k).map(|i| weights[i] as i64 * quantise(inputs[i][j], &p.encoding)).sum();
            prop_assert_eq!(sums[j], exact as f64 / scale);
            let true_mean: f64 = (0..k).map(|i| weights[i] as f64 * inputs[i][j].clamp(-1.0, 1.0)).sum::<f64>()
                / total_weight as f64;
            prop_assert!((means[j] - true_mean).abs() <= p.encoding.max_quantisation_error() + 1e-12);
        }
    }

    #[test]
    fn full_width_sum_and_scaling(k in 1u64..5, len in 1usize..300, factor in 1u64..4, seed in any::<u64>()) {
        let (sk, pk) = toy_keys(2, seed as u128);
        let enc = Encoding::try_new(12, 40, 1.0, 4 * 4, 4 * 16).unwrap();
        let x = Array1::from_elem(len, 0.25f64);
        let mut acc = Ciphertext::zero_like(
            pk.encrypt(&enc, x.view()).unwrap().ciphertext.header(), &ParameterSet::toy_insecure()).unwrap();
        for _ in 0..k {
            acc.add_assign(&pk.encrypt(&enc, x.view()).unwrap().ciphertext).unwrap();
        }
        acc.scale_assign(Weight::try_new(factor).unwrap(), 1).unwrap();
        let d = sk.decrypt(&acc).unwrap();
        // Σ = k·0.25·factor / 2 ; the weighted mean stays 0.25.
        prop_assert!(d.sum::<f64>().iter().all(|&s| s == k as f64 * 0.25 * factor as f64 / 2.0));
        prop_assert!(d.weighted_mean::<f64>().iter().all(|&m| m == 0.25));
    }
}

#[test]
fn acceptance_upload_is_at_most_4_5_bytes_per_value() {
    // K = 8, |v| ≤ 1, mean error ≤ 1e-6, d = 2^20: the whole serialised upload, header
    // included, against float32's 4 bytes.
    let params = ParameterSet::default_128();
    let bodies = BodiesPerMask::try_new(8).unwrap();
    let request = PlanRequest {
        max_clients: 8,
        clip_bound: 1.0,
        max_weight: 1,
        bodies,
        target: PlanTarget::Precision { max_abs_error: 1e-6 },
    };
    let p = plan(&params, &request).unwrap();
    let (_, pk) = crate::generate_keys(params, bodies).unwrap();
    let d = 1 << 20;
    let x = Array1::from_shape_fn(d, |i| ((i as f32) * 0.37).sin());
    let up = pk.encrypt_compressed(&p.encoding, x.view(), p.upload).unwrap().ciphertext;
    let per_value = up.to_bytes().len() as f64 / d as f64;
    assert!(per_value <= 4.5, "{per_value} bytes per value");
}
