//! Statistical tests of the noise (DESIGN §3, `crate::noise`): the sampler is a rounded
//! Gaussian of the right variance — not TUniform, whose bounded support the key-sum holders
//! could exploit — and the phase of an aggregate of `C` uploads has variance
//! `C·(σ_e² + 4^(64−w)/12)`.
//!
//! Tolerances are about six standard errors: a variance estimate from `n` samples has relative
//! standard error `√(2/n)`, a kurtosis estimate of a Gaussian `√(24/n)`.

use super::{gaussian_plan, setup_for};
use crate::decrypt::raw_phases;
use crate::random::{fill_rounded_gaussian, AesStream};
use crate::{noise, AggregateKey, ClientKey, ParameterSet, RunningSum};

fn moments(xs: &[f64]) -> (f64, f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let kurt = xs.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n / (var * var);
    (mean, var, kurt)
}

#[test]
fn the_noise_sampler_is_a_rounded_gaussian_of_tuniform17s_variance() {
    let params = ParameterSet::default_128();
    let sigma = params.noise_std();
    let mut stream = AesStream::new(99, 0, 1 << 30);
    let mut words = vec![0u64; 400_000];
    fill_rounded_gaussian(&mut stream, sigma, &mut words).unwrap();
    let xs: Vec<f64> = words.iter().map(|&w| w as i64 as f64).collect();
    let n = xs.len() as f64;
    let (mean, var, kurt) = moments(&xs);
    assert!(mean.abs() < 6.0 * sigma / n.sqrt(), "mean {mean}");
    let expected = params.noise_variance() + 1.0 / 12.0;
    assert!((var / expected - 1.0).abs() < 6.0 * (2.0 / n).sqrt(), "variance {var:e}");
    // Gaussian: kurtosis 3. TUniform (a uniform-like law) would give 1.8.
    assert!((kurt - 3.0).abs() < 6.0 * (24.0 / n).sqrt(), "kurtosis {kurt}");
    // Unbounded support: a Gaussian of 4·10^5 samples exceeds 4σ about 25 times; TUniform(17)
    // never exceeds 2^17 ≈ 1.73σ.
    let beyond = xs.iter().filter(|x| x.abs() > 4.0 * sigma).count();
    assert!((5..=60).contains(&beyond), "{beyond} samples beyond 4σ");
    assert!(xs.iter().all(|x| x.fract() == 0.0), "rounded to integers");
}

#[test]
fn aggregate_phase_variance_matches_the_model() {
    let params = ParameterSet::default_128();
    let n = params.ring_degree().get();
    let c = 8u32;
    let plan = gaussian_plan(&params, c, 1e-6);
    let values = (16 * n) as u64;
    let setup = setup_for(plan, values, 5);
    let keys: Vec<ClientKey> =
        (0..c).map(|i| ClientKey::from_seed_insecure(&params, 100 + i as u128).unwrap()).collect();
    let zeros = vec![0.0f64; values as usize];
    let mut sum = RunningSum::zero(&setup, 0..setup.slots()).unwrap();
    for k in &keys {
        sum.add_upload(&k.encryptor(&setup, None).unwrap().encrypt(&zeros[..]).unwrap().ciphertext)
            .unwrap();
    }
    let phases = raw_phases(&AggregateKey::sum_of(&keys), &setup, sum.words());
    let xs: Vec<f64> = phases.iter().map(|&p| p as i64 as f64).collect();
    let (_, var, _) = moments(&xs);
    let expected = noise::aggregate_variance(&params, setup.transport(), c);
    let samples = xs.len() as f64;
    assert!(
        (var / expected - 1.0).abs() < 6.0 * (2.0 / samples).sqrt(),
        "variance {var:e} vs model {expected:e}"
    );
    // And the planner's margin holds with room: every residual is far inside Δ/2.
    let worst = xs.iter().map(|x| x.abs()).fold(0.0, f64::max);
    assert!(worst < noise::residual_bound(&params, setup.transport(), c));
    assert!(worst < (setup.plan().delta().delta() / 2) as f64);
}
