//! Rows that only matter for a while, deleted once they stop mattering, so the tables that
//! every keyed POST and every logout write to do not grow without bound.

use std::time::Duration;

use super::Database;

/// What one purge removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub idempotency_keys: u64,
    pub revoked_tokens: u64,
}

/// Deletes idempotency keys older than `key_ttl` (a retry after that writes again, as
/// documented) and revocations of tokens that have expired anyway.
pub async fn purge(db: &Database, key_ttl: Duration) -> Result<Purged, sqlx::Error> {
    let keys = sqlx::query(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
    )
    .bind(key_ttl.as_secs_f64())
    .execute(&db.pool);
    let idempotency_keys = db.timed("idempotency_purge", keys).await?.rows_affected();
    let revoked_tokens = super::revocations::purge(db).await?;
    Ok(Purged {
        idempotency_keys,
        revoked_tokens,
    })
}
