//! Failed-login throttling per account *and* client network.
//!
//! After [`FREE_FAILURES`] wrong passwords for one account from one network, that network
//! must wait before trying that account again (429 with `Retry-After`): 30 s, doubling with
//! each further failure up to 15 minutes. A correct password resets the count.
//!
//! Keyed by account and network together so that it cannot lock a victim out: an attacker
//! guessing someone's password only slows their own network down; the owner, from any
//! other, logs in as usual. What it does not stop on its own: guessing from many networks
//! at once (each gets its budget); the password-hashing bulkhead bounds that rate, and
//! Argon2 makes each guess expensive.
//!
//! - **Networks, not addresses.** An IPv6 client is its /64: one host is handed a whole
//!   /64, so counting per address would give it 2^64 budgets.
//! - **Reserved before hashing.** An attempt counts as a failure the moment it is let
//!   through ([`LoginThrottle::reserve`]), under the same lock as the check, so concurrent
//!   guesses cannot all pass the check before the first failure is recorded. A correct
//!   password, or an attempt never evaluated (the hashing bulkhead full, the database
//!   down), gives it back.
//! - **Bounded in bytes.** Accounts are kept as a hash of the normalised email, so every
//!   entry has the same small size whatever the client sent, and the table never holds
//!   more than [`MAX_TRACKED`] of them, [`MAX_BYTES`] at most; beyond, expired pairs and
//!   then the oldest-expiring half are forgotten.
//! - **Early refusals per network only.** A request refused before hashing (a body no
//!   account could match) is counted against its network alone ([`Subject::Malformed`]),
//!   never as an entry per account it invents.
//!
//! The counts live in each replica's memory: behind a balancer that spreads one client
//! over N replicas, the budget is N times [`FREE_FAILURES`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Wrong passwords answered (401) before a network must wait for an account.
pub const FREE_FAILURES: u32 = 5;
const FIRST_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// A pair is forgotten this long after its last failure, or once its wait is over,
/// whichever is later.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// The most the table may take, its free buckets included.
pub const MAX_BYTES: usize = 16 * 1024 * 1024;
/// std's table: one control byte per bucket beside the entry.
const BUCKET_BYTES: usize = std::mem::size_of::<(Key, Record)>() + 1;
/// Entries that fit in [`MAX_BYTES`]: the table has a power of two buckets and grows
/// once it is 7/8 full, so stopping at 7/8 of the largest count that fits keeps it there.
pub const MAX_TRACKED: usize = prev_power_of_two(MAX_BYTES / BUCKET_BYTES) / 8 * 7;

const fn prev_power_of_two(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// Whom a count is against, beside the network.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Subject {
    /// The first 128 bits of the SHA-256 of the normalised email: a fixed size whatever
    /// was sent.
    Account([u8; 16]),
    /// Requests refused before hashing, whatever account they named.
    Malformed,
}

type Key = (Subject, IpAddr);

struct Record {
    failures: u32,
    blocked_until: Option<Instant>,
    forget_at: Instant,
}

/// An attempt let through and already counted as a failure: hand it back with
/// [`LoginThrottle::succeeded`] or [`LoginThrottle::not_evaluated`], or keep it as the
/// failure it is (a wrong password, or a client that gave up mid-way).
#[must_use]
pub struct Attempt {
    key: Key,
}

#[derive(Default)]
pub struct LoginThrottle {
    records: Mutex<HashMap<Key, Record>>,
}

impl LoginThrottle {
    /// Lets one attempt at `email` (normalised) from `client` through, counted as a
    /// failure at once; or the wait before this network may try this account again.
    pub fn reserve(&self, email: &str, client: IpAddr) -> Result<Attempt, Duration> {
        let key = (account(email), network(client));
        self.count(key)?;
        Ok(Attempt { key })
    }

    /// Counts a request refused before hashing against `client`'s network alone; the
    /// wait when that network sent too many of them.
    pub fn refused_early(&self, client: IpAddr) -> Result<(), Duration> {
        self.count((Subject::Malformed, network(client)))
    }

    /// A correct password: the pair starts afresh.
    pub fn succeeded(&self, attempt: Attempt) {
        self.records().remove(&attempt.key);
    }

    /// The password was never checked: the attempt is not a failure.
    pub fn not_evaluated(&self, attempt: Attempt) {
        if let Some(record) = self.records().get_mut(&attempt.key) {
            record.failures = record.failures.saturating_sub(1);
            if wait_after(record.failures).is_none() {
                record.blocked_until = None;
            }
        }
    }

    /// How many pairs are remembered.
    pub fn tracked(&self) -> usize {
        self.records().len()
    }

