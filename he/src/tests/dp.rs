//! Distributed DP through encryption and decryption (KLS21 wired into v2): the noise of the
//! mean has the planned variance, the mean is right up to it, a retry re-derives the identical
//! message, and the planner's width and refusals.

use crate::planner::{plan, DpRequest, Plan, PlanRequest, Weighting};
use crate::tests::setup_for;
use crate::{AggregateKey, ClientKey, Error, PackedCiphertext, ParameterSet, RunningSum};

fn dp_plan(c: u32, values: u64, z: f64, m_h: u32, t_c: u32) -> Plan {
    plan(
        &ParameterSet::default_128(),
        &PlanRequest {
            max_clients: c,
            clip_bound: 1.0,
            max_abs_error: 1e-2,
            weighting: Weighting::Uniform,
            dp: Some(DpRequest { noise_multiplier: z, honest_shares: m_h, colluders: t_c, values }),
        },
    )
    .unwrap()
}

/// Encrypts `updates` (one per client, fixed keys and noise seeds) and decrypts their sum.
fn round_trip(plan: Plan, updates: &[Vec<f64>], seed: u128) -> crate::Decrypted {
    let params = ParameterSet::default_128();
    let d = updates[0].len() as u64;
    let setup = setup_for(plan, d, seed);
    let keys: Vec<ClientKey> = (0..updates.len())
        .map(|i| ClientKey::from_seed_insecure(&params, seed * 1000 + i as u128).unwrap())
        .collect();
    let mut sum = RunningSum::zero(&setup, 0..setup.slots()).unwrap();
    for (i, (k, x)) in keys.iter().zip(updates).enumerate() {
        let e =
            k.encryptor_with_noise_seed_insecure(&setup, None, seed * 7919 + i as u128).unwrap();
        sum.add_upload(&e.encrypt(&x[..]).unwrap().ciphertext).unwrap();
    }
    let agg = PackedCiphertext::aggregate(&setup, updates.len() as u32, sum.pack()).unwrap();
    AggregateKey::sum_of(&keys).decrypt(&setup, &agg).unwrap()
}

#[test]
fn zero_updates_decrypt_to_noise_of_the_planned_variance() {
    // Six contributions to a round whose noise is sized for m_h = 3 honest shares (t_c = 1):
    // a set larger than m_h + t_c adds noise, each share σ²/m_h.
    let (clients, d, z) = (6u32, 4096u64, 1.5);
    let p = dp_plan(clients, d, z, 3, 1);
    let dp = *p.dp().unwrap();
    // σ² from first principles (KLS21 eq. 18 and the indicator), not from the plan's σ².
    let c = 2f64.powi(dp.grid_log()); // clip bound 1 in grid units
    let dd = d as f64;
    let rounded =
        (c * c + dd / 4.0 + 3.7233 * (c + dd.sqrt() / 2.0)).min((c + dd.sqrt()).powi(2)).ceil();
    let k = (rounded.sqrt() / 8.0).ceil();
    let sigma2 = (z * z * (rounded + k * k)).ceil();
    let expected = clients as f64 * sigma2 / 3.0 / (clients as f64).powi(2) / (c * c);
    let zeros = vec![vec![0.0; d as usize]; clients as usize];
    let out = round_trip(p, &zeros, 3);
    let mean = out.mean::<f64>();
    assert_eq!(mean.len(), d as usize);
    let n = mean.len() as f64;
    let var = mean.iter().map(|v| v * v).sum::<f64>() / n;
    // The variance estimate's standard error is √(2/n)·σ²: 4 of them.
    assert!(
        (var / expected - 1.0).abs() < 4.0 * (2.0 / n).sqrt(),
        "variance {var:e}, expected {expected:e}"
    );
    let report = out.dp().unwrap();
    assert!((report.noise_std.powi(2) / expected - 1.0).abs() < 1e-9);
    assert!(report.clipped_contributions.abs() < 6.0 * report.clipped_contributions_std);
}

