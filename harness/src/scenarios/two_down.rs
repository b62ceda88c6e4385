//! Two replicas down at once: the last one carries everything.

use super::crash::{kill_under_load, PHASE};
use super::Drill;
use crate::report::Row;

/// The replicas killed, and the one left.
const KILLED: [usize; 2] = [0, 2];
const SURVIVOR: usize = 1;

pub(super) async fn run(d: &Drill) -> anyhow::Result<Row> {
    let (mut r, outcomes, window) = kill_under_load(d, "two replicas down", &KILLED).await?;
    // Once the balancer has taken both out, every answer comes from the survivor.
    let survivor = &d.cluster.instances[SURVIVOR].name;
    let after: Vec<_> = outcomes.iter().filter(|o| o.started > window.to).collect();
    let elsewhere = after
        .iter()
        .filter(|o| o.last.instance.as_ref() != Some(survivor))
        .count();
    if elsewhere > 0 || after.len() < PHASE {
        r.problems.push(format!(
            "after detection {elsewhere} of {} requests not answered by {survivor} (expected 0 of at least {PHASE})",
            after.len()
        ));
    }
    r.notes = format!(
        "{}; {} requests after detection, all answered by {survivor}",
        r.notes,
        after.len()
    );
    Ok(r)
}
