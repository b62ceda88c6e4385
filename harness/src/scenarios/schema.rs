//! Releases that change the schema. Release N+1 is played without a second build: its
//! additive migration is applied with SQL exactly as its `migrate` step would, record
//! included (`database::apply_next_release_migration`). The replicas, of release N, must
//! then keep serving on that newer schema, start on it, and roll forward and back on it.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::crash::PHASE;
use super::shared::{judge, row, same_processes, ReadyWatcher};
use super::Drill;
use crate::database::{advisory_locks, apply_next_release_migration, NEXT_RELEASE_VERSION};
use crate::load::LoadSpec;
use crate::report::Row;

/// The script's runs here outlast no load: only the scenario's stop ends it.
fn load_spec() -> LoadSpec {
    LoadSpec {
        max_duration: Duration::from_secs(3600),
        ..LoadSpec::default()
    }
}

/// No advisory lock may outlive a migration, failed or not.
async fn no_lock_left(d: &Drill, problems: &mut Vec<String>) -> anyhow::Result<()> {
    let mut conn = d.cluster.database.connect().await?;
    let held = advisory_locks(&mut conn, &d.cluster.database.name).await?;
    if held > 0 {
        problems.push(format!(
            "{held} advisory lock(s) still held after the migrations"
        ));
    }
    Ok(())
}

/// Under load: N+1's migration step, the script's rollout of N+1 (its own migration step
/// first), then its rollback to N. Zero failed requests, one replica out at a time.
pub(super) async fn roll_forward_and_back(d: &Drill) -> anyhow::Result<Row> {
    let load = d.load(load_spec());
    let watcher = ReadyWatcher::start(d);
    let started = Instant::now();
    let mut problems = Vec::new();
    apply_next_release_migration(&mut d.cluster.database.connect().await?)
        .await
        .context("release N+1's migration")?;
    for (step, version) in [("roll forward", "cartae-next"), ("roll back", "cartae-v1")] {
        let target = d.cluster.version(version)?;
        let outcome = d.cluster.script(&[&target.to_string_lossy()]).await?;
        if !outcome.success {
            problems.push(format!(
                "{step} failed (exit {:?}):\n{}",
                outcome.code, outcome.output
            ));
            break;
        }
    }
    let elapsed = started.elapsed();
    let readiness = watcher.stop().await?;
    let outcomes = load.stop().await?;
    let mut r = row("schema: roll forward and back", d, &outcomes);
    r.problems = problems;
    r.recovery = Some(elapsed);
    judge(
        &mut r,
        &outcomes,
        "none: the migration only adds, so N serves on N+1's schema, and each replica \
         leaves only after the balancer stopped routing to it",
        |_| false,
    );
    readiness.check_one_out(d.cluster.instances.len(), elapsed, &mut r.problems);
    no_lock_left(d, &mut r.problems).await?;
    r.notes = format!(
        "recovery = migration + rollout + rollback; fewest ready replicas {} over {} samples",
        readiness.fewest, readiness.samples
    );
    d.check_writes(&outcomes, &mut r.problems).await?;
    Ok(r)
}

/// Under load: a release whose migration fails on the live schema. The drill sets aside
/// the record of an applied migration, so the step re-runs it and meets the tables it
/// created: a real failure of the real migrator. The record is put back afterwards.
pub(super) async fn failed_migration(d: &Drill) -> anyhow::Result<Row> {
    let mut conn = d.cluster.database.connect().await?;
    // Set aside (a negative version, which the binary ignores as unknown), not deleted.
    let hidden: i64 = sqlx::query_scalar(
        "UPDATE _sqlx_migrations SET version = -version WHERE version = (SELECT max(version) \
         FROM _sqlx_migrations WHERE version > 0 AND version < $1) RETURNING -version",
    )
    .bind(NEXT_RELEASE_VERSION)
    .fetch_one(&mut conn)
    .await
    .context("set a migration's record aside")?;
    let before = d.cluster.identities(&d.client).await;
    let load = d.load(load_spec());
    let watcher = ReadyWatcher::start(d);
    let started = Instant::now();
    // A phase of load before and after: the cluster serves on while the step fails.
    d.until_successes(&load, PHASE, Duration::from_secs(10))
        .await;
    let target = d.cluster.version("cartae-bad-migration")?;
    let script_started = Instant::now();
    let outcome = d.cluster.script(&[&target.to_string_lossy()]).await;
    let stopped_after = script_started.elapsed();
    d.until_successes(&load, PHASE, Duration::from_secs(10))
        .await;
    let elapsed = started.elapsed();
    let readiness = watcher.stop().await?;
    let outcomes = load.stop().await?;
    sqlx::query("UPDATE _sqlx_migrations SET version = $1 WHERE version = -$1")
        .bind(hidden)
        .execute(&mut conn)
        .await
        .context("put the migration's record back")?;
    let outcome = outcome?;
    let after = d.cluster.identities(&d.client).await;
    let mut r = row("schema: failed migration", d, &outcomes);
    r.recovery = Some(stopped_after);
    judge(
        &mut r,
        &outcomes,
        "none: the rollout stops at its migration step, before any replica is replaced",
        |_| false,
    );
    if outcome.code != Some(1) || !outcome.output.contains("Migration step FAILED") {
        r.problems.push(format!(
            "the script did not stop at the migration step (exit {:?}):\n{}",
            outcome.code, outcome.output
        ));
    }
    same_processes(&before, &after, &mut r.problems);
    readiness.check_all_in(d.cluster.instances.len(), elapsed, &mut r.problems);
    no_lock_left(d, &mut r.problems).await?;
    r.notes = format!(
        "recovery = script run until it stopped; fewest ready replicas {} over {} samples",
        readiness.fewest, readiness.samples
    );
    d.check_writes(&outcomes, &mut r.problems).await?;
    Ok(r)
}

/// A replica of N killed once N+1's migration is in: it comes back, and serves.
pub(super) async fn restart_on_newer_schema(d: &Drill) -> anyhow::Result<Row> {
    apply_next_release_migration(&mut d.cluster.database.connect().await?)
        .await
        .context("release N+1's migration")?;
    let (mut r, _, _) =
        super::crash::kill_under_load(d, "schema: restart on a newer schema", &[1]).await?;
    no_lock_left(d, &mut r.problems).await?;
    r.notes
        .push_str("; the schema has a migration the replica does not know");
    Ok(r)
}
