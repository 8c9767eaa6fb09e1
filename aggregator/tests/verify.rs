//! Issue #24, finding 1: a malicious aggregator added an offset of its choice to chosen
//! coordinates of the aggregate, served it with a transcript naming its digest, and every
//! honest site accepted the mean (exit 0) — even means outside `[−B, B]`. Now the key managers
//! record the aggregate's digest with the contributor set and echo it in every release, so an
//! aggregate changed after publication fails every reader, verifying or not; one the
//! aggregator committed from the start is caught by a roster reader who recomputes it (by
//! default, where cheap) or samples spans against the upload roots the members signed; and
//! every client refuses a mean beyond the clip bound. The aggregator here is the real one; the
//! attack is what its operator can do: change the blobs and the database it serves from, and
//! use its own credentials at the key managers.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptflow_client::{
    ClientError, ClientPolicy, ModelUpdate, SubmitOptions, Verification, Verify,
};
use cryptflow_devstack::LocalStack;
use cryptflow_he::{PackedCiphertext, RunningSum, Wire};
use cryptflow_services::api::kms::DepositList;
use cryptflow_services::{protocol, Role, RoundId, Sha256Digest};
use ndarray::Array1;
use std::time::Duration;

/// 10,000 values: 5 verification spans of 2,048.
const D: usize = 10_000;

fn vector(seed: usize) -> Vec<f64> {
    (0..D).map(|j| (((seed * 7919 + j * 104_729) % 2001) as f64 / 1000.0) - 1.0).collect()
}

async fn submit_three(stack: &LocalStack, round: &RoundId) {
    for i in 0..3 {
        stack
            .client(&format!("site-{i}"))
            .submit(round, ModelUpdate::from(Array1::from(vector(i))), SubmitOptions::default())
            .await
            .unwrap();
    }
}

/// A published round `name` with three sites' uploads.
async fn published(stack: &LocalStack, name: &str) -> RoundId {
    let round = RoundId::parse(name).unwrap();
    stack.admin().create_round(&stack.round_request(name, D as u64, 3, 3)).await.unwrap();
    submit_three(stack, &round).await;
    stack.admin().wait_for_aggregate(&round, Duration::from_secs(60)).await.unwrap();
    round
}

async fn aggregator_db(stack: &LocalStack) -> sqlx::AnyPool {
    cryptflow_services::db::connect(&stack.aggregator_database_url().unwrap(), 1).await.unwrap()
}

/// What a malicious aggregator does after publication: serve `change`d aggregate bytes under a
/// transcript that names their digest (its blob store and its database are its own).
async fn tamper(stack: &LocalStack, round: &RoundId, change: impl Fn(&mut [u8])) {
    let pool = aggregator_db(stack).await;
    let sha: String = sqlx::query_scalar("SELECT aggregate_sha256 FROM rounds WHERE round_id = $1")
        .bind(round.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
    let dir = stack.dir().join("blobs").join(round.as_str());
    let mut bytes = std::fs::read(dir.join(format!("aggregate.{sha}"))).unwrap();
    change(&mut bytes[64..]);
    let forged = Sha256Digest::of(&bytes).to_string();
    std::fs::write(dir.join(format!("aggregate.{forged}")), &bytes).unwrap();
    sqlx::query("UPDATE rounds SET aggregate_sha256 = $1 WHERE round_id = $2")
        .bind(&forged)
        .bind(round.as_str())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// What a malicious aggregator does from the start: sum the three uploads it holds, `change`
/// the sum, commit that aggregate's digest with the set at every key manager (its own
/// credentials), and serve it as published. (The honest code path then reports the genuine
/// aggregate, which the nodes refuse, so the operator rewrites its database.)
async fn commit_forged(stack: &LocalStack, name: &str, change: impl Fn(&mut [u8])) -> RoundId {
    let round = RoundId::parse(name).unwrap();
    // max_clients = 4: the round stays open after three uploads.
    stack.admin().create_round(&stack.round_request(name, D as u64, 3, 4)).await.unwrap();
    submit_three(stack, &round).await;
    let info = stack.admin().round(&round).await.unwrap();
    let setup = protocol::setup(&info.spec).unwrap();
    let dir = stack.dir().join("blobs").join(name);
    let mut sum = RunningSum::zero(&setup, 0..setup.slots()).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("upload.") {
            let bytes = std::fs::read(&path).unwrap();
            sum.add_upload(&PackedCiphertext::from_bytes(&bytes).unwrap()).unwrap();
        }
    }
    assert_eq!(sum.contributors(), 3);
    let mut forged = PackedCiphertext::aggregate(&setup, 3, sum.pack()).unwrap().to_bytes();
    change(&mut forged[64..]);
    let sha = Sha256Digest::of(&forged);
    std::fs::write(dir.join(format!("aggregate.{sha}")), &forged).unwrap();
    let agg = stack.token("aggregator", Role::Aggregator, "kms");
    let http = reqwest::Client::new();
    let mut recorded = Vec::new();
    for x in 1..=16u8 {
        let Some(url) = stack.node_url(x) else { break };
        let list: DepositList = http
            .get(format!("{url}/v1/rounds/{name}/deposits"))
            .bearer_auth(&agg)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let body = serde_json::json!({ "contributors": list.deposits, "aggregate_sha256": sha });
        let res = http
            .put(format!("{url}/v1/rounds/{name}/contributors"))
            .bearer_auth(&agg)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), reqwest::StatusCode::CREATED, "node {x}");
        recorded.push(x);
    }
    stack.admin().close_round(&round).await.unwrap();
    let failed = stack.admin().wait_for_aggregate(&round, Duration::from_secs(60)).await;
    assert!(
        failed.is_err(),
        "the nodes refuse the genuine aggregate once the forged one is recorded"
    );
    let pool = aggregator_db(stack).await;
    // (Published when it closed: its uploads' retention runs from then.)
    sqlx::query(
        "UPDATE rounds SET state = 'published', aggregate_sha256 = $1, recorded_by = $2, \
         failure = NULL, published_at = closed_at WHERE round_id = $3",
    )
    .bind(sha.to_string())
    .bind(serde_json::to_string(&recorded).unwrap())
    .bind(name)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    round
}

