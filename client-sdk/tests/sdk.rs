//! The SDK against the real KMS and aggregator (in-process, on loopback sockets), and its
//! retry behaviour against a raw HTTP server that fails on purpose.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptflow_client::{
    Client, ClientError, Layout, ModelUpdate, Progress, ProgressFn, RetryPolicy, RoundSpec,
    SubmitOptions, Tensor, Token, Weighting,
};
use cryptflow_services::auth::{generate_ed25519_pem, Issuer, Verifier, DEFAULT_LEEWAY};
use cryptflow_services::{db, ClientId, Role, RoundId};
use ndarray::{Array1, ArrayD, IxDyn};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Stack {
    issuer: Issuer,
    kms: String,
    agg: String,
    _dir: tempfile::TempDir,
}

async fn start() -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = generate_ed25519_pem().unwrap();
    let issuer = Issuer::from_pem("t", private.as_bytes()).unwrap();
    let verifier = |aud: &str| {
        Arc::new(Verifier::new(aud, DEFAULT_LEEWAY, [("t", public.as_bytes())]).unwrap())
    };
    let url = |n: &str| format!("sqlite://{}?mode=rwc", dir.path().join(n).display());
    let kms_pool = db::connect(&url("kms.db"), 2).await.unwrap();
    db::migrate(&kms_pool, &url("kms.db"), &cryptflow_kms::MIGRATIONS).await.unwrap();
    let listen = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let (l, m) = (listen().await, listen().await);
    let kms = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(cryptflow_kms::launch(
        l,
        m,
        cryptflow_kms::AppState {
            pool: kms_pool,
            verifier: verifier("kms"),
            master: Arc::new(cryptflow_kms::MasterKey::generate()),
            metrics: Arc::default(),
            audit_lock: Arc::default(),
        },
        1 << 20,
        std::future::pending(),
    ));
    let token_file = dir.path().join("agg.jwt");
    let t = issuer
        .mint(
            &ClientId::parse("aggregator").unwrap(),
            Role::Aggregator,
            "kms",
            Duration::from_secs(600),
        )
        .unwrap();
    std::fs::write(&token_file, t).unwrap();
    let agg_pool = db::connect(&url("agg.db"), 2).await.unwrap();
    db::migrate(&agg_pool, &url("agg.db"), &cryptflow_aggregator::MIGRATIONS).await.unwrap();
    let (l, m) = (listen().await, listen().await);
    let agg = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(cryptflow_aggregator::launch(
        l,
        m,
        cryptflow_aggregator::AppState {
            pool: agg_pool,
            verifier: verifier("aggregator"),
            kms: cryptflow_aggregator::kms_client::KmsClient::new(&kms, token_file),
            blobs: cryptflow_aggregator::blob::BlobStore::open(dir.path().join("blobs")).unwrap(),
            metrics: Arc::default(),
            accumulators: Arc::default(),
            uploads: Arc::new(tokio::sync::Semaphore::new(8)),
            publish_lock: Arc::default(),
        },
        Duration::from_millis(200),
        std::future::pending(),
    ));
    Stack { issuer, kms, agg, _dir: dir }
}

impl Stack {
    fn client(&self, sub: &str, role: Role) -> Client {
        let mint = |aud: &str| {
            Token::new(
                self.issuer
                    .mint(&ClientId::parse(sub).unwrap(), role, aud, Duration::from_secs(600))
                    .unwrap(),
            )
        };
        Client::builder(&self.agg, &self.kms)
            .aggregator_token(mint("aggregator"))
            .kms_token(mint("kms"))
            .build()
            .unwrap()
    }
}

fn spec(id: &str, layout: Layout, weighting: Weighting, error: f64) -> RoundSpec {
    RoundSpec {
        round_id: RoundId::parse(id).unwrap(),
        layout,
        clients: (0..3).map(|i| ClientId::parse(format!("site-{i}")).unwrap()).collect(),
        min_clients: 3,
        max_clients: 3,
        deadline: 4_000_000_000,
        weighting,
        clip_bound: 1.0,
        max_abs_error: error,
        bodies: 8,
    }
}

fn values(k: usize, n: usize) -> Vec<f64> {
    (0..n).map(|j| (((k * 31 + j * 17) % 200) as f64 / 100.0) - 1.0).collect()
}

