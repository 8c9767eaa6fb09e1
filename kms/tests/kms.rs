//! Integration tests: the real KMS (`launch`) on port 0, over HTTP, against SQLite and — when
//! `CRYPTFLOW_TEST_DATABASE_URL` is set, as in CI — a fresh PostgreSQL database per test.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptflow_he::planner::PlanTarget;
use cryptflow_he::{Encoding, PublicKey, SecretKey, Wire};
use cryptflow_kms::{audit, launch, rotate_master_key, AppState, MasterKey, Metrics};
use cryptflow_services::api::kms::{KeyInfo, KeySpec, KeyState};
use cryptflow_services::auth::{generate_ed25519_pem, Claims, Issuer, Verifier, DEFAULT_LEEWAY};
use cryptflow_services::{db, ClientId, Problem, Role};
use reqwest::{Method, StatusCode};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct Env {
    url: String,
    issuer: Issuer,
    public_pem: String,
    master: Arc<MasterKey>,
    _dir: tempfile::TempDir,
}

struct Kms {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    pool: sqlx::AnyPool,
}

impl Drop for Env {
    fn drop(&mut self) {
        // Drop the per-test PostgreSQL database; SQLite files go with the temp dir.
        let url = self.url.clone();
        std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                let _ = rt.block_on(db::drop_test_database(&url));
            }
        })
        .join()
        .ok();
    }
}

impl Kms {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap().unwrap();
        self.pool.close().await;
    }
}

async fn databases(tag: &str) -> Vec<Env> {
    let mut envs = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}?mode=rwc", dir.path().join("kms.db").display());
    envs.push(env(sqlite, dir));
    if let Some(url) = db::fresh_postgres_database(tag)
        .await
        .expect("CRYPTFLOW_TEST_DATABASE_URL is set but PostgreSQL is unreachable")
    {
        envs.push(env(url, tempfile::tempdir().unwrap()));
    }
    envs
}

fn env(url: String, dir: tempfile::TempDir) -> Env {
    let (private, public_pem) = generate_ed25519_pem().unwrap();
    Env {
        url,
        issuer: Issuer::from_pem("test", private.as_bytes()).unwrap(),
        public_pem,
        master: Arc::new(MasterKey::generate()),
        _dir: dir,
    }
}

