//! Rolling update x3: the shipped script replaces every replica, three times, under load,
//! with no failed request and one replica out at a time.

use std::time::{Duration, Instant};

use super::shared::{judge, row, ReadyWatcher};
use super::Drill;
use crate::cluster::Identity;
use crate::load::LoadSpec;
use crate::report::Row;

const ROUNDS: usize = 3;

pub(super) async fn run(d: &Drill) -> anyhow::Result<Row> {
    let spec = LoadSpec {
        // Longer than any rollout: only the scenario's stop ends the load (and
        // `LoadRun::stop` fails if a limit did).
        max_duration: Duration::from_secs(3600),
        ..LoadSpec::default()
    };
    let rate = spec.rate;
    let load = d.load(spec);
    let watcher = ReadyWatcher::start(d);
    let started = Instant::now();
    let mut problems = Vec::new();
    let mut durations = Vec::new();
    for round in 1..=ROUNDS {
        let target = d.cluster.version(if round % 2 == 1 {
            "cartae-v2"
        } else {
            "cartae-v1"
        })?;
        let before = d.cluster.identities(&d.client).await;
        let round_started = Instant::now();
        let outcome = d.cluster.script(&[&target.to_string_lossy()]).await?;
        durations.push(round_started.elapsed());
        if !outcome.success {
            problems.push(format!(
                "rollout {round} failed (exit {:?}):\n{}",
                outcome.code, outcome.output
            ));
            break;
        }
        let after = d.cluster.identities(&d.client).await;
        replaced(round, &before, &after, &target, &mut problems);
    }
    let rollout = started.elapsed();
    let readiness = watcher.stop().await?;
    let outcomes = load.stop().await?;
    let mut r = row("rolling update x3", d, &outcomes);
    r.problems = problems;
    judge(
        &mut r,
        &outcomes,
        "none: a replica leaves only after the balancer stopped routing to it",
        |_| false,
    );
    readiness.check_one_out(d.cluster.instances.len(), rollout, &mut r.problems);
    // Half the paced rate over the whole rollout: the load really ran throughout.
    let minimum = (rate * rollout.as_secs_f64() / 2.0) as usize;
    if outcomes.len() < minimum {
        r.problems.push(format!(
            "only {} requests during a {:.0?} rollout, expected at least {minimum}",
            outcomes.len(),
            rollout
        ));
    }
    let mean = durations.iter().sum::<Duration>() / durations.len().max(1) as u32;
    r.recovery = Some(mean);
    r.notes = format!(
        "recovery = mean rollout time; {ROUNDS} rounds, each replica's pid and executable \
         checked after each; fewest ready replicas {} over {} samples",
        readiness.fewest, readiness.samples
    );
    d.check_writes(&outcomes, &mut r.problems).await?;
    Ok(r)
}

/// Every replica now runs in a new process (the real one, read from the replica and
/// the kernel, not from the script's pid files) of the round's executable.
fn replaced(
    round: usize,
    before: &[Result<Identity, String>],
    after: &[Result<Identity, String>],
    target: &std::path::Path,
    problems: &mut Vec<String>,
) {
    let wanted = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        let replica = i + 1;
        match (b, a) {
            (Ok(b), Ok(a)) => {
                if a.pid == b.pid || a.start_ticks == b.start_ticks {
                    problems.push(format!(
                        "round {round}: replica {replica} kept its process (pid {})",
                        a.pid
                    ));
                }
                if a.version() != wanted || a.exe == b.exe {
                    problems.push(format!(
                        "round {round}: replica {replica} runs {} (was {}), expected {wanted}",
                        a.version(),
                        b.version()
                    ));
                }
            }
            (b, a) => problems.push(format!(
                "round {round}: replica {replica} unknown (before {b:?}, after {a:?})"
            )),
        }
    }
}
