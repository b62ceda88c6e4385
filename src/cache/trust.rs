//! When to believe Redis after a write to it failed.
//!
//! Only a lost write can make an entry wrong: the invalidation after an item changed. A
//! failed read or fill costs a miss and nothing else, so it changes nothing here. When an
//! invalidation fails, the generation counters it should have incremented are remembered
//! as *pending*: this replica serves the entries that follow them from PostgreSQL (counted
//! in `cache_bypassed_total`), and a background task increments them again every
//! [`REPAIR_INTERVAL`], with its own timeout, until Redis takes it. Every other entry keeps
//! being served: a Redis hiccup costs at most the entries it could have made stale, never
//! the whole cache.
//!
//! The whole cache is dropped (the cluster-wide epoch bumped, see [`super::stamped`]) in three
//! cases only: when a replica starts, since it cannot know what a predecessor that died
//! during an outage failed to invalidate; when more than [`MAX_PENDING`] generations
//! are pending, which bounds this replica's memory; and when the sentinels name a new
//! master ([`Trust::master_changed`]).
//!
//! Revoked tokens are not Redis's business: the denylist lives in PostgreSQL and in each
//! replica's memory (`crate::auth::revocation`), so no Redis loss can resurrect a token.
//!
//! What this cannot cover: Redis unreachable from one replica only (a network partition)
//! while others still read it. Their reads of entries that this replica failed to
//! invalidate are stale until this replica's repair, or the entry's TTL, whichever comes
//! first; docs/api.md spells it out.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Cache, CacheError};

/// How often pending repairs are retried.
pub const REPAIR_INTERVAL: Duration = Duration::from_millis(500);
/// The longest one repair may take: longer than a request's Redis call, since it carries
/// many increments, and it runs in the background.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(1);
/// Generations repaired in one round trip.
const REPAIR_BATCH: usize = 1_000;
/// Beyond this many pending generations, bumping the epoch is cheaper than remembering.
pub const MAX_PENDING: usize = 10_000;

/// What this replica must repair before trusting some or all of Redis's entries.
pub struct Trust {
    pending: Mutex<HashSet<String>>,
    /// Epoch bumps asked for, and the count the last successful bump covered: every entry
    /// is suspect while the first is ahead. Counts, not a flag, so that a bump asked for
    /// while one is in flight is not lost.
    epoch_wanted: AtomicU64,
    epoch_done: AtomicU64,
}

impl Default for Trust {
    fn default() -> Self {
        Self {
            pending: Mutex::new(HashSet::new()),
            // A replica starts by bumping the epoch.
            epoch_wanted: AtomicU64::new(1),
            epoch_done: AtomicU64::new(0),
        }
    }
}

impl Trust {
    fn epoch_stale(&self) -> bool {
        self.epoch_wanted.load(Ordering::Acquire) > self.epoch_done.load(Ordering::Acquire)
    }

    fn want_epoch_bump(&self) {
        self.epoch_wanted.fetch_add(1, Ordering::AcqRel);
    }

    /// The link now talks to another master than before (a Sentinel failover). Redis
    /// replicates asynchronously, so increments the old master acknowledged may be missing
    /// on the new one, and entries they made stale may look fresh there: every entry is
    /// suspect until the epoch is bumped on the new master.
    pub fn master_changed(&self) {
        self.want_epoch_bump();
    }

    /// Whether an entry that follows `generation` may be read now.
    pub fn usable(&self, generation: &str) -> bool {
        !self.epoch_stale()
            && self
                .pending
                .lock()
                .map(|p| !p.contains(generation))
                .unwrap_or(false)
    }

    /// Nothing to repair: every entry may be read.
    pub fn is_clean(&self) -> bool {
        !self.epoch_stale() && self.pending.lock().map(|p| p.is_empty()).unwrap_or(false)
    }

    /// Remembers generations whose increment failed (it may have been applied or not).
    pub fn record_failed(&self, generations: &[String]) {
        let Ok(mut pending) = self.pending.lock() else {
            self.want_epoch_bump();
            return;
        };
        pending.extend(generations.iter().cloned());
        if pending.len() > MAX_PENDING {
            pending.clear();
            self.want_epoch_bump();
        }
    }

    fn batch(&self) -> Vec<String> {
        self.pending
            .lock()
            .map(|p| p.iter().take(REPAIR_BATCH).cloned().collect())
            .unwrap_or_default()
    }

    fn repaired(&self, generations: &[String]) {
        if let Ok(mut pending) = self.pending.lock() {
            for generation in generations {
                pending.remove(generation);
            }
        }
    }
}

/// Repairs what is pending every [`REPAIR_INTERVAL`] until `shutdown`, whether or not
/// requests arrive: a replica about to be drained repairs all the same.
pub async fn repair_periodically(cache: Cache, shutdown: CancellationToken) {
    let mut ticker = crate::lifecycle::ticker(REPAIR_INTERVAL);
    while crate::lifecycle::next_tick(&mut ticker, &shutdown).await {
        if let Err(e) = repair(&cache).await {
            tracing::debug!(error = %e, "redis repair failed; retrying");
        }
    }
}

/// One repair step: the epoch if it is stale, else a batch of pending generations.
async fn repair(cache: &Cache) -> Result<(), CacheError> {
    let trust = &cache.trust;
    if trust.epoch_stale() {
        let wanted = trust.epoch_wanted.load(Ordering::Acquire);
        super::stamped::bump_epoch(cache, REPAIR_TIMEOUT).await?;
        trust.epoch_done.fetch_max(wanted, Ordering::AcqRel);
        tracing::info!("redis cache epoch bumped: every older entry is stale");
        return Ok(());
    }
    let batch = trust.batch();
    if batch.is_empty() {
        return Ok(());
    }
    cache
        .exec(REPAIR_TIMEOUT, |mut conn| {
            let batch = &batch;
            async move { super::stamped::increment(&mut conn, batch, &[]).await }
        })
        .await?;
    trust.repaired(&batch);
    tracing::info!(
        generations = batch.len(),
        "redis repaired: failed invalidations applied"
    );
    Ok(())
}