async fn start(env: &Env, master: Arc<MasterKey>) -> Kms {
    let pool = db::connect(&env.url, 4).await.unwrap();
    db::migrate(&pool, &env.url, &cryptflow_kms::MIGRATIONS).await.unwrap();
    let verifier =
        Verifier::new("kms", DEFAULT_LEEWAY, [("test", env.public_pem.as_bytes())]).unwrap();
    let state = AppState {
        pool: pool.clone(),
        verifier: Arc::new(verifier),
        master,
        metrics: Arc::new(Metrics::default()),
        audit_lock: Arc::new(tokio::sync::Mutex::new(())),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(launch(listener, metrics, state, 64 * 1024, async move {
        let _ = rx.await;
    }));
    Kms { base, stop: Some(tx), task, pool }
}

fn token(env: &Env, sub: &str, role: Role) -> String {
    env.issuer.mint(&ClientId::parse(sub).unwrap(), role, "kms", Duration::from_secs(300)).unwrap()
}

fn spec() -> KeySpec {
    KeySpec {
        bodies: 2,
        max_clients: 3,
        min_clients: 2,
        clip_bound: 1.0,
        max_weight: 1,
        target: PlanTarget::Precision { max_abs_error: 1e-6 },
        clients: ["alice", "bob", "carol"].iter().map(|c| ClientId::parse(*c).unwrap()).collect(),
    }
}

async fn call(
    kms: &Kms,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", kms.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

async fn problem(res: reqwest::Response) -> Problem {
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    res.json().await.unwrap()
}

#[tokio::test]
async fn auth_matrix_every_endpoint_and_role() {
    for env in databases("auth").await {
        let kms = start(&env, env.master.clone()).await;
        let admin = token(&env, "ops", Role::Admin);
        let agg = token(&env, "aggregator", Role::Aggregator);
        let alice = token(&env, "alice", Role::Client);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let claims = |aud: &str, exp: u64| Claims {
            sub: "ops".into(),
            role: Role::Admin,
            aud: aud.into(),
            exp,
            iat: now,
        };
        let expired = env.issuer.mint_claims(&claims("kms", now - 3600)).unwrap();
        let wrong_aud = env.issuer.mint_claims(&claims("aggregator", now + 300)).unwrap();
        let (forger_key, _) = generate_ed25519_pem().unwrap();
        let forged = Issuer::from_pem("test", forger_key.as_bytes())
            .unwrap()
            .mint_claims(&claims("kms", now + 300))
            .unwrap();
        let body = serde_json::to_value(spec()).unwrap();

        // (method, path, body, roles allowed)
        let endpoints: Vec<(Method, &str, Option<serde_json::Value>, Vec<Role>)> = vec![
            (
                Method::PUT,
                "/v1/rounds/r1/key",
                Some(body.clone()),
                vec![Role::Aggregator, Role::Admin],
            ),
            (
                Method::GET,
                "/v1/rounds/r1/key",
                None,
                vec![Role::Admin, Role::Client, Role::Aggregator],
            ),
            (
                Method::GET,
                "/v1/rounds/r1/key/public",
                None,
                vec![Role::Admin, Role::Client, Role::Aggregator],
            ),
            (
                Method::POST,
                "/v1/rounds/r1/key/aggregated",
                Some(serde_json::json!({"contributors": 2})),
                vec![Role::Aggregator],
            ),
            (Method::GET, "/v1/rounds/r1/key/secret", None, vec![Role::Client]),
            (Method::GET, "/v1/audit", None, vec![Role::Admin]),
            (Method::DELETE, "/v1/rounds/r1/key", None, vec![Role::Admin]),
        ];
        for (method, path, body, allowed) in endpoints {
            for bad in [
                None,
                Some(expired.as_str()),
                Some(wrong_aud.as_str()),
                Some(forged.as_str()),
                Some("garbage"),
            ] {
                let res = call(&kms, method.clone(), path, bad, body.clone()).await;
                assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{method} {path} with {bad:?}");
                assert_eq!(problem(res).await.field.as_deref(), Some("authorization"));
            }
            for (role, tok) in
                [(Role::Admin, &admin), (Role::Aggregator, &agg), (Role::Client, &alice)]
            {
                let res = call(&kms, method.clone(), path, Some(tok), body.clone()).await;
                if allowed.contains(&role) {
                    assert!(
                        res.status().is_success(),
                        "{method} {path} as {role}: {}",
                        res.status()
                    );
                } else {
                    assert_eq!(res.status(), StatusCode::FORBIDDEN, "{method} {path} as {role}");
                }
            }
        }
        // A client that is not in the round is refused the secret key.
        let res = call(
            &kms,
            Method::PUT,
            "/v1/rounds/r2/key",
            Some(&agg),
            Some(serde_json::to_value(spec()).unwrap()),
        )
        .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        call(
            &kms,
            Method::POST,
            "/v1/rounds/r2/key/aggregated",
            Some(&agg),
            Some(serde_json::json!({"contributors": 3})),
        )
        .await;
        let mallory = token(&env, "mallory", Role::Client);
        let res = call(&kms, Method::GET, "/v1/rounds/r2/key/secret", Some(&mallory), None).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        kms.stop().await;
    }
}

#[tokio::test]
async fn lifecycle_release_policy_decryption_destroy_and_audit() {
    for env in databases("life").await {
        let kms = start(&env, env.master.clone()).await;
        let admin = token(&env, "ops", Role::Admin);
        let agg = token(&env, "aggregator", Role::Aggregator);
        let alice = token(&env, "alice", Role::Client);

        let res = call(
            &kms,
            Method::PUT,
            "/v1/rounds/r1/key",
            Some(&agg),
            Some(serde_json::to_value(spec()).unwrap()),
        )
        .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let info: KeyInfo = res.json().await.unwrap();
        assert_eq!(info.state, KeyState::Active);
        // Idempotent: same spec → 200 and the same key; different spec → 409.
        let res = call(
            &kms,
            Method::PUT,
            "/v1/rounds/r1/key",
            Some(&admin),
            Some(serde_json::to_value(spec()).unwrap()),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.json::<KeyInfo>().await.unwrap().key_id, info.key_id);
        let other = KeySpec { min_clients: 3, ..spec() };
        let res = call(
            &kms,
            Method::PUT,
            "/v1/rounds/r1/key",
            Some(&agg),
            Some(serde_json::to_value(other).unwrap()),
        )
        .await;
        assert_eq!(res.status(), StatusCode::CONFLICT);

        // Public key: binary, strong ETag, 304 on revalidation.
        let res = call(&kms, Method::GET, "/v1/rounds/r1/key/public", Some(&alice), None).await;
        let etag = res.headers()["etag"].to_str().unwrap().to_owned();
        assert_eq!(etag, format!("\"{}\"", info.key_id));
        let pk = PublicKey::from_bytes(&res.bytes().await.unwrap()).unwrap();
        assert_eq!(pk.id().to_string(), info.key_id);
        let res = reqwest::Client::new()
            .get(format!("{}/v1/rounds/r1/key/public", kms.base))
            .bearer_auth(&alice)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);

        // Not aggregated yet → 409; below the minimum → 409.
        let res = call(&kms, Method::GET, "/v1/rounds/r1/key/secret", Some(&alice), None).await;
        assert_eq!(res.status(), StatusCode::CONFLICT);
        let res = call(
            &kms,
            Method::POST,
            "/v1/rounds/r1/key/aggregated",
            Some(&agg),
            Some(serde_json::json!({"contributors": 1})),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        let res = call(&kms, Method::GET, "/v1/rounds/r1/key/secret", Some(&alice), None).await;
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert_eq!(problem(res).await.limit, Some(2));

        // A second round that reaches its minimum: the released key decrypts what the served
        // public key encrypted.
        call(
            &kms,
            Method::PUT,
            "/v1/rounds/r2/key",
            Some(&agg),
            Some(serde_json::to_value(spec()).unwrap()),
        )
        .await;
        let res = call(&kms, Method::GET, "/v1/rounds/r2/key/public", Some(&alice), None).await;
        let pk = PublicKey::from_bytes(&res.bytes().await.unwrap()).unwrap();
        let res = call(&kms, Method::GET, "/v1/rounds/r2/key", Some(&alice), None).await;
        let info2: KeyInfo = res.json().await.unwrap();
        let encoding: Encoding = info2.plan.encoding;
        let x = ndarray::arr1(&[0.25f32, -0.5, 0.125]);
        let ct = pk.encrypt_compressed(&encoding, x.view(), info2.plan.upload).unwrap().ciphertext;
        let res = call(
            &kms,
            Method::POST,
            "/v1/rounds/r2/key/aggregated",
            Some(&agg),
            Some(serde_json::json!({"contributors": 2})),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        // Same count again is idempotent; another count conflicts.
        let res = call(
            &kms,
            Method::POST,
            "/v1/rounds/r2/key/aggregated",
            Some(&agg),
            Some(serde_json::json!({"contributors": 2})),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        let res = call(
            &kms,
            Method::POST,
            "/v1/rounds/r2/key/aggregated",
            Some(&agg),
            Some(serde_json::json!({"contributors": 3})),
        )
        .await;
        assert_eq!(res.status(), StatusCode::CONFLICT);
        let res = call(&kms, Method::GET, "/v1/rounds/r2/key/secret", Some(&alice), None).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["cache-control"], "no-store");
        let sk = SecretKey::from_bytes(&res.bytes().await.unwrap()).unwrap();
        assert_eq!(
            sk.decrypt_compressed(&ct).unwrap().sum::<f32>().to_vec(),
            vec![0.25, -0.5, 0.125]
        );

        // Destroy → 410 everywhere for that round.
        let res = call(&kms, Method::DELETE, "/v1/rounds/r2/key", Some(&admin), None).await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        for (m, p, t) in [
            (Method::GET, "/v1/rounds/r2/key/secret", &alice),
            (Method::GET, "/v1/rounds/r2/key/public", &alice),
            (Method::GET, "/v1/rounds/r2/key", &admin),
            (Method::DELETE, "/v1/rounds/r2/key", &admin),
        ] {
            assert_eq!(call(&kms, m, p, Some(t), None).await.status(), StatusCode::GONE, "{p}");
        }
        let res = call(
            &kms,
            Method::PUT,
            "/v1/rounds/r2/key",
            Some(&agg),
            Some(serde_json::to_value(spec()).unwrap()),
        )
        .await;
        assert_eq!(res.status(), StatusCode::GONE);
        let shredded: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT sealed_secret FROM round_keys WHERE round_id = 'r2'")
                .fetch_one(&kms.pool)
                .await
                .unwrap();
        assert!(shredded.is_none());

        // The audit log recorded every event and verifies; editing a row breaks it.
        let res = call(&kms, Method::GET, "/v1/audit", Some(&admin), None).await;
        let entries: Vec<cryptflow_services::api::kms::AuditEntry> = res.json().await.unwrap();
        let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "key.create",
                "key.aggregated",
                "key.create",
                "key.aggregated",
                "key.release",
                "key.destroy"
            ]
        );
        assert_eq!(audit::verify(&kms.pool).await.unwrap(), audit::Verdict::Intact(6));
        sqlx::query("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 5")
            .execute(&kms.pool)
            .await
            .unwrap();
        assert!(matches!(
            audit::verify(&kms.pool).await.unwrap(),
            audit::Verdict::Broken { seq: 5, .. }
        ));
        sqlx::query("UPDATE audit_log SET actor = 'alice' WHERE seq = 5")
            .execute(&kms.pool)
            .await
            .unwrap();
        assert_eq!(audit::verify(&kms.pool).await.unwrap(), audit::Verdict::Intact(6));
        sqlx::query("DELETE FROM audit_log WHERE seq = 3").execute(&kms.pool).await.unwrap();
        assert!(matches!(
            audit::verify(&kms.pool).await.unwrap(),
            audit::Verdict::Broken { seq: 3, .. }
        ));
        kms.stop().await;
    }
}

#[tokio::test]
async fn keys_survive_restart_and_master_key_rotation() {
    for env in databases("restart").await {
        let kms = start(&env, env.master.clone()).await;
        let agg = token(&env, "aggregator", Role::Aggregator);
        let bob = token(&env, "bob", Role::Client);
        call(
            &kms,
            Method::PUT,
            "/v1/rounds/r1/key",
            Some(&agg),
            Some(serde_json::to_value(spec()).unwrap()),
        )
        .await;
        let pk1 = call(&kms, Method::GET, "/v1/rounds/r1/key/public", Some(&bob), None)
            .await
            .bytes()
            .await
            .unwrap();
        call(
            &kms,
            Method::POST,
            "/v1/rounds/r1/key/aggregated",
            Some(&agg),
            Some(serde_json::json!({"contributors": 3})),
        )
        .await;
        kms.stop().await;

        // Restart on the same database: same public key, secret still released.
        let kms = start(&env, env.master.clone()).await;
        let pk2 = call(&kms, Method::GET, "/v1/rounds/r1/key/public", Some(&bob), None)
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(pk1, pk2);
        let sk_before = call(&kms, Method::GET, "/v1/rounds/r1/key/secret", Some(&bob), None)
            .await
            .bytes()
            .await
            .unwrap();
        let pool = kms.pool.clone();

        // Rotate: every sealed key re-wrapped; the new master opens it, the old one no longer.
        let new_master = Arc::new(MasterKey::generate());
        assert_eq!(rotate_master_key(&pool, &env.master, &new_master).await.unwrap(), 1);
        assert_eq!(
            rotate_master_key(&pool, &env.master, &new_master).await.unwrap(),
            0,
            "rotation is resumable"
        );
        kms.stop().await;
        let kms = start(&env, new_master.clone()).await;
        let sk_after = call(&kms, Method::GET, "/v1/rounds/r1/key/secret", Some(&bob), None)
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(sk_before, sk_after);
        kms.stop().await;
        let kms = start(&env, env.master.clone()).await;
        let res = call(&kms, Method::GET, "/v1/rounds/r1/key/secret", Some(&bob), None).await;
        assert_eq!(
            res.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "the old master key must not open rotated keys"
        );
        kms.stop().await;
    }
}

#[tokio::test]
async fn bad_requests_are_problem_documents() {
    for env in databases("bad").await {
        let kms = start(&env, env.master.clone()).await;
        let agg = token(&env, "aggregator", Role::Aggregator);
        let put = |body: String| {
            reqwest::Client::new()
                .put(format!("{}/v1/rounds/r1/key", kms.base))
                .bearer_auth(&agg)
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        let res = put("{not json".into()).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        problem(res).await;
        let mut v = serde_json::to_value(spec()).unwrap();
        v["surprise"] = serde_json::json!(1);
        let res = put(v.to_string()).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(problem(res).await.field.as_deref(), Some("surprise"));
        let mut v = serde_json::to_value(spec()).unwrap();
        v["bodies"] = serde_json::json!(99);
        let res = put(v.to_string()).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let p = problem(res).await;
        assert_eq!((p.field.as_deref(), p.limit), (Some("bodies"), Some(32)));
        let mut v = serde_json::to_value(spec()).unwrap();
        v["max_clients"] = serde_json::json!(1_000_000_000u32);
        v["clip_bound"] = serde_json::json!(1e9);
        v["target"] = serde_json::json!({"precision": {"max_abs_error": 1e-12}});
        let res = put(v.to_string()).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(problem(res).await.detail.unwrap().contains("wrap-around"));
        let huge = format!("{{\"clients\": [{}]}}", vec!["\"a\""; 40_000].join(","));
        let res = put(huge).await.unwrap();
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        problem(res).await;
        let res = call(&kms, Method::GET, "/v1/rounds/bad%20id/key", Some(&agg), None).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(problem(res).await.field.as_deref(), Some("round"));
        let res = call(&kms, Method::GET, "/v1/rounds/nope/key", Some(&agg), None).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let res = call(&kms, Method::GET, "/no/such/thing", None, None).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        problem(res).await;
        kms.stop().await;
    }
}

#[tokio::test]
async fn concurrent_creates_yield_one_key() {
    for env in databases("race").await {
        let kms = start(&env, env.master.clone()).await;
        let agg = token(&env, "aggregator", Role::Aggregator);
        let body = serde_json::to_value(spec()).unwrap();
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let (url, t, b) =
                    (format!("{}/v1/rounds/race/key", kms.base), agg.clone(), body.clone());
                tokio::spawn(async move {
                    reqwest::Client::new().put(url).bearer_auth(t).json(&b).send().await.unwrap()
                })
            })
            .collect();
        let mut responses = Vec::new();
        for h in handles {
            responses.push(h.await.unwrap());
        }
        let mut ids = std::collections::HashSet::new();
        let mut created = 0;
        for res in responses {
            if res.status() == StatusCode::CREATED {
                created += 1;
            }
            assert!(res.status().is_success());
            ids.insert(res.json::<KeyInfo>().await.unwrap().key_id);
        }
        assert_eq!((created, ids.len()), (1, 1));
        kms.stop().await;
    }
}

