//! The aggregator in a real local stack (key-manager committee, aggregator, SDK clients over
//! loopback), on SQLite and — with `CRYPTFLOW_TEST_DATABASE_URL` set, as in CI — PostgreSQL:
//! rounds that publish, rounds that must not, the defects issue #12 lists, and bad requests.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptflow_client::{
    ClientError, ClientPolicy, ModelUpdate, RoundState, SubmitOptions, Weighting,
};
use cryptflow_devstack::{Database, LocalStack};
use cryptflow_he::{CiphertextKind, MaskSeed, PackedCiphertext, RoundSetup, Wire};
use cryptflow_services::{Role, RoundId};
use ndarray::Array1;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

fn vector(d: usize, seed: usize) -> Vec<f64> {
    (0..d).map(|j| (((seed * 7919 + j * 104_729) % 2001) as f64 / 1000.0) - 1.0).collect()
}

/// Sites `site-0` … `site-{n-1}` each submit `vector(d, i)` to `round`.
async fn submit_sites(stack: &LocalStack, round: &RoundId, d: usize, n: usize) {
    for i in 0..n {
        stack
            .client(&format!("site-{i}"))
            .submit(round, ModelUpdate::from(Array1::from(vector(d, i))), SubmitOptions::default())
            .await
            .unwrap();
    }
}

