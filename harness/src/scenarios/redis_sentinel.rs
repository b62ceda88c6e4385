//! Redis master killed (SIGKILL) under mixed load, the replicas reaching Redis through
//! Sentinel ([`crate::sentinel`]). Sentinel, not the drill, promotes the replica; the
//! replicas are told nothing and must follow by themselves. Run by
//! `harness/tests/redis_sentinel.rs`, with a data tier of its own, so it is not in
//! [`super::SCENARIOS`].

use std::time::{Duration, Instant};

use super::shared::{judge, row, same_processes};
use super::Drill;
use crate::load::LoadSpec;
use crate::report::Row;
use crate::tier::sentinel::SentinelGroup;

pub const NAME: &str = "Redis master killed (Sentinel)";

/// The promise: every replica's Redis check is ok again, on the new master, this soon
/// after the kill.
const FOLLOW_WITHIN: Duration = Duration::from_secs(20);
/// Successful requests before the kill and after the recovery: a second or so of load.
const SETTLED: usize = 60;

pub async fn run(d: &Drill, group: &mut SentinelGroup) -> anyhow::Result<Row> {
    let before = d.cluster.identities(&d.client).await;
    let load = d.load(LoadSpec::default());
    d.until_successes(&load, SETTLED, Duration::from_secs(10))
        .await;
    let old = group.master().await?;
    let killed = Instant::now();
    group.kill_node(old)?;
    let promoted = group.wait_new_master(old, FOLLOW_WITHIN).await;
    let new = promoted.as_ref().ok().map(ToString::to_string);
    let promoted_after = killed.elapsed();
    let recovery = match &new {
        Some(new) => {
            let on_new_master = |_: u16, b: &serde_json::Value| {
                b["checks"]["redis"]["status"] == "ok"
                    && b["topology"]["redis"]["master"].as_str() == Some(new)
            };
            let left = FOLLOW_WITHIN.saturating_sub(killed.elapsed());
            d.until_all("/health/detailed", on_new_master, killed, left)
                .await
        }
        None => None,
    };
    let hits_after_recovery = d.metric_per_replica("cache_hits_total").await;
    let hits_resumed = crate::process::wait_until(Duration::from_secs(10), || async {
        let now = d.metric_per_replica("cache_hits_total").await;
        now.iter().zip(&hits_after_recovery).all(|(n, b)| n > b)
    })
    .await;
    d.until_successes(&load, SETTLED, Duration::from_secs(10))
        .await;
    let outcomes = load.stop().await?;
    let mut r = row(NAME, d, &outcomes);
    r.detection = Some(promoted_after).filter(|_| new.is_some());
    r.recovery = recovery;
    judge(
        &mut r,
        &outcomes,
        "none: Redis is a cache, PostgreSQL answers while the replicas follow the new master",
        |_| false,
    );
    if let Err(e) = promoted {
        r.problems
            .push(format!("Sentinel promoted no replica: {e:#}"));
    }
    if new.is_some() && recovery.is_none() {
        r.problems.push(format!(
            "not every replica's /health/detailed said redis ok on the new master within {FOLLOW_WITHIN:?} of the kill"
        ));
    }
    if !hits_resumed {
        r.problems
            .push("cache hits did not resume on every replica after the failover".to_owned());
    }
    same_processes(
        &before,
        &d.cluster.identities(&d.client).await,
        &mut r.problems,
    );
    r.notes = format!(
        "detection = kill until the sentinels agree on the promoted replica ({old} -> {}; \
         down-after 1 s); recovery = kill until every /health/detailed says redis ok on it; \
         cache hits rose on every replica after; no restart (real pids)",
        new.as_deref().unwrap_or("none")
    );
    d.check_writes(&outcomes, &mut r.problems).await?;
    Ok(r)
}
