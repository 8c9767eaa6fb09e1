//! Statistical tests of the noise formulas (DESIGN §3, `crate::noise`): fresh, after K sums,
//! and after modulus switching, plus a test that the key-dependent mean is removed.
//!
//! Sampling has to respect the noise's structure. Because the secret `S` has mean ½, the
//! term `e1·S` (and the mask's rounding error times `S`) contains `½·e1·𝟙`, a random walk
//! along the coefficients: coefficients of one polynomial are strongly correlated, while
//! coefficients `j` and `j + N/2` are uncorrelated. So each test takes those two coefficients
//! from each of many independent blocks, making the samples (nearly) independent; the
//! relative standard error of a variance estimate from `n` samples is then `√(2/n)`, and the
//! tolerance is about 6 of those. A wrong formula is off by far more (dropping `h·var(e)`
//! alone is −60 %).

use crate::noise;
use crate::params::{BodiesPerMask, ParameterSet, TransportBits, TransportWidths};
use crate::{generate_keys_from_seed_insecure, Ciphertext, Encoding, SecretKey, Weight};
use ndarray::Array1;

/// Coefficients 0 and N/2 of every body polynomial, as signed noise (messages are zero).
fn independent_samples(sk: &SecretKey, ct: &Ciphertext) -> Vec<f64> {
    let n = sk.params().ring_degree().get();
    let phases = sk.debiased_phases(ct).unwrap();
    phases.chunks(n).flat_map(|poly| [poly[0] as i64 as f64, poly[n / 2] as i64 as f64]).collect()
}

fn variance(xs: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
}

/// Fresh-noise variance conditioned on the key: `¼‖e_i‖² + (h_i + 1)·var(e)`, averaged
/// over the bodies.
fn conditional_fresh_variance(sk: &SecretKey) -> f64 {
    let n = sk.params().ring_degree().get();
    let var_e = sk.params().noise().variance();
    let l = sk.bodies().get();
    (0..l)
        .map(|i| {
            let e = &sk.noise_words()[i * n..(i + 1) * n];
            let h = sk.secret_words()[i * n..(i + 1) * n].iter().filter(|&&b| b == 1).count();
            e.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / 4.0 + (h as f64 + 1.0) * var_e
        })
        .sum::<f64>()
        / l as f64
}

fn per_body_hamming(sk: &SecretKey) -> f64 {
    sk.hamming_weight() as f64 / sk.bodies().get() as f64
}

fn assert_close(measured: f64, expected: f64, samples: usize) {
    let tolerance = 6.0 * (2.0 / samples as f64).sqrt();
    assert!(
        (measured / expected - 1.0).abs() <= tolerance,
        "variance {measured:e} vs expected {expected:e} (tolerance {:.1} %)",
        100.0 * tolerance
    );
}

fn keys(params: ParameterSet, seed: u128) -> (SecretKey, crate::PublicKey) {
    generate_keys_from_seed_insecure(params, BodiesPerMask::try_new(1).unwrap(), seed).unwrap()
}

fn encoding(k: u64) -> Encoding {
    Encoding::try_new(4, 40, 1.0, k, k as u128).unwrap()
}

const TOY_BLOCKS: usize = 16384;

#[test]
fn fresh_noise_matches_the_formula() {
    for (params, blocks) in
        [(ParameterSet::toy_insecure(), TOY_BLOCKS), (ParameterSet::default_128(), 2048)]
    {
        let (sk, pk) = keys(params, 11);
        let zeros = Array1::<f64>::zeros(blocks * params.ring_degree().get());
        let ct = pk.encrypt(&encoding(1), zeros.view()).unwrap().ciphertext;
        let xs = independent_samples(&sk, &ct);
        assert_close(variance(&xs), conditional_fresh_variance(&sk), xs.len());
        // DESIGN's key-averaged formula (N/4 + h + 1)·var(e) agrees within the key's spread.
        let design = noise::fresh_variance(&params, per_body_hamming(&sk));
        assert!((variance(&xs) / design - 1.0).abs() < 0.1);
    }
}

#[test]
fn noise_after_k_sums_is_k_times_fresh() {
    let params = ParameterSet::toy_insecure();
    let (sk, pk) = keys(params, 12);
    let k = 16u64;
    let zeros = Array1::<f64>::zeros(TOY_BLOCKS * 64);
    let enc = encoding(k);
    let mut sum = pk.encrypt(&enc, zeros.view()).unwrap().ciphertext;
    for _ in 1..k {
        sum.add_assign(&pk.encrypt(&enc, zeros.view()).unwrap().ciphertext).unwrap();
    }
    let xs = independent_samples(&sk, &sum);
    assert_close(variance(&xs), k as f64 * conditional_fresh_variance(&sk), xs.len());
}

