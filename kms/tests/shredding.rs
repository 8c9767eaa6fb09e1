//! Shredding is erasure (issue #24, finding 4): an attacker holding a node's master key and a
//! copy of its database taken before a round was shredded — the SQLite file with its WAL —
//! recovers none of the round's shares once the round's key has left the round-key store; with
//! a copy of the key store taken before shredding it does (the documented limit). The same
//! holds for a sealed deposit a relay or TLS terminator archived: its key died with the round.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptflow_client::{ModelUpdate, SubmitOptions};
use cryptflow_devstack::LocalStack;
use cryptflow_he::sharing::KeyShare;
use cryptflow_he::Wire;
use cryptflow_kms::keystore::{KeyStoreError, RoundKeys, ROUND_KEY_ID_PREFIX};
use cryptflow_kms::seal::Sealed;
use cryptflow_kms::{KmsConfig, MasterKey};
use cryptflow_services::api::kms::{Deposit, RegisteredRound};
use cryptflow_services::api::{Base64Bytes, SignatureHex};
use cryptflow_services::protocol::Committee;
use cryptflow_services::sealed::{seal, SealContext};
use cryptflow_services::{ClientId, Role, RoundId, Sha256Digest};
use sqlx::Row;
use std::path::{Path, PathBuf};

/// The SQLite file of a `sqlite://…` URL.
fn sqlite_file(url: &str) -> PathBuf {
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    PathBuf::from(rest.split('?').next().unwrap())
}

/// Copies the database file with its `-wal` and `-shm` files, as a backup or a stolen disk
/// image would hold them.
fn copy_database(db: &Path, to: &Path) -> PathBuf {
    let target = to.join("copy.db");
    std::fs::copy(db, &target).unwrap();
    for suffix in ["-wal", "-shm"] {
        let mut from = db.as_os_str().to_owned();
        from.push(suffix);
        let mut into = target.as_os_str().to_owned();
        into.push(suffix);
        if Path::new(&from).exists() {
            std::fs::copy(&from, &into).unwrap();
        }
    }
    target
}

/// Every sealed share of `round` in a database copy: (client, sealed, wrapping key id).
async fn sealed_rows(copy: &Path, round: &str) -> Vec<(String, Sealed, String)> {
    let url = format!("sqlite://{}", copy.display());
    let pool = cryptflow_services::db::connect(&url, 1).await.unwrap();
    let rows = sqlx::query(
        "SELECT client_id, sealed_share, nonce, master_key_id FROM deposits WHERE round_id = $1 AND sealed_share IS NOT NULL",
    )
    .bind(round)
    .fetch_all(&pool)
    .await
    .unwrap();
    rows.iter()
        .map(|r| {
            (
                r.get::<String, _>("client_id"),
                Sealed { ciphertext: r.get("sealed_share"), nonce: r.get("nonce") },
                r.get::<String, _>("master_key_id"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shredded_round_stays_shut_to_the_master_key_and_a_pre_shred_database() {
    let stack = LocalStack::builder().sites(3).start().await.unwrap();
    let config: KmsConfig =
        cryptflow_services::config::load(stack.node_config(1), "CRYPTFLOW_KMS__TEST_UNUSED__")
            .unwrap();
    let master = MasterKey::from_file(&config.master_key_file).unwrap();
    let keys_path = cryptflow_kms::round_keys_path(&config).unwrap();
    let db = sqlite_file(&config.database_url);

    let round = RoundId::parse("shred-1").unwrap();
    stack.admin().create_round(&stack.round_request("shred-1", 300, 2, 3)).await.unwrap();
    for i in 0..2 {
        let u = ModelUpdate::from(ndarray::Array1::from(vec![0.25 * i as f64; 300]));
        stack
            .client(&format!("site-{i}"))
            .submit(&round, u, SubmitOptions::default())
            .await
            .unwrap();
    }

    // The attacker's copies, taken before shredding.
    let before = tempfile::tempdir().unwrap();
    let db_copy = copy_database(&db, before.path());
    let keys_copy = before.path().join("round-keys.before");
    std::fs::copy(&keys_path, &keys_copy).unwrap();
    let rows = sealed_rows(&db_copy, "shred-1").await;
    assert_eq!(rows.len(), 2, "both deposits are in the copy");
    // …and a deposit a relay or a TLS terminator archived on its way to node 1: sealed to the
    // node's deposit key for the round, from its signed echo.
    let http = reqwest::Client::new();
    let admin = stack.token("ops", Role::Admin, "kms");
    let reg: RegisteredRound = http
        .get(format!("{}/v1/rounds/shred-1", stack.node_url(1).unwrap()))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let committee =
        Committee::from_toml(&std::fs::read_to_string(stack.committee_file()).unwrap()).unwrap();
    let site = ClientId::parse("site-2").unwrap();
    let archived_deposit = Deposit {
        upload_sha256: Sha256Digest([1; 32]),
        upload_root: Sha256Digest([2; 32]),
        share: Base64Bytes(vec![3; 16400]),
        signature: SignatureHex([4; 64]),
    };
    let ctx = SealContext {
        round: &round,
        spec_hash: &reg.echo.spec_hash,
        committee: &committee.digest(),
        x: 1,
        node_key: &reg.echo.deposit_key.0,
    };
    let archived = seal(&ctx, &site, &archived_deposit).unwrap();

    // The operator shreds the round.
    let resp = http
        .delete(format!("{}/v1/rounds/shred-1", stack.node_url(1).unwrap()))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());

    // With the master key, the pre-shred database and the key store as it is now: nothing.
    let now = RoundKeys::open(&keys_path).unwrap();
    assert!(matches!(now.key("shred-1", &master), Err(KeyStoreError::Missing { .. })));
    for (client, sealed, wrapped_by) in &rows {
        assert!(wrapped_by.starts_with(ROUND_KEY_ID_PREFIX), "{client}: sealed under {wrapped_by}");
        assert!(
            master.open("shred-1", client, sealed).is_err(),
            "{client}'s share opens under the master key alone"
        );
    }
    // The archived deposit's key was derived from the round key, which is gone (the store
    // answers Missing, above); replayed to the node, it is refused.
    let resp = http
        .put(format!("{}/v1/rounds/shred-1/deposits/site-2", stack.node_url(1).unwrap()))
        .bearer_auth(stack.site_key("site-2").unwrap().roster_token(
            &site,
            Role::Client,
            &cryptflow_services::protocol::node_audience(committee.node(1).unwrap()),
        ))
        .json(&archived)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::GONE);
    // A key the database has no live round for (a deposit that raced the shred, a round
    // registered after a restored backup) is swept on the node's next tick.
    now.key_for("ghost-round", &master).unwrap();
    let mut swept = false;
    for _ in 0..100 {
        if !RoundKeys::open(&keys_path).unwrap().contains("ghost-round").unwrap() {
            swept = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(swept, "the orphaned round key is still in the store");
    // With a copy of the key store from before shredding: the shares (what docs/security.md
    // says remains).
    let old = RoundKeys::open(&keys_copy).unwrap();
    let key = old.key("shred-1", &master).unwrap();
    for (client, sealed, _) in &rows {
        let bytes = key.open("shred-1", client, sealed).unwrap();
        KeyShare::from_bytes(&bytes).unwrap();
    }
    // …and the archived deposit (the same limit).
    assert_eq!(key.deposit_keys("shred-1").open(&ctx, &site, &archived).unwrap(), archived_deposit);
    stack.stop().await;
}
