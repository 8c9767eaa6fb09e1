//! Load test: 64 clients upload a 1,048,576-value update at once to the real aggregator
//! binary; uploads beyond its concurrency bound get 429 and retry. Reports the aggregator's
//! peak resident memory (VmHWM) and the upload throughput.
//!
//! Heavy, so not in the default run:
//! `cargo test --release -p cryptflow-aggregator --test load -- --ignored --nocapture`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptflow_he::{PublicKey, Wire};
use cryptflow_services::api::aggregator::{Layout, RoundInfo, RoundSpec, RoundState, Weighting};
use cryptflow_services::auth::{generate_ed25519_pem, Issuer, Verifier, DEFAULT_LEEWAY};
use cryptflow_services::{db, ClientId, Role, RoundId};
use reqwest::StatusCode;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: run with --release --ignored"]
async fn sixty_four_concurrent_uploads_of_a_million_values() {
    let k = 64usize;
    let d = 1usize << 20;
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = generate_ed25519_pem().unwrap();
    let issuer = Issuer::from_pem("k", private.as_bytes()).unwrap();
    let token = |sub: &str, role, aud: &str| {
        issuer.mint(&ClientId::parse(sub).unwrap(), role, aud, Duration::from_secs(3600)).unwrap()
    };

    let kms_url = format!("sqlite://{}?mode=rwc", dir.path().join("kms.db").display());
    let pool = db::connect(&kms_url, 2).await.unwrap();
    db::migrate(&pool, &kms_url, &cryptflow_kms::MIGRATIONS).await.unwrap();
    let state = cryptflow_kms::AppState {
        pool,
        verifier: Arc::new(
            Verifier::new("kms", DEFAULT_LEEWAY, [("k", public.as_bytes())]).unwrap(),
        ),
        master: Arc::new(cryptflow_kms::MasterKey::generate()),
        metrics: Arc::default(),
        audit_lock: Arc::default(),
    };
    let (l, m) = (
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let kms = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(cryptflow_kms::launch(l, m, state, 1 << 20, std::future::pending()));

    std::fs::write(dir.path().join("issuer.pub"), &public).unwrap();
    std::fs::write(dir.path().join("agg.jwt"), token("aggregator", Role::Aggregator, "kms"))
        .unwrap();
    let config = dir.path().join("aggregator.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"sqlite://{}?mode=rwc\"\nblob_dir = \"{}\"\nkms_url = \"{kms}\"\nkms_token_file = \"{}\"\nmax_concurrent_uploads = 16\n\
             [[jwt_keys]]\nkid = \"k\"\npublic_key_file = \"{}\"\n",
            dir.path().join("agg.db").display(),
            dir.path().join("blobs").display(),
            dir.path().join("agg.jwt").display(),
            dir.path().join("issuer.pub").display(),
        ),
    )
    .unwrap();
    let migrated = Command::new(env!("CARGO_BIN_EXE_cryptflow-aggregator"))
        .args(["migrate", "--config"])
        .arg(&config)
        .status()
        .unwrap();
    assert!(migrated.success());
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cryptflow-aggregator"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("CRYPTFLOW_AGGREGATOR__LISTEN", format!("127.0.0.1:{port}"))
        .env("CRYPTFLOW_AGGREGATOR__METRICS_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if reqwest::get(format!("{base}/readyz")).await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spec = RoundSpec {
        round_id: RoundId::parse("load").unwrap(),
        layout: Layout::Dimension(d as u64),
        clients: (0..k).map(|i| ClientId::parse(format!("c{i}")).unwrap()).collect(),
        min_clients: k as u32,
        max_clients: k as u32,
        deadline: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + 3600,
        weighting: Weighting::Uniform,
        clip_bound: 1.0,
        max_abs_error: 1e-6,
        bodies: 8,
    };
    let http = reqwest::Client::new();
    let res = http
        .post(format!("{base}/v1/rounds"))
        .bearer_auth(token("ops", Role::Admin, "aggregator"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let round: RoundInfo = res.json().await.unwrap();
    let pk_bytes = http
        .get(format!("{kms}/v1/rounds/load/key/public"))
        .bearer_auth(token("c0", Role::Client, "kms"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let pk = PublicKey::from_bytes(&pk_bytes).unwrap();
    // Encrypt once per client up front (the client side is not what is measured).
    let x = ndarray::Array1::from_shape_fn(d, |j| ((j % 2000) as f32 / 1000.0) - 1.0);
    let uploads: Vec<Vec<u8>> = (0..k)
        .map(|_| {
            pk.encrypt_compressed(&round.plan.encoding, x.view(), round.plan.upload)
                .unwrap()
                .ciphertext
                .to_bytes()
        })
        .collect();
    let bytes_each = uploads[0].len();

    let start = Instant::now();
    let throttled = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = uploads
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let (url, t, throttled) = (
                format!("{base}/v1/rounds/load/submissions/c{i}"),
                token(&format!("c{i}"), Role::Client, "aggregator"),
                throttled.clone(),
            );
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for attempt in 0..400 {
                    // A 429 is sent without reading the body, so the client may see it as a
                    // broken pipe instead; both mean "retry later", as the SDK treats them.
                    let Ok(res) = client.put(&url).bearer_auth(&t).body(body.clone()).send().await
                    else {
                        throttled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20 + 5 * (attempt % 10))).await;
                        continue;
                    };
                    match res.status() {
                        StatusCode::CREATED | StatusCode::OK => return,
                        StatusCode::TOO_MANY_REQUESTS => {
                            throttled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20 + 5 * (attempt % 10)))
                                .await;
                        }
                        other => panic!("upload {i}: {other}"),
                    }
                }
                panic!("upload {i} never accepted");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let uploaded = start.elapsed();
    loop {
        let info: RoundInfo = http
            .get(format!("{base}/v1/rounds/load"))
            .bearer_auth(token("ops", Role::Admin, "aggregator"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if info.state == RoundState::Published {
            assert_eq!(info.contributions.len(), k);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "never published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let published = start.elapsed();
    let peak = peak_rss_mib(child.id());
    let total_mb = (k * bytes_each) as f64 / 1e6;
    println!(
        "LOAD: {k} uploads x {bytes_each} B ({total_mb:.0} MB) accepted in {:.2} s = {:.0} MB/s, {:.1} uploads/s; \
         published after {:.2} s; 429 responses {}; aggregator peak RSS {peak:.0} MiB",
        uploaded.as_secs_f64(),
        total_mb / uploaded.as_secs_f64(),
        k as f64 / uploaded.as_secs_f64(),
        published.as_secs_f64(),
        throttled.load(std::sync::atomic::Ordering::Relaxed),
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
