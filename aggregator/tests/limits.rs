//! Issue #30, item 2: idle keep-alive connections must not starve an aggregator started with
//! the descriptor limit a systemd service gets (`ulimit -n 1024`). Before, 1,000 of them
//! exhausted its descriptors and were never closed: `/healthz` went unanswered, a round
//! creation blocked for a minute, and nothing was logged. Through the real binaries.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptflow_client::{Layout, ModelUpdate, RoundRequest, SubmitOptions, Weighting};
use cryptflow_devstack::LocalStack;
use cryptflow_services::RoundId;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One `GET` on a fresh connection, keeping it open (HTTP/1.1 keep-alive) once answered; `None`
/// if the server did not answer within `limit`.
async fn get_and_keep(addr: &str, path: &str, limit: Duration) -> Option<TcpStream> {
    tokio::time::timeout(limit, async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.starts_with("HTTP/1.1 200").then_some(s)
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_leave_health_and_rounds_working() {
    // This process holds the idle connections: it needs the descriptors for them.
    rlimit::increase_nofile_limit(8192).unwrap();
    let stack = LocalStack::builder()
        .processes(true)
        .descriptor_limit(1024)
        .sites(2)
        .deposit_grace_secs(2)
        .start()
        .await
        .unwrap();
    let addr = stack.aggregator_url().trim_start_matches("http://").to_owned();

    // 1,000 clients that each made one request and keep their connection open, idle.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        if let Some(s) = get_and_keep(&addr, "/healthz", Duration::from_secs(2)).await {
            idle.push(s);
        }
    }
    assert!(idle.len() >= 900, "only {} of the idle clients got an answer", idle.len());

    // Health answers at once, on a fresh connection.
    for _ in 0..5 {
        let t = Instant::now();
        let s = get_and_keep(&addr, "/healthz", Duration::from_secs(5)).await;
        let took = t.elapsed();
        assert!(s.is_some(), "/healthz unanswered under 1,000 idle connections");
        assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
        eprintln!("/healthz under 1,000 idle connections: {took:?}");
    }

    // A round is created, both sites submit, the mean publishes.
    let t = Instant::now();
    let admin = stack.admin();
    let round = RoundId::parse("r1").unwrap();
    let req = RoundRequest {
        round_id: round.clone(),
        layout: Layout::Dimension(1000),
        clients: stack.site_ids(),
        min_clients: 2,
        max_clients: 2,
        deadline: None,
        deadline_in_secs: Some(600),
        weighting: Weighting::Uniform,
        clip_bound: 1.0,
        max_abs_error: 1e-6,
        dp: None,
    };
    tokio::time::timeout(Duration::from_secs(10), admin.create_round(&req))
        .await
        .expect("round create blocked")
        .unwrap();
    for i in 0..2 {
        let c = stack.client(&format!("site-{i}"));
        let x = ndarray::Array1::from(vec![0.25 * (i as f64 + 1.0); 1000]);
        tokio::time::timeout(
            Duration::from_secs(30),
            c.submit(&round, ModelUpdate::from(x), SubmitOptions::default()),
        )
        .await
        .expect("submission blocked")
        .unwrap();
    }
    let c = stack.client("site-0");
    c.wait_for_aggregate(&round, Duration::from_secs(30)).await.unwrap();
    let mean = c.fetch_mean(&round, None).await.unwrap();
    assert!((mean.mean.iter().next().unwrap() - 0.375).abs() <= mean.max_abs_error);
    eprintln!("round created, submitted and published in {:?}", t.elapsed());

    // The limit was hit, counted and survived.
    let metrics_addr = stack.aggregator_metrics_addr().unwrap();
    let body =
        reqwest::get(format!("http://{metrics_addr}/metrics")).await.unwrap().text().await.unwrap();
    let evicted: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("cryptflow_aggregator_connections_evicted_total "))
        .and_then(|v| v.parse().ok())
        .expect("the metric is exported");
    assert!(evicted > 0, "{body}");
    drop(idle);
    stack.stop().await;
}
