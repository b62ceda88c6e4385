//! Failed logins per account and client network, shared by every replica through Redis:
//! what makes the login throttle's wait cluster-wide (`auth::throttle` keeps the per-replica
//! count, which stays the fallback).
//!
//! One small hash per pair, `login-failures:<account>:<network>`, with the failures counted
//! (`f`) and the end of the wait they earned (`u`, in milliseconds of Redis's own clock, so
//! replicas' clocks never disagree about it). It expires on its own, the wait plus the
//! forgetting delay after the last failure. A correct password deletes it.
//!
//! Every call is bounded by `REDIS_TIMEOUT_MS` like any cache call; on a failure the caller
//! goes on with the per-replica count alone.

use std::time::Duration;

use super::stamped::Script;
use super::{Cache, CacheError};

/// The wait still due (ms) and the failures counted, for `KEYS[1]`.
const CHECK_SCRIPT: &str = r"
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local found = redis.call('HMGET', KEYS[1], 'f', 'u')
local wait = math.max(tonumber(found[2] or '0') - now, 0)
return {wait, tonumber(found[1] or '0')}
";

/// One more failure for `KEYS[1]`: ARGV the free failures, the first and the longest wait
/// and the forgetting delay (ms). The wait doubles with each failure past the free ones.
const FAIL_SCRIPT: &str = r"
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local free, first, longest, forget =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local failures = redis.call('HINCRBY', KEYS[1], 'f', 1)
local wait = 0
if failures >= free then
  wait = math.min(first * 2 ^ math.min(failures - free, 16), longest)
end
redis.call('HSET', KEYS[1], 'u', now + wait)
redis.call('PEXPIRE', KEYS[1], forget + wait)
return failures
";

static CHECK: Script = Script::new(CHECK_SCRIPT);
static FAIL: Script = Script::new(FAIL_SCRIPT);

/// What the other replicas know of a pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shared {
    pub failures: u32,
    pub wait: Duration,
}

/// The waits a failure earns (`auth::throttle`'s).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub free_failures: u32,
    pub first_wait: Duration,
    pub max_wait: Duration,
    pub forget_after: Duration,
}

fn key(cache: &Cache, pair: &str) -> String {
    cache.key(format_args!("login-failures:{pair}"))
}

pub async fn check(cache: &Cache, pair: &str) -> Result<Shared, CacheError> {
    let key = key(cache, pair);
    let (wait_ms, failures): (u64, u64) = cache
        .run(|mut conn| async move {
            CHECK
                .run(&mut conn, |cmd| {
                    cmd.arg(1).arg(&key);
                })
                .await
        })
        .await?;
    Ok(Shared {
        failures: u32::try_from(failures).unwrap_or(u32::MAX),
        wait: Duration::from_millis(wait_ms),
    })
}

pub async fn fail(cache: &Cache, pair: &str, policy: Policy) -> Result<(), CacheError> {
    let key = key(cache, pair);
    let ms = |d: Duration| d.as_millis() as u64;
    cache
        .run(|mut conn| async move {
            FAIL.run::<_, u64>(&mut conn, |cmd| {
                cmd.arg(1)
                    .arg(&key)
                    .arg(policy.free_failures)
                    .arg(ms(policy.first_wait))
                    .arg(ms(policy.max_wait))
                    .arg(ms(policy.forget_after));
            })
            .await
        })
        .await?;
    Ok(())
}

pub async fn clear(cache: &Cache, pair: &str) -> Result<(), CacheError> {
    let key = key(cache, pair);
    cache
        .run(|mut conn| async move {
            redis::cmd("DEL")
                .arg(&key)
                .query_async::<u64>(&mut conn)
                .await
        })
        .await?;
    Ok(())
}
