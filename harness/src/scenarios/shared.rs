//! What every scenario counts and watches with: rows built from first attempts, failure
//! budgets, time windows, the readiness watcher, and the polls of replicas and balancer.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::Row as _;

use super::Drill;
use crate::cluster::Identity;
use crate::load::{percentiles, quantile, Kind, LoadRun, Outcome};
use crate::report::Row;

pub(super) async fn scrape(client: &reqwest::Client, url: &str) -> String {
    match client.get(url).timeout(Duration::from_secs(2)).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Sum of every sample of a metric family; `name` may end with one label to match, as in
/// `db_pool_size{state="active"}`.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    let (name, label) = match name.split_once('{') {
        Some((family, label)) => (family, label.trim_end_matches('}')),
        None => (name, ""),
    };
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Runs `work`, and calls `sample` every `every` until it ends: to watch the cluster
/// while a scenario does something to it.
pub(super) async fn sampling<T, Fut: Future<Output = ()>>(
    every: Duration,
    work: impl Future<Output = T>,
    mut sample: impl FnMut() -> Fut,
) -> T {
    let done = AtomicBool::new(false);
    let work = async {
        let output = work.await;
        done.store(true, Ordering::SeqCst);
        output
    };
    let watch = async {
        while !done.load(Ordering::SeqCst) {
            sample().await;
            tokio::time::sleep(every).await;
        }
    };
    tokio::join!(work, watch).0
}

/// A span of a load run, as offsets from its start.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub from: Duration,
    pub to: Duration,
}

impl Window {
    /// From `from` to `to`, measured from the start of `load`.
    pub fn of(load: &LoadRun, from: Instant, to: Instant) -> Self {
        Self {
            from: from.saturating_duration_since(load.started),
            to: to.saturating_duration_since(load.started),
        }
    }

    /// Whether the request was in flight at some moment of the window.
    pub fn overlaps(&self, o: &Outcome) -> bool {
        o.started <= self.to && o.ended() >= self.from
    }
}

/// The row of a scenario, counted from first attempts.
pub fn row(name: &str, drill: &Drill, outcomes: &[Outcome]) -> Row {
    counted(name, drill.balancer.kind.name(), outcomes)
}

/// A row counted from first attempts, for a drill of its own (`harness/tests/`).
pub fn counted(name: &str, balancer: &'static str, outcomes: &[Outcome]) -> Row {
    let (p50_ms, p95_ms, p99_ms) = percentiles(outcomes);
    Row {
        scenario: name.to_owned(),
        balancer,
        requests: outcomes.len(),
        failed: outcomes.iter().filter(|o| !o.first_ok()).count(),
        retried: outcomes.iter().filter(|o| o.attempts > 1).count(),
        failed_after_retries: outcomes.iter().filter(|o| !o.ok()).count(),
        p50_ms,
        p95_ms,
        p99_ms,
        detection: None,
        recovery: None,
        budget: String::new(),
        problems: Vec::new(),
        notes: String::new(),
    }
}

/// A few failed requests, for a person reading the verdict.
pub(super) fn summary<'a>(failed: impl IntoIterator<Item = &'a Outcome>) -> String {
    failed
        .into_iter()
        .take(5)
        .map(|o| {
            let a = &o.first;
            let answer = match (a.status, &a.error) {
                (Some(s), _) => format!(
                    "{s}{} from {}",
                    if a.retry_after {
                        " with Retry-After"
                    } else {
                        ""
                    },
                    a.instance.as_deref().unwrap_or("the balancer")
                ),
                (None, e) => format!("no answer ({})", e.as_deref().unwrap_or("")),
            };
            format!("{:?} at {:.2}s: {answer}", o.kind, o.started.as_secs_f64())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Holds the row to its failure budget: every first-attempt failure must be one `allowed`
/// excuses, and a retried request must end in success (a retry that still fails is a
/// failure the client saw).
pub fn judge(r: &mut Row, outcomes: &[Outcome], budget: &str, allowed: impl Fn(&Outcome) -> bool) {
    r.budget = budget.to_owned();
    let unexcused: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.first_ok() && !allowed(o))
        .collect();
    if !unexcused.is_empty() {
        r.problems.push(format!(
            "{} failed requests outside the budget: {}",
            unexcused.len(),
            summary(unexcused)
        ));
    }
    let failed_retries: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.attempts > 1 && !o.ok())
        .collect();
    if !failed_retries.is_empty() {
        r.problems.push(format!(
            "{} requests still failed after their retries: {}",
            failed_retries.len(),
            summary(failed_retries)
        ));
    }
}

/// A budget for scenarios where a request may be retried: the first attempt may fail
/// only with what a killed replica gives (no answer, 502 to 504), only while in flight
/// during `window`, and the retry must then succeed (a read, never retried by the
/// client, must not fail at all: the balancer retries it).
pub(super) fn killed_replica_excuse(window: Window) -> impl Fn(&Outcome) -> bool {
    move |o| o.kind == Kind::Write && window.overlaps(o) && o.first.retryable() && o.ok()
}

/// Notes a problem when the processes serving the replicas changed: a restart, however
/// quick, is what "no restart" rules out.
pub(super) fn same_processes(
    before: &[Result<Identity, String>],
    after: &[Result<Identity, String>],
    problems: &mut Vec<String>,
) {
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        match (b, a) {
            (Ok(b), Ok(a)) if a == b => {}
            (Ok(b), Ok(a)) => problems.push(format!(
                "replica {} restarted: pid {} became {}",
                i + 1,
                b.pid,
                a.pid
            )),
            (b, a) => problems.push(format!(
                "replica {}: process unknown (before {b:?}, after {a:?})",
                i + 1
            )),
        }
    }
}

