//! Fold-job leases (issue #15) on SQLite and — with `CRYPTFLOW_TEST_DATABASE_URL` set, as in
//! CI — PostgreSQL, through two connection pools standing for two replicas: concurrent
//! leases take different jobs, an expired lease is taken over and the first holder can then
//! neither renew nor complete, the publication job waits for every fold job.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptflow_aggregator::store::{JobKind, JobRow, Store};
use cryptflow_services::api::round::Contribution;
use cryptflow_services::db::{self, Backend};
use cryptflow_services::{ClientId, RoundId, Sha256Digest};
use std::collections::BTreeSet;

async fn databases() -> Vec<(String, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}?mode=rwc", dir.path().join("agg.db").display());
    let mut out = vec![(sqlite, Some(dir))];
    if let Some(url) = db::fresh_postgres_database("leases").await.unwrap() {
        out.push((url, None));
    }
    out
}

fn jobs(round: &RoundId, folds: u64) -> Vec<JobRow> {
    (0..=folds)
        .map(|job| JobRow {
            round_id: round.clone(),
            job,
            kind: if job == 0 { JobKind::Publish } else { JobKind::Fold },
            first_member: 0,
            members: 1,
            span: job.saturating_sub(1),
            done: false,
            output_sha256: None,
            attempts: 0,
        })
        .collect()
}

