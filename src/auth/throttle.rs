//! Failed-login throttling per account *and* client address.
//!
//! After [`FREE_FAILURES`] wrong passwords for one account from one address, that address
//! must wait before trying that account again (429 with `Retry-After`): 30 s, doubling with
//! each further failure up to 15 minutes. A correct password resets the count.
//!
//! Keyed by account and address together so that it cannot lock a victim out: an attacker
//! guessing someone's password only slows their own address down; the owner, from any
//! other address, logs in as usual. What it does not stop on its own: guessing from many
//! addresses at once (each gets its budget); the password-hashing bulkhead bounds that
//! rate, and Argon2 makes each guess expensive.
//!
//! The counts live in each replica's memory: behind a balancer that spreads one client
//! over N replicas, the budget is N times [`FREE_FAILURES`]. At most [`MAX_TRACKED`] pairs
//! are remembered; beyond, the oldest-expiring half is forgotten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong passwords allowed before an address must wait.
pub const FREE_FAILURES: u32 = 5;
const FIRST_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// A pair is forgotten this long after its last failure, or once its wait is over,
/// whichever is later.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
pub const MAX_TRACKED: usize = 100_000;

type Key = (String, IpAddr);

struct Record {
    failures: u32,
    blocked_until: Option<Instant>,
    forget_at: Instant,
}

#[derive(Default)]
pub struct LoginThrottle {
    records: Mutex<HashMap<Key, Record>>,
}

impl LoginThrottle {
    /// How long `client` must still wait before trying `email` again, if at all.
    pub fn wait(&self, email: &str, client: IpAddr) -> Option<Duration> {
        let records = self.records.lock().ok()?;
        let until = records.get(&(email.to_owned(), client))?.blocked_until?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// Counts a wrong password; returns the wait it imposes, if any.
    pub fn failed(&self, email: &str, client: IpAddr) -> Option<Duration> {
        let mut records = self.records.lock().ok()?;
        let now = Instant::now();
        if records.len() >= MAX_TRACKED {
            forget_oldest(&mut records, now);
        }
        let record = records.entry((email.to_owned(), client)).or_insert(Record {
            failures: 0,
            blocked_until: None,
            forget_at: now,
        });
        if record.forget_at <= now {
            record.failures = 0;
        }
        record.failures += 1;
        let wait = wait_after(record.failures);
        record.blocked_until = wait.map(|w| now + w);
        record.forget_at = now + FORGET_AFTER + wait.unwrap_or_default();
        wait
    }

    /// A correct password: the pair starts afresh.
    pub fn succeeded(&self, email: &str, client: IpAddr) {
        if let Ok(mut records) = self.records.lock() {
            records.remove(&(email.to_owned(), client));
        }
    }
}

/// 30 s after the fifth failure, doubling with each one after, at most 15 minutes.
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
        for _ in 1..FREE_FAILURES {
            assert_eq!(throttle.failed("victim@x", attacker), None);
        }
        assert!(throttle.failed("victim@x", attacker).is_some());
        assert!(throttle.wait("victim@x", attacker).is_some());
        assert_eq!(throttle.wait("victim@x", owner), None);
        assert_eq!(throttle.wait("other@x", attacker), None);
        throttle.succeeded("victim@x", attacker);
        assert_eq!(throttle.wait("victim@x", attacker), None);
    }
}