/// The readiness the watcher saw.
#[derive(Debug, Clone)]
pub(super) struct Readiness {
    pub fewest: usize,
    pub samples: usize,
    /// How long each `/ready` probe took, in milliseconds (a probe that timed out counts
    /// its timeout).
    pub probe_ms: Vec<f64>,
}

impl Readiness {
    /// A rollout replaces one replica at a time: the fewest ready must be exactly one
    /// less than all (never two out; and not all, or nothing was taken out), seen by at
    /// least one sample per second (each replica is out for at least the drain delay).
    pub fn check_one_out(&self, all: usize, elapsed: Duration, problems: &mut Vec<String>) {
        if self.samples > 0 && self.fewest != all - 1 {
            problems.push(format!(
                "fewest ready replicas was {}, expected exactly {}",
                self.fewest,
                all - 1
            ));
        }
        self.check_sampled(elapsed, problems);
    }

    /// Under load: every replica stayed ready for the whole run, sampled at least once a
    /// second.
    pub fn check_all_in(&self, all: usize, elapsed: Duration, problems: &mut Vec<String>) {
        if self.fewest != all {
            problems.push(format!(
                "a replica turned unready: fewest ready {} of {all} over {} samples",
                self.fewest, self.samples
            ));
        }
        self.check_sampled(elapsed, problems);
    }

    fn check_sampled(&self, elapsed: Duration, problems: &mut Vec<String>) {
        let wanted = elapsed.as_secs() as usize;
        if self.samples < wanted.max(1) {
            problems.push(format!(
                "the readiness watcher sampled {} times in {:.0?}, expected at least {wanted}",
                self.samples, elapsed
            ));
        }
    }

    /// The 99th percentile of the probes' latency, in milliseconds.
    pub fn probe_p99(&self) -> f64 {
        quantile(&self.probe_ms, 0.99)
    }
}