#[tokio::test]
async fn tensors_round_trip_in_every_weighting_mode_with_progress() {
    let stack = start().await;
    let admin = stack.client("ops", Role::Admin);
    let layout = Layout::Tensors(vec![
        cryptflow_client::TensorLayout { name: "w".into(), shape: vec![20, 30] },
        cryptflow_client::TensorLayout { name: "b".into(), shape: vec![20] },
    ]);
    for (name, weighting, error) in [
        ("uniform", Weighting::Uniform, 1e-6),
        ("samples", Weighting::Samples { max_weight: 9 }, 1e-4),
        ("private", Weighting::Private { max_weight: 9 }, 1e-4),
    ] {
        admin.create_round(&spec(name, layout.clone(), weighting.clone(), error)).await.unwrap();
        let round = RoundId::parse(name).unwrap();
        let weights = [2u64, 3, 9];
        let mut expected = vec![0f64; 620];
        for (k, w) in weights.iter().enumerate() {
            let v = values(k, 620);
            let wf = if matches!(weighting, Weighting::Uniform) { 1.0 } else { *w as f64 };
            let total = if matches!(weighting, Weighting::Uniform) { 3.0 } else { 14.0 };
            for (e, x) in expected.iter_mut().zip(&v) {
                *e += x * wf / total;
            }
            let update = ModelUpdate::Tensors(vec![
                Tensor {
                    name: "w".into(),
                    values: ArrayD::from_shape_vec(IxDyn(&[20, 30]), v[..600].to_vec()).unwrap(),
                },
                Tensor {
                    name: "b".into(),
                    values: ArrayD::from_shape_vec(IxDyn(&[20]), v[600..].to_vec()).unwrap(),
                },
            ]);
            let client = stack.client(&format!("site-{k}"), Role::Client);
            let events = Arc::new(Mutex::new(Vec::new()));
            let sink = events.clone();
            let weight = (!matches!(weighting, Weighting::Uniform)).then_some(*w);
            let sub = client
                .submit(
                    &round,
                    &ClientId::parse(format!("site-{k}")).unwrap(),
                    &update,
                    SubmitOptions {
                        weight,
                        progress: Some(ProgressFn::new(move |p| sink.lock().unwrap().push(p))),
                    },
                )
                .await
                .unwrap();
            let events = events.lock().unwrap().clone();
            assert!(matches!(events[0], Progress::Encrypting { .. }), "{events:?}");
            assert!(
                events.contains(&Progress::Uploading { sent: sub.bytes, total: sub.bytes }),
                "{events:?}"
            );
            // A uniform round refuses a weight; a weighted one needs it in range.
            if k == 0 {
                let bad = if weight.is_some() { Some(99) } else { Some(2) };
                let e = client
                    .submit(
                        &round,
                        &ClientId::parse("site-0").unwrap(),
                        &update,
                        SubmitOptions { weight: bad, progress: None },
                    )
                    .await
                    .unwrap_err();
                assert!(matches!(e, ClientError::Input(_)), "{e}");
            }
        }
        let site = stack.client("site-1", Role::Client);
        site.wait_for_aggregate(&round, Duration::from_secs(30)).await.unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let s2 = seen.clone();
        let agg = site
            .fetch_mean(
                &round,
                Some(&ProgressFn::new(move |p| {
                    if let Progress::Downloading { received, total } = p {
                        assert!(received <= total);
                        s2.store(received as usize, Ordering::SeqCst);
                    }
                })),
            )
            .await
            .unwrap();
        assert_eq!(seen.load(Ordering::SeqCst) as u64, agg.bytes);
        assert_eq!(agg.contributors, 3);
        let ModelUpdate::Tensors(ts) = &agg.mean else { panic!("{name}: layout lost") };
        assert_eq!((ts[0].name.as_str(), ts[0].values.shape()), ("w", &[20usize, 30][..]));
        assert_eq!((ts[1].name.as_str(), ts[1].values.shape()), ("b", &[20usize][..]));
        let got: Vec<f64> = agg.mean.iter().collect();
        let worst = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst <= agg.max_abs_error, "{name}: {worst:e} > {:e}", agg.max_abs_error);
    }

    // A vector into a tensor round that is still open: refused locally, naming the layout.
    let layout2 =
        Layout::Tensors(vec![cryptflow_client::TensorLayout { name: "w".into(), shape: vec![4] }]);
    admin.create_round(&spec("open-tensors", layout2, Weighting::Uniform, 1e-6)).await.unwrap();
    let e = stack
        .client("site-0", Role::Client)
        .submit(
            &RoundId::parse("open-tensors").unwrap(),
            &ClientId::parse("site-0").unwrap(),
            &ModelUpdate::from(Array1::<f64>::zeros(4)),
            SubmitOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(&e, ClientError::Input(m) if m.contains("named tensors")), "{e}");
    // A published round refuses further submissions before anything is encrypted.
    let e = stack
        .client("site-0", Role::Client)
        .submit(
            &RoundId::parse("uniform").unwrap(),
            &ClientId::parse("site-0").unwrap(),
            &ModelUpdate::from(Array1::<f64>::zeros(620)),
            SubmitOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::RoundState { .. }), "{e}");
    // A client outside the round.
    admin
        .create_round(&spec("vec", Layout::Dimension(100), Weighting::Uniform, 1e-6))
        .await
        .unwrap();
    let e = stack
        .client("mallory", Role::Client)
        .submit(
            &RoundId::parse("vec").unwrap(),
            &ClientId::parse("mallory").unwrap(),
            &ModelUpdate::from(Array1::<f64>::zeros(100)),
            SubmitOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    // Fetching before publication.
    let e = stack
        .client("site-0", Role::Client)
        .fetch_mean(&RoundId::parse("vec").unwrap(), None)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::RoundState { .. }), "{e}");
}