/// A round in state `aggregating` with its set fixed and `folds` fold jobs planned.
/// A closed round (state `aggregating`) with only what the job queries read.
async fn aggregating_round(pool: &sqlx::AnyPool, id: &str) -> RoundId {
    sqlx::query(
        "INSERT INTO rounds (round_id, request_json, spec_json, echoes_json, state, deadline, created_at, closed_at) \
         VALUES ($1, '{}', '{}', '[]', 'aggregating', 0, 0, 0)",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
    RoundId::parse(id).unwrap()
}

async fn round_with_jobs(pool: &sqlx::AnyPool, store: &Store, id: &str, folds: u64) -> RoundId {
    let round = aggregating_round(pool, id).await;
    assert!(store.fix_set(&round, &[], &jobs(&round, folds)).await.unwrap());
    // Fixed once: a second replica's plan changes nothing.
    assert!(!store.fix_set(&round, &[], &jobs(&round, folds + 5)).await.unwrap());
    round
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_hand_each_job_to_one_replica_and_expired_ones_to_another() {
    for (url, _dir) in databases().await {
        let backend = Backend::of(&url).unwrap();
        let pool_a = db::connect(&url, 4).await.unwrap();
        db::migrate(&pool_a, &url, &cryptflow_aggregator::MIGRATIONS).await.unwrap();
        let pool_b = db::connect(&url, 4).await.unwrap();
        let (a, b) = (Store::new(pool_a.clone(), backend), Store::new(pool_b.clone(), backend));
        let round = round_with_jobs(&pool_a, &a, "leased", 8).await;
        let now = 1_000;

        // Sixteen lease calls at once from both "replicas": the eight fold jobs, once each;
        // the publication job is not runnable while fold jobs remain.
        let calls = (0..16).map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            async move { store.lease_job(&format!("replica-{}", i % 2), now, 30).await.unwrap() }
        });
        let leases: Vec<_> =
            futures_util::future::join_all(calls).await.into_iter().flatten().collect();
        let taken: BTreeSet<u64> = leases.iter().map(|l| l.job.job).collect();
        assert_eq!(leases.len(), 8, "{url}");
        assert_eq!(taken, (1..=8).collect::<BTreeSet<_>>(), "{url}");
        assert!(leases.iter().all(|l| l.job.kind == JobKind::Fold && l.job.attempts == 1));

        // Seven complete; the eighth's holder stalls past its lease.
        let digest = Sha256Digest::of(b"partial");
        for l in &leases[..7] {
            assert!(a.complete_job(l, &digest).await.unwrap());
        }
        let stalled = &leases[7];
        assert!(a.lease_job("replica-a", now + 10, 30).await.unwrap().is_none(), "{url}");
        let taken_over = b.lease_job("replica-b", now + 31, 30).await.unwrap().unwrap();
        assert_eq!((taken_over.job.job, taken_over.job.attempts), (stalled.job.job, 2));
        // The first holder lost it: it can neither renew nor complete.
        assert!(!a.set_lease_expiry(stalled, now + 100).await.unwrap());
        assert!(!a.complete_job(stalled, &digest).await.unwrap());
        assert!(b.set_lease_expiry(&taken_over, now + 100).await.unwrap());
        assert!(b.complete_job(&taken_over, &digest).await.unwrap());

        // Now the publication job, once.
        let publish = a.lease_job("replica-a", now + 40, 30).await.unwrap().unwrap();
        assert_eq!(publish.job.kind, JobKind::Publish);
        assert!(b.lease_job("replica-b", now + 40, 30).await.unwrap().is_none());
        // A failure gives it back after a pause.
        assert!(a.set_lease_expiry(&publish, now + 45).await.unwrap());
        assert!(b.lease_job("replica-b", now + 44, 30).await.unwrap().is_none());
        let again = b.lease_job("replica-b", now + 45, 30).await.unwrap().unwrap();
        assert_eq!((again.job.job, again.job.attempts), (0, 2));
        // A failed round has no runnable job: its pending ones are gone, the done ones kept.
        a.fail(&round, "test").await.unwrap();
        assert!(a.lease_job("replica-a", now + 1_000, 30).await.unwrap().is_none());
        let stored = a.jobs(&round).await.unwrap();
        assert_eq!(stored.len(), 8);
        assert!(stored.iter().all(|j| j.done && j.output_sha256 == Some(digest)));

        pool_a.close().await;
        pool_b.close().await;
        db::drop_test_database(&url).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_set_and_its_jobs_keep_their_order_across_insert_statements() {
    // fix_set writes the set's members and its jobs many rows per statement (500): the
    // ordinals and job numbers must run on across statements.
    for (url, _dir) in databases().await {
        let backend = Backend::of(&url).unwrap();
        let pool = db::connect(&url, 2).await.unwrap();
        db::migrate(&pool, &url, &cryptflow_aggregator::MIGRATIONS).await.unwrap();
        let store = Store::new(pool.clone(), backend);
        let round = aggregating_round(&pool, "large").await;
        let k = 1234;
        let set: Vec<Contribution> = (0..k)
            .map(|i| Contribution {
                client_id: ClientId::parse(format!("site-{i:05}")).unwrap(),
                upload_sha256: Sha256Digest::of(format!("{i}").as_bytes()),
            })
            .collect();
        for c in &set {
            sqlx::query(
                "INSERT INTO uploads (round_id, client_id, sha256, bytes, received_at) VALUES ('large', $1, $2, 1, 0)",
            )
            .bind(c.client_id.as_str())
            .bind(c.upload_sha256.to_string())
            .execute(&pool)
            .await
            .unwrap();
        }
        assert!(store.fix_set(&round, &set, &jobs(&round, 1300)).await.unwrap());
        assert_eq!(store.jobs(&round).await.unwrap().len(), 1301);
        for (first, count) in [(0u64, 10u64), (495, 10), (995, 20), (1224, 10)] {
            let got: Vec<ClientId> = store
                .set_uploads(&round, first, count)
                .await
                .unwrap()
                .into_iter()
                .map(|u| u.client_id)
                .collect();
            let want: Vec<ClientId> = set[first as usize..(first + count) as usize]
                .iter()
                .map(|c| c.client_id.clone())
                .collect();
            assert_eq!(got, want, "{url}: members {first}..");
        }
        pool.close().await;
        db::drop_test_database(&url).await.unwrap();
    }
}
