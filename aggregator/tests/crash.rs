//! Crash safety: the real `cryptflow-aggregator` binary is killed with SIGKILL mid-round
//! (after acknowledged uploads and during one in flight), restarted on the same database and
//! blob store, and the round completes with every accepted update counted exactly once.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptflow_he::{CompressedCiphertext, PublicKey, SecretKey, Wire};
use cryptflow_services::api::aggregator::{Layout, RoundInfo, RoundSpec, RoundState, Weighting};
use cryptflow_services::auth::{generate_ed25519_pem, Issuer, Verifier, DEFAULT_LEEWAY};
use cryptflow_services::{db, ClientId, Role, RoundId};
use reqwest::StatusCode;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The aggregator process; killed (SIGKILL) and reaped when dropped, even on panic.
struct Aggregator {
    child: Child,
    base: String,
}

impl Aggregator {
    fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        self.kill_9();
    }
}

async fn spawn_aggregator(config: &std::path::Path) -> Aggregator {
    let port = free_port();
    let mut agg = Aggregator {
        child: Command::new(env!("CARGO_BIN_EXE_cryptflow-aggregator"))
            .args(["serve", "--config"])
            .arg(config)
            .env("CRYPTFLOW_AGGREGATOR__LISTEN", format!("127.0.0.1:{port}"))
            .env("CRYPTFLOW_AGGREGATOR__METRICS_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        base: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..200 {
        if reqwest::get(format!("{}/readyz", agg.base)).await.is_ok_and(|r| r.status().is_success())
        {
            return agg;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agg.kill_9();
    panic!("the aggregator did not become ready");
}

#[tokio::test]
async fn kill_9_loses_nothing_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = generate_ed25519_pem().unwrap();
    let issuer = Issuer::from_pem("k", private.as_bytes()).unwrap();
    let token = |sub: &str, role, aud: &str| {
        issuer.mint(&ClientId::parse(sub).unwrap(), role, aud, Duration::from_secs(600)).unwrap()
    };

    // The KMS runs in-process.
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

    // The aggregator is a separate process with its own database and blob store.
    std::fs::write(dir.path().join("issuer.pub"), &public).unwrap();
    std::fs::write(dir.path().join("agg.jwt"), token("aggregator", Role::Aggregator, "kms"))
        .unwrap();
    let config = dir.path().join("aggregator.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"sqlite://{}?mode=rwc\"\nblob_dir = \"{}\"\nkms_url = \"{kms}\"\nkms_token_file = \"{}\"\n\
             [[jwt_keys]]\nkid = \"k\"\npublic_key_file = \"{}\"\n",
            dir.path().join("agg.db").display(),
            dir.path().join("blobs").display(),
            dir.path().join("agg.jwt").display(),
            dir.path().join("issuer.pub").display(),
        ),
    )
    .unwrap();
    // Migrations run only through `migrate`; `serve` refuses an unmigrated database.
    let status = Command::new(env!("CARGO_BIN_EXE_cryptflow-aggregator"))
        .args(["migrate", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mut agg = spawn_aggregator(&config).await;

    let k = 6usize;
    let d = 50_000usize;
    let spec = RoundSpec {
        round_id: RoundId::parse("crash").unwrap(),
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
        .post(format!("{}/v1/rounds", agg.base))
        .bearer_auth(token("ops", Role::Admin, "aggregator"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let round: RoundInfo = res.json().await.unwrap();
    let pk_bytes = http
        .get(format!("{kms}/v1/rounds/crash/key/public"))
        .bearer_auth(token("c0", Role::Client, "kms"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let pk = PublicKey::from_bytes(&pk_bytes).unwrap();
    let updates: Vec<Vec<u8>> = (0..k)
        .map(|i| {
            let x = ndarray::Array1::from_shape_fn(d, |j| {
                ((i * 31 + j * 17) % 1000) as f64 / 1000.0 - 0.5
            });
            pk.encrypt_compressed(&round.plan.encoding, x.view(), round.plan.upload)
                .unwrap()
                .ciphertext
                .to_bytes()
        })
        .collect();
    let put = |base: String, i: usize, body: Vec<u8>| {
        let t = token(&format!("c{i}"), Role::Client, "aggregator");
        async move {
            reqwest::Client::new()
                .put(format!("{base}/v1/rounds/crash/submissions/c{i}"))
                .bearer_auth(t)
                .body(body)
                .send()
                .await
        }
    };

    // Three acknowledged, then SIGKILL while a fourth is in flight.
    for (i, update) in updates.iter().enumerate().take(3) {
        assert_eq!(
            put(agg.base.clone(), i, update.clone()).await.unwrap().status(),
            StatusCode::CREATED
        );
    }
    let in_flight = tokio::spawn(put(agg.base.clone(), 3, updates[3].clone()));
    tokio::time::sleep(Duration::from_millis(2)).await;
    agg.kill_9();
    let fourth = in_flight.await.unwrap();

    // Restart: every client (re)sends. Accepted ones get 200, the others 201.
    let agg = spawn_aggregator(&config).await;
    for (i, update) in updates.iter().enumerate() {
        let status = put(agg.base.clone(), i, update.clone()).await.unwrap().status();
        let expected = if i < 3
            || (i == 3 && fourth.as_ref().is_ok_and(|r| r.status() == StatusCode::CREATED))
        {
            vec![StatusCode::OK]
        } else if i == 3 {
            vec![StatusCode::OK, StatusCode::CREATED] // the kill may have landed after the commit
        } else {
            vec![StatusCode::CREATED]
        };
        assert!(expected.contains(&status), "client {i}: {status}");
    }

    // The round publishes by itself; the aggregate is exactly the sum of the six, once each.
    let mut published = None;
    for _ in 0..100 {
        let info: RoundInfo = http
            .get(format!("{}/v1/rounds/crash", agg.base))
            .bearer_auth(token("ops", Role::Admin, "aggregator"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if info.state == RoundState::Published {
            published = Some(info);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let published = published.expect("round never published");
    assert_eq!(published.contributions.len(), k);
    let aggregate = http
        .get(format!("{}/v1/rounds/crash/aggregate", agg.base))
        .bearer_auth(token("c1", Role::Client, "aggregator"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut secret = None;
    for _ in 0..100 {
        let res = http
            .get(format!("{kms}/v1/rounds/crash/key/secret"))
            .bearer_auth(token("c1", Role::Client, "kms"))
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::OK {
            secret = Some(res.bytes().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sk = SecretKey::from_bytes(&secret.expect("key never released")).unwrap();
    let sums =
        sk.decrypt_compressed(&CompressedCiphertext::from_bytes(&aggregate).unwrap()).unwrap();
    assert_eq!(sums.header().contributors(), k as u32);
    let scale = 2f64.powi(round.plan.encoding.precision_bits() as i32);
    let got = sums.sum::<f64>();
    for j in (0..d).step_by(97) {
        let exact: f64 = (0..k)
            .map(|i| ((((i * 31 + j * 17) % 1000) as f64 / 1000.0 - 0.5) * scale).round())
            .sum::<f64>()
            / scale;
        assert_eq!(got[j], exact, "value {j}");
    }
    drop(agg);
}
