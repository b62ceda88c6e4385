//! The token denylist, durable: the table every replica's in-memory copy follows.

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::Database;

/// Revocations are kept this long past their token's expiry, beyond the leeway with
/// which an expired token is still accepted (see `crate::auth::jwt`).
const EXPIRY_MARGIN: &str = "interval '1 minute'";

#[derive(Debug, FromRow)]
pub struct RevokedToken {
    pub jti: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// Revoking twice is harmless. Returns once the revocation is committed.
pub async fn insert(
    db: &Database,
    jti: Uuid,
    user_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let query = sqlx::query(
        "INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT (jti) DO NOTHING",
    )
    .bind(jti)
    .bind(user_id)
    .bind(expires_at)
    .execute(&db.pool);
    db.timed("revocation_insert", query).await.map(|_| ())
}

pub async fn is_revoked(db: &Database, jti: Uuid) -> Result<bool, sqlx::Error> {
    let query = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $1)",
    )
    .bind(jti)
    .fetch_one(&db.pool);
    db.timed("revocation_check", query).await
}

/// What a poll of the denylist found.
#[derive(Debug)]
pub struct Changes {
    /// Pass it to the next poll: every transaction older than it had finished when this
    /// poll read, so the next poll misses nothing committed since.
    pub horizon: i64,
    pub revoked: Vec<RevokedToken>,
}

/// Unexpired revocations written by transactions from `horizon` on (all of them without
/// one). Horizon and rows come from one statement, hence one snapshot; rows of transactions
/// still running then are read again next time, so a slow commit is never skipped.
pub async fn since(db: &Database, horizon: Option<i64>) -> Result<Changes, sqlx::Error> {
    let sql = format!(
        "WITH h AS (SELECT txid_snapshot_xmin(txid_current_snapshot()) AS horizon)
         SELECT h.horizon, r.jti, r.expires_at FROM h
         LEFT JOIN revoked_tokens r
           ON r.txid >= $1 AND r.expires_at > now() - {EXPIRY_MARGIN}"
    );
    let query = sqlx::query_as::<_, (i64, Option<Uuid>, Option<DateTime<Utc>>)>(&sql)
        .bind(horizon.unwrap_or(i64::MIN))
        .fetch_all(&db.feed_pool);
    let rows = db.timed("revocation_feed", query).await?;
    let horizon = rows
        .first()
        .map(|row| row.0)
        .ok_or(sqlx::Error::RowNotFound)?;
    let revoked = rows
        .into_iter()
        .filter_map(|(_, jti, expires_at)| {
            Some(RevokedToken {
                jti: jti?,
                expires_at: expires_at?,
            })
        })
        .collect();
    Ok(Changes { horizon, revoked })
}

/// Deletes revocations of tokens that no replica accepts any more.
pub async fn purge(db: &Database) -> Result<u64, sqlx::Error> {
    let sql = format!("DELETE FROM revoked_tokens WHERE expires_at < now() - {EXPIRY_MARGIN}");
    let query = sqlx::query(&sql).execute(&db.pool);
    Ok(db.timed("revocation_purge", query).await?.rows_affected())
}
