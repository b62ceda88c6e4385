//! PostgreSQL brownout: every round trip to PostgreSQL takes 300 ms for 20 s, under more
//! load than the slowed database can serve. Requests that cannot finish are refused (503
//! with `Retry-After`) at the latest at their deadline, never queued past it; probes keep
//! answering, no replica turns unready, and the cluster recovers by itself.

use std::cell::Cell;
use std::time::{Duration, Instant};

use super::shared::{judge, row, same_processes, sampling, summary, ReadyWatcher, Window};
use super::Drill;
use crate::load::{quantile, Batches, LoadSpec};
use crate::report::Row;

const SLOW: Duration = Duration::from_millis(300);
const BROWNOUT: Duration = Duration::from_secs(20);
/// `REQUEST_TIMEOUT_MS`, which the drill leaves at its default.
const DEADLINE: Duration = Duration::from_secs(5);
/// Scheduling slack on two shared cores: a refusal later than the deadline plus this
/// was queued, not refused.
const SLACK: Duration = Duration::from_secs(1);
/// Successful requests required after recovery, as in the outages.
const AFTER_RECOVERY: usize = 60;

pub(super) async fn run(d: &Drill) -> anyhow::Result<Row> {
    let before = d.cluster.identities(&d.client).await;
    let load = d.load(LoadSpec {
        workers: 40,
        // Reads mostly come from the cache; writes and batches need PostgreSQL. A batch
        // of 20 upserts needs more than 20 slowed round trips: past the deadline.
        mix: [4, 4, 0, 2],
        batches: Batches::Own { size: 20 },
        history: true,
        ..LoadSpec::default()
    });
    d.until_successes(&load, AFTER_RECOVERY, Duration::from_secs(10))
        .await;
    let watcher = ReadyWatcher::start(d);
    let slowed = Instant::now();
    d.cluster.pg_proxy.set_latency(SLOW);
    let fewest_routed = Cell::new(usize::MAX);
    let live_failures = sampling(
        Duration::from_millis(250),
        d.probe_failures("/live", slowed + BROWNOUT),
        || async { fewest_routed.set(fewest_routed.get().min(d.routed().await)) },
    )
    .await;
    let brownout = slowed.elapsed();
    d.cluster.pg_proxy.set_latency(Duration::ZERO);
    let restored = Instant::now();
    let readiness = watcher.stop().await?;
    // Requests slowed before the restore may still be finishing; the balancer's next
    // round sees the replicas as they are now.
    let settled = restored + d.lb_round();
    tokio::time::sleep_until(settled.into()).await;
    d.until_successes(&load, AFTER_RECOVERY, Duration::from_secs(15))
        .await;
    let window = Window::of(&load, slowed, settled);
    let history = load.history();
    let outcomes = load.stop().await?;
    let history = history.take();
    let mut r = row("PostgreSQL brownout", d, &outcomes);
    r.recovery = Some(settled - restored);
    judge(
        &mut r,
        &outcomes,
        "only 503 with Retry-After from a replica, only for requests in flight between the \
         slow-down and one balancer round after it ends: what cannot finish by its deadline \
         is refused, and the client told when to come back. None before or after",
        |o| window.overlaps(o) && o.first.status == Some(503) && o.first.retry_after,
    );
    let queued: Vec<_> = outcomes
        .iter()
        .filter(|o| o.latency > DEADLINE + SLACK)
        .collect();
    if !queued.is_empty() {
        r.problems.push(format!(
            "{} requests answered after the {DEADLINE:?} deadline plus {SLACK:?}: {}",
            queued.len(),
            summary(queued.iter().copied())
        ));
    }
    let refused: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.first.status == Some(503))
        .map(|o| o.latency.as_secs_f64() * 1000.0)
        .collect();
    if refused.is_empty() {
        r.problems
            .push("nothing was refused: the brownout did not overload the replicas".to_owned());
    }
    readiness.check_all_in(d.cluster.instances.len(), brownout, &mut r.problems);
    if live_failures > 0 {
        r.problems.push(format!(
            "/live failed {live_failures} times during the brownout"
        ));
    }
    let after = outcomes.iter().filter(|o| o.started > window.to).count();
    if after < AFTER_RECOVERY {
        r.problems.push(format!(
            "{after} requests after recovery, expected at least {AFTER_RECOVERY}"
        ));
    }
    same_processes(
        &before,
        &d.cluster.identities(&d.client).await,
        &mut r.problems,
    );
    r.notes = format!(
        "{SLOW:?} per PostgreSQL round trip for {brownout:.1?}; {} refused (503), p50 {:.0} ms, \
         max {:.0} ms; /ready p99 {:.1} ms, fewest ready {}; fewest routed by the balancer {}; \
         {after} requests after recovery",
        refused.len(),
        quantile(&refused, 0.5),
        quantile(&refused, 1.0),
        readiness.probe_p99(),
        readiness.fewest,
        fewest_routed.get()
    );
    d.check_writes(&outcomes, &mut r.problems).await?;
    d.check_history(&d.workload, &history, &mut r).await?;
    Ok(r)
}
