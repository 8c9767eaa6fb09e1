//! The SQL of master-key rotation: every sealed share, and replacing one.

use super::Result;
use crate::seal::Sealed;
use sqlx::Row;

/// Every sealed share with its owner and wrapping key, for master-key rotation.
pub async fn all_sealed(
    conn: &mut sqlx::AnyConnection,
) -> Result<Vec<(String, String, Sealed, String)>> {
    let rows = sqlx::query(
        "SELECT round_id, client_id, sealed_share, nonce, master_key_id FROM deposits WHERE sealed_share IS NOT NULL",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("round_id")?,
                r.try_get("client_id")?,
                Sealed { ciphertext: r.try_get("sealed_share")?, nonce: r.try_get("nonce")? },
                r.try_get("master_key_id")?,
            ))
        })
        .collect()
}

/// Replaces one sealed share (rotation).
pub async fn reseal(
    conn: &mut sqlx::AnyConnection,
    round: &str,
    client: &str,
    sealed: Sealed,
    master_key_id: &str,
) -> Result<()> {
    sqlx::query("UPDATE deposits SET sealed_share = $1, nonce = $2, master_key_id = $3 WHERE round_id = $4 AND client_id = $5")
        .bind(sealed.ciphertext)
        .bind(sealed.nonce)
        .bind(master_key_id)
        .bind(round)
        .bind(client)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
