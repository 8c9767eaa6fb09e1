//! Issue #24, finding 1: a malicious aggregator added an offset of its choice to chosen
//! coordinates of the aggregate, served it with a transcript naming its digest, and every
//! honest site accepted the mean (exit 0) — even means outside `[−B, B]`. Now a roster reader
//! recomputes the aggregate from the uploads the members signed (by default, where cheap), and
//! every client refuses a mean beyond the clip bound. The aggregator here is the real one; the
//! attack is what its operator can do: change the blobs and the database it serves from.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptflow_client::{
    ClientError, ClientPolicy, ModelUpdate, SubmitOptions, Verification, Verify,
};
use cryptflow_devstack::LocalStack;
use cryptflow_services::{Role, RoundId, Sha256Digest};
use ndarray::Array1;
use std::time::Duration;

const D: usize = 2000;

fn vector(seed: usize) -> Vec<f64> {
    (0..D).map(|j| (((seed * 7919 + j * 104_729) % 2001) as f64 / 1000.0) - 1.0).collect()
}

/// A published round `name` with three sites' uploads.
async fn published(stack: &LocalStack, name: &str) -> RoundId {
    let round = RoundId::parse(name).unwrap();
    stack.admin().create_round(&stack.round_request(name, D as u64, 3, 3)).await.unwrap();
    for i in 0..3 {
        stack
            .client(&format!("site-{i}"))
            .submit(&round, ModelUpdate::from(Array1::from(vector(i))), SubmitOptions::default())
            .await
            .unwrap();
    }
    stack.admin().wait_for_aggregate(&round, Duration::from_secs(60)).await.unwrap();
    round
}

/// What a malicious aggregator does: serve `change`d aggregate bytes under a transcript that
/// names their digest (its blob store and its database are its own).
async fn tamper(stack: &LocalStack, round: &RoundId, change: impl Fn(&mut [u8])) {
    let pool = cryptflow_services::db::connect(&stack.aggregator_database_url().unwrap(), 1)
        .await
        .unwrap();
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

    // One coordinate's last bit: a small offset within the clip bound. A reader catches it;
    // a client that does not verify cannot (the residual risk the docs state).
    let round = published(&stack, "one-bit").await;
    let genuine = reader(&stack, Verify::Off).fetch_mean(&round, None).await.unwrap();
    tamper(&stack, &round, |p| p[p.len() / 3] ^= 1).await;
    let e = reader(&stack, Verify::Auto).fetch_mean(&round, None).await.unwrap_err();
    assert!(matches!(e, ClientError::Verification(_)), "{e}");
    assert!(e.to_string().contains("is not the sum of the 3 uploads the members signed"), "{e}");
    let shifted = reader(&stack, Verify::Off).fetch_mean(&round, None).await.unwrap();
    let moved = genuine
        .mean
        .iter()
        .zip(shifted.mean.iter())
        .filter(|(a, b)| (a - b).abs() > genuine.max_abs_error)
        .count();
    assert_eq!(moved, 1, "the attack shifts one value, undetected without verification");

    // Scrambled words: each decrypts to a random value in the plan's range, which exceeds ±B
    // only by the no-wrap margin (here ±1.4 for B = 1: each such value is beyond ±B with
    // probability ≈ 0.3), so ~78 words are scrambled: every client refuses the mean, verifying
    // or not, but for a chance of ~1e-12. (Depending on the round's random masks, the
    // decryptor's self-check or the clip bound catches it first: both are evidence.)
    let round = published(&stack, "scrambled").await;
    tamper(&stack, &round, |p| {
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
    let e = reader(&stack, Verify::Always).fetch_mean(&round, None).await.unwrap_err();
    assert!(matches!(e, ClientError::Verification(_)), "{e}");
    assert!(e.to_string().contains("site-2's upload cannot be fetched"), "{e}");

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
