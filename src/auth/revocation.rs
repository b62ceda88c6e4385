//! The token denylist: logout puts the token's `jti` in PostgreSQL (durable) and in Redis
//! (fast), until the token would have expired anyway.
//!
//! What a check does when Redis is down, and why: it **falls back to PostgreSQL**, so a
//! revoked token stays revoked through a Redis outage (failing open would let a logged-out
//! token work again exactly when something is already wrong), and a valid token keeps
//! working (failing closed would log every user out for a cache outage). The cost is one
//! indexed PostgreSQL lookup per authenticated request while Redis is down or distrusted;
//! `cache_errors_total` and `cache_bypassed_total` count it. When Redis comes back, the
//! revocations it missed are copied back before it is trusted again
//! ([`crate::cache::trust`]).

use uuid::Uuid;

use crate::auth::jwt::Claims;
use crate::cache::{trust, Cache};
use crate::db::{revocations, Database};

/// Revokes the token for the rest of its lifetime. PostgreSQL must accept it (else the
/// logout fails and can be retried); Redis is best effort.
pub async fn revoke(cache: &Cache, db: &Database, claims: &Claims) -> Result<(), sqlx::Error> {
    let expires_at = claims.expires_at();
    revocations::insert(db, claims.jti, claims.sub, expires_at).await?;
    let ttl_ms = (expires_at - chrono::Utc::now()).num_milliseconds();
    if ttl_ms > 0 {
        let key = trust::revocation_key(cache, claims.jti);
        // A failure marks Redis suspect: the repair copies this revocation back.
        let _ = cache
            .run(|mut conn| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(1)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await;
    }
    Ok(())
}

pub async fn is_revoked(cache: &Cache, db: &Database, jti: Uuid) -> Result<bool, sqlx::Error> {
    if trust::ensure_trusted(cache, db).await {
        let key = trust::revocation_key(cache, jti);
        let found = cache
            .run(|mut conn| async move {
                redis::cmd("EXISTS")
                    .arg(key)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await;
        if let Ok(count) = found {
            return Ok(count > 0);
        }
    }
    revocations::is_revoked(db, jti).await
}