#[test]
fn the_mean_is_right_up_to_the_noise_and_clipping_is_reported_noised() {
    let (clients, d) = (5u32, 3000usize);
    let p = dp_plan(clients, d as u64, 1.0, 4, 1);
    // Updates of norm below 1, and one of norm 10 that clipping scales.
    let mut updates: Vec<Vec<f64>> = (0..clients as usize)
        .map(|i| (0..d).map(|j| ((i * 31 + j) as f64 * 0.37).sin() / 60.0).collect())
        .collect();
    updates[4].iter_mut().for_each(|v| *v *= 600.0);
    let norm = |x: &[f64]| x.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!(norm(&updates[0]) < 1.0 && norm(&updates[4]) > 5.0);
    let clipped4: Vec<f64> = updates[4].iter().map(|v| v / norm(&updates[4])).collect();
    let truth: Vec<f64> = (0..d)
        .map(|j| (updates[..4].iter().map(|u| u[j]).sum::<f64>() + clipped4[j]) / clients as f64)
        .collect();
    let out = round_trip(p, &updates, 11);
    let report = out.dp().unwrap().clone();
    let mean = out.mean::<f64>();
    let std = (report.noise_std.powi(2) + report.rounding_std.powi(2)).sqrt();
    let bound = out.error_bound();
    let residuals: Vec<f64> = mean.iter().zip(&truth).map(|(m, t)| (m - t) / std).collect();
    assert!(mean.iter().zip(&truth).all(|(m, t)| (m - t).abs() <= bound));
    // Standardized residuals are N(0, 1): Kolmogorov–Smirnov at α = 10^-6.
    let (ks, pass) = crate::noise::kolmogorov_smirnov_normal(&residuals, 1e-6);
    assert!(pass, "KS statistic {ks}");
    // One contribution was clipped; the reader sees it only through the noised indicator.
    assert!((report.clipped_contributions - 1.0).abs() < 6.0 * report.clipped_contributions_std);
}

#[test]
fn a_retry_re_derives_the_identical_message_and_another_upload_fresh_noise() {
    let params = ParameterSet::default_128();
    let p = dp_plan(4, 5000, 1.0, 2, 1);
    let setup = setup_for(p, 5000, 9);
    let key = ClientKey::from_seed_insecure(&params, 1).unwrap();
    let x: Vec<f32> = (0..5000).map(|i| (i as f32).cos() / 100.0).collect();
    let e = key.encryptor_with_noise_seed_insecure(&setup, None, 42).unwrap();
    let first = e.encrypt(&x[..]).unwrap().ciphertext;
    // A retried chunk (block 1 alone) is the same bytes as in the first pass.
    let range = setup.payload_range(setup.block_slots(1));
    let mut again = vec![0u8; (range.end - range.start) as usize];
    e.encrypt_blocks(&x[..], 1..2, &mut again).unwrap();
    assert_eq!(&first.payload[range.start as usize..range.end as usize], &again[..]);
    // A block produced again from a changed update is refused and wiped, not sent.
    let mut changed = x.clone();
    changed[4000] += 0.5;
    let mut out = vec![1u8; (range.end - range.start) as usize];
    assert!(matches!(
        e.encrypt_blocks(&changed[..], 1..2, &mut out),
        Err(Error::ChangedInput { block: 1 })
    ));
    assert!(out.iter().all(|&b| b == 0));
    // Another noise seed (another upload): other noise and other rounding.
    let other = key.encryptor_with_noise_seed_insecure(&setup, None, 43).unwrap();
    assert_ne!(other.encrypt(&x[..]).unwrap().ciphertext.payload, first.payload);
}

#[test]
fn a_sum_beyond_the_bound_is_refused() {
    let p = dp_plan(4, 100, 1.0, 2, 1);
    let setup = setup_for(p, 100, 1);
    let slots = setup.slots() as usize;
    let bound = p.dp().unwrap().sum_bound(3);
    let mut sums = vec![0i64; slots];
    sums[7] = bound as i64 + 1;
    assert_eq!(
        crate::decrypt::finish(&setup, sums, 3).unwrap_err(),
        Error::SumOutOfRange { slot: 7, bound }
    );
    let mut sums = vec![0i64; slots];
    sums[7] = bound as i64 - 1;
    assert!(crate::decrypt::finish(&setup, sums, 3).is_ok());
}

#[test]
fn the_planner_sizes_the_width_from_the_sum_bound() {
    // d = 2^20, |S| = 100, t_c = 1: about 2^20·3.5 bytes, no more than a 1e-6 round today.
    let p = dp_plan(100, 1 << 20, 19.0, 99, 1);
    assert!(p.transport().get() <= 28, "w = {}", p.transport().get());
    let dp = p.dp().unwrap();
    // The grid costs at most 5 % more error than a continuous Gaussian at the unrounded bound.
    let c = 2f64.powi(dp.grid_log());
    let error = (dp.variance() as f64 + 100.0 / 4.0).sqrt();
    assert!(error <= 1.05 * 19.0 * c, "{error} vs {}", 19.0 * c);
    assert_eq!(p.slots(1 << 20), Some((1 << 20) + 1));
    assert_eq!(p.slots(1000), None, "a DP plan is for its own d");
    // No-DP plans are unchanged.
    let plain = crate::tests::gaussian_plan(&ParameterSet::default_128(), 8, 1e-6);
    assert_eq!(plain.transport().get(), 28);
}