/// Polls every replica's `/ready` in the background and remembers the fewest ready seen
/// and each probe's latency.
pub(super) struct ReadyWatcher {
    stop: Arc<AtomicBool>,
    min: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    probe_ms: Arc<Mutex<Vec<f64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyWatcher {
    pub fn start(drill: &Drill) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let min = Arc::new(AtomicUsize::new(usize::MAX));
        let samples = Arc::new(AtomicUsize::new(0));
        let probe_ms = Arc::new(Mutex::new(Vec::new()));
        let urls: Vec<String> = drill
            .cluster
            .instances
            .iter()
            .map(|i| i.url("/ready"))
            .collect();
        // A replica slower to answer than the balancer's check timeout is out for it too.
        let timeout = drill.cluster.timings.lb_check_timeout;
        let client = drill.client.clone();
        let task = tokio::spawn({
            let (stop, min, samples, probe_ms) =
                (stop.clone(), min.clone(), samples.clone(), probe_ms.clone());
            async move {
                while !stop.load(Ordering::SeqCst) {
                    let probes = urls.iter().map(|u| {
                        let request = client.get(u).timeout(timeout).send();
                        async move {
                            let started = Instant::now();
                            let ready = request.await.is_ok_and(|r| r.status() == 200);
                            (ready, started.elapsed().as_secs_f64() * 1000.0)
                        }
                    });
                    let answers = futures::future::join_all(probes).await;
                    let ready = answers.iter().filter(|(r, _)| *r).count();
                    if let Ok(mut all) = probe_ms.lock() {
                        all.extend(answers.iter().map(|(_, ms)| ms));
                    }
                    min.fetch_min(ready, Ordering::SeqCst);
                    samples.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self {
            stop,
            min,
            samples,
            probe_ms,
            task,
        }
    }

    pub async fn stop(self) -> anyhow::Result<Readiness> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.context("the readiness watcher panicked")?;
        let probe_ms = self.probe_ms.lock().map(|v| v.clone()).unwrap_or_default();
        Ok(Readiness {
            fewest: self.min.load(Ordering::SeqCst),
            samples: self.samples.load(Ordering::SeqCst),
            probe_ms,
        })
    }
}

impl Drill {
    /// Waits (up to `within`) until `count` more requests have succeeded on their first
    /// attempt: the load's progress, not a fixed sleep, sets a phase's length.
    /// Requests in flight now are not counted: they may have started earlier.
    pub(super) async fn until_successes(&self, load: &LoadRun, count: usize, within: Duration) {
        let target = load.successes() + count + load.workers();
        crate::process::wait_until(within, || async { load.successes() >= target }).await;
    }

    /// Restarts the replicas the scenario killed; the time until the balancer routes
    /// every replica again, or `None` past 15 s.
    pub(super) async fn restart_killed(&self) -> anyhow::Result<Option<Duration>> {
        let restarted = Instant::now();
        self.cluster.restart_missing().await?;
        Ok(self
            .all_routed(Duration::from_secs(15))
            .await
            .then(|| restarted.elapsed()))
    }

    pub(super) async fn all_routed(&self, within: Duration) -> bool {
        let all = self.cluster.instances.len();
        crate::process::wait_until(within, || async { self.routed().await == all }).await
    }

    /// How many replicas the balancer routes to now, from its own metrics.
    pub(super) async fn routed(&self) -> usize {
        let mut up = 0;
        for i in &self.cluster.instances {
            if self.balancer.server_up(&self.client, i).await == Some(true) {
                up += 1;
            }
        }
        up
    }

    /// Time until the balancer's own metrics show `instance` as `up` (or down).
    pub(super) async fn until_routed(
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

    /// Time until every replica's `path` (polled directly, not through the balancer)
    /// answers with a status and JSON body that satisfy `check`.
    pub(super) async fn until_all(
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

    /// Counts, every 250 ms until `until`, the probes of `path` on any replica that did
    /// not answer 200.
    pub(super) async fn probe_failures(&self, path: &str, until: Instant) -> usize {
        let mut failures = 0;
        while Instant::now() < until {
            for i in &self.cluster.instances {
                let answer = self
                    .client
                    .get(i.url(path))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await;
                if !answer.is_ok_and(|r| r.status() == 200) {
                    failures += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        failures
    }

    /// Sum of a metric family over every replica's own metrics port.
    pub(super) async fn metric_per_replica(&self, name: &str) -> Vec<f64> {
        let mut values = Vec::new();
        for i in &self.cluster.instances {
            values.push(metric_sum(
                &scrape(&self.client, &i.metrics_url()).await,
                name,
            ));
        }
        values
    }

    /// Every write acknowledged with a 2xx is in the database exactly once, and no write
    /// was duplicated by a retry.
    pub(super) async fn check_writes(
        &self,
        outcomes: &[Outcome],
        problems: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let mut conn = self.cluster.database.connect().await?;
        check_writes_in(&mut conn, outcomes, problems).await
    }
}

/// [`Drill::check_writes`] against the database `conn` reaches: a drill with a data tier
/// of its own checks its primary.
pub async fn check_writes_in(
    conn: &mut sqlx::PgConnection,
    outcomes: &[Outcome],
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let rows = sqlx::query(
        "SELECT title, count(*) AS n FROM items WHERE title LIKE 'drill-%' GROUP BY title",
    )
    .fetch_all(&mut *conn)
    .await?;
    let counts: std::collections::HashMap<String, i64> = rows
        .iter()
        .map(|r| (r.get::<String, _>("title"), r.get::<i64, _>("n")))
        .collect();
    check_write_counts(&counts, outcomes, problems);
    Ok(())
}

/// Every write acknowledged in `outcomes` appears once in `counts` (how many rows carry
/// each drill title).
pub fn check_write_counts(
    counts: &std::collections::HashMap<String, i64>,
    outcomes: &[Outcome],
    problems: &mut Vec<String>,
) {
    let duplicated = counts.values().filter(|n| **n > 1).count();
    if duplicated > 0 {
        problems.push(format!("{duplicated} writes duplicated by retries"));
    }
    let lost = outcomes
        .iter()
        // Keyed writes are creates; the unkeyed ones update read items (the history's).
        .filter(|o| o.kind == Kind::Write && o.ok() && o.idempotency_key.is_some())
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
}