fn widths() -> TransportWidths {
    TransportWidths {
        mask: TransportBits::try_new(36).unwrap(),
        body: TransportBits::try_new(31).unwrap(),
    }
}

#[test]
fn modulus_switching_noise_matches_the_formula() {
    for (params, blocks) in
        [(ParameterSet::toy_insecure(), TOY_BLOCKS), (ParameterSet::default_128(), 2048)]
    {
        let (sk, pk) = keys(params, 13);
        let zeros = Array1::<f32>::zeros(blocks * params.ring_degree().get());
        let up = pk.encrypt_compressed(&encoding(1), zeros.view(), widths()).unwrap().ciphertext;
        let xs = independent_samples(&sk, &up.lift().unwrap());
        let expected = conditional_fresh_variance(&sk)
            + noise::switch_variance(widths(), per_body_hamming(&sk));
        assert_close(variance(&xs), expected, xs.len());
    }
}

#[test]
fn switching_an_aggregate_down_adds_one_centred_rounding() {
    let params = ParameterSet::toy_insecure();
    let (sk, pk) = keys(params, 14);
    let k = 8u64;
    let enc = encoding(k);
    let zeros = Array1::<f64>::zeros(TOY_BLOCKS * 64);
    let ups: Vec<_> = (0..k)
        .map(|_| pk.encrypt_compressed(&enc, zeros.view(), widths()).unwrap().ciphertext)
        .collect();
    let items: Vec<_> = ups.iter().map(|c| (c, Weight::ONE)).collect();
    let sum = crate::weighted_sum_compressed(&params, &items).unwrap();
    let h = per_body_hamming(&sk);
    let uploads =
        k as f64 * (conditional_fresh_variance(&sk) + noise::switch_variance(widths(), h));

    // At the upload widths the aggregate's words are already on the grid: no new error.
    let same = sum.compress(&params, widths()).lift().unwrap();
    assert_eq!(same, sum);
    let xs = independent_samples(&sk, &same);
    assert_close(variance(&xs), uploads, xs.len());

    // Two bits fewer: the error takes 4 values on a step of 2^(64−w_up), ties to even, so its
    // variance is step²·(m² + 2)/12 with m = 4 (not the continuous m²/12), and it is centred.
    let down_widths = TransportWidths {
        mask: TransportBits::try_new(34).unwrap(),
        body: TransportBits::try_new(29).unwrap(),
    };
    let down = sum.compress(&params, down_widths).lift().unwrap();
    let xs = independent_samples(&sk, &down);
    let expected = uploads + noise::download_switch_variance(widths(), down_widths, h);
    assert_close(variance(&xs), expected, xs.len());
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    assert!(mean.abs() < 6.0 * (expected / xs.len() as f64).sqrt(), "mean {mean}");

    // The planner's model (worst case h = N, plus a download switch) bounds both.
    let model = noise::aggregate_std(&params, 64.0, k as f64, widths(), down_widths).powi(2);
    assert!(variance(&xs) < model);
}

#[test]
fn the_key_dependent_mean_is_removed() {
    // Per coordinate, the mean over R independent encryptions must be ~N(0, σ²/R). Without
    // debiasing it would be ½·(e·𝟙)_j, whose square averages ≈ σ²/3 — about R/3 times more.
    // The common-mode part of the noise makes this average fluctuate, hence the wide band.
    let params = ParameterSet::default_128();
    let (sk, pk) = keys(params, 15);
    let r = 64;
    let n = params.ring_degree().get();
    let zeros = Array1::<f64>::zeros(n);
    let mut means = vec![0f64; n];
    for _ in 0..r {
        let ct = pk.encrypt(&encoding(1), zeros.view()).unwrap().ciphertext;
        for (m, p) in means.iter_mut().zip(sk.debiased_phases(&ct).unwrap()) {
            *m += p as i64 as f64 / r as f64;
        }
    }
    let mean_square = means.iter().map(|m| m * m).sum::<f64>() / n as f64;
    let expected = conditional_fresh_variance(&sk) / r as f64;
    let ratio = mean_square / expected;
    assert!((0.5..2.0).contains(&ratio), "mean square / (σ²/R) = {ratio}");
}
