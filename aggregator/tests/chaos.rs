//! Chaos: `kill -9` of the aggregator and the key managers, at random, while sites upload and
//! rounds publish. Every round must publish the mean of all its sites — nothing acknowledged
//! lost, nothing counted twice — and no temporary blob may outlive a restart.
//!
//! Ignored by default (minutes); run it with
//! `CHAOS_KILLS=100 cargo test --release -p cryptflow-aggregator --test chaos -- --ignored --nocapture`
//! (BENCHMARKS.md has the figures).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptflow_client::{ModelUpdate, RoundState, SubmitOptions};
use cryptflow_devstack::LocalStack;
use cryptflow_services::RoundId;
use ndarray::Array1;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// SplitMix64, for the schedule of kills and the updates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes of kill -9; see the module docs"]
async fn rounds_survive_random_kills() {
    let kills_wanted: usize =
        std::env::var("CHAOS_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let (sites, d) = (6usize, 400_000usize);
    let mut stack = LocalStack::builder()
        .nodes(3, 2)
        .sites(sites)
        .processes(true)
        .deposit_grace_secs(5)
        .start()
        .await
        .unwrap();
    let mut rng = Rng(2026);
    let (mut kills, mut rounds, start) = (0usize, 0usize, Instant::now());
    let mut kills_by_service = [0usize; 4]; // aggregator, node 1, node 2, node 3
    while kills < kills_wanted {
        rounds += 1;
        let name = format!("chaos-{rounds}");
        let round = RoundId::parse(name.clone()).unwrap();
        // Creating the round may meet a dead aggregator: the admin client retries.
        stack
            .admin()
            .create_round(&stack.round_request(&name, d as u64, sites as u32, sites as u32))
            .await
            .unwrap();
        let updates: Vec<Vec<f64>> = (0..sites)
            .map(|_| {
                (0..d)
                    .map(|_| (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
                    .collect()
            })
            .collect();
        let tasks: Vec<_> = updates
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let c = stack.client(&format!("site-{i}"));
                let (round, u) =
                    (round.clone(), Arc::new(ModelUpdate::from(Array1::from(u.clone()))));
                tokio::spawn(async move { c.submit(&round, u, SubmitOptions::default()).await })
            })
            .collect();
        // Kill something every 50–300 ms until every site's submit returned, then through
        // publication. One key manager at most is down at a time: (3, 2) tolerates one.
        let mut pending = tasks;
        let mut published = false;
        while !published {
            tokio::time::sleep(Duration::from_millis(50 + rng.next() % 250)).await;
            let victim = (rng.next() % 4) as usize;
            if victim == 0 {
                stack.kill_aggregator().await;
                stack.restart_aggregator().await.unwrap();
            } else {
                stack.kill_node(victim as u8).await;
                tokio::time::sleep(Duration::from_millis(rng.next() % 300)).await;
                stack.restart_node(victim as u8).await.unwrap();
            }
            kills += 1;
            kills_by_service[victim] += 1;
            let mut still = Vec::new();
            for t in pending {
                if t.is_finished() {
                    t.await.unwrap().unwrap_or_else(|e| panic!("{name}: a submission failed: {e}"));
                } else {
                    still.push(t);
                }
            }
            pending = still;
            if pending.is_empty() {
                let info = stack.admin().round(&round).await.unwrap();
                assert_ne!(info.state, RoundState::Failed, "{name}: {:?}", info.failure);
                published = info.state == RoundState::Published;
            }
        }
        let agg = stack.client("site-0").fetch_mean(&round, None).await.unwrap();
        assert_eq!(agg.contributors as usize, sites, "{name}: contributions lost or doubled");
        let worst = agg
            .mean
            .iter()
            .enumerate()
            .map(|(j, m)| (m - updates.iter().map(|u| u[j]).sum::<f64>() / sites as f64).abs())
            .fold(0.0, f64::max);
        assert!(worst <= agg.max_abs_error, "{name}: mean off by {worst}");
        eprintln!(
            "{name}: published after {kills} kills so far ({:.0} s)",
            start.elapsed().as_secs_f64()
        );
    }
    // A last restart of the aggregator cleans what the kills interrupted; nothing may remain.
    stack.kill_aggregator().await;
    stack.restart_aggregator().await.unwrap();
    let mut temps = 0;
    for round in std::fs::read_dir(stack.dir().join("blobs")).unwrap() {
        for f in std::fs::read_dir(round.unwrap().path()).unwrap() {
            let name = f.unwrap().file_name().to_string_lossy().into_owned();
            temps += usize::from(name.starts_with("incoming.") || name.contains('#'));
        }
    }
    assert_eq!(temps, 0, "temporary blobs left after a restart");
    eprintln!(
        "chaos: {kills} kill -9s (aggregator {}, key managers {}/{}/{}) over {rounds} rounds in {:.0} s: \
         0 lost, 0 counted twice, 0 temporary files left",
        kills_by_service[0],
        kills_by_service[1],
        kills_by_service[2],
        kills_by_service[3],
        start.elapsed().as_secs_f64()
    );
    stack.stop().await;
}