fn reader(stack: &LocalStack, verify: Verify) -> cryptflow_client::Client {
    stack.client_with("auditor", Role::Reader, ClientPolicy { verify, ..ClientPolicy::default() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_recomputes_the_aggregate_and_tampering_fails_loudly() {
    let stack = LocalStack::builder().sites(3).readers(&["auditor"]).start().await.unwrap();

    // A genuine aggregate: a reader verifies it by default; a member says it did not.
    let round = published(&stack, "genuine").await;
    let agg = reader(&stack, Verify::Auto).fetch_mean(&round, None).await.unwrap();
    assert!(
        matches!(agg.verification, Verification::Recomputed { uploads: 3, .. }),
        "{:?}",
        agg.verification
    );
    let agg = stack.client("site-0").fetch_mean(&round, None).await.unwrap();
    let Verification::NotVerified(why) = &agg.verification else { panic!("a member verified") };
    assert!(why.contains("only roster readers"), "{why}");

    // Sampling spans on a genuine aggregate: each member's span matches its signed root and
    // their sum the aggregate's; the worst-case detection probability is reported.
    let agg = reader(&stack, Verify::Spans(2)).fetch_mean(&round, None).await.unwrap();
    match &agg.verification {
        Verification::Sampled { spans: 2, of: 5, uploads: 3, detection_probability, .. } => {
            assert!((detection_probability - 0.4).abs() < 1e-12)
        }
        other => panic!("{other:?}"),
    }
    let e = reader(&stack, Verify::Spans(0)).fetch_mean(&round, None).await.unwrap_err();
    assert!(matches!(e, ClientError::Config(_)), "sampling no span is not a verification: {e}");

    // The span route names what is wrong with a request: no `at`, an index beyond the
    // round's spans, too many spans; a member may not fetch spans of others' uploads.
    let http = reqwest::Client::new();
    let spans_url =
        format!("{}/v1/rounds/genuine/submissions/site-1/spans", stack.aggregator_url());
    let auditor = stack.token("auditor", Role::Reader, "aggregator");
    let too_many = vec!["0"; 4097].join(",");
    for query in ["", "?at=", "?at=5", "?at=1,x", &format!("?at={too_many}")] {
        let res =
            http.get(format!("{spans_url}{query}")).bearer_auth(&auditor).send().await.unwrap();
        assert_eq!(res.status(), reqwest::StatusCode::BAD_REQUEST, "{query}");
        let p: serde_json::Value = res.json().await.unwrap();
        assert_eq!(p["field"], "at", "{query}: {p}");
    }
    let res = http.get(format!("{spans_url}?at=4,0")).bearer_auth(&auditor).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let spans: serde_json::Value = res.json().await.unwrap();
    assert_eq!(spans["spans"][0]["index"], 4);
    assert_eq!(spans["spans"][1]["index"], 0);
    let member = stack.token("site-0", Role::Client, "aggregator");
    let res = http.get(format!("{spans_url}?at=0")).bearer_auth(&member).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::FORBIDDEN);

    // An aggregate changed after publication (one coordinate's last bit): it is not the one
    // the key managers recorded with the set, so every client refuses it — a reader that does
    // not verify and a member alike (their root check), not only a verifier.
    let round = published(&stack, "one-bit").await;
    let genuine = reader(&stack, Verify::Off).fetch_mean(&round, None).await.unwrap();
    tamper(&stack, &round, |p| p[p.len() / 3] ^= 1).await;
    for client in
        [reader(&stack, Verify::Off), reader(&stack, Verify::Auto), stack.client("site-0")]
    {
        let e = client.fetch_mean(&round, None).await.unwrap_err();
        assert!(matches!(e, ClientError::Verification(_)), "{e}");
        assert!(e.to_string().contains("is not the one the key managers recorded"), "{e}");
    }

    // An aggregate the aggregator committed from the start, one coordinate's last bit off: a
    // reader that recomputes it catches it, and so does one sampling every span; one that
    // does not verify reads the shifted mean (the residual risk the docs state).
    let round = commit_forged(&stack, "committed", |p| p[p.len() / 3] ^= 1).await;
    let e = reader(&stack, Verify::Auto).fetch_mean(&round, None).await.unwrap_err();
    assert!(matches!(e, ClientError::Verification(_)), "{e}");
    assert!(e.to_string().contains("is not the sum of the 3 uploads the members signed"), "{e}");
    let e = reader(&stack, Verify::Spans(u32::MAX)).fetch_mean(&round, None).await.unwrap_err();
    assert!(matches!(e, ClientError::Verification(_)), "{e}");
    assert!(e.to_string().contains("of the aggregate is not the sum of that span"), "{e}");
    let shifted = reader(&stack, Verify::Off).fetch_mean(&round, None).await.unwrap();
    let moved = genuine
        .mean
        .iter()
        .zip(shifted.mean.iter())
        .filter(|(a, b)| (a - b).abs() > genuine.max_abs_error)
        .count();
    assert_eq!(moved, 1, "the attack shifts one value, undetected without verification");

    // Scrambled words, committed: each decrypts to a random value in the plan's range, which
    // exceeds ±B only by the no-wrap margin (here ±1.4 for B = 1: each such value is beyond ±B
    // with probability ≈ 0.3), so ~78 words are scrambled: every client refuses the mean,
    // verifying or not, but for a chance of ~1e-12. (Depending on the round's random masks,
    // the decryptor's self-check or the clip bound catches it first: both are evidence.)
    let round = commit_forged(&stack, "scrambled", |p| {
        let at = p.len() / 4;
        p[at..at + 256].iter_mut().for_each(|b| *b ^= 0xff);
    })
    .await;
    let e = stack.client("site-1").fetch_mean(&round, None).await.unwrap_err();
    assert!(matches!(e, ClientError::Verification(_)), "{e}");
    assert!(
        e.to_string().contains("beyond the clip bound ±1")
            || e.to_string().contains("do not fit together"),
        "{e}"
    );

    // A withheld upload: the verification fails, never skipped.
    let round = published(&stack, "withheld").await;
    let dir = stack.dir().join("blobs").join("withheld");
    let upload = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("upload.site-2."))
        .unwrap();
    std::fs::remove_file(upload).unwrap();
    for verify in [Verify::Always, Verify::Auto, Verify::Spans(3)] {
        let e = reader(&stack, verify).fetch_mean(&round, None).await.unwrap_err();
        assert!(matches!(e, ClientError::Verification(_)), "{verify:?}: {e}");
        assert!(e.to_string().contains("site-2's upload cannot be fetched"), "{verify:?}: {e}");
    }

    // A member may not fetch others' uploads; asking to verify as one fails, naming why.
    let member = stack.client_with(
        "site-0",
        Role::Client,
        ClientPolicy { verify: Verify::Always, ..ClientPolicy::default() },
    );
    let e = member.fetch_mean(&round, None).await.unwrap_err();
    assert!(e.to_string().contains("cannot verify: only roster readers"), "{e}");
    stack.stop().await;
}