fn count(n: u64) -> SubmitOptions {
    SubmitOptions { count: Some(n), ..SubmitOptions::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_samples_round_publishes_the_weighted_mean_at_its_deadline() {
    for database in Database::for_tests() {
        let stack = LocalStack::builder()
            .nodes(3, 2)
            .sites(4)
            .database(database.clone())
            // Retention 0 (the default keeps uploads 30 days, for verifying readers).
            .configure_aggregator(|c| c.upload_retention_secs = 0)
            .start()
            .await
            .unwrap();
        let round = RoundId::parse("weighted").unwrap();
        let d = 4000;
        let mut req = stack.round_request("weighted", d as u64, 2, 4);
        req.weighting = Weighting::Samples { min_count: 1, max_count: 100 };
        req.max_abs_error = 1e-4;
        req.deadline_in_secs = Some(4);
        stack.admin().create_round(&req).await.unwrap();
        // Three of four sites contribute, with counts 1, 10 and 100; the deadline closes it.
        let counts = [1u64, 10, 100];
        let mut want = vec![0f64; d];
        for (i, c) in counts.iter().enumerate() {
            let x = vector(d, i);
            for (w, v) in want.iter_mut().zip(&x) {
                *w += *c as f64 * v / 111.0;
            }
            let s = stack
                .client(&format!("site-{i}"))
                .submit(&round, ModelUpdate::from(Array1::from(x)), count(*c))
                .await
                .unwrap();
            assert_eq!(s.clipping.clipped, 0);
        }
        let reader = stack.client("site-2");
        let info = reader.wait_for_aggregate(&round, Duration::from_secs(60)).await.unwrap();
        assert_eq!(info.state, RoundState::Published, "{database:?}");
        let agg = reader.fetch_mean(&round, None).await.unwrap();
        assert_eq!((agg.contributors, agg.total_weight), (3, 111));
        let worst = agg.mean.iter().zip(&want).map(|(m, w)| (m - w).abs()).fold(0.0, f64::max);
        assert!(worst <= agg.max_abs_error, "{worst} > {}", agg.max_abs_error);
        // The site that did not contribute may not read the mean.
        let e = stack.client("site-3").fetch_mean(&round, None).await.unwrap_err();
        assert!(matches!(e, ClientError::Refused { .. }), "{e}");
        // Per-client blobs are gone soon after publication (retention 0: the next tick of the
        // aggregator's background task); the aggregate stays.
        let listing = || -> Vec<String> {
            std::fs::read_dir(stack.dir().join("blobs").join("weighted"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        for _ in 0..100 {
            if listing().iter().all(|b| !b.starts_with("upload.")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let blobs = listing();
        assert!(blobs.iter().all(|b| !b.starts_with("upload.")), "{blobs:?}");
        assert!(blobs.iter().any(|b| b.starts_with("aggregate.")), "{blobs:?}");
        stack.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_light_client_cannot_move_a_weighted_mean_beyond_its_clip_bound() {
    // Issue #12: a weight-1 client sending [50, 50, 50, 50] against a weight-99 client sending
    // zeros (clip 1, counts up to 100) moved v1's `private` mean to 0.5. Every weighting clips.
    let stack = LocalStack::builder().sites(2).start().await.unwrap();
    let round = RoundId::parse("clip").unwrap();
    let mut req = stack.round_request("clip", 4, 2, 2);
    req.weighting = Weighting::Samples { min_count: 1, max_count: 100 };
    req.max_abs_error = 1e-4;
    stack.admin().create_round(&req).await.unwrap();
    let s = stack
        .client("site-0")
        .submit(&round, ModelUpdate::from(Array1::from(vec![50.0f64; 4])), count(1))
        .await
        .unwrap();
    assert_eq!(s.clipping.clipped, 4, "the clipping is reported");
    assert_eq!(s.clipping.largest_magnitude, 50.0);
    stack
        .client("site-1")
        .submit(&round, ModelUpdate::from(Array1::from(vec![0.0f64; 4])), count(99))
        .await
        .unwrap();
    let reader = stack.client("site-1");
    reader.wait_for_aggregate(&round, Duration::from_secs(60)).await.unwrap();
    let agg = reader.fetch_mean(&round, None).await.unwrap();
    for m in agg.mean.iter() {
        assert!((m - 0.01).abs() <= agg.max_abs_error, "{m}");
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_arriving_together_never_exceed_max_clients() {
    // Issue #12: three invited, min = max = 2, all three upload at once (d = 200,000): v1
    // accepted all three and the round stayed `aggregating` forever, also after a restart.
    for database in Database::for_tests() {
        let mut stack =
            LocalStack::builder().sites(3).database(database.clone()).start().await.unwrap();
        let round = RoundId::parse("race").unwrap();
        let d = 200_000;
        stack.admin().create_round(&stack.round_request("race", d as u64, 2, 2)).await.unwrap();
        let tasks: Vec<_> = (0..3)
            .map(|i| {
                let c = stack.client(&format!("site-{i}"));
                let round = round.clone();
                let u = Arc::new(ModelUpdate::from(Array1::from(vector(d, i))));
                tokio::spawn(async move { c.submit(&round, u, SubmitOptions::default()).await })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(ClientError::Refused { problem, .. }) => {
                    assert_eq!(problem.status, 409, "{problem:?}")
                }
                Err(ClientError::RoundState { .. }) => {} // it saw the round closed before sending
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(ok, 2, "{database:?}");
        let info = stack.admin().wait_for_aggregate(&round, Duration::from_secs(60)).await.unwrap();
        assert_eq!((info.state, info.uploads), (RoundState::Published, 2));
        assert_eq!(info.transcript.as_ref().unwrap().contributors.len(), 2);
        // Still so after a restart.
        stack.kill_aggregator().await;
        stack.restart_aggregator().await.unwrap();
        let info = stack.admin().round(&round).await.unwrap();
        assert_eq!((info.state, info.uploads), (RoundState::Published, 2));
        stack.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_round_that_would_reveal_one_update_never_publishes() {
    // Issue #12: `--min-clients 1` released one client's update to every other client.
    let stack = LocalStack::builder().sites(3).start().await.unwrap();
    let round = RoundId::parse("lonely").unwrap();
    let mut req = stack.round_request("lonely", 100, 1, 3);
    req.deadline_in_secs = Some(3);
    let info = stack.admin().create_round(&req).await.unwrap();
    assert_eq!(info.echoes[0].min_set_size, 2, "the key managers' m");
    // The client's policy refuses it before sending anything…
    let u = Arc::new(ModelUpdate::from(Array1::from(vec![0.5f64; 100])));
    let e = stack
        .client("site-0")
        .submit(&round, u.clone(), SubmitOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Policy(_)), "{e}");
    assert_eq!(stack.admin().round(&round).await.unwrap().uploads, 0);
    // …and a client that opts out still cannot be alone in a set: the key managers need m = 2.
    let careless = stack.client_with(
        "site-0",
        Role::Client,
        ClientPolicy { min_contributors: 1, ..stack.stack_policy() },
    );
    careless.submit(&round, u, SubmitOptions::default()).await.unwrap();
    let e = stack
        .client("site-1")
        .wait_for_aggregate(&round, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::RoundState { .. }), "{e}");
    let info = stack.admin().round(&round).await.unwrap();
    assert_eq!(info.state, RoundState::Failed);
    assert!(info.failure.as_deref().unwrap_or("").contains('2'), "{:?}", info.failure);
    let e = careless.fetch_mean(&round, None).await.unwrap_err();
    assert!(matches!(e, ClientError::RoundState { .. } | ClientError::Refused { .. }), "{e}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_aggregator_loses_nothing_it_acknowledged() {
    let mut stack = LocalStack::builder().sites(3).processes(true).start().await.unwrap();
    let round = RoundId::parse("crash").unwrap();
    let d = 50_000;
    stack.admin().create_round(&stack.round_request("crash", d as u64, 3, 3)).await.unwrap();
    let mut want = vec![0f64; d];
    for i in 0..3 {
        let x = vector(d, i);
        for (w, v) in want.iter_mut().zip(&x) {
            *w += v / 3.0;
        }
        if i == 2 {
            stack.kill_aggregator().await; // SIGKILL: no shutdown hook runs
            stack.restart_aggregator().await.unwrap();
        }
        stack
            .client(&format!("site-{i}"))
            .submit(&round, ModelUpdate::from(Array1::from(x)), SubmitOptions::default())
            .await
            .unwrap();
    }
    let reader = stack.client("site-0");
    reader.wait_for_aggregate(&round, Duration::from_secs(60)).await.unwrap();
    let agg = reader.fetch_mean(&round, None).await.unwrap();
    assert_eq!(agg.contributors, 3);
    let worst = agg.mean.iter().zip(&want).map(|(m, w)| (m - w).abs()).fold(0.0, f64::max);
    assert!(worst <= agg.max_abs_error);
    stack.stop().await;
}

/// A request with the admin's (or `token`'s) credentials; the status and the JSON body.
async fn post_round(stack: &LocalStack, body: String, content_type: &str) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/rounds", stack.aggregator_url()))
        .bearer_auth(stack.token("ops", Role::Admin, "aggregator"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    if status.is_client_error() {
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Announces a `len`-byte round request, sends the first kilobyte, and returns the answer.
async fn oversized_post(stack: &LocalStack, len: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = stack.aggregator_url().trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/rounds HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {len}\r\n\r\n",
        stack.token("ops", Role::Admin, "aggregator")
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let _ = tcp.write_all(&[b' '; 1024]).await;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_problem_documents_naming_the_field() {
    let stack = LocalStack::builder().sites(3).start().await.unwrap();
    let good = serde_json::to_value(stack.round_request("r", 1000, 2, 3)).unwrap();
    let with = |field: &str, value: Value| {
        let mut v = good.clone();
        v[field] = value;
        v.to_string()
    };
    let raw = |field: &str, text: &str| {
        let mut v = good.clone();
        v[field] = json!("__RAW__");
        v.to_string().replace("\"__RAW__\"", text)
    };
    // Issue #12: `--clip nan` got a JSON parser message. NaN has no JSON form: whatever a
    // client sends in its place is refused naming the field.
    let cases: Vec<(String, &str)> = vec![
        (with("clip_bound", Value::Null), "clip_bound"),
        (with("clip_bound", json!("nan")), "clip_bound"),
        (raw("clip_bound", "NaN"), "clip_bound"),
        (raw("clip_bound", "1e999"), "clip_bound"),
        (with("clip_bound", json!(-1.0)), "clip_bound"),
        (with("max_abs_error", json!(0.0)), "max_abs_error"),
        (with("max_abs_error", json!(1e-30)), "max_abs_error"),
        (with("min_clients", json!(4)), "min_clients"),
        (with("clients", json!(["mallory", "site-0", "site-1"])), "clients"),
        (with("clients", json!([])), "clients"),
        (with("layout", json!({"dimension": 0})), "layout"),
        (with("deadline", json!(1)), "deadline"),
        (with("round_id", json!("not a valid id!")), "round_id"),
        (with("surprise", json!(1)), "surprise"),
        ("{\"round_id\": \"r\"".to_owned(), "body"),
    ];
    for (body, field) in cases {
        let (s, p) = post_round(&stack, body.clone(), "application/json").await;
        assert!(s.is_client_error(), "{body}: {s} {p}");
        assert_eq!(p["field"].as_str(), Some(field), "{body}: {p}");
    }
    // A request every key manager refused left nothing behind: the id is free.
    let (s, p) = post_round(&stack, good.to_string(), "application/json").await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let (s, p) = post_round(&stack, good.to_string(), "text/plain").await;
    assert_eq!(
        (s, p["field"].as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("content-type"))
    );
    // A body over the limit is refused from its Content-Length, as a problem document (over
    // a raw socket: the server answers before the body is sent, and closes).
    let answer = oversized_post(&stack, 80 << 20).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("content-type: application/problem+json"),
        "{answer}"
    );

    // Uploads: the round exists; wrong lengths, a header for another round, the wrong client.
    let info = stack.admin().create_round(&stack.round_request("r", 1000, 2, 3)).await.unwrap();
    let setup = cryptflow_services::protocol::setup(&info.spec).unwrap();
    let upload_len = setup.upload_len() as usize;
    let url = |client: &str| format!("{}/v1/rounds/r/submissions/{client}", stack.aggregator_url());
    let token = stack.token("site-0", Role::Client, "aggregator");
    let put = |u: String, t: String, body: Vec<u8>| async move {
        let resp = reqwest::Client::new().put(u).bearer_auth(t).body(body).send().await.unwrap();
        let status = resp.status();
        (status, resp.json::<Value>().await.unwrap_or(Value::Null))
    };
    let (s, p) = put(url("site-0"), token.clone(), vec![0; upload_len - 1]).await;
    assert!(s.is_client_error(), "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains(&upload_len.to_string()),
        "names the expected length: {p}"
    );
    let (s, _) = put(url("site-0"), token.clone(), vec![0; upload_len + 1]).await;
    assert!(s.is_client_error());
    let other = RoundSetup::try_new(*setup.plan(), MaskSeed::generate().unwrap(), 1000).unwrap();
    let foreign =
        PackedCiphertext::aggregate(&other, 1, vec![0; other.payload_len() as usize]).unwrap();
    let mut bytes = foreign.to_bytes();
    bytes[..64].copy_from_slice(&other.header(CiphertextKind::Upload, 1).to_bytes());
    let (s, p) = put(url("site-0"), token.clone(), bytes).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("seed"), "names the field that differs: {p}");
    let (s, _) = put(url("site-1"), token.clone(), vec![0; upload_len]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "an upload in another site's name");
    let (s, _) = put(
        format!("{}/v1/rounds/nope/submissions/site-0", stack.aggregator_url()),
        token,
        vec![0; 10],
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        stack.admin().round(&RoundId::parse("r").unwrap()).await.unwrap().uploads,
        0,
        "nothing admitted"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_beyond_the_concurrency_limit_wait_their_turn() {
    // Back-pressure: at most 2 uploads in flight; 8 sites upload 300,000 values at once. The
    // others wait for a slot (their bodies unread), and every upload is admitted once.
    let stack = LocalStack::builder().sites(8).max_concurrent_uploads(2).start().await.unwrap();
    let d = 300_000;
    stack.admin().create_round(&stack.round_request("busy", d as u64, 8, 8)).await.unwrap();
    let round = RoundId::parse("busy").unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let c = stack.client(&format!("site-{i}"));
            let (round, u) =
                (round.clone(), Arc::new(ModelUpdate::from(Array1::from(vector(d, i)))));
            tokio::spawn(async move { c.submit(&round, u, SubmitOptions::default()).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let info = stack.admin().wait_for_aggregate(&round, Duration::from_secs(120)).await.unwrap();
    assert_eq!((info.state, info.uploads), (RoundState::Published, 8));
    // The aggregator's metrics say how many uploads waited for a slot.
    let metrics = metrics_of(&stack).await;
    assert!(
        counter(&metrics, "uploads_queued") > 0,
        "8 concurrent uploads through 2 slots never waited"
    );
    assert_eq!(counter(&metrics, "uploads_throttled"), 0, "none was turned away: they waited");
    stack.stop().await;
}

fn counter(metrics: &str, name: &str) -> u64 {
    let full = format!("cryptflow_aggregator_{name}_total");
    metrics
        .lines()
        .find(|l| l.starts_with(&full))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {full} in {metrics}"))
}

async fn metrics_of(stack: &LocalStack) -> String {
    let cfg: toml::Value =
        toml::from_str(&std::fs::read_to_string(stack.aggregator_config()).unwrap()).unwrap();
    reqwest::get(format!("http://{}/metrics", cfg["metrics_listen"].as_str().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Starts an upload for `client` over a raw socket — headers and `sent` bytes of the body —
/// and returns the socket, to stall with.
async fn stalled_upload(
    stack: &LocalStack,
    round: &str,
    client: &str,
    len: u64,
    sent: usize,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = stack.aggregator_url().trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /v1/rounds/{round}/submissions/{client} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/octet-stream\r\ncontent-length: {len}\r\n\r\n",
        stack.token(client, Role::Client, "aggregator")
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&vec![0u8; sent]).await.unwrap();
    tcp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_client_is_dropped_and_cannot_hold_more_than_one_slot() {
    // Issue #16: 16 connections from one client trickling bytes held every slot. Now a client
    // holds at most one slot, and an upload that stalls is dropped (408), freeing its slot.
    let stack = LocalStack::builder()
        .sites(3)
        .max_concurrent_uploads(1)
        .configure_aggregator(|c| {
            c.upload_idle_secs = 2;
            c.upload_queue_secs = 20;
        })
        .start()
        .await
        .unwrap();
    let info = stack.admin().create_round(&stack.round_request("slow", 1000, 2, 3)).await.unwrap();
    let len = cryptflow_services::protocol::upload_len(&info.spec).unwrap();
    let round = RoundId::parse("slow").unwrap();
    // site-0 takes the only slot and stalls after 10 bytes.
    let mut stalled = stalled_upload(&stack, "slow", "site-0", len, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A second upload of site-0 is refused at once (429), not queued behind its first.
    let second = reqwest::Client::new()
        .put(format!("{}/v1/rounds/slow/submissions/site-0", stack.aggregator_url()))
        .bearer_auth(stack.token("site-0", Role::Client, "aggregator"))
        .body(vec![0u8; len as usize])
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(second.headers().contains_key("retry-after"));
    // site-1 waits for the slot, gets it when the stalled upload is dropped, and succeeds.
    let s = stack
        .client("site-1")
        .submit(&round, ModelUpdate::from(Array1::from(vector(1000, 1))), SubmitOptions::default())
        .await
        .unwrap();
    assert_eq!(s.receipt.uploads, 1);
    let mut answer = vec![0u8; 2048];
    let n = tokio::io::AsyncReadExt::read(&mut stalled, &mut answer).await.unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let metrics = metrics_of(&stack).await;
    assert!(counter(&metrics, "uploads_too_slow") >= 1);
    assert!(counter(&metrics, "uploads_queued") >= 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_of_an_admitted_upload_take_a_slot_too() {
    // The one-slot-per-client rule covers every body read: retries of an admitted upload to
    // a closed round (answered from its digest) were read without a slot, so one client
    // could open any number of them.
    let stack = LocalStack::builder()
        .sites(2)
        .max_concurrent_uploads(1)
        .configure_aggregator(|c| c.upload_idle_secs = 2)
        .start()
        .await
        .unwrap();
    let info = stack.admin().create_round(&stack.round_request("retry", 1000, 2, 2)).await.unwrap();
    let len = cryptflow_services::protocol::upload_len(&info.spec).unwrap();
    let round = RoundId::parse("retry").unwrap();
    stack
        .client("site-0")
        .submit(&round, ModelUpdate::from(Array1::from(vector(1000, 0))), SubmitOptions::default())
        .await
        .unwrap();
    stack.admin().close_round(&round).await.unwrap();
    let _stalled = stalled_upload(&stack, "retry", "site-0", len, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = reqwest::Client::new()
        .put(format!("{}/v1/rounds/retry/submissions/site-0", stack.aggregator_url()))
        .bearer_auth(stack.token("site-0", Role::Client, "aggregator"))
        .body(vec![0u8; len as usize])
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    stack.stop().await;
}

#[tokio::test]
async fn databases_and_blobs_are_private_to_the_service_user() {
    // Issue #16: databases, blobs and written means were world-readable.
    use std::os::unix::fs::PermissionsExt;
    let stack = LocalStack::builder().sites(2).start().await.unwrap();
    let round = RoundId::parse("private").unwrap();
    stack.admin().create_round(&stack.round_request("private", 100, 2, 2)).await.unwrap();
    submit_sites(&stack, &round, 100, 2).await;
    stack.admin().wait_for_aggregate(&round, Duration::from_secs(60)).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for db in ["agg.db", "kms1.db"] {
        assert_eq!(mode(&stack.dir().join(db)), 0o600, "{db}");
    }
    let blobs = stack.dir().join("blobs");
    assert_eq!(mode(&blobs), 0o700);
    assert_eq!(mode(&blobs.join("private")), 0o700);
    for e in std::fs::read_dir(blobs.join("private")).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    assert_eq!(mode(&stack.dir().join("kms-1.witness")), 0o600);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_round_destroyed_at_the_key_managers_takes_no_more_uploads() {
    // Issue #16: after an admin destroyed a round's key, uploads were still accepted. The SDK
    // now checks that t key managers still take deposits before it uploads anything.
    let stack = LocalStack::builder().sites(2).start().await.unwrap();
    stack.admin().create_round(&stack.round_request("gone", 100, 2, 2)).await.unwrap();
    let resp = reqwest::Client::new()
        .delete(format!("{}/v1/rounds/gone", stack.node_url(1).unwrap()))
        .bearer_auth(stack.token("ops", Role::Admin, "kms"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let round = RoundId::parse("gone").unwrap();
    let e = stack
        .client("site-0")
        .submit(&round, ModelUpdate::from(Array1::from(vector(100, 0))), SubmitOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::RoundState { state, .. } if state.contains("key managers")),
        "{e}"
    );
    assert_eq!(stack.admin().round(&round).await.unwrap().uploads, 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_round_of_the_largest_documented_size_can_be_created() {
    // Issue #16: a round of 100,000 clients (the documented maximum) could not be created —
    // its client list exceeded the key manager's body limit. Ids of 64 characters, the most
    // an id may have, make it the largest request of that size.
    let n = cryptflow_services::api::round::MAX_ROUND_CLIENTS;
    let stack = LocalStack::builder().sites(n).long_site_ids(true).start().await.unwrap();
    let mut req = stack.round_request("large", 1000, 2, n as u32);
    req.clients = stack.site_ids();
    req.max_abs_error = 1e-4; // 1e-6 over 10^5 contributions does not fit 64 bits (the planner says so)
    let info = stack.admin().create_round(&req).await.unwrap();
    assert_eq!(info.spec.clients.len(), n);
    assert_eq!(info.echoes.len(), 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_aggregator_token_is_named_not_reported_as_an_outage() {
    // Issue #16: with its key-manager token expired, `round create` failed as "dependency
    // unavailable". The cause now reaches the operator: 502 naming `kms_token_file`, counted.
    let stack = LocalStack::builder().sites(2).start().await.unwrap();
    let (issuer, kid) = stack.issuer();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expired = issuer.mint(
        kid,
        &cryptflow_services::protocol::Claims {
            sub: "aggregator".into(),
            role: Role::Aggregator,
            aud: "kms".into(),
            exp: now - 3600,
            iat: now - 7200,
            nbf: None,
        },
    );
    std::fs::write(stack.dir().join("aggregator-kms.jwt"), expired).unwrap();
    let body = serde_json::to_string(&stack.round_request("r", 100, 2, 2)).unwrap();
    let (s, p) = post_round(&stack, body, "application/json").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{p}");
    assert_eq!(p["field"], "kms_token_file", "{p}");
    assert!(p["detail"].as_str().unwrap().contains("expired"), "{p}");
    assert!(counter(&metrics_of(&stack).await, "kms_credential_failures") >= 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stored_upload_that_was_altered_fails_its_round_naming_the_client() {
    // Issue #15: a fold job reads one span of each upload; the span digests taken while the
    // upload was received catch a blob changed afterwards (storage corruption, tampering).
    let stack = LocalStack::builder().sites(3).start().await.unwrap();
    let round = RoundId::parse("altered").unwrap();
    stack.admin().create_round(&stack.round_request("altered", 50_000, 2, 3)).await.unwrap();
    submit_sites(&stack, &round, 50_000, 2).await;
    // The round is still open (max 3): flip one payload byte of site-1's stored upload.
    let dir = stack.dir().join("blobs").join("altered");
    let blob = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("upload.site-1."))
        .unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x40;
    std::fs::write(&blob, bytes).unwrap();
    stack.admin().close_round(&round).await.unwrap();
    let e = stack.admin().wait_for_aggregate(&round, Duration::from_secs(60)).await.unwrap_err();
    let info = stack.admin().round(&round).await.unwrap();
    assert_eq!(info.state, RoundState::Failed, "{e}");
    let why = info.failure.unwrap();
    assert!(why.contains("site-1") && why.contains("does not match"), "{why}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_admitted_before_span_digests_are_checked_whole() {
    // Issue #15 review: uploads admitted before the fold-jobs migration carry no span
    // digests; their rounds fold as one span (the migration sets it) and each such upload is
    // checked against its admitted SHA-256, header included — not summed unchecked.
    let stack = LocalStack::builder().sites(3).start().await.unwrap();
    let pool = cryptflow_services::db::connect(&stack.aggregator_database_url().unwrap(), 1)
        .await
        .unwrap();
    for (name, tamper) in [("legacy-ok", false), ("legacy-bad", true)] {
        let round = RoundId::parse(name).unwrap();
        stack.admin().create_round(&stack.round_request(name, 50_000, 2, 3)).await.unwrap();
        submit_sites(&stack, &round, 50_000, 2).await;
        // What the migration leaves for such a round.
        sqlx::query("UPDATE uploads SET span_sha256 = '' WHERE round_id = $1")
            .bind(name)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("UPDATE rounds SET span_blocks = 1099511627776 WHERE round_id = $1")
            .bind(name)
            .execute(&pool)
            .await
            .unwrap();
        if tamper {
            // One byte of site-0's header (its plan tag), which span digests never cover.
            let blob = std::fs::read_dir(stack.dir().join("blobs").join(name))
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("upload.site-0."))
                .unwrap();
            let mut bytes = std::fs::read(&blob).unwrap();
            bytes[40] ^= 1;
            std::fs::write(&blob, bytes).unwrap();
        }
        stack.admin().close_round(&round).await.unwrap();
        let outcome = stack.admin().wait_for_aggregate(&round, Duration::from_secs(60)).await;
        let info = stack.admin().round(&round).await.unwrap();
        if tamper {
            assert!(outcome.is_err());
            assert_eq!(info.state, RoundState::Failed);
            assert!(info.failure.unwrap().contains("site-0"));
        } else {
            assert_eq!(info.state, RoundState::Published, "{:?}", info.failure);
            let agg = stack.client("site-1").fetch_mean(&round, None).await.unwrap();
            let want: Vec<f64> =
                (0..50_000).map(|j| (vector(50_000, 0)[j] + vector(50_000, 1)[j]) / 2.0).collect();
            let worst = agg.mean.iter().zip(&want).map(|(m, w)| (m - w).abs()).fold(0.0, f64::max);
            assert!(worst <= agg.max_abs_error, "{worst}");
        }
    }
    pool.close().await;
    stack.stop().await;
}

#[tokio::test]
async fn a_failed_round_names_the_members_whose_key_shares_are_missing() {
    // Issue #30: a round that failed for want of deposits said "1 of 2 uploads have their key
    // shares deposited…" without saying whose were missing; the member is now named.
    let stack = LocalStack::builder().sites(3).deposit_grace_secs(1).start().await.unwrap();
    let info = stack.admin().create_round(&stack.round_request("named", 100, 2, 3)).await.unwrap();
    let round = RoundId::parse("named").unwrap();
    stack
        .client("site-0")
        .submit(&round, ModelUpdate::from(Array1::from(vector(100, 0))), SubmitOptions::default())
        .await
        .unwrap();
    // site-1 uploads a ciphertext and never deposits its key shares.
    let setup = cryptflow_services::protocol::setup(&info.spec).unwrap();
    let key = cryptflow_he::ClientKey::generate(setup.params()).unwrap();
    let x = vec![0.25f64; 100];
    let body = key.encryptor(&setup, None).unwrap().encrypt(&x[..]).unwrap().ciphertext.to_bytes();
    let put = reqwest::Client::new()
        .put(format!("{}/v1/rounds/named/submissions/site-1", stack.aggregator_url()))
        .bearer_auth(stack.token("site-1", Role::Client, "aggregator"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    stack.admin().close_round(&round).await.unwrap();
    let err = stack.admin().wait_for_aggregate(&round, Duration::from_secs(30)).await.unwrap_err();
    let failure = stack.admin().round(&round).await.unwrap().failure.unwrap();
    assert!(
        failure.contains("left out: site-1 (its key shares are at 0 of the 1 key managers needed)"),
        "{failure}"
    );
    assert!(err.to_string().contains("site-1"), "{err}");
    stack.stop().await;
}

#[tokio::test]
async fn a_copy_of_another_members_upload_is_refused_naming_it() {
    // Issue #30 (6): site-1 PUT a byte-identical copy of site-0's ciphertext into the same
    // round and got 201 and a receipt (it stayed out of the mean only because it never
    // deposited; had it deposited, the round would have failed for everyone).
    let stack = LocalStack::builder().sites(3).start().await.unwrap();
    let info = stack.admin().create_round(&stack.round_request("copy", 100, 2, 3)).await.unwrap();
    let setup = cryptflow_services::protocol::setup(&info.spec).unwrap();
    let key = cryptflow_he::ClientKey::generate(setup.params()).unwrap();
    let x = vec![0.25f64; 100];
    let body = key.encryptor(&setup, None).unwrap().encrypt(&x[..]).unwrap().ciphertext.to_bytes();
    let put = |who: &'static str| {
        reqwest::Client::new()
            .put(format!("{}/v1/rounds/copy/submissions/{who}", stack.aggregator_url()))
            .bearer_auth(stack.token(who, Role::Client, "aggregator"))
            .body(body.clone())
            .send()
    };
    assert_eq!(put("site-0").await.unwrap().status(), StatusCode::CREATED);
    let copy = put("site-1").await.unwrap();
    assert_eq!(copy.status(), StatusCode::CONFLICT);
    let problem: Value = copy.json().await.unwrap();
    assert_eq!(problem["field"], "body", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("site-0"), "{problem}");
    // Nothing was admitted for site-1, and its own upload is still welcome.
    let round = RoundId::parse("copy").unwrap();
    assert_eq!(stack.admin().round(&round).await.unwrap().uploads, 1);
    stack
        .client("site-1")
        .submit(&round, ModelUpdate::from(Array1::from(vector(100, 1))), SubmitOptions::default())
        .await
        .unwrap();
    assert_eq!(stack.admin().round(&round).await.unwrap().uploads, 2);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_round_that_can_no_longer_publish_fails_at_once_and_waiting_clients_hear_why() {
    // Issue #30 (1): below its minimum with its only upload's deposits in, or empty, a closed
    // round stayed `aggregating` for the 60 s deposit grace; `fetch --wait 30` ended "timed out"
    // without a reason, which arrived a minute later.
    let stack = LocalStack::builder()
        .sites(3)
        .configure_aggregator(|c| c.deposit_grace_secs = 600)
        .start()
        .await
        .unwrap();
    for r in ["below-minimum", "empty"] {
        stack.admin().create_round(&stack.round_request(r, 100, 2, 3)).await.unwrap();
    }
    let below = RoundId::parse("below-minimum").unwrap();
    stack
        .client("site-0")
        .submit(&below, ModelUpdate::from(Array1::from(vector(100, 0))), SubmitOptions::default())
        .await
        .unwrap();
    for (round, admitted) in [(below, 1), (RoundId::parse("empty").unwrap(), 0)] {
        let waiter = {
            let client = stack.client("site-1");
            let round = round.clone();
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                (client.wait_for_aggregate(&round, Duration::from_secs(60)).await, start.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        stack.admin().close_round(&round).await.unwrap();
        let (outcome, took) = waiter.await.unwrap();
        let e = outcome.unwrap_err();
        // With a 600 s grace, only deciding at once explains an answer within seconds.
        assert!(took < Duration::from_secs(10), "{took:?}");
        let text = e.to_string();
        assert!(matches!(e, ClientError::RoundState { .. }), "{text}");
        assert!(
            text.contains(&format!("{admitted} upload(s) were admitted"))
                && text.contains("needs 2"),
            "{text}"
        );
    }
    stack.stop().await;
}