#[tokio::test]
async fn openapi_document_is_served_and_covers_every_route() {
    let env = databases("openapi").await.remove(0);
    let kms = start(&env, env.master.clone()).await;
    let served: serde_json::Value =
        call(&kms, Method::GET, "/openapi.json", None, None).await.json().await.unwrap();
    let checked_in: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/kms-openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(served, checked_in, "docs/kms-openapi.json and the served document differ");
    // Every documented operation exists (answers something other than the 404 fallback),
    // and every route of the router is documented.
    let paths = served["paths"].as_object().unwrap();
    let routes = [
        ("put", "/v1/rounds/{round}/key"),
        ("get", "/v1/rounds/{round}/key"),
        ("delete", "/v1/rounds/{round}/key"),
        ("get", "/v1/rounds/{round}/key/public"),
        ("post", "/v1/rounds/{round}/key/aggregated"),
        ("get", "/v1/rounds/{round}/key/secret"),
        ("get", "/v1/audit"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/openapi.json"),
    ];
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, routes.len());
    for (method, path) in routes {
        assert!(paths[path][method].is_object(), "{method} {path} undocumented");
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let res = call(&kms, m, &path.replace("{round}", "r"), None, None).await;
        assert_ne!(res.status(), StatusCode::NOT_FOUND, "{method} {path} not routed");
    }
    kms.stop().await;
}

