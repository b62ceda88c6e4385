//! When to believe Redis again after it failed.
//!
//! A failed Redis call may have been a write: the invalidation after an item changed, or
//! the denylist entry of a logout. If Redis comes back with its data (it was only
//! unreachable, or it persists to disk), reading it at once could serve an item that a
//! lost invalidation left stale, or accept a token that a lost revocation left out. So
//! after any failure this replica reads nothing from Redis until a repair succeeds:
//!
//! 1. every unexpired revoked token in PostgreSQL (the durable half of the denylist) is
//!    written back to Redis;
//! 2. the cluster-wide cache epoch is bumped, which makes every cached entry stale at once
//!    (see [`super::stamped`]).
//!
//! Until then reads go to PostgreSQL, and `cache_bypassed_total` counts them. Failed
//! health-check pings mark Redis suspect too, so a replica that served nothing during an
//! outage still repairs before trusting the cache. A repair is tried at most every
//! [`REPAIR_INTERVAL`], so a dead or hanging Redis costs one timeout per interval, not one
//! per request.
//!
//! What this cannot cover: Redis unreachable from one replica only (a network partition)
//! while others still read it. Their reads of entries that this replica failed to
//! invalidate are stale until this replica's repair, or the entry's TTL, whichever comes
//! first. The denylist check has no such gap for tokens revoked by a replica that saw no
//! failure; docs/api.md spells it out.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{Cache, CacheError};
use crate::db::{revocations, Database};

/// The Redis key of a revoked token's denylist entry. Defined here, below `auth`, because
/// the repair rewrites these entries too.
pub fn revocation_key(cache: &Cache, jti: Uuid) -> String {
    cache.key(format_args!("revoked:{jti}"))
}

pub const REPAIR_INTERVAL: Duration = Duration::from_millis(500);

/// True when Redis may be read now; otherwise the caller serves from PostgreSQL.
pub async fn ensure_trusted(cache: &Cache, db: &Database) -> bool {
    if !cache.is_suspect() {
        return true;
    }
    if !claim_repair_slot(cache) {
        cache.metrics().cache_bypasses.inc();
        return false;
    }
    // Everything failed up to now is covered if this repair succeeds; failures that
    // happen during it are not, and keep Redis suspect.
    let covered = cache.failures.load(Ordering::Acquire);
    match repair(cache, db).await {
        Ok(()) => {
            cache.repaired.fetch_max(covered, Ordering::AcqRel);
            tracing::info!("redis repaired: denylist re-synchronised, cache epoch bumped");
            !cache.is_suspect()
        }
        Err(e) => {
            tracing::debug!(error = %e, "redis repair failed; still serving from PostgreSQL");
            cache.metrics().cache_bypasses.inc();
            false
        }
    }
}

/// One repair per interval, whichever request comes first.
fn claim_repair_slot(cache: &Cache) -> bool {
    let Ok(mut last) = cache.last_repair.lock() else {
        return false;
    };
    if last.is_some_and(|at| at.elapsed() < REPAIR_INTERVAL) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

#[derive(Debug, thiserror::Error)]
enum RepairError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

async fn repair(cache: &Cache, db: &Database) -> Result<(), RepairError> {
    let revoked = revocations::unexpired(db).await?;
    let mut pipe = redis::pipe();
    for token in &revoked {
        let ttl_ms = (token.expires_at - chrono::Utc::now()).num_milliseconds();
        if ttl_ms > 0 {
            pipe.cmd("SET")
                .arg(revocation_key(cache, token.jti))
                .arg(1)
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
        }
    }
    pipe.cmd("INCR")
        .arg(super::stamped::epoch_key(cache))
        .ignore();
    cache
        .run(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
        .await?;
    Ok(())
}
