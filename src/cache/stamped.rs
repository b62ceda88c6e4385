//! Cache-aside entries that a single `INCR` makes stale, on every replica at once.
//!
//! Each entry is stored as `epoch:generation:payload`, stamped with the cluster-wide cache
//! epoch and the entry's generation counter as they were read *before* the PostgreSQL
//! read that produced the payload. A lookup reads epoch, generation and entry in one round
//! trip and accepts the entry only if both stamps still match. A write commits to
//! PostgreSQL, then increments the generations it affects before it answers. So:
//!
//! - a reader that filled from PostgreSQL before the commit stamped its entry with the old
//!   generation, which no longer matches: the classic cache-aside race (read old, write,
//!   invalidate, store old) cannot leave a stale entry behind;
//! - an item entry follows its own generation, so writing one item leaves the user's
//!   other cached items alone (a user who writes often still gets cache hits);
//! - list and search pages follow the user's generation, which every write of the user
//!   increments: one increment stales all of them together;
//! - a missing epoch or generation (first use, eviction under `maxmemory`, expiry) is
//!   re-created with a random value, so a re-created counter never matches an old stamp.

use std::sync::OnceLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisResult};
use uuid::Uuid;

use super::{Cache, CacheError};

/// Reads epoch, generation and entry, creating missing counters, in one atomic round trip.
const LOOKUP_SCRIPT: &str = r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
local generation = redis.call('GET', KEYS[2])
if not generation then
  generation = ARGV[2]
  redis.call('SET', KEYS[2], generation, 'PX', ARGV[3])
end
return {epoch, generation, redis.call('GET', KEYS[3])}
";

/// The script's SHA1 as Redis reported it on the first `SCRIPT LOAD`. Lookups run the script
/// by this digest (`EVALSHA`) instead of sending its text on every read. The digest of a
/// given text never changes, so it is loaded once per process; a Redis that lost its
/// script cache (a restart, `SCRIPT FLUSH`) answers `NOSCRIPT`, and the lookup loads the
/// script again and retries, within the same timeout.
static LOOKUP_SHA: OnceLock<String> = OnceLock::new();

async fn load_lookup_script<C: ConnectionLike>(conn: &mut C) -> RedisResult<&'static str> {
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(LOOKUP_SCRIPT)
        .query_async(conn)
        .await?;
    Ok(LOOKUP_SHA.get_or_init(|| sha))
}

type Found = (String, String, Option<String>);

/// Runs the lookup script by digest, loading it first when Redis does not have it.
async fn run_lookup<C: ConnectionLike>(conn: &mut C, keys: &[String; 3]) -> RedisResult<Found> {
    let evalsha = |sha: &str| {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(sha)
            .arg(3)
            .arg(keys)
            .arg(random_counter())
            .arg(random_counter())
            .arg(GENERATION_TTL.as_millis() as u64);
        cmd
    };
    let sha = match LOOKUP_SHA.get() {
        Some(sha) => sha,
        None => load_lookup_script(conn).await?,
    };
    match evalsha(sha).query_async(conn).await {
        Err(e) if e.kind() == ErrorKind::NoScriptError => {
            let sha = load_lookup_script(conn).await?;
            evalsha(sha).query_async(conn).await
        }
        found => found,
    }
}

/// The counters an entry was read under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    epoch: String,
    generation: String,
}

impl Stamp {
    fn prefix(&self) -> String {
        format!("{}:{}:", self.epoch, self.generation)
    }
}

pub enum Lookup {
    /// A fresh entry's payload.
    Hit(String),
    /// No fresh entry: read PostgreSQL, then [`fill`] with this stamp.
    Miss(Stamp),
    /// Redis failed or is distrusted: read PostgreSQL and do not fill.
    Unavailable,
}

pub fn epoch_key(cache: &Cache) -> String {
    cache.key(format_args!("epoch"))
}

/// Makes every entry stale, on every replica at once: one `INCR` of the cluster epoch,
/// within `timeout`. What a replica does when it starts, and what an operator runs
/// (`cartae-database-api cache-bump`) after restoring the database to an earlier time,
/// when every cached entry may be newer than the data.
pub async fn bump_epoch(cache: &Cache, timeout: Duration) -> Result<(), CacheError> {
    let epoch = epoch_key(cache);
    cache
        .exec(timeout, |mut conn| async move {
            redis::cmd("INCR")
                .arg(epoch)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
}

/// The generation of every list and search page of `user`.
pub fn user_generation_key(cache: &Cache, user: Uuid) -> String {
    cache.key(format_args!("gen:{user}"))
}

/// The generation of one item's entry.
pub fn item_generation_key(cache: &Cache, user: Uuid, item: Uuid) -> String {
    cache.key(format_args!("gen:{user}:{item}"))
}

/// Generation counters must outlive every entry stamped with them; a day does.
const GENERATION_TTL: Duration = Duration::from_secs(24 * 3600);

fn random_counter() -> String {
    // Far from any value an INCR chain starting at 1 would reach.
    let bits = Uuid::new_v4().as_u64_pair().0 >> 2;
    (bits | (1 << 60)).to_string()
}

/// Looks up `key`, an entry that follows the counter `generation`. Counts hits and misses.
pub async fn get(cache: &Cache, generation: &str, key: &str) -> Lookup {
    if !cache.trust.usable(generation) {
        cache.metrics().cache_bypasses.inc();
        return Lookup::Unavailable;
    }
    let keys = [epoch_key(cache), generation.to_owned(), key.to_owned()];
    let found = cache
        .run(|mut conn| async move { run_lookup(&mut conn, &keys).await })
        .await;
    let Ok((epoch, generation, entry)) = found else {
        return Lookup::Unavailable;
    };
    let stamp = Stamp { epoch, generation };
    match entry.and_then(|e| e.strip_prefix(&stamp.prefix()).map(str::to_owned)) {
        Some(payload) => {
            cache.metrics().cache_hits.inc();
            Lookup::Hit(payload)
        }
        None => {
            cache.metrics().cache_misses.inc();
            Lookup::Miss(stamp)
        }
    }
}

/// Stores `payload` under `key`, stamped with what [`get`] saw before the database read.
/// A failure only costs a future miss.
pub async fn fill(cache: &Cache, key: &str, stamp: &Stamp, payload: &str, ttl: Duration) {
    let value = format!("{}{payload}", stamp.prefix());
    let key = key.to_owned();
    let _ = cache
        .run(|mut conn| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .query_async::<()>(&mut conn)
                .await
        })
        .await;
}

/// Makes every entry that follows one of `generations` stale, and drops `keys` outright
/// (to free memory early). Called after a write commits and before it is answered.
pub async fn invalidate(cache: &Cache, generations: &[String], keys: &[String]) {
    let mut pipe = increments(generations);
    if !keys.is_empty() {
        pipe.cmd("DEL").arg(keys).ignore();
    }
    let result = cache
        .run(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
        .await;
    if let Err(e) = result {
        // Until the repair applies them, this replica reads none of these entries.
        cache.trust.record_failed(generations);
        tracing::warn!(error = %e, "cache invalidation failed; repaired when redis answers");
    }
}

/// Increments each generation (and renews its lifetime): what makes its entries stale.
pub fn increments(generations: &[String]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for generation in generations {
        pipe.cmd("INCR").arg(generation).ignore();
        pipe.cmd("PEXPIRE")
            .arg(generation)
            .arg(GENERATION_TTL.as_millis() as u64)
            .ignore();
    }
    pipe
}