#[tokio::test]
async fn verify_audit_command_detects_tampering() {
    let env = databases("cli").await.remove(0);
    let kms = start(&env, env.master.clone()).await;
    let agg = token(&env, "aggregator", Role::Aggregator);
    call(
        &kms,
        Method::PUT,
        "/v1/rounds/r1/key",
        Some(&agg),
        Some(serde_json::to_value(spec()).unwrap()),
    )
    .await;
    call(
        &kms,
        Method::POST,
        "/v1/rounds/r1/key/aggregated",
        Some(&agg),
        Some(serde_json::json!({"contributors": 2})),
    )
    .await;
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cryptflow-kms"))
            .arg("verify-audit")
            .env("CRYPTFLOW_KMS__DATABASE_URL", &env.url)
            .output()
            .unwrap()
    };
    let ok = run();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("intact: 2 entries"));
    sqlx::query("UPDATE audit_log SET detail = '{\"contributors\":9}' WHERE seq = 2")
        .execute(&kms.pool)
        .await
        .unwrap();
    let broken = run();
    assert_eq!(broken.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&broken.stdout).contains("BROKEN at entry 2"));
    kms.stop().await;
}

/// With `internal_listen`, the public listener serves only the client endpoints: the
/// aggregator's and operators' endpoints exist only on the internal one (which a network
/// policy opens to the aggregator alone).
#[tokio::test]
async fn split_listeners_keep_aggregator_endpoints_internal() {
    let dir = tempfile::tempdir().unwrap();
    let env = env(format!("sqlite://{}?mode=rwc", dir.path().join("kms.db").display()), dir);
    let pool = db::connect(&env.url, 2).await.unwrap();
    // Servers never migrate: an unmigrated database is refused until `migrate` ran.
    let missing = db::require_migrated(&pool, &env.url, &cryptflow_kms::MIGRATIONS).await;
    assert!(matches!(missing, Err(db::DbError::NotMigrated { .. })), "{missing:?}");
    db::migrate(&pool, &env.url, &cryptflow_kms::MIGRATIONS).await.unwrap();
    db::require_migrated(&pool, &env.url, &cryptflow_kms::MIGRATIONS).await.unwrap();
    let state = AppState {
        pool: pool.clone(),
        verifier: Arc::new(
            Verifier::new("kms", DEFAULT_LEEWAY, [("test", env.public_pem.as_bytes())]).unwrap(),
        ),
        master: env.master.clone(),
        metrics: Arc::default(),
        audit_lock: Arc::default(),
    };
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let (public, internal, metrics) = (bind().await, bind().await, bind().await);
    let public_url = format!("http://{}", public.local_addr().unwrap());
    let internal_url = format!("http://{}", internal.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(cryptflow_kms::launch_split(
        public,
        internal,
        metrics,
        state,
        64 * 1024,
        async move {
            let _ = rx.await;
        },
    ));
    let http = reqwest::Client::new();
    let agg = token(&env, "aggregator", Role::Aggregator);
    let admin = token(&env, "ops", Role::Admin);
    let alice = token(&env, "alice", Role::Client);
    let put = |base: &str| {
        http.put(format!("{base}/v1/rounds/r/key")).bearer_auth(&agg).json(&spec()).send()
    };
    assert_eq!(put(&public_url).await.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(put(&internal_url).await.unwrap().status(), StatusCode::CREATED);
    for (path, tok) in [("/v1/rounds/r/key/aggregated", &agg), ("/v1/audit", &admin)] {
        let res = http.post(format!("{public_url}{path}")).bearer_auth(tok).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
    }
    // Clients keep everything they need on the public listener.
    for path in ["/v1/rounds/r/key", "/v1/rounds/r/key/public", "/healthz", "/readyz"] {
        let res = http.get(format!("{public_url}{path}")).bearer_auth(&alice).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    let res =
        http.get(format!("{internal_url}/v1/audit")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}