/// A raw HTTP/1.1 server answering each connection with the next canned response.
async fn canned(responses: Vec<String>) -> (String, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let i = c.fetch_add(1, Ordering::SeqCst);
            let body = responses[i.min(responses.len() - 1)].clone();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(body.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    });
    (url, count)
}

fn response(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{headers}connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn unavailable() -> String {
    response(
        "503 Service Unavailable",
        "content-type: application/problem+json\r\n",
        r#"{"type":"x","title":"Service unavailable","status":503,"code":"unavailable","detail":"later"}"#,
    )
}

fn throttled() -> String {
    response("429 Too Many Requests", "retry-after: 0\r\n", "")
}

fn not_found() -> String {
    response(
        "404 Not Found",
        "content-type: application/problem+json\r\n",
        r#"{"type":"x","title":"Not found","status":404,"code":"not_found","detail":"no round","field":"round"}"#,
    )
}

fn fast(url: &str) -> Client {
    Client::builder(url, url)
        .aggregator_token(Token::new("t"))
        .retry(RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn retries_5xx_and_429_never_other_4xx() {
    let round = RoundId::parse("r").unwrap();
    // 503, 429, then a 404: three attempts, and the 404's problem comes back as is.
    let (url, count) = canned(vec![unavailable(), throttled(), not_found()]).await;
    let e = fast(&url).round(&round).await.unwrap_err();
    assert_eq!(count.load(Ordering::SeqCst), 3);
    let p = e.problem().unwrap();
    assert_eq!((p.status, p.field.as_deref()), (404, Some("round")));

    // A 404 first: no retry at all.
    let (url, count) = canned(vec![not_found()]).await;
    fast(&url).round(&round).await.unwrap_err();
    assert_eq!(count.load(Ordering::SeqCst), 1);

    // Always 503: gives up after max_attempts with the last detail.
    let (url, count) = canned(vec![unavailable()]).await;
    let e = fast(&url).round(&round).await.unwrap_err();
    assert_eq!(count.load(Ordering::SeqCst), 4);
    assert!(matches!(e, ClientError::Server { status: 503, attempts: 4, .. }), "{e}");

    // Nobody listening: a transport error after every attempt.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = fast(&format!("http://127.0.0.1:{port}")).round(&round).await.unwrap_err();
    assert!(matches!(e, ClientError::Transport { attempts: 4, .. }), "{e}");

    // HTTPS is supported (rustls): an https URL with nobody listening is a transport error,
    // not "scheme not supported".
    let e = fast(&format!("https://127.0.0.1:{port}")).round(&round).await.unwrap_err();
    assert!(matches!(e, ClientError::Transport { .. }), "{e}");

    // Configuration mistakes are reported before any request.
    assert!(matches!(Client::builder("ftp://x", "http://y").build(), Err(ClientError::Config(_))));
    let no_token = Client::builder("http://127.0.0.1:1", "http://127.0.0.1:1").build().unwrap();
    assert!(matches!(no_token.round(&round).await, Err(ClientError::Config(_))));
    assert_eq!(format!("{:?}", Token::new("secret")), "Token(<redacted>)");
}
