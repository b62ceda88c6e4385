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
//! - **Reserved before hashing.** An attempt is let through ([`LoginThrottle::reserve`])
//!   under the same lock as the check, and counts as pending until its password is
//!   checked; at most as many attempts are pending as failures are still free (one once
//!   a wait is over), and more wait for them. So concurrent guesses cannot all pass the
//!   check before the first failure is recorded, while concurrent *correct* logins (a pool
//!   of workers behind one address) only queue for a moment. An attempt abandoned before
//!   its outcome (the client gone, the deadline) counts as a failure.
//! - **Bounded in bytes.** Accounts are kept as a hash of the normalised email, so every
//!   entry has the same small size whatever the client sent, and the table never holds
//!   more than [`MAX_TRACKED`] of them, [`MAX_BYTES`] at most; beyond, expired pairs and
//!   then the oldest-expiring half are forgotten.
//! - **Early refusals per network only.** A request refused before hashing (a body no
//!   account could match) is counted against its network alone ([`Subject::Malformed`]),
//!   never as an entry per account it invents.
//!
//! - **Cluster-wide through Redis.** The counts live in each replica's memory, and each
//!   pair's failures are also counted in Redis (`cache::login_failures`, keyed by
//!   [`shared_pair`]), which every replica asks before reserving and which decides while
//!   it answers: a wait earned on one replica holds on the others and across a restart,
//!   and a success on one clears the count everywhere. Each replica still keeps its own
//!   count, and while Redis does not answer goes on with it alone (behind N replicas the
//!   budget is then N times [`FREE_FAILURES`], as it was before): never an open door, and
//!   never an owner locked out, since the keys stay per account *and* network.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;

/// Wrong passwords answered (401) before a network must wait for an account.
pub const FREE_FAILURES: u32 = 5;
pub const FIRST_WAIT: Duration = Duration::from_secs(30);
pub const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// A pair is forgotten this long after its last failure, or once its wait is over,
/// whichever is later.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

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
    /// Attempts let through whose outcome is not known yet.
    pending: u32,
    blocked_until: Option<Instant>,
    forget_at: Instant,
    /// Wakes the attempts waiting for a pending one; only while some wait.
    resolved: Option<Arc<Notify>>,
}

/// How a let-through attempt ended.
enum Outcome {
    Succeeded,
    Failed,
    NotEvaluated,
}

/// An attempt let through, pending until told how it ended; dropped untold (the client
/// gone, the deadline), it counts as a failure.
#[must_use]
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    key: Key,
    told: bool,
}

impl Attempt<'_> {
    /// A correct password: the pair starts afresh.
    pub fn succeeded(self) {
        self.tell(Outcome::Succeeded);
    }

    /// A wrong password, or an unknown email.
    pub fn failed(self) {
        self.tell(Outcome::Failed);
    }

    /// The password was never checked (the hashing bulkhead full, the database down): not
    /// a failure.
    pub fn not_evaluated(self) {
        self.tell(Outcome::NotEvaluated);
    }

    fn tell(mut self, outcome: Outcome) {
        self.told = true;
        self.throttle.resolve(self.key, outcome);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.told {
            self.throttle.resolve(self.key, Outcome::Failed);
        }
    }
}

#[derive(Default)]
pub struct LoginThrottle {
    records: Mutex<HashMap<Key, Record>>,
}

