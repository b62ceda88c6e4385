//! Failed rollout: a version that never becomes ready. The script rolls back by itself,
//! under load, with one replica out at a time.

use std::time::{Duration, Instant};

use super::shared::{judge, row, ReadyWatcher};
use super::Drill;
use crate::load::LoadSpec;
use crate::report::Row;

pub(super) async fn run(d: &Drill) -> anyhow::Result<Row> {
    let before = d.cluster.identities(&d.client).await;
    let load = d.load(LoadSpec {
        max_duration: Duration::from_secs(3600),
        ..LoadSpec::default()
    });
    let watcher = ReadyWatcher::start(d);
    let broken = d.cluster.broken_version()?;
    let started = Instant::now();
    let outcome = d.cluster.script(&[&broken.to_string_lossy()]).await?;
    let rolled_back = started.elapsed();
    let ready_again = d
        .cluster
        .wait_all_ready(&d.client, Duration::from_secs(15))
        .await;
    let elapsed = started.elapsed();
    let readiness = watcher.stop().await?;
    let outcomes = load.stop().await?;
    let after = d.cluster.identities(&d.client).await;
    let mut r = row("failed rollout", d, &outcomes);
    r.recovery = Some(rolled_back);
    judge(
        &mut r,
        &outcomes,
        "none: the broken replica is never ready, so never routed",
        |_| false,
    );
    if outcome.code != Some(1) {
        r.problems.push(format!(
            "the script did not roll back (exit {:?}):\n{}",
            outcome.code, outcome.output
        ));
    }
    if !ready_again {
        r.problems
            .push("not every replica ready after the rollback".to_owned());
    }
    readiness.check_one_out(d.cluster.instances.len(), elapsed, &mut r.problems);
    // The first replica was really replaced (broken, then rolled back to a new process
    // of the previous executable); the others were never touched.
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let expected_new = i == 0;
        match (b, a) {
            (Ok(b), Ok(a)) if (a.pid != b.pid) == expected_new && a.exe == b.exe => {}
            (b, a) => r.problems.push(format!(
                "replica {}: before {b:?}, after {a:?} (expected {})",
                i + 1,
                if expected_new {
                    "a new process of the same executable"
                } else {
                    "the same process"
                }
            )),
        }
    }
    r.notes = format!(
        "recovery = script run until rolled back; fewest ready replicas {} over {} samples",
        readiness.fewest, readiness.samples
    );
    d.check_writes(&outcomes, &mut r.problems).await?;
    Ok(r)
}
