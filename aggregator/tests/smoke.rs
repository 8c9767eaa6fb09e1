#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use cryptflow_client::{Layout, ModelUpdate, RoundRequest, SubmitOptions, Weighting};
use cryptflow_devstack::LocalStack;
use cryptflow_services::RoundId;

#[tokio::test]
async fn smoke() {
    for (n, t) in [(1u8, 1u8), (3, 2)] {
        let stack =
            LocalStack::builder().nodes(n, t).sites(3).deposit_grace_secs(2).start().await.unwrap();
        let admin = stack.admin();
        let round = RoundId::parse("r1").unwrap();
        let req = RoundRequest {
            round_id: round.clone(),
            layout: Layout::Dimension(5000),
            clients: stack.site_ids(),
            min_clients: 2,
            max_clients: 3,
            deadline: None,
            deadline_in_secs: Some(600),
            weighting: Weighting::Uniform,
            clip_bound: 1.0,
            max_abs_error: 1e-6,
            dp: None,
        };
        let info = admin.create_round(&req).await.unwrap();
        assert_eq!(info.echoes.len(), n as usize);
        let mut expected = vec![0f64; 5000];
        for i in 0..3 {
            let x: Vec<f64> =
                (0..5000).map(|j| ((i * 37 + j * 11) % 200) as f64 / 100.0 - 1.0).collect();
            for (e, v) in expected.iter_mut().zip(&x) {
                *e += v / 3.0;
            }
            let c = stack.client(&format!("site-{i}"));
            let s = c
                .submit(
                    &round,
                    ModelUpdate::from(ndarray::Array1::from(x)),
                    SubmitOptions::default(),
                )
                .await
                .unwrap();
            assert_eq!(s.deposited_with.len(), n as usize);
        }
        let c = stack.client("site-1");
        c.wait_for_aggregate(&round, std::time::Duration::from_secs(30)).await.unwrap();
        let agg = c.fetch_mean(&round, None).await.unwrap();
        let mean: Vec<f64> = agg.mean.iter().collect();
        let worst = mean.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst <= agg.max_abs_error, "{worst} > {}", agg.max_abs_error);
        eprintln!("({n},{t}) worst {worst:e} bound {:e}", agg.max_abs_error);
        stack.stop().await;
    }
}
