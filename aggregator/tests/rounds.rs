//! Integration tests: the real KMS and aggregator (`launch` on port 0) over HTTP, on SQLite
//! and — when `CRYPTFLOW_TEST_DATABASE_URL` is set, as in CI — fresh PostgreSQL databases.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptflow_aggregator::{AppState, Metrics};
use cryptflow_he::{CompressedCiphertext, PublicKey, SecretKey, Wire};
use cryptflow_services::api::aggregator::{
    Layout, RoundInfo, RoundSpec, RoundState, SubmissionReceipt, Weighting,
};
use cryptflow_services::auth::{generate_ed25519_pem, Issuer, Verifier, DEFAULT_LEEWAY};
use cryptflow_services::{db, ClientId, Problem, Role, RoundId};
use ndarray::Array1;
use reqwest::StatusCode;
use std::sync::Arc;
use std::time::Duration;

struct Stack {
    issuer: Issuer,
    kms: String,
    agg: String,
    agg_pool: sqlx::AnyPool,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn stop(mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for t in self.tasks.drain(..) {
            t.await.unwrap().unwrap();
        }
        self.agg_pool.close().await;
        for url in &self.urls {
            db::drop_test_database(url).await.unwrap();
        }
    }

    fn token(&self, sub: &str, role: Role, aud: &str) -> String {
        self.issuer
            .mint(&ClientId::parse(sub).unwrap(), role, aud, Duration::from_secs(600))
            .unwrap()
    }
}

async fn database_urls(tag: &str, dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = vec![(
        format!("sqlite://{}?mode=rwc", dir.join("kms.db").display()),
        format!("sqlite://{}?mode=rwc", dir.join("agg.db").display()),
    )];
    let kms =
        db::fresh_postgres_database(&format!("{tag}k")).await.expect("PostgreSQL unreachable");
    let agg =
        db::fresh_postgres_database(&format!("{tag}a")).await.expect("PostgreSQL unreachable");
    if let (Some(k), Some(a)) = (kms, agg) {
        out.push((k, a));
    }
    out
}