#[test]
fn a_plan_whose_charge_is_not_its_mechanisms_is_refused() {
    let p = dp_plan(4, 100, 1.0, 2, 1);
    let json = serde_json::to_value(p).unwrap();
    assert_eq!(serde_json::from_value::<Plan>(json.clone()).unwrap(), p);
    let mut forged = json.clone();
    forged["dp_charge"][0] = (forged["dp_charge"][0].as_u64().unwrap() - 1).into();
    let e = serde_json::from_value::<Plan>(forged).unwrap_err().to_string();
    assert!(e.contains("dp_charge"), "{e}");
    let mut missing = json;
    missing.as_object_mut().unwrap().remove("dp_charge");
    assert!(serde_json::from_value::<Plan>(missing).unwrap_err().to_string().contains("dp_charge"));
    // A plan without DP keeps its 67 canonical bytes (its digest as before DP existed); a DP
    // plan appends 74.
    let plain = crate::tests::gaussian_plan(&ParameterSet::default_128(), 8, 1e-6);
    assert_eq!(plain.canonical_bytes().len(), 67);
    assert_eq!(p.canonical_bytes().len(), 141);
}

#[test]
fn calibration_works_for_large_models_and_names_what_cannot_be_met() {
    use crate::planner::calibrate_noise_multiplier;
    let params = ParameterSet::default_128();
    // d = 2^23: at z = 10^6 σ² passes 2^64; calibration must not stop there.
    let r = PlanRequest {
        max_clients: 100,
        clip_bound: 1.0,
        max_abs_error: 1.0,
        weighting: Weighting::Uniform,
        dp: Some(DpRequest {
            noise_multiplier: 1.0,
            honest_shares: 99,
            colluders: 1,
            values: 1 << 23,
        }),
    };
    let z = calibrate_noise_multiplier(&params, &r, 3.0, 1e-6, 100).unwrap();
    assert!(z > 1.0 && z < 100.0, "{z}");
    // ε = 10^-9 over 10^6 rounds needs more noise than any plannable round carries.
    let e = calibrate_noise_multiplier(&params, &r, 1e-9, 1e-6, 1_000_000).unwrap_err();
    assert!(e.to_string().contains("dp.epsilon"), "{e}");
    for (eps, delta, rounds, field) in
        [(0.0, 1e-6, 1, "dp.epsilon"), (1.0, 1.0, 1, "dp.delta"), (1.0, 1e-6, 0, "rounds")]
    {
        let e = calibrate_noise_multiplier(&params, &r, eps, delta, rounds).unwrap_err();
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
}

#[test]
fn bad_dp_requests_name_the_field() {
    let params = ParameterSet::default_128();
    let ok = DpRequest { noise_multiplier: 1.0, honest_shares: 2, colluders: 1, values: 10 };
    let base = PlanRequest {
        max_clients: 4,
        clip_bound: 1.0,
        max_abs_error: 1e-2,
        weighting: Weighting::Uniform,
        dp: Some(ok),
    };
    for (dp, weighting, field) in [
        (DpRequest { noise_multiplier: 0.0, ..ok }, Weighting::Uniform, "dp.noise_multiplier"),
        (DpRequest { noise_multiplier: -1.0, ..ok }, Weighting::Uniform, "dp.noise_multiplier"),
        (DpRequest { noise_multiplier: f64::NAN, ..ok }, Weighting::Uniform, "dp.noise_multiplier"),
        (DpRequest { colluders: 0, ..ok }, Weighting::Uniform, "dp.colluders"),
        (DpRequest { honest_shares: 0, ..ok }, Weighting::Uniform, "dp.honest_shares"),
        (DpRequest { honest_shares: 4, ..ok }, Weighting::Uniform, "dp.honest_shares"),
        (DpRequest { values: 0, ..ok }, Weighting::Uniform, "dp.values"),
        (ok, Weighting::Samples { min_count: 1, max_count: 10 }, "weighting"),
    ] {
        let e = plan(&params, &PlanRequest { dp: Some(dp), weighting, ..base }).unwrap_err();
        assert!(e.to_string().contains(&format!("`{field}`")), "{field}: {e}");
    }
    let e = plan(&params, &PlanRequest { clip_bound: f64::NAN, ..base }).unwrap_err();
    assert!(e.to_string().contains("clip_bound"), "{e}");
}
