//! Cache-aside entries that a single increment makes stale, on every replica at once.
//!
//! Each entry is stored as `epoch:generation:payload`, stamped with the cluster-wide cache
//! epoch and the entry's generation counter as they were read *before* the PostgreSQL
//! read that produced the payload. A lookup reads epoch, generation and entry in one round
//! trip and accepts the entry only if both stamps still match. A write commits to
//! PostgreSQL, then increments the generations it affects before it answers, and even if
//! the deadline cut its request meanwhile (`http::api::items`). So:
//!
//! - a reader that filled from PostgreSQL before the commit stamped its entry with the old
//!   generation, which no longer matches: the classic cache-aside race (read old, write,
//!   invalidate, store old) cannot leave a stale entry behind;
//! - an item entry follows its own generation, so writing one item leaves the user's
//!   other cached items alone (a user who writes often still gets cache hits);
//! - list and search pages follow the user's generation, which every write of the user
//!   increments: one increment stales all of them together;
//! - a missing epoch or generation (first use, eviction under `maxmemory`, expiry) is
//!   re-created with a random value, by the lookup as by the invalidation, so a re-created
//!   counter never matches an old stamp.

use std::sync::OnceLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisResult};
use uuid::Uuid;

use super::{Cache, CacheError};

/// Reads epoch, generation and entry, creating missing counters, in one atomic round trip.
/// Redis scripts cannot draw random numbers, so the fresh values come as arguments.
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

/// Increments each counter (`KEYS[1..ARGV[2]]`) that exists and sets a missing one to a
/// fresh random value (`ARGV[3..]`), renewing its lifetime (`ARGV[1]` ms, 0 for none); then
/// deletes the remaining keys. A plain `INCR` would re-create an evicted counter at 1, a
/// value older entries may carry: under `allkeys-lru` a counter can go at any time.
const INVALIDATE_SCRIPT: &str = r"
local ttl = tonumber(ARGV[1])
local counters = tonumber(ARGV[2])
for i = 1, counters do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('INCR', KEYS[i])
    if ttl > 0 then
      redis.call('PEXPIRE', KEYS[i], ttl)
    end
  elseif ttl > 0 then
    redis.call('SET', KEYS[i], ARGV[i + 2], 'PX', ttl)
  else
    redis.call('SET', KEYS[i], ARGV[i + 2])
  end
end
if #KEYS > counters then
  redis.call('DEL', unpack(KEYS, counters + 1))
end
return 0
";

/// A script run by its SHA1 (`EVALSHA`) instead of sending its text every time. Redis
/// reports the digest on the first `SCRIPT LOAD`; the digest of a given text never changes,
/// so it is loaded once per process. A Redis that lost its script cache (a restart,
/// `SCRIPT FLUSH`) answers `NOSCRIPT`, and the call loads the script again and retries,
/// within the same timeout.
pub(super) struct Script {
    text: &'static str,
    sha: OnceLock<String>,
}

static LOOKUP: Script = Script::new(LOOKUP_SCRIPT);
static INVALIDATE: Script = Script::new(INVALIDATE_SCRIPT);

impl Script {
    pub(super) const fn new(text: &'static str) -> Self {
        Self {
            text,
            sha: OnceLock::new(),
        }
    }

    async fn load<C: ConnectionLike>(&self, conn: &mut C) -> RedisResult<&str> {
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(self.text)
            .query_async(conn)
            .await?;
        Ok(self.sha.get_or_init(|| sha))
    }

    /// Runs the script with `args` (the key count, the keys, then the arguments), loading it
    /// first when Redis does not have it.
    pub(super) async fn run<C, T>(
        &self,
        conn: &mut C,
        args: impl Fn(&mut redis::Cmd),
    ) -> RedisResult<T>
    where
        C: ConnectionLike,
        T: redis::FromRedisValue,
    {
        let evalsha = |sha: &str| {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha);
            args(&mut cmd);
            cmd
        };
        let sha = match self.sha.get() {
            Some(sha) => sha,
            None => self.load(conn).await?,
        };
        match evalsha(sha).query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::NoScriptError => {
                let sha = self.load(conn).await?;
                evalsha(sha).query_async(conn).await
            }
            found => found,
        }
    }
}

type Found = (String, String, Option<String>);

/// Runs the lookup script by digest.
async fn run_lookup<C: ConnectionLike>(conn: &mut C, keys: &[String; 3]) -> RedisResult<Found> {
    LOOKUP
        .run(conn, |cmd| {
            cmd.arg(3)
                .arg(keys)
                .arg(random_counter())
                .arg(random_counter())
                .arg(GENERATION_TTL.as_millis() as u64);
        })
        .await
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

/// Makes every entry stale, on every replica at once: the cluster epoch incremented (or,
/// evicted, set to a fresh random value), within `timeout`. What a replica does when it starts, and what an operator runs
/// (`cartae-database-api cache-bump`) after restoring the database to an earlier time,
/// when every cached entry may be newer than the data.
pub async fn bump_epoch(cache: &Cache, timeout: Duration) -> Result<(), CacheError> {
    let epoch = epoch_key(cache);
    cache
        .exec(timeout, |mut conn| async move {
            // The epoch never expires: the lookup creates it without a lifetime too.
            advance(&mut conn, &[epoch], None, &[]).await
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
    let result = cache
        .run(|mut conn| async move { increment(&mut conn, generations, keys).await })
        .await;
    if let Err(e) = result {
        // Until the repair applies them, this replica reads none of these entries.
        cache.trust.record_failed(generations);
        tracing::warn!(error = %e, "cache invalidation failed; repaired when redis answers");
    }
}

/// Moves each generation to a value no entry carries (and renews its lifetime): what makes
/// its entries stale. Then deletes `keys`. One atomic round trip.
pub async fn increment<C: ConnectionLike>(
    conn: &mut C,
    generations: &[String],
    keys: &[String],
) -> RedisResult<()> {
    advance(conn, generations, Some(GENERATION_TTL), keys).await
}

/// Increments `counters`, or sets the missing ones to fresh random values, with `ttl`
/// (none: they stay); then deletes `keys`.
async fn advance<C: ConnectionLike>(
    conn: &mut C,
    counters: &[String],
    ttl: Option<Duration>,
    keys: &[String],
) -> RedisResult<()> {
    if counters.is_empty() && keys.is_empty() {
        return Ok(());
    }
    let ttl_ms = ttl.map_or(0, |ttl| ttl.as_millis().max(1) as u64);
    INVALIDATE
        .run(conn, |cmd| {
            cmd.arg(counters.len() + keys.len())
                .arg(counters)
                .arg(keys)
                .arg(ttl_ms)
                .arg(counters.len());
            for _ in counters {
                cmd.arg(random_counter());
            }
        })
        .await
}