impl LoginThrottle {
    /// Lets one attempt at `email` (normalised) from `client` through, once no more are
    /// pending than failures are still free; or the wait before this network may try this
    /// account again.
    pub async fn reserve(&self, email: &str, client: IpAddr) -> Result<Attempt<'_>, Duration> {
        self.reserve_knowing(email, client, None).await
    }

    /// As [`Self::reserve`]; with `shared`, the pair's failures counted by every replica,
    /// which then decides alone: a success on another replica cleared it, and a wait it
    /// earned there was checked by the caller. This replica's own count and wait are the
    /// fallback for when Redis does not answer (`None`); its pending attempts still count.
    pub async fn reserve_knowing(
        &self,
        email: &str,
        client: IpAddr,
        shared: Option<u32>,
    ) -> Result<Attempt<'_>, Duration> {
        let key = (account(email), network(client));
        // This replica's count when `shared` was read: failures it sees while this attempt
        // waits its turn are added to the shared count, which cannot have seen them.
        let mut local_at_read: Option<u32> = None;
        loop {
            let resolved = {
                let mut records = self.records();
                let now = Instant::now();
                let local = records.get(&key).map_or(0, |r| r.failures);
                let since_read = local.saturating_sub(*local_at_read.get_or_insert(local));
                if shared.is_none() || since_read > 0 {
                    if let Some(wait) = blocked(records.get(&key), now) {
                        return Err(wait);
                    }
                }
                let record = entry(&mut records, key, now);
                let failures = shared.map_or(record.failures, |s| s + since_read);
                let allowed = FREE_FAILURES.saturating_sub(failures).max(1);
                if record.pending < allowed {
                    record.pending += 1;
                    return Ok(Attempt {
                        throttle: self,
                        key,
                        told: false,
                    });
                }
                let notify = record.resolved.get_or_insert_with(Arc::default).clone();
                let mut resolved = Box::pin(notify.notified_owned());
                // Registered before the lock is released: no outcome can slip past it.
                resolved.as_mut().enable();
                resolved
            };
            resolved.await;
        }
    }

    /// Counts a request refused before hashing against `client`'s network alone; the
    /// wait when that network sent too many of them.
    pub fn refused_early(&self, client: IpAddr) -> Result<(), Duration> {
        let key = (Subject::Malformed, network(client));
        let mut records = self.records();
        let now = Instant::now();
        if let Some(wait) = blocked(records.get(&key), now) {
            return Err(wait);
        }
        entry(&mut records, key, now).fail(now);
        Ok(())
    }

    /// How many pairs are remembered.
    pub fn tracked(&self) -> usize {
        self.records().len()
    }

    /// No code panics while holding the lock; were one to, the counts are still sound.
    fn records(&self) -> MutexGuard<'_, HashMap<Key, Record>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn resolve(&self, key: Key, outcome: Outcome) {
        let mut records = self.records();
        let now = Instant::now();
        let Some(record) = records.get_mut(&key) else {
            return;
        };
        record.pending = record.pending.saturating_sub(1);
        if let Some(waiting) = record.resolved.take() {
            waiting.notify_waiters();
        }
        match outcome {
            // Kept while other attempts are pending: their outcomes still count.
            Outcome::Succeeded if record.pending > 0 => {
                record.failures = 0;
                record.blocked_until = None;
            }
            Outcome::Succeeded => {
                records.remove(&key);
            }
            Outcome::Failed => record.fail(now),
            Outcome::NotEvaluated => {}
        }
    }
}

impl Record {
    fn fail(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let wait = wait_after(self.failures);
        self.blocked_until = wait.map(|w| now + w);
        self.forget_at = now + FORGET_AFTER + wait.unwrap_or_default();
    }
}

/// The wait still due for a pair, if any.
fn blocked(record: Option<&Record>, now: Instant) -> Option<Duration> {
    record?
        .blocked_until?
        .checked_duration_since(now)
        .filter(|wait| !wait.is_zero())
}

/// The pair's record, made room for and started afresh when forgotten.
fn entry(records: &mut HashMap<Key, Record>, key: Key, now: Instant) -> &mut Record {
    if records.len() >= MAX_TRACKED && !records.contains_key(&key) {
        forget_oldest(records, now);
    }
    let record = records.entry(key).or_insert(Record {
        failures: 0,
        pending: 0,
        blocked_until: None,
        forget_at: now + FORGET_AFTER,
        resolved: None,
    });
    if record.forget_at <= now && record.pending == 0 {
        record.failures = 0;
        record.forget_at = now + FORGET_AFTER;
    }
    record
}

/// The pair's name in the shared count: the account's hash and the network, never the
/// email itself, so a key has the same small size whatever was sent.
pub fn shared_pair(normalized_email: &str, client: IpAddr) -> String {
    let hex: String = account_hash(normalized_email)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{hex}:{}", network(client))
}

fn account(normalized_email: &str) -> Subject {
    Subject::Account(account_hash(normalized_email))
}

