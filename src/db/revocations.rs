//! The durable half of the token denylist.

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::Database;

#[derive(Debug, FromRow)]
pub struct RevokedToken {
    pub jti: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// Revoking twice is harmless.
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

/// Tokens revoked and not yet expired: what Redis must hold after a repair.
pub async fn unexpired(db: &Database) -> Result<Vec<RevokedToken>, sqlx::Error> {
    let query = sqlx::query_as::<_, RevokedToken>(
        "SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > now()",
    )
    .fetch_all(&db.pool);
    db.timed("revocation_unexpired", query).await
}
