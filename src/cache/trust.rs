//! When to believe Redis again after it failed.
//!
//! A failed Redis call may have been a write: the invalidation after an item changed. If
//! Redis comes back with its data (it was only unreachable, or it persists to disk),
//! reading it at once could serve an item that a lost invalidation left stale. So after
//! any failure this replica reads nothing from Redis until a repair succeeds: the
//! cluster-wide cache epoch is bumped, which makes every cached entry stale at once (see
//! [`super::stamped`]).
//!
//! Until then reads go to PostgreSQL, and `cache_bypassed_total` counts them. Failed
//! health-check pings mark Redis suspect too, so a replica that served nothing during an
//! outage still repairs before trusting the cache. A repair is tried at most every
//! [`REPAIR_INTERVAL`], so a dead or hanging Redis costs one timeout per interval, not one
//! per request.
//!
//! Revoked tokens are not Redis's business: the denylist lives in PostgreSQL and in each
//! replica's memory (`crate::auth::revocation`), so no Redis loss can resurrect a token.
//!
//! What this cannot cover: Redis unreachable from one replica only (a network partition)
//! while others still read it. Their reads of entries that this replica failed to
//! invalidate are stale until this replica's repair, or the entry's TTL, whichever comes
//! first; docs/api.md spells it out.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Cache, CacheError};

pub const REPAIR_INTERVAL: Duration = Duration::from_millis(500);

/// True when Redis may be read now; otherwise the caller serves from PostgreSQL.
pub async fn ensure_trusted(cache: &Cache) -> bool {
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
    match repair(cache).await {
        Ok(()) => {
            cache.repaired.fetch_max(covered, Ordering::AcqRel);
            tracing::info!("redis repaired: cache epoch bumped");
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

/// Makes every entry that a lost invalidation could have left stale unusable.
async fn repair(cache: &Cache) -> Result<(), CacheError> {
    let epoch = super::stamped::epoch_key(cache);
    cache
        .run(|mut conn| async move {
            redis::cmd("INCR")
                .arg(epoch)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
}
