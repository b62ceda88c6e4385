//! PostgreSQL and Redis cut for 10 s under load, through the proxies in front of them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::shared::{judge, row, same_processes, Window};
use super::Drill;
use crate::balancer::BalancerKind;
use crate::load::LoadSpec;
use crate::proxy::Mode;
use crate::report::Row;

const OUTAGE: Duration = Duration::from_secs(10);

/// Successful data requests required once the outage is over: one second of the drill's
/// load, about 20 per replica, reads and writes alternating, so a replica whose pool did
/// not recover would fail a third of them.
const AFTER_RECOVERY: usize = 60;

pub(super) async fn postgres(d: &Drill) -> anyhow::Result<Row> {
    let before = d.cluster.identities(&d.client).await;
    let load = d.load(LoadSpec {
        mix: [5, 5, 0, 0],
        history: true,
        ..LoadSpec::default()
    });
    d.until_successes(&load, AFTER_RECOVERY, Duration::from_secs(10))
        .await;
    let cut = Instant::now();
    d.cluster.pg_proxy.set_mode(Mode::Cut);
    let detection = d
        .until_all("/ready", |s, _| s == 503, cut, Duration::from_secs(5))
        .await;
    let live_failures = d.probe_failures("/live", cut + OUTAGE).await;
    let restored = Instant::now();
    d.cluster.pg_proxy.set_mode(Mode::Forward);
    let recovery = d
        .until_all("/ready", |s, _| s == 200, restored, Duration::from_secs(10))
        .await;
    let routed = d
        .all_routed(Duration::from_secs(15))
        .await
        .then(|| restored.elapsed());
    let settled = Instant::now();
    d.until_successes(&load, AFTER_RECOVERY, Duration::from_secs(15))
        .await;
    let window = Window::of(&load, cut, settled);
    let history = load.history();
    let outcomes = load.stop().await?;
    let history = history.take();
    let mut r = row("PostgreSQL outage 10 s", d, &outcomes);
    r.detection = detection;
    r.recovery = routed;
    judge(
        &mut r,
        &outcomes,
        "only 503 with Retry-After, only for requests in flight between the cut and the \
         moment the balancer routes to every replica again (the data is unreachable); \
         none before the cut or after. Behind Traefik, its own 503 while no replica is \
         ready (no X-Instance-Id) has no Retry-After: Traefik cannot add one without an \
         extra error-page service",
        |o| {
            let balancer_own =
                o.first.instance.is_none() && d.balancer.kind == BalancerKind::Traefik;
            window.overlaps(o)
                && o.first.status == Some(503)
                && (o.first.retry_after || balancer_own)
        },
    );
    let limit = d.two_intervals();
    match detection {
        Some(t) if t <= limit => {}
        other => r.problems.push(format!(
            "/ready not 503 everywhere within {limit:?} (took {other:?})"
        )),
    }
    match recovery {
        Some(t) if t <= limit => {}
        other => r.problems.push(format!(
            "/ready not 200 everywhere within {limit:?} after recovery (took {other:?})"
        )),
    }
    // HAProxy puts a server back after two good checks (`rise 2`), Traefik after one.
    let reroute_limit = limit + d.lb_round() * 2;
    match routed {
        Some(t) if t <= reroute_limit => {}
        other => r.problems.push(format!(
            "not routed to every replica within {reroute_limit:?} after recovery (took {other:?})"
        )),
    }
    let after: Vec<_> = outcomes.iter().filter(|o| o.started > window.to).collect();
    let served_by: BTreeSet<&str> = after
        .iter()
        .filter(|o| o.ok())
        .filter_map(|o| o.last.instance.as_deref())
        .collect();
    if after.len() < AFTER_RECOVERY || served_by.len() < d.cluster.instances.len() {
        r.problems.push(format!(
            "after recovery {} requests served by {served_by:?}, expected at least {AFTER_RECOVERY} from every replica",
            after.len()
        ));
    }
    if live_failures > 0 {
        r.problems.push(format!(
            "/live failed {live_failures} times during the outage"
        ));
    }
    same_processes(
        &before,
        &d.cluster.identities(&d.client).await,
        &mut r.problems,
    );
    r.notes = format!(
        "{} requests after recovery; recovery = until the balancer routes every replica again \
         (/ready 200 everywhere after {recovery:?}); no restart (real pids); RPO 0 for acknowledged writes",
        after.len()
    );
    d.check_writes(&outcomes, &mut r.problems).await?;
    d.check_history(&d.workload, &history, &mut r).await?;
    Ok(r)
}

pub(super) async fn redis(d: &Drill) -> anyhow::Result<Row> {
    let before = d.cluster.identities(&d.client).await;
    let load = d.load(LoadSpec::default());
    d.until_successes(&load, AFTER_RECOVERY, Duration::from_secs(10))
        .await;
    let cut = Instant::now();
    d.cluster.redis_proxy.set_mode(Mode::Cut);
    let redis_failed_but_degraded = |b: &serde_json::Value| {
        b["checks"]["redis"]["status"] == "failed" && b["status"] == "degraded"
    };
    let detection = d
        .until_all(
            "/health",
            |_, b| redis_failed_but_degraded(b),
            cut,
            Duration::from_secs(5),
        )
        .await;
    let not_ready = d.probe_failures("/ready", cut + OUTAGE).await;
    let hits_before: f64 = d.metric_per_replica("cache_hits_total").await.iter().sum();
    let restored = Instant::now();
    d.cluster.redis_proxy.set_mode(Mode::Forward);
    let recovery = d
        .until_all(
            "/health",
            |_, b| b["checks"]["redis"]["status"] == "ok",
            restored,
            Duration::from_secs(5),
        )
        .await;
    let cache_back = crate::process::wait_until(Duration::from_secs(10), || async {
        d.metric_per_replica("cache_hits_total")
            .await
            .iter()
            .sum::<f64>()
            > hits_before
    })
    .await;
    let outcomes = load.stop().await?;
    let mut r = row("Redis outage 10 s", d, &outcomes);
    r.detection = detection;
    r.recovery = recovery;
    judge(
        &mut r,
        &outcomes,
        "none: Redis is a cache, PostgreSQL answers everything (a 401 from a revocation \
         check failing closed counts too)",
        |_| false,
    );
    if detection.is_none() {
        r.problems.push(
            "/health never reported redis failed and status degraded on every replica".to_owned(),
        );
    }
    if not_ready > 0 {
        r.problems.push(format!(
            "/ready was not 200 {not_ready} times during the outage"
        ));
    }
    if !cache_back {
        r.problems
            .push("the cache was not used again after Redis returned".to_owned());
    }
    same_processes(
        &before,
        &d.cluster.identities(&d.client).await,
        &mut r.problems,
    );
    r.notes = "detection = until every /health says redis failed, status degraded; \
               recovery = until redis ok; no restart (real pids)"
        .to_owned();
    d.check_writes(&outcomes, &mut r.problems).await?;
    Ok(r)
}

impl Drill {
    fn two_intervals(&self) -> Duration {
        let t = &self.cluster.timings;
        // Two check intervals, plus one check's timeout, plus the polling step.
        t.check_interval * 2 + t.check_timeout + Duration::from_millis(200)
    }
}
