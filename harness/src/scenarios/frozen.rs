//! Frozen replica: one replica stopped with SIGSTOP under load for 12 s. Its socket still
//! accepts connections and it never answers, which neither a refused connection nor a
//! reset tells the balancer. The active check takes it out; what was already sent to it
//! is released by the balancer's bound on a silent replica (6 s: Traefik's
//! responseHeaderTimeout, HAProxy's `timeout server`), reads replayed on another replica,
//! writes answered 504 and retried by their client with their key. SIGCONT brings it back.

use std::time::{Duration, Instant};

use super::crash::PHASE;
use super::shared::{judge, killed_replica_excuse, row, Window};
use super::Drill;
use crate::load::LoadSpec;
use crate::process::send_signal;
use crate::report::Row;

const FROZEN_FOR: Duration = Duration::from_secs(12);
/// The balancers' bound on a silent replica (6 s) and a replay's own time.
const SLOWEST_ALLOWED: Duration = Duration::from_secs(8);
const VICTIM: usize = 1;

const BUDGET: &str = "writes sent to the frozen replica before the balancer took it out: a 504 \
     at 6 s (or no answer), retried by the client with their key, and every retry must \
     succeed. Reads: none (the balancer replays them on another replica). No request waits \
     more than 8 s";

pub(super) async fn run(d: &Drill) -> anyhow::Result<Row> {
    let load = d.load(LoadSpec {
        retry_writes: true,
        ..LoadSpec::default()
    });
    d.until_successes(&load, PHASE, Duration::from_secs(10))
        .await;
    let victim = d.cluster.identity(&d.client, VICTIM).await?;
    let frozen = Instant::now();
    send_signal(victim.pid, "STOP");
    let detection = d
        .until_routed(VICTIM, false, frozen, Duration::from_secs(20))
        .await;
    tokio::time::sleep(FROZEN_FOR.saturating_sub(frozen.elapsed())).await;
    let thawed = Instant::now();
    send_signal(victim.pid, "CONT");
    let recovery = d
        .until_routed(VICTIM, true, thawed, Duration::from_secs(20))
        .await;
    let window = Window::of(&load, frozen, thawed);
    d.until_successes(&load, PHASE, Duration::from_secs(10))
        .await;
    let outcomes = load.stop().await?;
    let mut r = row("frozen replica (SIGSTOP 12 s)", d, &outcomes);
    r.detection = detection;
    r.recovery = recovery;
    if detection.is_none() {
        r.problems
            .push("the balancer kept routing to the frozen replica".to_owned());
    }
    if recovery.is_none() {
        r.problems
            .push("the thawed replica was not routed again".to_owned());
    }
    let slowest = outcomes.iter().map(|o| o.latency).max().unwrap_or_default();
    if slowest > SLOWEST_ALLOWED {
        r.problems.push(format!(
            "a request waited {:.1} s: nothing released it at the 6 s bound",
            slowest.as_secs_f64()
        ));
    }
    judge(&mut r, &outcomes, BUDGET, killed_replica_excuse(window));
    d.check_writes(&outcomes, &mut r.problems).await?;
    r.notes = format!(
        "detection = until the balancer marks it down; slowest request {:.1} s; recovery = \
         SIGCONT until routed again",
        slowest.as_secs_f64()
    );
    Ok(r)
}
