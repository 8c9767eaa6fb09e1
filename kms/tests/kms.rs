//! A key-manager committee over real sockets (the local stack: three nodes, `t = 2`, and an
//! aggregator), on SQLite and — with `CRYPTFLOW_TEST_DATABASE_URL` set, as in CI — PostgreSQL:
//! who may do what, the one-set rule across restarts, the set checks, releases only to members
//! of the set, the audit log, and the OpenAPI document.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptflow_client::{ModelUpdate, SubmitOptions};
use cryptflow_devstack::{Database, LocalStack};
use cryptflow_he::sharing::{CommitteeShape, KeyShare};
use cryptflow_he::{ClientKey, ParameterSet, Wire};
use cryptflow_services::api::kms::{Deposit, DepositList, RegisteredRound, ReleaseResponse};
use cryptflow_services::api::round::Contribution;
use cryptflow_services::api::{Base64Bytes, SignatureHex};
use cryptflow_services::protocol::{deposit_statement, Committee};
use cryptflow_services::sealed::{seal, SealContext};
use cryptflow_services::{ClientId, Role, RoundId, Sha256Digest};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// One request; the status and the JSON body (problem documents included).
/// A stand-in aggregate digest the aggregator reports with a set (nodes record and echo it).
const AGGREGATE: &str = "0707070707070707070707070707070707070707070707070707070707070707";

