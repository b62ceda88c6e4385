//! Login storm: waves of 300 concurrent logins straight at one replica, most for unknown
//! emails (which the service still hashes, so as not to tell them apart by timing). The
//! password-hashing bulkhead bounds the memory: peak RSS stays under the baseline plus
//! `PASSWORD_HASH_CONCURRENCY x PASSWORD_HASH_MEMORY_KIB`, the bound the README states.
//!
//! The storm goes to the replica's own port: behind Traefik, its rate limit (100/s per
//! client IP) would turn most of it into 429s before any hashing. Behind either balancer
//! the row checks that the stormed replica stays ready and routed.

use std::cell::Cell;
use std::time::{Duration, Instant};

use serde_json::json;

use super::shared::{judge, row, same_processes, sampling, ReadyWatcher};
use super::Drill;
use crate::load::{quantile, Answer, Kind, Outcome};
use crate::report::Row;

const LOGINS: usize = 300;
/// Waves are sent until this has passed, so that the probes below see the storm at
/// length.
const STORM: Duration = Duration::from_secs(3);
/// The waves without hashing that measure the baseline.
const BASELINE: Duration = Duration::from_secs(1);
/// `PASSWORD_HASH_MEMORY_KIB`: the drill runs the default Argon2 cost (19 MiB, 2 passes).
const HASH_MEMORY_KIB: u64 = 19_456;
/// Slack over the bound, for what real logins do beyond the baseline's refused requests
/// (an email lookup, a token signed) and the allocator's bookkeeping around each Argon2
/// block: half a hash, so that a single hash beyond the bulkhead's still fails the row.
const SLACK_KIB: u64 = HASH_MEMORY_KIB / 2;
/// Bound on `/live`'s p99 during the storm, when the same waves without hashing leave it
/// lower (see the row's notes).
const LIVE_P99_MS: f64 = 50.0;
/// Otherwise `/live`'s p99 may reach this multiple of its p99 under the same waves
/// without hashing: what the row guards is that hashing (on the blocking pool, within the
/// bulkhead) never starves the async workers that answer probes. 300 connections at
/// once cost the probes their share of two cores whether or not anything is hashed, and
/// how much varies from machine to machine (measured: 15 ms on one, 65-130 ms on another
/// with the same binaries), so the baseline is measured in the same run.
const LIVE_P99_OVER_BASELINE: f64 = 1.5;
/// One login in ten carries the drill user's real credentials.
const VALID_EVERY: usize = 10;

pub(super) async fn run(d: &Drill) -> anyhow::Result<Row> {
    let index = 0;
    let instance = &d.cluster.instances[index];
    let before = d.cluster.identities(&d.client).await;
    let pid = d.cluster.identity(&d.client, index).await?.pid;
    // The default `PASSWORD_HASH_CONCURRENCY`: the CPUs granted, read the way the
    // service reads them, on the same machine.
    let concurrency = std::thread::available_parallelism().map_or(1, usize::from) as u64;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(LOGINS)
        .build()?;
    // The baseline: the replica's peak under the same waves of connections when none of
    // them hashes (a login without a password is refused before any hashing), so that
    // the bound is about hashing, which the bulkhead limits, not connection buffers.
    let unhashed = measure(d, &client, index, pid, BASELINE, |_, _| json!({})).await?;
    let baseline = unhashed.peak_kib;
    let bound = baseline + concurrency * HASH_MEMORY_KIB + SLACK_KIB;
    let watcher = ReadyWatcher::start(d);
    let started = Instant::now();
    let storm = measure(d, &client, index, pid, STORM, |wave, i| {
        if i % VALID_EVERY == 0 {
            d.workload.credentials.clone()
        } else {
            json!({
                "email": format!("storm-{wave}-{i}@example.com"),
                "password": "not-the-password-0123456789",
            })
        }
    })
    .await?;
    let readiness = watcher.stop().await?;
    let elapsed = started.elapsed();
    let outcomes = storm.outcomes;
    let mut r = row("login storm", d, &outcomes);
    judge(
        &mut r,
        &outcomes,
        "401 for unknown emails (the storm's point), 429 for a throttled account, and 503 \
         with Retry-After when the hashing bulkhead is full; nothing else, and every login \
         answered",
        |o| match o.first.status {
            Some(401) | Some(429) => true,
            Some(503) => o.first.retry_after,
            _ => false,
        },
    );
    if storm.peak_kib > bound {
        r.problems.push(format!(
            "peak RSS {} KiB over the bound {bound} KiB (baseline {baseline} + {concurrency} x {HASH_MEMORY_KIB} + {SLACK_KIB})",
            storm.peak_kib
        ));
    }
    let live_p99 = quantile(&storm.live_ms, 0.99);
    let baseline_live_p99 = quantile(&unhashed.live_ms, 0.99);
    let live_bound = LIVE_P99_MS.max(LIVE_P99_OVER_BASELINE * baseline_live_p99);
    if live_p99 > live_bound {
        r.problems.push(format!(
            "/live p99 {live_p99:.1} ms over {} probes, expected under {live_bound:.1} ms \
             (the larger of {LIVE_P99_MS} ms and {LIVE_P99_OVER_BASELINE} x {baseline_live_p99:.1} ms without hashing)",
            storm.live_ms.len()
        ));
    }
    readiness.check_all_in(d.cluster.instances.len(), elapsed, &mut r.problems);
    if storm.unrouted > 0 {
        r.problems.push(format!(
            "the balancer did not route to {} in {} samples during the storm",
            instance.name, storm.unrouted
        ));
    }
    same_processes(
        &before,
        &d.cluster.identities(&d.client).await,
        &mut r.problems,
    );
    let count = |status: u16| {
        outcomes
            .iter()
            .filter(|o| o.first.status == Some(status))
            .count()
    };
    let mib = |kib: u64| kib as f64 / 1024.0;
    r.notes = format!(
        "{} at {} in waves of {LOGINS} for {elapsed:.1?}: {} x 200, {} x 401, {} x 429, {} x 503; \
         default Argon2 cost (19 MiB, 2 passes); peak RSS {:.1} MiB against the bound {:.1} MiB \
         (baseline {:.1}, the peak under the same waves without hashing, + {concurrency} x 19 MiB \
         + half a hash of slack); \
         /live p99 {live_p99:.1} ms over {} probes (without hashing {baseline_live_p99:.1} ms; bound {live_bound:.1} ms)",
        outcomes.len(),
        instance.name,
        count(200),
        count(401),
        count(429),
        count(503),
        mib(storm.peak_kib),
        mib(bound),
        mib(baseline),
        storm.live_ms.len(),
    );
    Ok(r)
}