fn account_hash(normalized_email: &str) -> [u8; 16] {
    let digest = Sha256::digest(normalized_email.as_bytes());
    let mut prefix = [0; 16];
    prefix.copy_from_slice(&digest[..16]);
    prefix
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

/// Pairs with attempts pending are kept: their outcome, and the attempts waiting for it,
/// need the record.
fn forget_oldest(records: &mut HashMap<Key, Record>, now: Instant) {
    records.retain(|_, r| r.pending > 0 || r.forget_at > now);
    if records.len() >= MAX_TRACKED / 2 {
        let mut times: Vec<Instant> = records.values().map(|r| r.forget_at).collect();
        let (_, median, _) = times.select_nth_unstable(records.len() / 2);
        let median = *median;
        records.retain(|_, r| r.pending > 0 || r.forget_at > median);
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

    #[tokio::test]
    async fn a_pair_is_throttled_and_no_other() {
        let throttle = LoginThrottle::default();
        let (attacker, owner) = (
            IpAddr::from([203, 0, 113, 7]),
            IpAddr::from([198, 51, 100, 9]),
        );
        for _ in 0..FREE_FAILURES {
            throttle
                .reserve("victim@x", attacker)
                .await
                .unwrap()
                .failed();
        }
        assert!(throttle.reserve("victim@x", attacker).await.is_err());
        throttle
            .reserve("victim@x", owner)
            .await
            .unwrap()
            .succeeded();
        throttle
            .reserve("other@x", attacker)
            .await
            .unwrap()
            .succeeded();
    }

    #[tokio::test]
    async fn a_correct_password_resets_and_an_unevaluated_attempt_is_no_failure() {
        let throttle = LoginThrottle::default();
        let client = IpAddr::from([203, 0, 113, 7]);
        for _ in 1..FREE_FAILURES {
            throttle.reserve("a@x", client).await.unwrap().failed();
        }
        throttle
            .reserve("a@x", client)
            .await
            .unwrap()
            .not_evaluated();
        throttle.reserve("a@x", client).await.unwrap().succeeded();
        for _ in 0..FREE_FAILURES {
            throttle.reserve("a@x", client).await.unwrap().failed();
        }
        assert!(throttle.reserve("a@x", client).await.is_err());
    }

    #[tokio::test]
    async fn attempts_beyond_the_free_failures_wait_for_the_pending_ones() {
        let throttle = LoginThrottle::default();
        let client = IpAddr::from([203, 0, 113, 7]);
        let mut pending = Vec::new();
        for _ in 0..FREE_FAILURES {
            pending.push(throttle.reserve("a@x", client).await.unwrap());
        }
        let next = throttle.reserve("a@x", client);
        tokio::pin!(next);
        let waited = tokio::time::timeout(Duration::from_millis(20), &mut next).await;
        assert!(waited.is_err(), "a sixth attempt is not let through");
        // Abandoned attempts count as failures: the waiting one is then refused.
        drop(pending);
        assert!(next.await.is_err());
    }

    #[tokio::test]
    async fn a_success_does_not_forget_the_attempts_still_pending() {
        let throttle = LoginThrottle::default();
        let client = IpAddr::from([203, 0, 113, 7]);
        let pending: Vec<_> = futures_util::future::join_all(
            (0..FREE_FAILURES).map(|_| throttle.reserve("a@x", client)),
        )
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
        let mut pending = pending.into_iter();
        pending.next().unwrap().succeeded();
        for wrong in pending {
            wrong.failed();
        }
        throttle.reserve("a@x", client).await.unwrap().failed();
        assert!(
            throttle.reserve("a@x", client).await.is_err(),
            "the four failures after the success counted, and the fifth"
        );
    }

    #[tokio::test]
    async fn a_success_lets_the_waiting_attempts_through() {
        let throttle = LoginThrottle::default();
        let client = IpAddr::from([203, 0, 113, 7]);
        let mut pending = Vec::new();
        for _ in 0..FREE_FAILURES {
            pending.push(throttle.reserve("a@x", client).await.unwrap());
        }
        let next = throttle.reserve("a@x", client);
        tokio::pin!(next);
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut next)
            .await
            .is_err());
        pending.pop().unwrap().succeeded();
        next.await.unwrap().succeeded();
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
