//! Sticky sessions: a client holding `cartae_server` stays on its replica; when that
//! replica dies it is re-pinned to one other replica, with no error.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::shared::{judge, row};
use super::Drill;
use crate::load::LoadSpec;
use crate::report::Row;

/// Answers the pinned client must get before the kill, and again after it: one second
/// of its pace (20 requests per second).
const PHASE: usize = 20;

pub(super) async fn run(d: &Drill) -> anyhow::Result<Row> {
    let load = d.load(LoadSpec {
        workers: 1,
        rate: 20.0,
        mix: [10, 0, 0, 0],
        sticky: true,
        ..LoadSpec::default()
    });
    d.until_successes(&load, PHASE, Duration::from_secs(10))
        .await;
    let pinned = pinned_instance(d)
        .await
        .context("no replica served the pinned client")?;
    let index = d
        .cluster
        .instances
        .iter()
        .position(|i| i.name == pinned)
        .context("pinned to an unknown replica")?;
    let killed = Instant::now();
    d.cluster.crash(&d.client, index).await?;
    let detection = d
        .until_routed(index, false, killed, Duration::from_secs(10))
        .await;
    d.until_successes(&load, PHASE, Duration::from_secs(10))
        .await;
    let outcomes = load.stop().await?;
    // The scenario killed it, so the scenario brings it back.
    let recovery = d.restart_killed().await?;
    let mut r = row("sticky sessions", d, &outcomes);
    r.detection = detection;
    r.recovery = recovery;
    judge(
        &mut r,
        &outcomes,
        "none: reads only, which the balancer retries on another replica",
        |_| false,
    );
    // Before the kill every answer came from the pinned replica; afterwards from one
    // other replica, consistently (re-pinned).
    let before = outcomes
        .iter()
        .take_while(|o| o.last.instance.as_deref() == Some(pinned.as_str()))
        .count();
    let distinct_after: BTreeSet<&str> = outcomes[before..]
        .iter()
        .filter_map(|o| o.last.instance.as_deref())
        .collect();
    if before < PHASE / 2 {
        r.problems.push(format!(
            "only {before} answers from the pinned replica before the kill"
        ));
    }
    if distinct_after.len() != 1 || distinct_after.contains(pinned.as_str()) {
        r.problems.push(format!(
            "after the kill served by {distinct_after:?}, expected one other replica"
        ));
    }
    r.notes = format!(
        "pinned to {pinned}, re-pinned to {distinct_after:?}; recovery = restart until routed"
    );
    Ok(r)
}

/// The replica the client is pinned to. A probe through the balancer without the cookie
/// would be balanced elsewhere, so ask the replicas' metrics: the pinned one is the one
/// whose request count grows while only the pinned client runs.
async fn pinned_instance(d: &Drill) -> Option<String> {
    let counts = d.metric_per_replica("request_distribution_total").await;
    let grown = std::cell::RefCell::new(Vec::new());
    crate::process::wait_until(Duration::from_secs(5), || {
        let (grown, counts) = (&grown, &counts);
        async move {
            let now = d.metric_per_replica("request_distribution_total").await;
            let delta: Vec<f64> = now.iter().zip(counts).map(|(n, c)| n - c).collect();
            let enough = delta.iter().any(|g| *g >= 5.0);
            *grown.borrow_mut() = delta;
            enough
        }
    })
    .await;
    let grown = grown.into_inner();
    let (index, _) = grown
        .iter()
        .enumerate()
        .filter(|(_, g)| **g >= 5.0)
        .max_by(|a, b| a.1.total_cmp(b.1))?;
    Some(d.cluster.instances[index].name.clone())
}