/// What one storm did to the replica.
struct Measured {
    outcomes: Vec<Outcome>,
    /// The replica's peak resident memory during the storm.
    peak_kib: u64,
    /// `/live` latencies during the storm (an unanswered probe counts as infinite).
    live_ms: Vec<f64>,
    /// Samples in which the balancer did not route to the replica.
    unrouted: usize,
}

/// Storms replica `index` with waves of `LOGINS` logins whose bodies `body(wave, i)`
/// gives, for `length`; meanwhile reads its RSS from /proc, times its `/live`, and asks
/// the balancer whether it routes to it.
async fn measure(
    d: &Drill,
    client: &reqwest::Client,
    index: usize,
    pid: i32,
    length: Duration,
    body: impl Fn(usize, usize) -> serde_json::Value,
) -> anyhow::Result<Measured> {
    let instance = &d.cluster.instances[index];
    let high_water_before = status_kib(pid, "VmHWM")?;
    let (peak, live_ms) = (Cell::new(status_kib(pid, "VmRSS")?), Cell::new(Vec::new()));
    let (samples, unrouted) = (Cell::new(0usize), Cell::new(0usize));
    let outcomes = sampling(
        Duration::from_millis(20),
        waves(client, &instance.url("/api/auth/login"), length, body),
        || async {
            if let Ok(rss) = status_kib(pid, "VmRSS") {
                peak.set(peak.get().max(rss));
            }
            let probe = Instant::now();
            let live = d
                .client
                .get(instance.url("/live"))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            let mut all = live_ms.take();
            all.push(match live {
                Ok(r) if r.status() == 200 => probe.elapsed().as_secs_f64() * 1000.0,
                _ => f64::INFINITY,
            });
            live_ms.set(all);
            // The balancer's metrics are heavier than a probe: every tenth sample.
            if samples.replace(samples.get() + 1).is_multiple_of(10)
                && d.balancer.server_up(&d.client, instance).await != Some(true)
            {
                unrouted.set(unrouted.get() + 1);
            }
        },
    )
    .await;
    // The kernel's own high-water mark catches a peak between two samples, when this
    // storm raised it.
    let high_water = status_kib(pid, "VmHWM")?;
    let peak_kib = if high_water > high_water_before {
        peak.get().max(high_water)
    } else {
        peak.get()
    };
    Ok(Measured {
        outcomes,
        peak_kib,
        live_ms: live_ms.take(),
        unrouted: unrouted.get(),
    })
}

/// Waves of `LOGINS` logins sent at once, each wave when the last has been answered,
/// until `length` has passed.
async fn waves(
    client: &reqwest::Client,
    url: &str,
    length: Duration,
    body: impl Fn(usize, usize) -> serde_json::Value,
) -> Vec<Outcome> {
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let mut wave = 0;
    while started.elapsed() < length {
        let logins = (0..LOGINS).map(|i| {
            let request = client
                .post(url)
                .json(&body(wave, i))
                .timeout(Duration::from_secs(10));
            async move {
                let sent = Instant::now();
                let response = request.send().await;
                Outcome::once(
                    Kind::Login,
                    sent - started,
                    sent.elapsed(),
                    Answer::of(&response),
                )
            }
        });
        outcomes.extend(futures::future::join_all(logins).await);
        wave += 1;
    }
    outcomes
}

/// A field of `/proc/<pid>/status` given in kB, such as `VmRSS` or `VmHWM`.
pub(super) fn status_kib(pid: i32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status"))
}