    /// No code panics while holding the lock; were one to, the counts are still sound.
    fn records(&self) -> MutexGuard<'_, HashMap<Key, Record>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, key: Key) -> Result<(), Duration> {
        let mut records = self.records();
        let now = Instant::now();
        if let Some(wait) = records
            .get(&key)
            .and_then(|r| r.blocked_until)
            .and_then(|until| until.checked_duration_since(now))
            .filter(|wait| !wait.is_zero())
        {
            return Err(wait);
        }
        if records.len() >= MAX_TRACKED && !records.contains_key(&key) {
            forget_oldest(&mut records, now);
        }
        let record = records.entry(key).or_insert(Record {
            failures: 0,
            blocked_until: None,
            forget_at: now,
        });
        if record.forget_at <= now {
            record.failures = 0;
        }
        record.failures = record.failures.saturating_add(1);
        let wait = wait_after(record.failures);
        record.blocked_until = wait.map(|w| now + w);
        record.forget_at = now + FORGET_AFTER + wait.unwrap_or_default();
        Ok(())
    }
}

fn account(normalized_email: &str) -> Subject {
    let digest = Sha256::digest(normalized_email.as_bytes());
    let mut prefix = [0; 16];
    prefix.copy_from_slice(&digest[..16]);
    Subject::Account(prefix)
}

/// An IPv4 address, or the /64 of an IPv6 one (an IPv4-mapped one is its IPv4 address).
fn network(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// Once the [`FREE_FAILURES`]th failure is counted, 30 s, doubling with each one after, at
/// most 15 minutes.
fn wait_after(failures: u32) -> Option<Duration> {
    let beyond = failures.checked_sub(FREE_FAILURES)?;
    let wait = FIRST_WAIT.saturating_mul(1u32 << beyond.min(16));
    Some(wait.min(MAX_WAIT))
}

fn forget_oldest(records: &mut HashMap<Key, Record>, now: Instant) {
    records.retain(|_, r| r.forget_at > now);
    if records.len() >= MAX_TRACKED / 2 {
        let mut times: Vec<Instant> = records.values().map(|r| r.forget_at).collect();
        let (_, median, _) = times.select_nth_unstable(records.len() / 2);
        let median = *median;
        records.retain(|_, r| r.forget_at > median);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_after_the_free_failures_and_stop_growing() {
        assert_eq!(wait_after(FREE_FAILURES - 1), None);
        assert_eq!(wait_after(FREE_FAILURES), Some(FIRST_WAIT));
        assert_eq!(wait_after(FREE_FAILURES + 1), Some(FIRST_WAIT * 2));
        assert_eq!(wait_after(100), Some(MAX_WAIT));
    }

    #[test]
    fn a_pair_is_throttled_and_no_other() {
        let throttle = LoginThrottle::default();
        let (attacker, owner) = (
            IpAddr::from([203, 0, 113, 7]),
            IpAddr::from([198, 51, 100, 9]),
        );
        for _ in 0..FREE_FAILURES {
            let _wrong = throttle.reserve("victim@x", attacker).unwrap();
        }
        assert!(throttle.reserve("victim@x", attacker).is_err());
        throttle.succeeded(throttle.reserve("victim@x", owner).unwrap());
        throttle.succeeded(throttle.reserve("other@x", attacker).unwrap());
    }

    #[test]
    fn a_correct_password_resets_and_an_unevaluated_attempt_is_given_back() {
        let throttle = LoginThrottle::default();
        let client = IpAddr::from([203, 0, 113, 7]);
        for _ in 1..FREE_FAILURES {
            let _wrong = throttle.reserve("a@x", client).unwrap();
        }
        // Never checked (the bulkhead was full): not the failure that starts a block.
        throttle.not_evaluated(throttle.reserve("a@x", client).unwrap());
        let last = throttle.reserve("a@x", client).unwrap();
        assert!(throttle.reserve("a@x", client).is_err());
        throttle.succeeded(last);
        assert!(throttle.reserve("a@x", client).is_ok());
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(network(a), network(b));
        assert_ne!(network(a), network(c));
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(network(mapped), IpAddr::from([203, 0, 113, 7]));
    }

    #[test]
    fn the_table_stays_within_its_bytes() {
        let throttle = LoginThrottle::default();
        for i in 0..MAX_TRACKED as u32 + 1000 {
            let client = IpAddr::from(i.to_be_bytes());
            let _ = throttle.refused_early(client);
        }
        let records = throttle.records();
        assert!(records.len() <= MAX_TRACKED);
        let buckets = (records.capacity() * 8 / 7).next_power_of_two();
        assert!(
            buckets * BUCKET_BYTES <= MAX_BYTES,
            "{buckets} buckets of {BUCKET_BYTES} bytes"
        );
    }
}
