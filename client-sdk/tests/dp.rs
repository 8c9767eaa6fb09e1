//! Distributed differential privacy through the local stack (issue #26): sites add
//! discrete-Gaussian shares under encryption, the mean carries noise of the planned variance
//! and nothing less, sets below `m_h + t_c` are never recorded, and the consortium's and the
//! client's DP floors refuse rounds below them.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptflow_client::{ClientError, ClientPolicy, ModelUpdate, RoundState, SubmitOptions};
use cryptflow_devstack::LocalStack;
use cryptflow_services::api::round::{DpOptions, RoundRequest};
use cryptflow_services::protocol::DpPolicy;
use cryptflow_services::{Role, RoundId};
use ndarray::Array1;
use std::sync::Arc;
use std::time::Duration;

fn dp_request(stack: &LocalStack, round: &str, d: u64, min: u32, max: u32) -> RoundRequest {
    RoundRequest {
        clip_bound: 1.0,
        // The grid γ = 2^-10, the coarsest the round allows (and fine enough for the planner).
        max_abs_error: 1.0 / 1024.0,
        dp: Some(DpOptions { noise_multiplier: 1.5, honest_shares: 3, colluders: 1 }),
        ..stack.round_request(round, d, min, max)
    }
}

/// Site `i`'s update: norm about 0.4 (inside the L2 bound 1), or 0.
fn update(d: usize, i: usize, zero: bool) -> Arc<ModelUpdate> {
    let scale = if zero { 0.0 } else { 0.4 * (2.0 / d as f64).sqrt() };
    Arc::new(ModelUpdate::from(Array1::from(
        (0..d).map(|j| ((i * 31 + j) as f64 * 0.77).sin() * scale).collect::<Vec<_>>(),
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_mean_of_a_dp_round_carries_the_noise_of_every_share_and_sets_below_the_floor_are_refused(
) {
    let stack = LocalStack::builder().nodes(3, 2).sites(6).start().await.unwrap();
    let d = 4096usize;
    let sites = 6usize; // |S| = 6 > m_h + t_c = 4: the extra shares only add noise
    for (round, zero) in [("zeros", true), ("updates", false)] {
        stack.admin().create_round(&dp_request(&stack, round, d as u64, 6, 6)).await.unwrap();
        let id = RoundId::parse(round).unwrap();
        for i in 0..sites {
            let s = stack
                .client(&format!("site-{i}"))
                .submit(&id, update(d, i, zero), SubmitOptions::default())
                .await
                .unwrap();
            assert_eq!(s.clipping.clipped, 0, "no update is beyond the L2 bound");
        }
        let info = stack.admin().wait_for_aggregate(&id, Duration::from_secs(60)).await.unwrap();
        assert_eq!(info.state, RoundState::Published, "{:?}", info.failure);
        let agg = stack.client("site-0").fetch_mean(&id, None).await.unwrap();
        assert_eq!(agg.contributors, 6);
        let mean: Vec<f64> = agg.mean.iter().collect();
        let truth: Vec<f64> = (0..d)
            .map(|j| (0..sites).map(|i| update(d, i, zero).iter().nth(j).unwrap()).sum::<f64>())
            .map(|s| s / sites as f64)
            .collect();
        // The variance of each coordinate of the mean, from first principles: the grid the
        // request fixed (γ = 2^-10, the clip bound 1 is 1024 grid units), KLS21's inflated L2
        // bound (eq. 18) for the rotated length 4096 and β = 2^-10 (√(2 ln 1024) rounded up to
        // 3.7233), the indicator K = ⌈Δ₂/8⌉, σ² = ⌈z²(Δ₂² + K²)⌉; |S| shares of σ²/m_h each;
        // the mean divides by |S|.
        assert_eq!(agg.round.spec.plan.dp().unwrap().grid_log(), 10);
        let c = 1024.0f64;
        let dd = d as f64;
        let rounded =
            (c * c + dd / 4.0 + 3.7233 * (c + dd.sqrt() / 2.0)).min((c + dd.sqrt()).powi(2)).ceil();
        let kk = (rounded.sqrt() / 8.0).ceil();
        let sigma2 = (1.5f64 * 1.5 * (rounded + kk * kk)).ceil();
        let s = sites as f64;
        let noise_var = s * sigma2 / 3.0 / (s * s) / (c * c);
        let residuals: Vec<f64> = mean.iter().zip(&truth).map(|(m, t)| m - t).collect();
        let n = residuals.len() as f64;
        let var = residuals.iter().map(|r| r * r).sum::<f64>() / n;
        // Rounding adds at most 1/4 grid unit² per share: within the interval's slack below.
        let rounding_var = s / 4.0 / (s * s) / (c * c);
        assert!(
            var > noise_var * (1.0 - 4.0 * (2.0 / n).sqrt())
                && var < (noise_var + rounding_var) * (1.0 + 4.0 * (2.0 / n).sqrt()),
            "{round}: variance {var:e}, the shares' {noise_var:e}"
        );
        let report = agg.dp.clone().unwrap();
        assert!((report.noise_std.powi(2) / noise_var - 1.0).abs() < 1e-9);
        // Standardized residuals are N(0, 1): Kolmogorov–Smirnov at α = 10^-6.
        let std = (noise_var + rounding_var).sqrt();
        let z: Vec<f64> = residuals.iter().map(|r| r / std).collect();
        let (ks, pass) = cryptflow_he::noise::kolmogorov_smirnov_normal(&z, 1e-6);
        assert!(pass, "{round}: KS statistic {ks}");
        assert!(mean.iter().zip(&truth).all(|(m, t)| (m - t).abs() <= agg.max_abs_error));
    }

    // A set below m_h + t_c = 4 is never recorded: three uploads to a round that would take
    // two (min_clients = 2, m = 2) fail it, and a node refuses the set of three outright.
    let req = RoundRequest { deadline_in_secs: Some(6), ..dp_request(&stack, "small", 64, 2, 6) };
    stack.admin().create_round(&req).await.unwrap();
    let id = RoundId::parse("small").unwrap();
    for i in 0..3 {
        stack
            .client(&format!("site-{i}"))
            .submit(&id, update(64, i, false), SubmitOptions::default())
            .await
            .unwrap();
    }
    let agg_token = stack.token("aggregator", Role::Aggregator, "kms");
    let deposits: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/rounds/small/deposits", stack.node_url(1).unwrap()))
        .bearer_auth(&agg_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let set = deposits["deposits"].clone();
    assert_eq!(set.as_array().unwrap().len(), 3, "{deposits}");
    let res = reqwest::Client::new()
        .put(format!("{}/v1/rounds/small/contributors", stack.node_url(1).unwrap()))
        .bearer_auth(&agg_token)
        .json(&serde_json::json!({ "contributors": set, "aggregate_sha256": "07".repeat(32) }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    let problem = res.text().await.unwrap();
    assert!(problem.contains("honest_shares + colluders) = 4"), "{problem}");
    let info = stack.admin().wait_for_aggregate(&id, Duration::from_secs(30)).await;
    let failure = match info {
        Ok(i) => i.failure.unwrap_or_default(),
        Err(e) => e.to_string(),
    };
    assert!(
        failure.contains("it needs 4") && failure.contains("honest_shares + colluders"),
        "{failure}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_consortium_and_the_client_floor_dp_rounds() {
    let floor = DpPolicy {
        required: true,
        min_honest_shares: 2,
        min_colluders: 2,
        max_round_epsilon: Some(20.0),
        delta: 1e-5,
    };
    let stack = LocalStack::builder().nodes(3, 2).sites(5).dp_policy(floor).start().await.unwrap();
    // The key managers refuse what their consortium configuration floors, whatever the
    // operator asks: no DP, t_c below the floor.
    let plain = stack.round_request("plain", 100, 2, 5);
    let e = stack.admin().create_round(&plain).await.unwrap_err().to_string();
    assert!(e.contains("requires differential privacy"), "{e}");
    let low = RoundRequest {
        dp: Some(DpOptions { noise_multiplier: 1.0, honest_shares: 2, colluders: 1 }),
        ..dp_request(&stack, "low", 100, 2, 5)
    };
    let e = stack.admin().create_round(&low).await.unwrap_err().to_string();
    assert!(e.contains("dp.colluders"), "{e}");
    // Noise too weak for the consortium's largest per-round charge.
    let weak = RoundRequest {
        dp: Some(DpOptions { noise_multiplier: 0.1, honest_shares: 2, colluders: 2 }),
        ..dp_request(&stack, "weak", 100, 4, 5)
    };
    let e = stack.admin().create_round(&weak).await.unwrap_err().to_string();
    assert!(e.contains("max_round_epsilon = 20"), "{e}");
    // Bad input names the field, and nothing is created.
    for (dp, field) in [
        (
            DpOptions { noise_multiplier: 0.0, honest_shares: 2, colluders: 2 },
            "dp.noise_multiplier",
        ),
        (
            DpOptions { noise_multiplier: f64::NAN, honest_shares: 2, colluders: 2 },
            "dp.noise_multiplier",
        ),
        (DpOptions { noise_multiplier: 1.0, honest_shares: 2, colluders: 0 }, "dp.colluders"),
        (DpOptions { noise_multiplier: 1.0, honest_shares: 5, colluders: 2 }, "dp.honest_shares"),
    ] {
        let bad = RoundRequest { dp: Some(dp), ..dp_request(&stack, "bad", 100, 2, 5) };
        let e = stack.admin().create_round(&bad).await.unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
    assert!(stack.admin().round(&RoundId::parse("bad").unwrap()).await.is_err());
    // A round at the floor is registered; a client whose own policy asks for t_c ≥ 3 refuses
    // it before sending anything.
    let ok = RoundRequest {
        dp: Some(DpOptions { noise_multiplier: 1.0, honest_shares: 2, colluders: 2 }),
        ..dp_request(&stack, "ok", 100, 4, 5)
    };
    stack.admin().create_round(&ok).await.unwrap();
    let strict = ClientPolicy { min_dp_colluders: 3, ..stack.stack_policy() };
    let e = stack
        .client_with("site-0", Role::Client, strict)
        .submit(&RoundId::parse("ok").unwrap(), update(100, 0, false), SubmitOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Policy(_)), "{e}");
    assert!(e.to_string().contains("colluders"), "{e}");
    let info = stack.admin().round(&RoundId::parse("ok").unwrap()).await.unwrap();
    assert_eq!(info.uploads, 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_site_with_a_budget_stops_at_it_across_trainings_and_refuses_rounds_without_dp() {
    use cryptflow_client::DpBudget;
    use cryptflow_he::dp::accounting::epsilon;
    let stack = LocalStack::builder().nodes(3, 2).sites(4).start().await.unwrap();
    let admin = stack.admin();
    for r in ["training-a-1", "training-b-1"] {
        admin.create_round(&dp_request(&stack, r, 64, 3, 4)).await.unwrap();
    }
    admin.create_round(&stack.round_request("plain", 64, 3, 4)).await.unwrap();
    // A budget that one round's charge fits and two do not.
    let info = admin.round(&RoundId::parse("training-a-1").unwrap()).await.unwrap();
    let charge = info.spec.plan.dp().unwrap().charge();
    let (one, _) = epsilon(&charge, 1e-5).unwrap();
    let (two, _) = epsilon(&charge.times(2), 1e-5).unwrap();
    assert!(two > one * 1.01);
    let budget = DpBudget::try_new(one * 1.01, 1e-5).unwrap();
    let policy = ClientPolicy { dp_budget: Some(budget), ..stack.stack_policy() };
    let site = stack.client_with("site-0", Role::Client, policy);
    // A round without DP is refused outright once the site has a budget.
    let e = site
        .submit(&RoundId::parse("plain").unwrap(), update(64, 0, false), SubmitOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Policy(_)) && e.to_string().contains("no differential privacy"),
        "{e}"
    );
    // The first training's round is charged to the site's journal ...
    site.submit(
        &RoundId::parse("training-a-1").unwrap(),
        update(64, 1, false),
        SubmitOptions::default(),
    )
    .await
    .unwrap();
    let ledger = site.ledger().unwrap();
    assert_eq!((ledger.rounds, &ledger.spent), (1, &charge));
    // ... and another training (a new round id, another experiment) cannot restart it.
    let options =
        SubmitOptions { experiment: Some("training-b".into()), ..SubmitOptions::default() };
    let e = site
        .submit(&RoundId::parse("training-b-1").unwrap(), update(64, 2, false), options)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Budget(_)), "{e}");
    assert!(e.to_string().contains("past its budget"), "{e}");
    let round = admin.round(&RoundId::parse("training-b-1").unwrap()).await.unwrap();
    assert_eq!(round.uploads, 0, "nothing was sent");
    assert_eq!(site.ledger().unwrap().rounds, 1);
    // Bad budgets are refused, naming the setting.
    assert!(DpBudget::try_new(0.0, 1e-5).unwrap_err().to_string().contains("dp_epsilon"));
    assert!(DpBudget::try_new(1.0, 1.0).unwrap_err().to_string().contains("dp_delta"));
    stack.stop().await;
}
