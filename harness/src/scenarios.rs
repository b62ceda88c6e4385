//! The drill: each scenario exercises one HA promise against the live cluster behind a
//! real load balancer, measures it, and leaves the cluster as it found it (three ready
//! replicas).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::Row as _;

use crate::balancer::{Balancer, BalancerKind};
use crate::cluster::{Cluster, Timings};
use crate::load::{percentiles, Kind, LoadRun, LoadSpec, Outcome, Workload};
use crate::proxy::Mode;
use crate::report::Row;

pub struct Drill {
    pub cluster: Cluster,
    pub balancer: Balancer,
    pub client: reqwest::Client,
    pub workload: Workload,
    pub dir: PathBuf,
}

/// The scenarios, in the order the drill runs them.
pub const SCENARIOS: [&str; 8] = [
    "steady state",
    "rolling update x3",
    "crash (SIGKILL)",
    "two replicas down",
    "PostgreSQL outage 10 s",
    "Redis outage 10 s",
    "failed rollout",
    "sticky sessions",
];

const OUTAGE: Duration = Duration::from_secs(10);

async fn scrape(client: &reqwest::Client, url: &str) -> String {
    match client.get(url).timeout(Duration::from_secs(2)).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Sum of every sample of a metric family.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Polls every replica's `/ready` in the background and remembers the fewest ready seen.
struct ReadyWatcher {
    stop: Arc<AtomicBool>,
    min: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyWatcher {
    fn start(drill: &Drill) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let min = Arc::new(AtomicUsize::new(usize::MAX));
        let urls: Vec<String> = drill
            .cluster
            .instances
            .iter()
            .map(|i| i.url("/ready"))
            .collect();
        let client = drill.client.clone();
        let task = tokio::spawn({
            let (stop, min) = (stop.clone(), min.clone());
            async move {
                while !stop.load(Ordering::SeqCst) {
                    let probes = urls.iter().map(|u| {
                        let request = client.get(u).timeout(Duration::from_millis(500)).send();
                        async move { request.await.is_ok_and(|r| r.status() == 200) }
                    });
                    let ready = futures::future::join_all(probes)
                        .await
                        .into_iter()
                        .filter(|r| *r)
                        .count();
                    min.fetch_min(ready, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self { stop, min, task }
    }

    async fn fewest_ready(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        self.min.load(Ordering::SeqCst)
    }
}

fn row(name: &str, balancer: BalancerKind, outcomes: &[Outcome]) -> Row {
    let (p50_ms, p95_ms, p99_ms) = percentiles(outcomes);
    Row {
        scenario: name.to_owned(),
        balancer: balancer.name(),
        requests: outcomes.len(),
        failed: outcomes.iter().filter(|o| !o.ok()).count(),
        p50_ms,
        p95_ms,
        p99_ms,
        detection: None,
        recovery: None,
        problems: Vec::new(),
        notes: String::new(),
    }
}

fn failures_summary(outcomes: &[Outcome]) -> String {
    let mut failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok())
        .take(5)
        .map(|o| {
            format!(
                "{:?} at {:.2}s: {:?} {}",
                o.kind,
                o.started.as_secs_f64(),
                o.status,
                o.error.as_deref().unwrap_or("")
            )
        })
        .collect();
    if failed.is_empty() {
        failed.push("none".to_owned());
    }
    failed.join(", ")
}

impl Drill {
    /// Starts the cluster and the balancer, then prepares the workload through it.
    pub async fn start(kind: BalancerKind, dir: &Path, timings: Timings) -> anyhow::Result<Self> {
        let cluster = Cluster::start(timings, &dir.join("cluster")).await?;
        let balancer = Balancer::start(kind, &cluster, &dir.join(kind.name())).await?;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(32)
            .build()?;
        let workload = Workload::prepare(&client, &balancer.url(""))
            .await
            .context("prepare the workload")?;
        Ok(Self {
            cluster,
            balancer,
            client,
            workload,
            dir: dir.to_owned(),
        })
    }

    pub async fn run(&self, scenario: &str) -> Row {
        let kind = self.balancer.kind;
        let result = match scenario {
            "steady state" => self.steady_state().await,
            "rolling update x3" => self.rolling_update().await,
            "crash (SIGKILL)" => self.crash().await,
            "two replicas down" => self.two_down().await,
            "PostgreSQL outage 10 s" => self.postgres_outage().await,
            "Redis outage 10 s" => self.redis_outage().await,
            "failed rollout" => self.failed_rollout().await,
            "sticky sessions" => self.sticky_sessions().await,
            other => Err(anyhow::anyhow!("unknown scenario {other}")),
        };
        let mut row = result.unwrap_or_else(|e| {
            let mut r = row(scenario, kind, &[]);
            r.problems.push(format!("{e:#}"));
            r
        });
        row.scenario = scenario.to_owned();
        // Leave three ready replicas behind, whatever happened.
        self.cluster.pg_proxy.set_mode(Mode::Forward);
        self.cluster.redis_proxy.set_mode(Mode::Forward);
        if self.cluster.ready_count(&self.client).await < 3 {
            if let Err(e) = self.cluster.restart_missing().await {
                row.problems
                    .push(format!("could not restore the cluster: {e:#}"));
            }
        }
        if !self.all_routed(Duration::from_secs(15)).await {
            row.problems
                .push("the balancer did not route to every replica afterwards".to_owned());
        }
        row
    }

    /// Writes the logs a person needs to see why a scenario failed.
    pub fn keep_logs(&self) -> PathBuf {
        let path = self.dir.join("replicas.log");
        let _ = std::fs::write(&path, self.cluster.logs());
        self.dir.clone()
    }

    fn load(&self, spec: LoadSpec) -> LoadRun {
        LoadRun::start(
            self.client.clone(),
            self.balancer.url(""),
            self.workload.clone(),
            spec,
        )
    }

    async fn all_routed(&self, within: Duration) -> bool {
        crate::process::wait_until(within, || async {
            let mut up = 0;
            for i in &self.cluster.instances {
                if self.balancer.server_up(&self.client, i).await == Some(true) {
                    up += 1;
                }
            }
            up == self.cluster.instances.len()
        })
        .await
    }

    /// Time until the balancer's own metrics show `instance` as `up` (or down).
    async fn until_routed(
        &self,
        index: usize,
        up: bool,
        since: Instant,
        within: Duration,
    ) -> Option<Duration> {
        let instance = &self.cluster.instances[index];
        crate::process::wait_until(within, || async {
            self.balancer.server_up(&self.client, instance).await == Some(up)
        })
        .await
        .then(|| since.elapsed())
    }

    /// Every write acknowledged with a 2xx is in the database exactly once, and no write
    /// was duplicated by a retry.
    async fn check_writes(
        &self,
        outcomes: &[Outcome],
        problems: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let mut conn = self.cluster.database.connect().await?;
        let rows = sqlx::query(
            "SELECT title, count(*) AS n FROM items WHERE title LIKE 'drill-%' GROUP BY title",
        )
        .fetch_all(&mut conn)
        .await?;
        let counts: std::collections::HashMap<String, i64> = rows
            .iter()
            .map(|r| (r.get::<String, _>("title"), r.get::<i64, _>("n")))
            .collect();
        let duplicated = counts.values().filter(|n| **n > 1).count();
        if duplicated > 0 {
            problems.push(format!("{duplicated} writes duplicated by retries"));
        }
        let lost = outcomes
            .iter()
            .filter(|o| o.kind == Kind::Write && o.ok())
            .filter(|o| {
                !counts.contains_key(&format!(
                    "drill-{}",
                    o.idempotency_key.as_deref().unwrap_or_default()
                ))
            })
            .count();
        if lost > 0 {
            problems.push(format!(
                "{lost} acknowledged writes missing from PostgreSQL"
            ));
        }
        Ok(())
    }

    async fn steady_state(&self) -> anyhow::Result<Row> {
        let before = self.distribution().await;
        let outcomes = self
            .load(LoadSpec {
                max_requests: 300,
                ..LoadSpec::default()
            })
            .finish()
            .await;
        let after = self.distribution().await;
        let mut r = row("steady state", self.balancer.kind, &outcomes);
        let served: Vec<f64> = before.iter().zip(&after).map(|(b, a)| a - b).collect();
        let mean = served.iter().sum::<f64>() / served.len() as f64;
        let worst = served
            .iter()
            .map(|s| (s - mean).abs() / mean.max(1.0))
            .fold(0.0, f64::max);
        r.notes = format!(
            "per replica: {} (max deviation {:.1} %)",
            served
                .iter()
                .map(|s| format!("{s:.0}"))
                .collect::<Vec<_>>()
                .join(" / "),
            worst * 100.0
        );
        if worst > 0.10 {
            r.problems
                .push(format!("distribution off by {:.1} %", worst * 100.0));
        }
        if r.failed > 0 {
            r.problems
                .push(format!("failed requests: {}", failures_summary(&outcomes)));
        }
        self.check_writes(&outcomes, &mut r.problems).await?;
        Ok(r)
    }

    /// `request_distribution_total` of each replica, read from its own metrics port.
    async fn distribution(&self) -> Vec<f64> {
        let mut values = Vec::new();
        for i in &self.cluster.instances {
            values.push(metric_sum(
                &scrape(&self.client, &i.metrics_url()).await,
                "request_distribution_total",
            ));
        }
        values
    }

    async fn rolling_update(&self) -> anyhow::Result<Row> {
        let load = self.load(LoadSpec::default());
        let watcher = ReadyWatcher::start(self);
        let mut problems = Vec::new();
        let mut durations = Vec::new();
        for round in 0..3 {
            let version = self.cluster.version(if round % 2 == 0 {
                "cartae-v2"
            } else {
                "cartae-v1"
            })?;
            let started = Instant::now();
            let outcome = self.cluster.script(&[&version.to_string_lossy()]).await?;
            durations.push(started.elapsed());
            if !outcome.success {
                problems.push(format!(
                    "rollout {} failed (exit {:?}):\n{}",
                    round + 1,
                    outcome.code,
                    outcome.output
                ));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let outcomes = load.stop().await;
        let fewest = watcher.fewest_ready().await;
        let mut r = row("rolling update x3", self.balancer.kind, &outcomes);
        r.problems = problems;
        if r.failed > 0 {
            r.problems.push(format!(
                "{} failed requests: {}",
                r.failed,
                failures_summary(&outcomes)
            ));
        }
        if fewest < 2 {
            r.problems
                .push(format!("only {fewest} replicas ready at some point"));
        }
        let mean = durations.iter().sum::<Duration>() / durations.len().max(1) as u32;
        r.recovery = Some(mean);
        r.notes = format!("recovery = mean rollout time; fewest ready replicas: {fewest}");
        self.check_writes(&outcomes, &mut r.problems).await?;
        Ok(r)
    }

    async fn crash(&self) -> anyhow::Result<Row> {
        let load = self.load(LoadSpec::default());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let killed = Instant::now();
        self.cluster.crash(1)?;
        let detection = self
            .until_routed(1, false, killed, Duration::from_secs(10))
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let outcomes = load.stop().await;
        let restarted = Instant::now();
        self.cluster.restart_missing().await?;
        let recovery = self
            .until_routed(1, true, restarted, Duration::from_secs(15))
            .await;
        let mut r = row("crash (SIGKILL)", self.balancer.kind, &outcomes);
        r.detection = detection;
        r.recovery = recovery;
        if detection.is_none() {
            r.problems
                .push("the balancer never marked the killed replica down".to_owned());
        }
        if r.failed > 0 {
            r.problems.push(format!(
                "{} failed requests: {}",
                r.failed,
                failures_summary(&outcomes)
            ));
        }
        let retried = outcomes.iter().filter(|o| o.attempts > 1).count();
        r.notes = format!("detection = until the balancer marks it down; recovery = restart until routed; {retried} client retries");
        self.check_writes(&outcomes, &mut r.problems).await?;
        Ok(r)
    }

    async fn two_down(&self) -> anyhow::Result<Row> {
        let load = self.load(LoadSpec::default());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let killed = Instant::now();
        let killed_at = killed.duration_since(load.started);
        self.cluster.crash(0)?;
        self.cluster.crash(2)?;
        let first = self
            .until_routed(0, false, killed, Duration::from_secs(10))
            .await;
        let second = self
            .until_routed(2, false, killed, Duration::from_secs(10))
            .await;
        let detection = first.zip(second).map(|(a, b)| a.max(b));
        // The last replica carries everything for a while.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let outcomes = load.stop().await;
        let restarted = Instant::now();
        self.cluster.restart_missing().await?;
        let recovery = self
            .all_routed(Duration::from_secs(15))
            .await
            .then(|| restarted.elapsed());
        let mut r = row("two replicas down", self.balancer.kind, &outcomes);
        r.detection = detection;
        r.recovery = recovery;
        // A request may fail only if it started while its replica was being killed, that
        // is before the balancer had taken both out.
        let window_end =
            killed_at + detection.unwrap_or(Duration::from_secs(10)) + Duration::from_millis(500);
        let late_failures = outcomes
            .iter()
            .filter(|o| !o.ok() && o.started > window_end)
            .count();
        let survivors: std::collections::HashSet<_> = outcomes
            .iter()
            .rev()
            .take(20)
            .filter_map(|o| o.instance.clone())
            .collect();
        let failed_kinds: Vec<String> = outcomes
            .iter()
            .filter(|o| !o.ok())
            .map(|o| {
                format!(
                    "{:?} {}",
                    o.kind,
                    o.status.map_or("no answer".to_owned(), |s| s.to_string())
                )
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let kinds = if failed_kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed_kinds.join(", "))
        };
        r.notes = format!(
            "{} failed while replicas were being killed{kinds}; last served by {survivors:?}",
            r.failed
        );
        if late_failures > 0 {
            r.problems.push(format!(
                "{late_failures} requests failed after the kills were detected"
            ));
        }
        if detection.is_none() {
            r.problems
                .push("the balancer never marked both killed replicas down".to_owned());
        }
        self.check_writes(&outcomes, &mut r.problems).await?;
        Ok(r)
    }

    /// Time until every replica's `path` (polled directly, not through the balancer)
    /// answers with a status and JSON body that satisfy `check`.
    async fn until_all(
        &self,
        path: &str,
        check: impl Fn(u16, &serde_json::Value) -> bool,
        since: Instant,
        within: Duration,
    ) -> Option<Duration> {
        crate::process::wait_until(within, || async {
            let mut matching = 0;
            for i in &self.cluster.instances {
                let request = self
                    .client
                    .get(i.url(path))
                    .timeout(Duration::from_millis(500));
                if let Ok(r) = request.send().await {
                    let status = r.status().as_u16();
                    if check(status, &r.json().await.unwrap_or_default()) {
                        matching += 1;
                    }
                }
            }
            matching == self.cluster.instances.len()
        })
        .await
        .then(|| since.elapsed())
    }

    fn two_intervals(&self) -> Duration {
        let t = &self.cluster.timings;
        // Two check intervals, plus one check's timeout, plus the polling step.
        t.check_interval * 2 + t.check_timeout + Duration::from_millis(200)
    }

    async fn pids(&self) -> Vec<Option<i32>> {
        (0..self.cluster.instances.len())
            .map(|i| self.cluster.pid(i))
            .collect()
    }

    async fn postgres_outage(&self) -> anyhow::Result<Row> {
        let pids = self.pids().await;
        let load = self.load(LoadSpec {
            mix: [5, 5, 0],
            ..LoadSpec::default()
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cut = Instant::now();
        self.cluster.pg_proxy.set_mode(Mode::Cut);
        let detection = self
            .until_all("/ready", |s, _| s == 503, cut, Duration::from_secs(5))
            .await;
        let mut live_failures = 0;
        while cut.elapsed() < OUTAGE {
            for i in &self.cluster.instances {
                let live = self
                    .client
                    .get(i.url("/live"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await;
                if !live.is_ok_and(|r| r.status() == 200) {
                    live_failures += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let restored = Instant::now();
        self.cluster.pg_proxy.set_mode(Mode::Forward);
        let recovery = self
            .until_all("/ready", |s, _| s == 200, restored, Duration::from_secs(10))
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let outcomes = load.stop().await;
        let mut r = row("PostgreSQL outage 10 s", self.balancer.kind, &outcomes);
        r.detection = detection;
        r.recovery = recovery;
        let limit = self.two_intervals();
        match detection {
            Some(d) if d <= limit => {}
            other => r.problems.push(format!(
                "/ready not 503 everywhere within {limit:?} (took {other:?})"
            )),
        }
        match recovery {
            Some(d) if d <= limit => {}
            other => r.problems.push(format!(
                "/ready not 200 everywhere within {limit:?} after recovery (took {other:?})"
            )),
        }
        if live_failures > 0 {
            r.problems.push(format!(
                "/live failed {live_failures} times during the outage"
            ));
        }
        if self.pids().await != pids {
            r.problems.push("a replica restarted".to_owned());
        }
        r.notes = "failed = requests refused during the outage (expected); RPO 0 checked for acknowledged writes".to_owned();
        self.check_writes(&outcomes, &mut r.problems).await?;
        Ok(r)
    }

    async fn cache_hits(&self) -> f64 {
        let mut hits = 0.0;
        for i in &self.cluster.instances {
            hits += metric_sum(
                &scrape(&self.client, &i.metrics_url()).await,
                "cache_hits_total",
            );
        }
        hits
    }

    async fn redis_outage(&self) -> anyhow::Result<Row> {
        let load = self.load(LoadSpec::default());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cut = Instant::now();
        self.cluster.redis_proxy.set_mode(Mode::Cut);
        let redis_failed_but_degraded = |b: &serde_json::Value| {
            b["checks"]["redis"]["status"] == "failed" && b["status"] == "degraded"
        };
        let detection = self
            .until_all(
                "/health",
                |_, b| redis_failed_but_degraded(b),
                cut,
                Duration::from_secs(5),
            )
            .await;
        let mut not_ready = 0;
        while cut.elapsed() < OUTAGE {
            for i in &self.cluster.instances {
                let ready = self
                    .client
                    .get(i.url("/ready"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await;
                if !ready.is_ok_and(|r| r.status() == 200) {
                    not_ready += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let hits_before = self.cache_hits().await;
        let restored = Instant::now();
        self.cluster.redis_proxy.set_mode(Mode::Forward);
        let recovery = self
            .until_all(
                "/health",
                |_, b| b["checks"]["redis"]["status"] == "ok",
                restored,
                Duration::from_secs(5),
            )
            .await;
        let cache_back = crate::process::wait_until(Duration::from_secs(10), || async {
            self.cache_hits().await > hits_before
        })
        .await;
        let outcomes = load.stop().await;
        let mut r = row("Redis outage 10 s", self.balancer.kind, &outcomes);
        r.detection = detection;
        r.recovery = recovery;
        let server_errors = outcomes
            .iter()
            .filter(|o| o.status.is_none_or(|s| s >= 500))
            .count();
        if server_errors > 0 {
            r.problems.push(format!(
                "{server_errors} 5xx or failed requests: {}",
                failures_summary(&outcomes)
            ));
        }
        if detection.is_none() {
            r.problems.push(
                "/health never reported redis failed and status degraded on every replica"
                    .to_owned(),
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
        r.notes = "detection = until every /health says redis failed, status degraded; \
                   recovery = until redis ok"
            .to_owned();
        self.check_writes(&outcomes, &mut r.problems).await?;
        Ok(r)
    }

    async fn failed_rollout(&self) -> anyhow::Result<Row> {
        let load = self.load(LoadSpec::default());
        let watcher = ReadyWatcher::start(self);
        let broken = self.cluster.broken_version()?;
        let started = Instant::now();
        let outcome = self.cluster.script(&[&broken.to_string_lossy()]).await?;
        let rolled_back = started.elapsed();
        let ready_again = self
            .cluster
            .wait_all_ready(&self.client, Duration::from_secs(15))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let outcomes = load.stop().await;
        let fewest = watcher.fewest_ready().await;
        let mut r = row("failed rollout", self.balancer.kind, &outcomes);
        r.recovery = Some(rolled_back);
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
        if fewest < 2 {
            r.problems
                .push(format!("only {fewest} replicas ready at some point"));
        }
        if r.failed > 0 {
            r.problems.push(format!(
                "{} failed requests: {}",
                r.failed,
                failures_summary(&outcomes)
            ));
        }
        let versions: Vec<String> = self
            .cluster
            .instances
            .iter()
            .map(|i| {
                std::fs::read_to_string(self.cluster.state_dir.join(format!("{}.version", i.name)))
                    .unwrap_or_default()
            })
            .collect();
        if versions.iter().any(|v| v.contains("broken-version")) {
            r.problems
                .push("a replica still runs the broken version".to_owned());
        }
        r.notes =
            format!("recovery = script run until rolled back; fewest ready replicas: {fewest}");
        self.check_writes(&outcomes, &mut r.problems).await?;
        Ok(r)
    }

    async fn sticky_sessions(&self) -> anyhow::Result<Row> {
        let load = self.load(LoadSpec {
            workers: 1,
            rate: 20.0,
            mix: [10, 0, 0],
            sticky: true,
            ..LoadSpec::default()
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The replica this client is pinned to: the one that served its last request.
        let pinned = self
            .pinned_instance()
            .await
            .context("no response named its replica")?;
        let index = self
            .cluster
            .instances
            .iter()
            .position(|i| i.name == pinned)
            .context("pinned to an unknown replica")?;
        let killed = Instant::now();
        self.cluster.crash(index)?;
        let detection = self
            .until_routed(index, false, killed, Duration::from_secs(10))
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let outcomes = load.stop().await;
        let mut r = row("sticky sessions", self.balancer.kind, &outcomes);
        r.detection = detection;
        let served: Vec<(Duration, Option<String>)> = outcomes
            .iter()
            .map(|o| (o.started, o.instance.clone()))
            .collect();
        // Before the kill every answer came from the pinned replica; afterwards from one
        // other replica, consistently (re-pinned).
        let before: Vec<&Option<String>> = served
            .iter()
            .take_while(|(_, i)| i.as_deref() == Some(pinned.as_str()))
            .map(|(_, i)| i)
            .collect();
        let after: Vec<&str> = served[before.len()..]
            .iter()
            .filter_map(|(_, i)| i.as_deref())
            .collect();
        let distinct_after: std::collections::BTreeSet<&str> = after.iter().copied().collect();
        if before.len() < 10 {
            r.problems.push(format!(
                "only {} answers from the pinned replica before the kill",
                before.len()
            ));
        }
        if distinct_after.len() != 1 || distinct_after.contains(pinned.as_str()) {
            r.problems.push(format!(
                "after the kill served by {distinct_after:?}, expected one other replica"
            ));
        }
        if r.failed > 0 {
            r.problems.push(format!(
                "{} failed requests: {}",
                r.failed,
                failures_summary(&outcomes)
            ));
        }
        r.notes = format!("pinned to {pinned}, re-pinned to {distinct_after:?}");
        Ok(r)
    }

    async fn pinned_instance(&self) -> Option<String> {
        // A probe through the balancer without the cookie would be balanced elsewhere, so
        // ask the replicas' metrics: the pinned one is the one whose item reads grow.
        let mut counts = Vec::new();
        for i in &self.cluster.instances {
            counts.push(metric_sum(
                &scrape(&self.client, &i.metrics_url()).await,
                "request_distribution_total",
            ));
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let mut best: Option<(f64, String)> = None;
        for (k, i) in self.cluster.instances.iter().enumerate() {
            let grew = metric_sum(
                &scrape(&self.client, &i.metrics_url()).await,
                "request_distribution_total",
            ) - counts[k];
            if best.as_ref().is_none_or(|(g, _)| grew > *g) {
                best = Some((grew, i.name.clone()));
            }
        }
        best.map(|(_, name)| name)
    }
}
