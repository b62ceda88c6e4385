//! Crash: one replica SIGKILLed under load. The balancer takes it out at once; writes in
//! flight to it are retried by the client with their idempotency key. Also the sequence
//! "two replicas down" shares.

use std::time::{Duration, Instant};

use super::shared::{judge, killed_replica_excuse, row, Window};
use super::Drill;
use crate::load::{LoadSpec, Outcome};
use crate::report::Row;

const KILLED_BUDGET: &str = "writes in flight to a killed replica, or sent before the balancer \
     took it out, may get no answer or a 502-504 (the balancer never replays a POST); the \
     client retries them with their key, and every retry must succeed. Reads: none (the \
     balancer retries them). Nothing before the kill or after detection";

/// Successful requests that make a phase of a kill scenario: one second of load.
pub(super) const PHASE: usize = 60;

pub(super) async fn run(d: &Drill) -> anyhow::Result<Row> {
    let (r, _, _) = kill_under_load(d, "crash (SIGKILL)", &[1]).await?;
    Ok(r)
}

/// Kills `victims` once the load runs, waits until the balancer has taken every one out
/// and the rest served a phase of load, then restarts them. Returns the judged row and
/// the outcomes, with the window from the kill to the detection.
pub(super) async fn kill_under_load(
    d: &Drill,
    name: &str,
    victims: &[usize],
) -> anyhow::Result<(Row, Vec<Outcome>, Window)> {
    let load = d.load(LoadSpec {
        retry_writes: true,
        history: true,
        ..LoadSpec::default()
    });
    d.until_successes(&load, PHASE, Duration::from_secs(10))
        .await;
    let killed = Instant::now();
    for index in victims {
        d.cluster.crash(&d.client, *index).await?;
    }
    let mut detection = Some(Duration::ZERO);
    for index in victims {
        let down = d
            .until_routed(*index, false, killed, Duration::from_secs(10))
            .await;
        detection = detection.zip(down).map(|(a, b)| a.max(b));
    }
    let window = Window::of(&load, killed, Instant::now());
    d.until_successes(&load, PHASE, Duration::from_secs(10))
        .await;
    let history = load.history();
    let outcomes = load.stop().await?;
    let history = history.take();
    let recovery = d.restart_killed().await?;
    let mut r = row(name, d, &outcomes);
    r.detection = detection;
    r.recovery = recovery;
    if detection.is_none() {
        r.problems
            .push("the balancer never marked every killed replica down".to_owned());
    }
    if recovery.is_none() {
        r.problems
            .push("the restarted replicas were not routed again".to_owned());
    }
    judge(
        &mut r,
        &outcomes,
        KILLED_BUDGET,
        killed_replica_excuse(window),
    );
    r.notes = "detection = until the balancer marks every killed replica down; \
               recovery = restart until routed"
        .to_owned();
    d.check_writes(&outcomes, &mut r.problems).await?;
    d.check_history(&d.workload, &history, &mut r).await?;
    Ok((r, outcomes, window))
}
