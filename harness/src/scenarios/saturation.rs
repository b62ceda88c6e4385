//! Pool saturation: heavy batches keep every replica's request pool full. A busy pool is
//! not a dead database: `/ready` must stay 200 everywhere, probes must stay fast, and the
//! balancer must not eject anyone.
//!
//! The PostgreSQL proxy adds a few milliseconds per round trip, as a database across a
//! network does: batches then hold their connections for long while using little CPU. On
//! the drill's two shared cores, batches made long by CPU alone starve every process on
//! the machine (Redis answered in 1.2 s), which tests the machine rather than the pool.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use super::shared::{judge, row, same_processes, sampling, ReadyWatcher};
use super::Drill;
use crate::load::{Batches, LoadSpec};
use crate::report::Row;

/// Batches answered 200 before the scenario ends: about 8 s of the load.
const BATCHES: usize = 400;
/// Upserts per batch: each holds its connection for a whole transaction of them, about
/// `BATCH_SIZE` round trips of `ROUND_TRIP`.
const BATCH_SIZE: usize = 50;
const ROUND_TRIP: Duration = Duration::from_millis(10);
/// Three replicas' pools (10 each, `POSTGRES_POOL_MAX`) and half as many again waiting.
const WORKERS: usize = 45;
const POOL_MAX: f64 = 10.0;
/// Bound on the `/ready` probes' p99 under saturation (see the row's notes).
const PROBE_P99_MS: f64 = 100.0;

pub(super) async fn run(d: &Drill) -> anyhow::Result<Row> {
    let before = d.cluster.identities(&d.client).await;
    let replicas = d.cluster.instances.len();
    let load = d.load(LoadSpec {
        workers: WORKERS,
        // Under Traefik's shipped rate limit (100/s from one client IP).
        rate: 90.0,
        mix: [0, 0, 0, 1],
        batches: Batches::Own { size: BATCH_SIZE },
        ..LoadSpec::default()
    });
    d.cluster.pg_proxy.set_latency(ROUND_TRIP);
    let watcher = ReadyWatcher::start(d);
    let started = Instant::now();
    let fewest_routed = Cell::new(usize::MAX);
    let busiest = RefCell::new(vec![0.0_f64; replicas]);
    sampling(
        Duration::from_millis(250),
        d.until_successes(&load, BATCHES, Duration::from_secs(40)),
        || async {
            fewest_routed.set(fewest_routed.get().min(d.routed().await));
            let active = d.metric_per_replica("db_pool_size{state=\"active\"}").await;
            for (max, now) in busiest.borrow_mut().iter_mut().zip(active) {
                *max = max.max(now);
            }
        },
    )
    .await;
    let elapsed = started.elapsed();
    let readiness = watcher.stop().await?;
    let outcomes = load.stop().await?;
    d.cluster.pg_proxy.set_latency(Duration::ZERO);
    let mut r = row("pool saturation", d, &outcomes);
    judge(
        &mut r,
        &outcomes,
        "none: the load stays within what admission control queues (45 requests for 3 x 36 \
         in flight), so every batch waits for a connection and none is refused",
        |_| false,
    );
    readiness.check_all_in(replicas, elapsed, &mut r.problems);
    let p99 = readiness.probe_p99();
    if p99 > PROBE_P99_MS {
        r.problems.push(format!(
            "/ready p99 {p99:.1} ms over {} probes, expected under {PROBE_P99_MS} ms",
            readiness.probe_ms.len()
        ));
    }
    if fewest_routed.get() != replicas {
        r.problems.push(format!(
            "the balancer ejected a replica: fewest routed {} of {replicas}",
            fewest_routed.get()
        ));
    }
    let busiest = busiest.into_inner();
    if busiest.iter().any(|b| *b < POOL_MAX) {
        r.problems.push(format!(
            "not every pool was saturated: most connections in use per replica {busiest:?}"
        ));
    }
    let succeeded = outcomes.iter().filter(|o| o.first_ok()).count();
    if succeeded < BATCHES {
        r.problems.push(format!(
            "{succeeded} batches succeeded in {elapsed:.0?}, expected at least {BATCHES}"
        ));
    }
    same_processes(
        &before,
        &d.cluster.identities(&d.client).await,
        &mut r.problems,
    );
    r.notes = format!(
        "{WORKERS} workers, batches of {BATCH_SIZE} upserts, PostgreSQL {ROUND_TRIP:?} away, \
         {elapsed:.1?}; most connections in \
         use per replica {busiest:?}; /ready p99 {p99:.1} ms over {} probes (fewest ready {}); \
         fewest routed {}",
        readiness.probe_ms.len(),
        readiness.fewest,
        fewest_routed.get()
    );
    Ok(r)
}
