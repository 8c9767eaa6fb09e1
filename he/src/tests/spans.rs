//! Span sampling against a tampered aggregate (issue #24): real uploads and their roots, an
//! aggregate with one span changed, and 1,000 verifications each sampling `s` spans with fresh
//! randomness. The measured detection rate must match the stated worst case, `s/#spans`, and
//! recomputing every span must always catch it.

use super::{gaussian_plan, setup_for};
use crate::merkle::{self, Hash};
use crate::{ClientKey, PackedCiphertext, ParameterSet, RunningSum, Wire};

#[test]
fn sampling_detects_one_tampered_span_at_the_stated_rate_over_1000_trials() {
    let params = ParameterSet::toy_insecure(); // N = 64
    let setup = setup_for(gaussian_plan(&params, 3, 1e-4), 64 * 16 - 2, 7); // 16 spans
    let spans = setup.blocks();
    assert_eq!(spans, 16);
    let mut uploads = Vec::new();
    let mut sum = RunningSum::zero(&setup, 0..setup.slots()).unwrap();
    for i in 0..3 {
        let key = ClientKey::generate(&params).unwrap();
        let values: Vec<f32> = (0..setup.values()).map(|j| ((i + j) % 7) as f32 / 8.0).collect();
        let up = key.encryptor(&setup, None).unwrap().encrypt(&values[..]).unwrap().ciphertext;
        sum.add_upload(&up).unwrap();
        uploads.push(up.to_bytes());
    }
    let roots: Vec<Hash> = uploads.iter().map(|u| merkle::root(&setup, u).unwrap()).collect();
    let mut aggregate = PackedCiphertext::aggregate(&setup, 3, sum.pack()).unwrap().to_bytes();
    // One coordinate of span 11 shifted (a lowest-bit change is the smallest offset).
    let tampered = 11;
    aggregate[merkle::span_range(&setup, tampered).start + 5] ^= 1;

    // What a verifier does for span j: each member's span against its signed root (by its
    // audit path), then their sum against the aggregate's span.
    let leaves: Vec<Vec<Hash>> =
        uploads.iter().map(|u| merkle::leaves(&setup, u).unwrap()).collect();
    let all: Vec<u64> = (0..spans).collect();
    let paths: Vec<Vec<Vec<Hash>>> = leaves.iter().map(|l| merkle::proofs(l, &all)).collect();
    let span_ok = |j: u64| {
        let r = merkle::span_range(&setup, j);
        for (m, u) in uploads.iter().enumerate() {
            let header: [u8; 64] = u[..64].try_into().unwrap();
            assert!(merkle::verify_span(
                &roots[m],
                &header,
                spans,
                j,
                &u[r.clone()],
                &paths[m][j as usize]
            ));
        }
        let parts: Vec<&[u8]> = uploads.iter().map(|u| &u[r.clone()]).collect();
        merkle::span_sums_to(&setup, j, &parts, &aggregate[r.clone()]).unwrap()
    };
    let bad: Vec<u64> = all.iter().copied().filter(|&j| !span_ok(j)).collect();
    assert_eq!(bad, vec![tampered], "recomputing every span finds exactly the tampered one");

    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut below = |m: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % m
    };
    for s in [1u64, 4, 8] {
        let caught = (0..1000)
            .filter(|_| merkle::sample_spans(spans, s, &mut below).into_iter().any(|j| !span_ok(j)))
            .count() as f64;
        let p = merkle::detection_probability(spans, s);
        let sd = (1000.0 * p * (1.0 - p)).sqrt();
        println!(
            "s = {s}: caught {caught} of 1000, stated {:.1} (with replacement {:.1})",
            1000.0 * p,
            1000.0 * (1.0 - (1.0 - 1.0 / spans as f64).powi(s as i32))
        );
        assert!((caught - 1000.0 * p).abs() <= 5.0 * sd, "s = {s}: {caught} vs {p}");
    }
    assert_eq!(merkle::sample_spans(spans, spans, &mut below).len() as u64, spans);
}