async fn call(
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    if status.is_client_error() || status.is_server_error() {
        assert_eq!(ctype, "application/problem+json", "{status}: {text}");
    }
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn update(i: usize) -> ModelUpdate {
    ModelUpdate::from(ndarray::Array1::from(
        (0..3000).map(|j| ((i * 7 + j) % 100) as f64 / 100.0).collect::<Vec<_>>(),
    ))
}

/// Site `id`'s roster token for node 1 (every test below talks to node 1 with it, or shows
/// what another node does with it).
fn roster_token(stack: &LocalStack, id: &str) -> String {
    roster_token_for(stack, id, 1)
}

fn roster_token_for(stack: &LocalStack, id: &str, x: u8) -> String {
    let audience = cryptflow_services::protocol::node_audience(stack.committee().node(x).unwrap());
    stack.site_key(id).unwrap().roster_token(&ClientId::parse(id).unwrap(), Role::Client, &audience)
}

async fn deposits(stack: &LocalStack, x: u8, round: &str) -> Vec<Contribution> {
    let agg = stack.token("aggregator", Role::Aggregator, "kms");
    let (s, v) = call(
        Method::GET,
        &format!("{}/v1/rounds/{round}/deposits", stack.node_url(x).unwrap()),
        Some(&agg),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    serde_json::from_value::<DepositList>(v).unwrap().deposits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_set_per_round_checked_and_released_to_its_members_only() {
    for database in Database::for_tests() {
        let mut stack =
            LocalStack::builder().nodes(3, 2).sites(4).database(database).start().await.unwrap();
        let ids = stack.site_ids();
        let agg = stack.token("aggregator", Role::Aggregator, "kms");
        let admin = stack.token("ops", Role::Admin, "kms");
        let urls: Vec<String> = (1..=3).map(|x| stack.node_url(x).unwrap().to_owned()).collect();
        let node = |x: u8| urls[x as usize - 1].clone();

        // Round r1: three sites contribute; the aggregator records the set and publishes.
        let r1 = RoundId::parse("r1").unwrap();
        stack.admin().create_round(&stack.round_request("r1", 3000, 3, 3)).await.unwrap();
        for (i, id) in ids.iter().take(3).enumerate() {
            stack
                .client(id.as_str())
                .submit(&r1, update(i), SubmitOptions::default())
                .await
                .unwrap();
        }
        let info =
            stack.client("site-0").wait_for_aggregate(&r1, Duration::from_secs(60)).await.unwrap();
        let transcript = info.transcript.unwrap();
        let (set, recorded_aggregate) = (transcript.contributors, transcript.aggregate_sha256);
        assert_eq!(set.len(), 3);
        assert_eq!(
            deposits(&stack, 1, "r1").await,
            set,
            "every contributor deposited its upload's digest"
        );

        // (b) A second, different set is refused: the same set again is fine.
        let other = json!({ "contributors": set[..2], "aggregate_sha256": AGGREGATE });
        let same = json!({ "contributors": set, "aggregate_sha256": recorded_aggregate });
        let contributors = |x: u8| format!("{}/v1/rounds/r1/contributors", node(x));
        let (s, p) = call(Method::PUT, &contributors(1), Some(&agg), Some(other.clone())).await;
        assert_eq!(s, StatusCode::CONFLICT, "{p}");
        // The same set with another aggregate: one aggregate per round, so that no reader can
        // be served one of the aggregator's making (#24).
        let forged = json!({ "contributors": set, "aggregate_sha256": AGGREGATE });
        let (s, p) = call(Method::PUT, &contributors(1), Some(&agg), Some(forged)).await;
        assert_eq!(
            (s, p["field"].as_str()),
            (StatusCode::CONFLICT, Some("aggregate_sha256")),
            "{p}"
        );
        assert_eq!(
            call(Method::PUT, &contributors(1), Some(&agg), Some(same.clone())).await.0,
            StatusCode::OK
        );
        // …also after the node restarts from its database.
        stack.kill_node(1).await;
        stack.restart_node(1).await.unwrap();
        let (s, p) = call(Method::PUT, &contributors(1), Some(&agg), Some(other)).await;
        assert_eq!(s, StatusCode::CONFLICT, "after a restart: {p}");

        // (g) Releases go to members of the set (by their roster keys), never to the
        // aggregator's or an admin's credentials, nor to a roster site outside the set.
        let release = |x: u8| format!("{}/v1/rounds/r1/release", node(x));
        for (who, token) in [
            ("aggregator", agg.clone()),
            ("admin", admin.clone()),
            ("site-3 (not in the set)", roster_token_for(&stack, "site-3", 2)),
        ] {
            let (s, p) = call(Method::GET, &release(2), Some(&token), None).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{who}: {p}");
        }
        // An issuer token for site-0 is not enough: the key managers want the roster key.
        let issuer_token = stack.token("site-0", Role::Client, "kms");
        let (s, p) = call(Method::GET, &release(2), Some(&issuer_token), None).await;
        assert!(s == StatusCode::FORBIDDEN || s == StatusCode::UNAUTHORIZED, "{s} {p}");
        // site-0's token for node 1, replayed at node 2 (by node 1, or whatever terminates TLS
        // in front of it), is refused: roster tokens name their node.
        let (s, p) =
            call(Method::GET, &release(2), Some(&roster_token(&stack, "site-0")), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{p}");
        let (s, v) =
            call(Method::GET, &release(2), Some(&roster_token_for(&stack, "site-0", 2)), None)
                .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let r: ReleaseResponse = serde_json::from_value(v).unwrap();
        assert_eq!((r.share_index, r.contributors), (2, set.clone()));

        // The audit log has the refusals, the set and the release, in order and without gaps.
        let (s, v) = call(Method::GET, &format!("{}/v1/audit", node(2)), Some(&admin), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let entries = v.as_array().unwrap();
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e["seq"], i as i64 + 1);
        }
        let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
        for want in
            ["round.register", "deposit.store", "set.record", "release.refused", "release.serve"]
        {
            assert!(actions.contains(&want), "{want} missing from {actions:?}");
        }
        assert_eq!(
            call(Method::GET, &format!("{}/v1/audit", node(2)), Some(&agg), None).await.0,
            StatusCode::FORBIDDEN
        );

        // Round r2 (all four invited, none contributing yet on three nodes): (e) sets that do not
        // match the deposits are refused, naming the member.
        stack.admin().create_round(&stack.round_request("r2", 3000, 2, 4)).await.unwrap();
        let r2 = RoundId::parse("r2").unwrap();
        for (i, id) in ids.iter().take(2).enumerate() {
            stack
                .client(id.as_str())
                .submit(&r2, update(i + 10), SubmitOptions::default())
                .await
                .unwrap();
        }
        let held = deposits(&stack, 1, "r2").await;
        assert_eq!(held.len(), 2);
        let c = |id: &str, sha: Sha256Digest| Contribution {
            client_id: ClientId::parse(id).unwrap(),
            upload_sha256: sha,
        };
        let cases = [
            (
                "a digest other than the deposit's",
                vec![held[0].clone(), c(held[1].client_id.as_str(), Sha256Digest([9; 32]))],
                "site-1",
            ),
            (
                "a member without a deposit",
                vec![held[0].clone(), held[1].clone(), c("site-3", Sha256Digest([1; 32]))],
                "site-3",
            ),
            (
                "a client not on the roster",
                vec![held[0].clone(), held[1].clone(), c("mallory", Sha256Digest([1; 32]))],
                "mallory",
            ),
            ("fewer than m = 2 members", vec![held[0].clone()], "2"),
        ];
        for (what, set, named) in cases {
            let (s, p) = call(
                Method::PUT,
                &format!("{}/v1/rounds/r2/contributors", node(1)),
                Some(&agg),
                Some(json!({ "contributors": set, "aggregate_sha256": AGGREGATE })),
            )
            .await;
            assert!(
                s == StatusCode::UNPROCESSABLE_ENTITY || s == StatusCode::FORBIDDEN,
                "{what}: {s} {p}"
            );
            assert!(p["detail"].as_str().unwrap().contains(named), "{what}: {p}");
        }
        // Nothing was recorded by those refusals.
        let (s, v) =
            call(Method::GET, &format!("{}/v1/rounds/r2", node(1)), Some(&admin), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let round: RegisteredRound = serde_json::from_value(v).unwrap();
        assert!(round.contributors.is_none());

        // Deposits travel sealed to the node's deposit key for the round (#24): a forged
        // signature inside, another site's name, a share for another node, a deposit sealed
        // for another node or round, a ciphertext changed on the way.
        let spec_hash = round.echo.spec_hash;
        let site2 = stack.site_key("site-2").unwrap();
        let key = ClientKey::generate(&ParameterSet::default_128()).unwrap();
        let shares: Vec<KeyShare> = key.share(CommitteeShape::try_new(3, 2).unwrap()).unwrap();
        let upload = Sha256Digest([5; 32]);
        let committee =
            Committee::from_toml(&std::fs::read_to_string(stack.committee_file()).unwrap())
                .unwrap();
        let mut echoes = std::collections::BTreeMap::new();
        for (name, x) in [("r1", 1u8), ("r2", 1), ("r2", 2)] {
            let (s, v) =
                call(Method::GET, &format!("{}/v1/rounds/{name}", node(x)), Some(&admin), None)
                    .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            let reg: RegisteredRound = serde_json::from_value(v).unwrap();
            assert_eq!(reg.echo.deposit_key.0.len(), cryptflow_services::sealed::DEPOSIT_KEY_LEN);
            echoes.insert((name, x), reg.echo);
        }
        // Sealed for node `to` of round `name`; the statement signed for node `x`.
        let sealed_for =
            |name: &'static str, to: u8, x: u8, share: &KeyShare, change: &dyn Fn(&mut Deposit)| {
                let bytes = share.to_bytes();
                let share_sha = Sha256Digest(sha256(&bytes));
                let id = ClientId::parse("site-2").unwrap();
                let root = Sha256Digest([6; 32]);
                let sig = site2
                    .sign(&deposit_statement(&r2, &spec_hash, x, &id, &share_sha, &upload, &root));
                let mut d = Deposit {
                    upload_sha256: upload,
                    upload_root: root,
                    share: Base64Bytes(bytes),
                    signature: sig,
                };
                change(&mut d);
                let echo = &echoes[&(name, to)];
                let ctx = SealContext {
                    round: &RoundId::parse(name).unwrap(),
                    spec_hash: &echo.spec_hash,
                    committee: &committee.digest(),
                    x: to,
                    node_key: &echo.deposit_key.0,
                };
                serde_json::to_value(seal(&ctx, &id, &d).unwrap()).unwrap()
            };
        let deposit = |x: u8, share: &KeyShare| sealed_for("r2", x, x, share, &|_| {});
        let url = |x: u8, who: &str| format!("{}/v1/rounds/r2/deposits/{who}", node(x));
        let token2 = roster_token(&stack, "site-2");
        let forged = sealed_for("r2", 1, 1, &shares[0], &|d| d.signature = SignatureHex([0; 64]));
        let (s, p) = call(Method::PUT, &url(1, "site-2"), Some(&token2), Some(forged)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
        assert_eq!(p["field"], "signature", "{p}");
        let (s, p) =
            call(Method::PUT, &url(1, "site-3"), Some(&token2), Some(deposit(1, &shares[0]))).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "a deposit in another site's name: {p}");
        let wrong_share = sealed_for("r2", 1, 1, &shares[1], &|_| {});
        let (s, p) = call(Method::PUT, &url(1, "site-2"), Some(&token2), Some(wrong_share)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "node 2's share at node 1: {p}");
        assert_eq!(p["field"], "share", "{p}");
        // Sealed for node 1, replayed to node 2; sealed for round r1, sent into r2; a relay
        // that changes one byte of the ciphertext: none opens.
        let for_node_1 = deposit(1, &shares[0]);
        let into_r1 = sealed_for("r1", 1, 1, &shares[0], &|_| {});
        let mut changed_on_the_way = deposit(1, &shares[0]);
        let mut ct =
            serde_json::from_value::<Base64Bytes>(changed_on_the_way["ciphertext"].clone())
                .unwrap();
        ct.0[10] ^= 1;
        changed_on_the_way["ciphertext"] = serde_json::to_value(ct).unwrap();
        for (what, at, body) in [
            ("a deposit sealed for node 1 at node 2", 2u8, for_node_1.clone()),
            ("a deposit sealed for round r1 in r2", 1, into_r1),
            ("a ciphertext changed by a relay", 1, changed_on_the_way),
        ] {
            let token = roster_token_for(&stack, "site-2", at);
            let (s, p) = call(Method::PUT, &url(at, "site-2"), Some(&token), Some(body)).await;
            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {p}");
            assert_eq!(p["field"], "ciphertext", "{what}: {p}");
        }
        let (s, p) = call(Method::PUT, &url(1, "site-2"), Some(&token2), Some(for_node_1)).await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        // The same deposit again (sealed afresh: other bytes) is answered as the first.
        let (s, _) =
            call(Method::PUT, &url(1, "site-2"), Some(&token2), Some(deposit(1, &shares[0]))).await;
        assert_eq!(s, StatusCode::OK, "the same deposit again");
        let changed =
            sealed_for("r2", 1, 1, &shares[0], &|d| d.upload_sha256 = Sha256Digest([6; 32]));
        let (s, p) = call(Method::PUT, &url(1, "site-2"), Some(&token2), Some(changed)).await;
        assert!(s == StatusCode::CONFLICT || s == StatusCode::UNPROCESSABLE_ENTITY, "{s} {p}");

        // Only the aggregator's and an admin's credentials register and destroy rounds.
        let (s, _) = call(
            Method::DELETE,
            &format!("{}/v1/rounds/r2", node(3)),
            Some(&roster_token_for(&stack, "site-2", 3)),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, p) =
            call(Method::DELETE, &format!("{}/v1/rounds/r2", node(3)), Some(&admin), None).await;
        assert!(s.is_success(), "{s} {p}");
        let (s, _) = call(
            Method::GET,
            &format!("{}/v1/rounds/r2/release", node(3)),
            Some(&roster_token_for(&stack, "site-0", 3)),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::GONE);
        stack.stop().await;
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_set_never_reaches_the_threshold_twice() {
    // A malicious aggregator reports S1 = {site-0, site-1} to nodes 1 and 2 and
    // S2 = {site-0, site-1, site-2} to node 3, hoping for both releases: their difference
    // would be site-2's key. Each node records one set and 2t > n, so only S1 gathers t = 2.
    let stack = LocalStack::builder().nodes(3, 2).sites(4).start().await.unwrap();
    let ids = stack.site_ids();
    let agg = stack.token("aggregator", Role::Aggregator, "kms");
    stack.admin().create_round(&stack.round_request("split", 3000, 2, 4)).await.unwrap();
    let round = RoundId::parse("split").unwrap();
    for (i, id) in ids.iter().take(3).enumerate() {
        stack
            .client(id.as_str())
            .submit(&round, update(i), SubmitOptions::default())
            .await
            .unwrap();
    }
    let held = deposits(&stack, 1, "split").await;
    assert_eq!(held.len(), 3);
    let s1 = json!({ "contributors": held[..2], "aggregate_sha256": AGGREGATE });
    let s2 = json!({ "contributors": held, "aggregate_sha256": AGGREGATE });
    let put = |x: u8, body: Value| {
        let (url, agg) =
            (format!("{}/v1/rounds/split/contributors", stack.node_url(x).unwrap()), agg.clone());
        async move { call(Method::PUT, &url, Some(&agg), Some(body)).await }
    };
    for x in [1u8, 2] {
        let (s, p) = put(x, s1.clone()).await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
    }
    let (s, p) = put(3, s2.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    // Neither set can be moved to another node now.
    for (x, set) in [(1u8, &s2), (2, &s2), (3, &s1)] {
        let (s, p) = put(x, set.clone()).await;
        assert_eq!(s, StatusCode::CONFLICT, "node {x}: {p}");
    }
    // site-0 (in both) gets S1 from two nodes and S2 from one: only S1's key sum can be
    // combined, and the SDK's cross-check sees the split.
    let mut sets = Vec::new();
    for x in 1..=3u8 {
        let (s, v) = call(
            Method::GET,
            &format!("{}/v1/rounds/split/release", stack.node_url(x).unwrap()),
            Some(&roster_token_for(&stack, "site-0", x)),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        sets.push(serde_json::from_value::<ReleaseResponse>(v).unwrap().contributors.len());
    }
    assert_eq!(sets, vec![2, 2, 3]);
    stack.stop().await;
}

#[tokio::test]
async fn bad_requests_are_problem_documents_naming_the_field() {
    let stack = LocalStack::builder().nodes(1, 1).sites(2).start().await.unwrap();
    let node = stack.node_url(1).unwrap().to_owned();
    let agg = stack.token("aggregator", Role::Aggregator, "kms");
    // No token, a token for the other audience, an expired token.
    let (s, p) = call(Method::GET, &format!("{node}/v1/node"), None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{p}");
    let (s, _) = call(
        Method::GET,
        &format!("{node}/v1/node"),
        Some(&stack.token("ops", Role::Admin, "aggregator")),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Bad path parameters and bodies.
    let (s, p) =
        call(Method::GET, &format!("{node}/v1/rounds/{}", "x".repeat(200)), Some(&agg), None).await;
    assert_eq!((s, p["field"].as_str()), (StatusCode::BAD_REQUEST, Some("round")), "{p}");
    let (s, p) = call(
        Method::PUT,
        &format!("{node}/v1/rounds/r/contributors"),
        Some(&agg),
        Some(json!({"contributors": 5})),
    )
    .await;
    assert!(s.is_client_error(), "{p}");
    let resp = reqwest::Client::new()
        .put(format!("{node}/v1/rounds/r"))
        .bearer_auth(&agg)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (s, p) = call(Method::PATCH, &format!("{node}/v1/rounds/r"), Some(&agg), None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{p}");
    let (s, _) = call(Method::GET, &format!("{node}/v1/nothing"), Some(&agg), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The node describes itself to anyone authenticated.
    let (s, v) = call(Method::GET, &format!("{node}/v1/node"), Some(&agg), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!((v["share_index"].as_u64(), v["threshold"].as_u64()), (Some(1), Some(1)));
    stack.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let stack = LocalStack::builder().nodes(1, 1).sites(2).start().await.unwrap();
    let served: Value = reqwest::get(format!("{}/openapi.json", stack.node_url(1).unwrap()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/kms-openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(served, file);
    let paths = served["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/v1/rounds/{round}", &["get", "put", "delete"][..]),
        ("/v1/rounds/{round}/seed-nonce", &["post"]),
        ("/v1/rounds/{round}/deposits/{client}", &["put"]),
        ("/v1/rounds/{round}/deposits", &["get"]),
        ("/v1/rounds/{round}/contributors", &["put"]),
        ("/v1/rounds/{round}/release", &["get"]),
        ("/v1/node", &["get"]),
        ("/v1/audit", &["get"]),
    ] {
        for m in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*m)).is_some(),
                "{m} {path} is not documented"
            );
        }
    }
    assert!(
        paths.keys().all(|p| !p.contains("key")),
        "no endpoint serves a key: {:?}",
        paths.keys()
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_restored_from_a_backup_refuses_rounds_it_had_closed() {
    // DESIGN §4: a node whose database goes back in time must not record a second set. The
    // backup is taken with round r open and two deposits; after it, the set is recorded and
    // released; then the database is restored and the node restarted.
    // Processes, so that the node's files are what a killed process leaves on disk.
    let mut stack =
        LocalStack::builder().nodes(1, 1).sites(4).processes(true).start().await.unwrap();
    stack.admin().create_round(&stack.round_request("r", 3000, 2, 4)).await.unwrap();
    let round = RoundId::parse("r").unwrap();
    for i in 0..3 {
        stack
            .client(&format!("site-{i}"))
            .submit(&round, update(i), SubmitOptions::default())
            .await
            .unwrap();
    }
    stack.kill_node(1).await;
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(stack.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("kms1.db"))
        .collect();
    let backup: Vec<(std::path::PathBuf, Vec<u8>)> =
        files.iter().map(|p| (p.clone(), std::fs::read(p).unwrap())).collect();
    stack.restart_node(1).await.unwrap();
    let info = stack.admin().close_round(&round).await.unwrap();
    let set = stack
        .admin()
        .wait_for_aggregate(&round, Duration::from_secs(60))
        .await
        .unwrap()
        .transcript
        .unwrap()
        .contributors;
    assert_eq!(set.len(), 3, "{info:?}");
    // The disk is lost; the backup comes back.
    stack.kill_node(1).await;
    for (p, bytes) in &backup {
        std::fs::write(p, bytes).unwrap();
    }
    for e in std::fs::read_dir(stack.dir()).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("kms1.db") && !files.contains(&p) {
            std::fs::remove_file(p).unwrap();
        }
    }
    stack.restart_node(1).await.unwrap();
    let admin = stack.token("ops", Role::Admin, "kms");
    let agg = stack.token("aggregator", Role::Aggregator, "kms");
    let node = stack.node_url(1).unwrap().to_owned();
    let (s, v) = call(Method::GET, &format!("{node}/v1/rounds/r"), Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "refused", "{v}");
    // The lying aggregator's second set — one member fewer — is refused.
    let (s, p) = call(
        Method::PUT,
        &format!("{node}/v1/rounds/r/contributors"),
        Some(&agg),
        Some(json!({ "contributors": set[..2], "aggregate_sha256": AGGREGATE })),
    )
    .await;
    assert!(s == StatusCode::CONFLICT || s == StatusCode::GONE, "{s} {p}");
    let (s, _) = call(
        Method::GET,
        &format!("{node}/v1/rounds/r/release"),
        Some(&roster_token(&stack, "site-0")),
        None,
    )
    .await;
    assert!(s == StatusCode::CONFLICT || s == StatusCode::GONE, "{s}");
    stack.stop().await;
}

#[tokio::test]
async fn refused_credentials_are_audited_once_per_kind_with_their_count() {
    // Issue #24 (6): forged roster tokens and issuer tokens in a site's name left no audit
    // entry, log line or metric; identical refusals must not grow the log without bound.
    let stack = LocalStack::builder().nodes(1, 1).sites(2).start().await.unwrap();
    let node = stack.node_url(1).unwrap().to_owned();
    let audience = cryptflow_services::protocol::node_audience(stack.committee().node(1).unwrap());
    // site-1's key signing a token that claims to be site-0.
    let forged = stack.site_key("site-1").unwrap().roster_token(
        &ClientId::parse("site-0").unwrap(),
        Role::Client,
        &audience,
    );
    // The issuer (possibly the aggregator's operator) minting a token in site-0's name.
    let issued = stack.token("site-0", Role::Client, "kms");
    let release = format!("{node}/v1/rounds/r9/release");
    for _ in 0..20 {
        assert_eq!(
            call(Method::GET, &release, Some(&forged), None).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    for _ in 0..3 {
        assert_eq!(
            call(Method::GET, &release, Some(&issued), None).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let admin = stack.token("ops", Role::Admin, "kms");
    let (s, v) = call(Method::GET, &format!("{node}/v1/audit"), Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let refused: Vec<&Value> =
        v.as_array().unwrap().iter().filter(|e| e["action"] == "credentials.refused").collect();
    assert_eq!(refused.len(), 2, "one entry per kind of refusal: {refused:?}");
    for e in &refused {
        let detail: Value = match &e["detail"] {
            Value::String(s) => serde_json::from_str(s).unwrap(),
            d => d.clone(),
        };
        assert_eq!(detail["claimed_subject"], "site-0", "{e}");
        assert_eq!(e["round_id"], "r9", "{e}");
    }
    let reasons: Vec<String> = refused.iter().map(|e| e["detail"].to_string()).collect();
    assert!(reasons.iter().any(|r| r.contains("invalid signature")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("roster key")), "{reasons:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_aggregator_cannot_fix_a_seed_alone_reuse_one_or_leave_a_nonce_out() {
    // Issue #24: the aggregator alone picked the mask seed, and nodes signed reused and
    // all-zero seeds. Now each node adds a signed nonce to a seed the aggregator committed to.
    use cryptflow_services::api::round::{RoundSpec, SeedDerivation, SeedNonce, SeedPart};
    use cryptflow_services::protocol::{check_seed, derive_mask_seed, seed_commitment};
    let stack = LocalStack::builder().nodes(3, 2).sites(3).start().await.unwrap();
    let agg = stack.token("aggregator", Role::Aggregator, "kms");
    let node = |x: u8| stack.node_url(x).unwrap().to_owned();
    stack.admin().create_round(&stack.round_request("seeded", 100, 2, 3)).await.unwrap();
    let (s, v) =
        call(Method::GET, &format!("{}/v1/rounds/seeded", node(1)), Some(&agg), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let honest: RoundSpec = serde_json::from_value::<RegisteredRound>(v).unwrap().spec;
    assert_eq!(honest.seed.nonces.len(), 3, "every node up added its nonce");
    check_seed(stack.committee(), &honest).unwrap();

    let register = |x: u8, spec: RoundSpec| {
        let (url, agg) = (format!("{}/v1/rounds/{}", node(x), spec.round_id), agg.clone());
        async move {
            call(Method::PUT, &url, Some(&agg), Some(serde_json::to_value(spec).unwrap())).await
        }
    };
    let as_round = |id: &str| RoundSpec { round_id: RoundId::parse(id).unwrap(), ..honest.clone() };
    let field = |v: &Value| v["field"].as_str().unwrap_or_default().to_owned();

    // The aggregator alone: an all-zero seed, no nonces.
    let alone = RoundSpec {
        mask_seed: cryptflow_he::MaskSeed([0; 16]),
        seed: SeedDerivation::default(),
        ..as_round("alone")
    };
    let (s, v) = register(1, alone).await;
    assert_eq!((s, field(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "seed".into()), "{v}");
    // Another round's seed and derivation, reused: the nonces were signed for that round.
    let (s, v) = register(1, as_round("again")).await;
    assert_eq!((s, field(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "seed".into()), "{v}");

    // Nonces for a commitment, then one node's left out (to pick among subsets), or the
    // contribution changed after seeing them.
    let contribution = SeedPart::generate();
    let round = RoundId::parse("picky").unwrap();
    let commitment = seed_commitment(&round, &contribution);
    let mut nonces = Vec::new();
    for x in 1..=3u8 {
        let (s, v) = call(
            Method::POST,
            &format!("{}/v1/rounds/picky/seed-nonce", node(x)),
            Some(&agg),
            Some(json!({ "commitment": commitment })),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        nonces.push(serde_json::from_value::<SeedNonce>(v).unwrap());
    }
    // The same commitment again: the same nonce.
    let (_, v) = call(
        Method::POST,
        &format!("{}/v1/rounds/picky/seed-nonce", node(1)),
        Some(&agg),
        Some(json!({ "commitment": commitment })),
    )
    .await;
    assert_eq!(serde_json::from_value::<SeedNonce>(v).unwrap(), nonces[0]);
    let with = |contribution: SeedPart, nonces: &[SeedNonce]| {
        let mut spec = as_round("picky");
        spec.seed = SeedDerivation { contribution, nonces: nonces.to_vec() };
        spec.mask_seed = derive_mask_seed(&spec.round_id, &spec.seed);
        spec
    };
    let changed = SeedPart([9; 32]);
    let (s, v) = register(2, with(changed, &nonces)).await;
    assert_eq!((s, field(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "seed".into()), "{v}");
    let without_1 = with(contribution, &nonces[1..]);
    let (s, v) = register(1, without_1.clone()).await;
    assert_eq!((s, field(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "seed".into()), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("leaves out the nonce"), "{v}");
    // Node 2's nonce is in it: node 2 signs (the aggregator may choose among subsets of the
    // nonces — unbiasability is not claimed, freshness is).
    let (s, v) = register(2, without_1).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Node 3 asked under one commitment, the seed built on another (nodes 1 and 2's): node 3
    // refuses — it was asked, so its nonce must be in the seed.
    let other = SeedPart::generate();
    let round2 = RoundId::parse("dodge").unwrap();
    let mut dodge = Vec::new();
    for (x, c) in [(1u8, &contribution), (2, &contribution), (3, &other)] {
        let (s, v) = call(
            Method::POST,
            &format!("{}/v1/rounds/dodge/seed-nonce", node(x)),
            Some(&agg),
            Some(json!({ "commitment": seed_commitment(&round2, c) })),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        dodge.push(serde_json::from_value::<SeedNonce>(v).unwrap());
    }
    let mut spec = as_round("dodge");
    spec.seed = SeedDerivation { contribution, nonces: dodge[..2].to_vec() };
    spec.mask_seed = derive_mask_seed(&spec.round_id, &spec.seed);
    let (s, v) = register(3, spec.clone()).await;
    assert_eq!((s, field(&v)), (StatusCode::UNPROCESSABLE_ENTITY, "seed".into()), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("not one key manager 3 answered"), "{v}");
    let (s, v) = register(1, spec).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Once registered, a node gives no more nonces for the round.
    let (s, v) = call(
        Method::POST,
        &format!("{}/v1/rounds/picky/seed-nonce", node(2)),
        Some(&agg),
        Some(json!({ "commitment": commitment })),
    )
    .await;
    assert_eq!((s, field(&v)), (StatusCode::CONFLICT, "round".into()), "{v}");
    // At most a few commitments per round.
    let mut last = (StatusCode::OK, Value::Null);
    for i in 0..9u8 {
        let c = seed_commitment(&RoundId::parse("many").unwrap(), &SeedPart([i; 32]));
        last = call(
            Method::POST,
            &format!("{}/v1/rounds/many/seed-nonce", node(3)),
            Some(&agg),
            Some(json!({ "commitment": c })),
        )
        .await;
    }
    assert_eq!((last.0, field(&last.1)), (StatusCode::CONFLICT, "commitment".into()), "{}", last.1);
    // Sites are not asked and may not ask.
    let site = roster_token(&stack, "site-0");
    let (s, _) = call(
        Method::POST,
        &format!("{}/v1/rounds/other/seed-nonce", node(1)),
        Some(&site),
        Some(json!({ "commitment": commitment })),
    )
    .await;
    assert!(s == StatusCode::FORBIDDEN || s == StatusCode::UNAUTHORIZED, "{s}");
    stack.stop().await;
}
