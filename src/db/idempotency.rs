//! Idempotency keys: the first response to a keyed POST, kept to be replayed.

use std::time::Duration;

use sqlx::{FromRow, PgConnection};

use super::Database;

#[derive(Debug, FromRow)]
pub struct StoredResponse {
    pub fingerprint: Vec<u8>,
    pub status: i16,
    pub body: sqlx::types::Json<serde_json::Value>,
    pub etag: Option<String>,
}

/// Takes the key inside the caller's transaction. Returns false when the key exists and is
/// younger than `ttl`; a key older than that is taken over, as if it had been purged
/// (the purge only runs every few minutes, and must not decide what replays).
///
/// When another transaction holds the same key uncommitted, PostgreSQL makes this insert
/// wait on the primary key until that transaction ends: then it conflicts (the other one
/// committed; replay it) or succeeds (it rolled back; run ours).
pub async fn claim(
    db: &Database,
    conn: &mut PgConnection,
    scope: &str,
    key: &str,
    fingerprint: &[u8],
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let query = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, fingerprint, status, body)
         VALUES ($1, $2, $3, 0, 'null')
         ON CONFLICT (scope, key) DO UPDATE
           SET fingerprint = EXCLUDED.fingerprint, status = 0, body = 'null', etag = NULL,
               created_at = now()
           WHERE idempotency_keys.created_at < now() - make_interval(secs => $4)",
    )
    .bind(scope)
    .bind(key)
    .bind(fingerprint)
    .bind(ttl.as_secs_f64())
    .execute(conn);
    Ok(db.timed("idempotency_claim", query).await?.rows_affected() == 1)
}

pub async fn find(
    db: &Database,
    conn: &mut PgConnection,
    scope: &str,
    key: &str,
) -> Result<StoredResponse, sqlx::Error> {
    let query = sqlx::query_as::<_, StoredResponse>(
        "SELECT fingerprint, status, body, etag FROM idempotency_keys
         WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_one(conn);
    db.timed("idempotency_find", query).await
}

pub async fn complete(
    db: &Database,
    conn: &mut PgConnection,
    scope: &str,
    key: &str,
    response: (i16, &serde_json::Value, Option<&str>),
) -> Result<(), sqlx::Error> {
    let (status, body, etag) = response;
    let query = sqlx::query(
        "UPDATE idempotency_keys SET status = $3, body = $4, etag = $5
         WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .bind(status)
    .bind(sqlx::types::Json(body))
    .bind(etag)
    .execute(conn);
    db.timed("idempotency_complete", query).await.map(|_| ())
}