async fn start(kms_url: &str, agg_url: &str, dir: tempfile::TempDir, uploads: usize) -> Stack {
    let (private, public) = generate_ed25519_pem().unwrap();
    let issuer = Issuer::from_pem("test", private.as_bytes()).unwrap();
    let verifier = |aud: &str| {
        Arc::new(Verifier::new(aud, DEFAULT_LEEWAY, [("test", public.as_bytes())]).unwrap())
    };

    // KMS
    let kms_pool = db::connect(kms_url, 4).await.unwrap();
    db::migrate(&kms_pool, kms_url, &cryptflow_kms::MIGRATIONS).await.unwrap();
    let kms_state = cryptflow_kms::AppState {
        pool: kms_pool,
        verifier: verifier("kms"),
        master: Arc::new(cryptflow_kms::MasterKey::generate()),
        metrics: Arc::new(cryptflow_kms::Metrics::default()),
        audit_lock: Arc::default(),
    };
    let (l, m) = (
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let kms = format!("http://{}", l.local_addr().unwrap());
    let (kms_stop, rx) = tokio::sync::oneshot::channel::<()>();
    let kms_task = tokio::spawn(cryptflow_kms::launch(l, m, kms_state, 1 << 20, async move {
        let _ = rx.await;
    }));

    // Aggregator, with its own token for the KMS.
    let token_file = dir.path().join("agg-kms.jwt");
    std::fs::write(
        &token_file,
        issuer
            .mint(
                &ClientId::parse("aggregator").unwrap(),
                Role::Aggregator,
                "kms",
                Duration::from_secs(600),
            )
            .unwrap(),
    )
    .unwrap();
    let agg_pool = db::connect(agg_url, 4).await.unwrap();
    db::migrate(&agg_pool, agg_url, &cryptflow_aggregator::MIGRATIONS).await.unwrap();
    let state = AppState {
        pool: agg_pool.clone(),
        verifier: verifier("aggregator"),
        kms: cryptflow_aggregator::kms_client::KmsClient::new(&kms, token_file),
        blobs: cryptflow_aggregator::blob::BlobStore::open(dir.path().join("blobs")).unwrap(),
        metrics: Arc::new(Metrics::default()),
        accumulators: Arc::default(),
        uploads: Arc::new(tokio::sync::Semaphore::new(uploads)),
        publish_lock: Arc::default(),
    };
    let (l, m) = (
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let agg = format!("http://{}", l.local_addr().unwrap());
    let (agg_stop, rx) = tokio::sync::oneshot::channel::<()>();
    let agg_task = tokio::spawn(cryptflow_aggregator::launch(
        l,
        m,
        state,
        Duration::from_millis(200),
        async move {
            let _ = rx.await;
        },
    ));
    Stack {
        issuer,
        kms,
        agg,
        agg_pool,
        stops: vec![agg_stop, kms_stop],
        tasks: vec![agg_task, kms_task],
        urls: vec![kms_url.to_owned(), agg_url.to_owned()],
        _dir: dir,
    }
}

fn clients(n: usize) -> Vec<ClientId> {
    (0..n).map(|i| ClientId::parse(format!("site-{i}")).unwrap()).collect()
}

fn round_spec(id: &str, dim: u64, weighting: Weighting, n: usize, min: u32) -> RoundSpec {
    RoundSpec {
        round_id: RoundId::parse(id).unwrap(),
        layout: Layout::Dimension(dim),
        clients: clients(n),
        min_clients: min,
        max_clients: n as u32,
        deadline: chrono_now() + 3600,
        weighting,
        clip_bound: 1.0,
        max_abs_error: 1e-6,
        bodies: 8,
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn create(stack: &Stack, spec: &RoundSpec) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/rounds", stack.agg))
        .bearer_auth(stack.token("ops", Role::Admin, "aggregator"))
        .json(spec)
        .send()
        .await
        .unwrap()
}

async fn public_key(stack: &Stack, round: &str, client: &str) -> PublicKey {
    let res = reqwest::Client::new()
        .get(format!("{}/v1/rounds/{round}/key/public", stack.kms))
        .bearer_auth(stack.token(client, Role::Client, "kms"))
        .send()
        .await
        .unwrap();
    PublicKey::from_bytes(&res.bytes().await.unwrap()).unwrap()
}

async fn upload(
    stack: &Stack,
    round: &str,
    client: &str,
    bytes: Vec<u8>,
    weight: Option<u64>,
) -> reqwest::Response {
    let mut url = format!("{}/v1/rounds/{round}/submissions/{client}", stack.agg);
    if let Some(w) = weight {
        url.push_str(&format!("?weight={w}"));
    }
    reqwest::Client::new()
        .put(url)
        .bearer_auth(stack.token(client, Role::Client, "aggregator"))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap()
}

async fn info(stack: &Stack, round: &str) -> RoundInfo {
    reqwest::Client::new()
        .get(format!("{}/v1/rounds/{round}", stack.agg))
        .bearer_auth(stack.token("ops", Role::Admin, "aggregator"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_published(stack: &Stack, round: &str) -> RoundInfo {
    for _ in 0..100 {
        let i = info(stack, round).await;
        if i.state == RoundState::Published || i.state == RoundState::Failed {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("round {round} never closed");
}

/// Fetches the aggregate and the released key as a client, decrypts, returns the sums.
async fn fetch_and_decrypt(stack: &Stack, round: &str, client: &str) -> cryptflow_he::Decrypted {
    let agg = reqwest::Client::new()
        .get(format!("{}/v1/rounds/{round}/aggregate", stack.agg))
        .bearer_auth(stack.token(client, Role::Client, "aggregator"))
        .send()
        .await
        .unwrap();
    assert_eq!(agg.status(), StatusCode::OK);
    let ct = CompressedCiphertext::from_bytes(&agg.bytes().await.unwrap()).unwrap();
    let key = reqwest::Client::new()
        .get(format!("{}/v1/rounds/{round}/key/secret", stack.kms))
        .bearer_auth(stack.token(client, Role::Client, "kms"))
        .send()
        .await
        .unwrap();
    assert_eq!(key.status(), StatusCode::OK);
    let sk = SecretKey::from_bytes(&key.bytes().await.unwrap()).unwrap();
    sk.decrypt_compressed(&ct).unwrap()
}

fn update(k: usize, d: usize) -> Vec<f64> {
    (0..d).map(|j| (((k * 7919 + j * 104729) % 2001) as f64 / 1000.0) - 1.0).collect()
}

#[tokio::test]
async fn full_rounds_for_every_weighting_mode() {
    let dir = tempfile::tempdir().unwrap();
    for (kms_url, agg_url) in database_urls("full", dir.path()).await {
        let stack = start(&kms_url, &agg_url, tempfile::tempdir().unwrap(), 16).await;
        let d = 20_000usize;
        let k = 8usize;
        // Weights multiply the noise and the magnitude of the sum, so weighted rounds trade
        // precision for range: the planner refuses e.g. weights up to 1000 at 1e-6 (tested in
        // `every_submission_rejection_path`).
        for (name, weighting, error) in [
            ("uniform", Weighting::Uniform, 1e-6),
            ("samples", Weighting::Samples { max_weight: 10 }, 1e-4),
            ("private", Weighting::Private { max_weight: 2 }, 1e-5),
        ] {
            let spec = RoundSpec {
                max_abs_error: error,
                ..round_spec(name, d as u64, weighting.clone(), k, 4)
            };
            let res = create(&stack, &spec).await;
            assert_eq!(res.status(), StatusCode::CREATED, "{name}");
            let round: RoundInfo = res.json().await.unwrap();
            let pk = public_key(&stack, name, "site-0").await;
            let mut expected = vec![0f64; d];
            let mut total_w = 0f64;
            for i in 0..k {
                let x = update(i, d);
                let w = match weighting {
                    Weighting::Private { .. } => (i as u64 % 2) + 1,
                    _ => (i as u64 % 10) + 1,
                };
                let (values, query_weight) = match weighting {
                    Weighting::Uniform => (x.clone(), None),
                    Weighting::Samples { .. } => (x.clone(), Some(w)),
                    Weighting::Private { .. } => {
                        let mut v: Vec<f64> = x.iter().map(|a| a * w as f64).collect();
                        v.push(w as f64);
                        (v, None)
                    }
                };
                let weight = if matches!(weighting, Weighting::Uniform) { 1.0 } else { w as f64 };
                for (e, a) in expected.iter_mut().zip(&x) {
                    *e += weight * a;
                }
                total_w += weight;
                let ct = pk
                    .encrypt_compressed(
                        &round.plan.encoding,
                        Array1::from(values).view(),
                        round.plan.upload,
                    )
                    .unwrap();
                assert_eq!(ct.clipping.clipped, 0);
                let res = upload(
                    &stack,
                    name,
                    &format!("site-{i}"),
                    ct.ciphertext.to_bytes(),
                    query_weight,
                )
                .await;
                assert_eq!(
                    res.status(),
                    StatusCode::CREATED,
                    "{name} site-{i}: {:?}",
                    res.text().await
                );
            }
            // max_clients reached: the round closes and publishes by itself.
            let published = wait_published(&stack, name).await;
            assert_eq!(published.state, RoundState::Published, "{name}: {:?}", published.failure);
            assert_eq!(published.contributions.len(), k);
            let decrypted = fetch_and_decrypt(&stack, name, "site-3").await;
            let bound = round.plan.encoding.max_quantisation_error();
            let mean: Vec<f64> = match weighting {
                Weighting::Private { .. } => {
                    let sums = decrypted.sum::<f64>();
                    (0..d).map(|j| sums[j] / sums[d]).collect()
                }
                _ => decrypted.weighted_mean::<f64>().to_vec(),
            };
            let worst = mean
                .iter()
                .zip(&expected)
                .map(|(m, e)| (m - e / total_w).abs())
                .fold(0f64, f64::max);
            assert!(worst <= bound, "{name}: error {worst:e} above the planner's bound {bound:e}");
        }
        stack.stop().await;
    }
}

#[tokio::test]
async fn every_submission_rejection_path() {
    let dir = tempfile::tempdir().unwrap();
    for (kms_url, agg_url) in database_urls("rej", dir.path()).await {
        let stack = start(&kms_url, &agg_url, tempfile::tempdir().unwrap(), 16).await;
        let d = 3000usize;
        let spec = round_spec("r", d as u64, Weighting::Uniform, 3, 2);
        let round: RoundInfo = create(&stack, &spec).await.json().await.unwrap();
        // Identical create → 200, different → 409, invalid → 422.
        assert_eq!(create(&stack, &spec).await.status(), StatusCode::OK);
        let other = RoundSpec { min_clients: 3, ..spec.clone() };
        assert_eq!(create(&stack, &other).await.status(), StatusCode::CONFLICT);
        let bad = RoundSpec {
            round_id: RoundId::parse("bad").unwrap(),
            max_abs_error: 1e-30,
            ..spec.clone()
        };
        let res = create(&stack, &bad).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let p: Problem = res.json().await.unwrap();
        assert!(p.field.is_some(), "{p:?}");

        let pk = public_key(&stack, "r", "site-0").await;
        let enc = |x: f64, n: usize| {
            pk.encrypt_compressed(
                &round.plan.encoding,
                Array1::from_elem(n, x).view(),
                round.plan.upload,
            )
            .unwrap()
            .ciphertext
            .to_bytes()
        };
        let good = enc(0.5, d);

        // Another client's slot, a non-member, an unknown round.
        let res = reqwest::Client::new()
            .put(format!("{}/v1/rounds/r/submissions/site-1", stack.agg))
            .bearer_auth(stack.token("site-0", Role::Client, "aggregator"))
            .body(good.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            upload(&stack, "r", "mallory", good.clone(), None).await.status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            upload(&stack, "nope", "site-0", good.clone(), None).await.status(),
            StatusCode::NOT_FOUND
        );
        // Too big → 413 with the limit; too short, garbage → 400; wrong shape → 413/400.
        let mut big = good.clone();
        big.extend_from_slice(&[0; 1000]);
        let res = upload(&stack, "r", "site-0", big, None).await;
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(res.json::<Problem>().await.unwrap().limit, Some(good.len() as u64));
        assert_eq!(
            upload(&stack, "r", "site-0", good[..100].to_vec(), None).await.status(),
            StatusCode::BAD_REQUEST
        );
        let mut garbage = good.clone();
        garbage[0] = b'X';
        assert_eq!(
            upload(&stack, "r", "site-0", garbage, None).await.status(),
            StatusCode::BAD_REQUEST
        );
        // Same size, other key → 422 naming the key.
        let (_, other_pk) = cryptflow_he::generate_keys(
            cryptflow_he::ParameterSet::default_128(),
            round.plan.bodies,
        )
        .unwrap();
        let foreign = other_pk
            .encrypt_compressed(
                &round.plan.encoding,
                Array1::from_elem(d, 0.5).view(),
                round.plan.upload,
            )
            .unwrap()
            .ciphertext
            .to_bytes();
        let res = upload(&stack, "r", "site-0", foreign, None).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(res.json::<Problem>().await.unwrap().field.as_deref(), Some("body.key_id"));
        // A weight on a uniform round → 422.
        assert_eq!(
            upload(&stack, "r", "site-0", good.clone(), Some(3)).await.status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );

        // Accepted; identical retry 200; different second upload 409.
        let res = upload(&stack, "r", "site-0", good.clone(), None).await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let receipt: SubmissionReceipt = res.json().await.unwrap();
        assert_eq!(receipt.contributors, 1);
        assert_eq!(
            upload(&stack, "r", "site-0", good.clone(), None).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            upload(&stack, "r", "site-0", enc(0.25, d), None).await.status(),
            StatusCode::CONFLICT
        );

        // The aggregate is not available before close; close below min → failed.
        let res = reqwest::Client::new()
            .get(format!("{}/v1/rounds/r/aggregate", stack.agg))
            .bearer_auth(stack.token("site-0", Role::Client, "aggregator"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CONFLICT);
        let res = reqwest::Client::new()
            .post(format!("{}/v1/rounds/r/close", stack.agg))
            .bearer_auth(stack.token("ops", Role::Admin, "aggregator"))
            .send()
            .await
            .unwrap();
        let closed: RoundInfo = res.json().await.unwrap();
        assert_eq!(closed.state, RoundState::Failed);
        // After close: 409.
        assert_eq!(
            upload(&stack, "r", "site-1", enc(0.5, d), None).await.status(),
            StatusCode::CONFLICT
        );
        // Non-admin may not close.
        let res = reqwest::Client::new()
            .post(format!("{}/v1/rounds/r/close", stack.agg))
            .bearer_auth(stack.token("site-0", Role::Client, "aggregator"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);

        // Deadline with enough contributions publishes; with too few fails.
        let mut soon = round_spec("soon", 100, Weighting::Uniform, 3, 2);
        soon.deadline = chrono_now() + 2;
        let r2: RoundInfo = create(&stack, &soon).await.json().await.unwrap();
        let pk2 = public_key(&stack, "soon", "site-0").await;
        for c in ["site-0", "site-1"] {
            let ct = pk2
                .encrypt_compressed(
                    &r2.plan.encoding,
                    Array1::from_elem(100, 0.5).view(),
                    r2.plan.upload,
                )
                .unwrap();
            assert_eq!(
                upload(&stack, "soon", c, ct.ciphertext.to_bytes(), None).await.status(),
                StatusCode::CREATED
            );
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let done = wait_published(&stack, "soon").await;
        assert_eq!(done.state, RoundState::Published);
        let dec = fetch_and_decrypt(&stack, "soon", "site-2").await;
        assert!(dec.weighted_mean::<f64>().iter().all(|&m| m == 0.5));
        stack.stop().await;
    }
}

#[tokio::test]
async fn openapi_document_is_served_and_covers_every_route() {
    let dir = tempfile::tempdir().unwrap();
    // SQLite only: the document does not depend on the database.
    let kms_url = format!("sqlite://{}?mode=rwc", dir.path().join("kms.db").display());
    let agg_url = format!("sqlite://{}?mode=rwc", dir.path().join("agg.db").display());
    let stack = start(&kms_url, &agg_url, tempfile::tempdir().unwrap(), 4).await;
    let served: serde_json::Value =
        reqwest::get(format!("{}/openapi.json", stack.agg)).await.unwrap().json().await.unwrap();
    let checked_in: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/aggregator-openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(served, checked_in, "docs/aggregator-openapi.json and the served document differ");
    let routes = [
        ("post", "/v1/rounds"),
        ("get", "/v1/rounds/{round}"),
        ("post", "/v1/rounds/{round}/close"),
        ("put", "/v1/rounds/{round}/submissions/{client}"),
        ("get", "/v1/rounds/{round}/aggregate"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/openapi.json"),
    ];
    let paths = served["paths"].as_object().unwrap();
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, routes.len());
    for (method, path) in routes {
        assert!(paths[path][method].is_object(), "{method} {path} undocumented");
        let url = format!("{}{}", stack.agg, path.replace("{round}", "r").replace("{client}", "c"));
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let res = reqwest::Client::new().request(m, url).send().await.unwrap();
        assert_ne!(res.status(), StatusCode::NOT_FOUND, "{method} {path} not routed");
    }
    stack.stop().await;
}
