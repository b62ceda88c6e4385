//! The background task that runs the checks and publishes snapshots.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::checks::{self, SystemProbe};
use super::{judge, CheckStatus, Checks, DependencyCheck, Snapshot, Verdict};
use crate::cache::Cache;
use crate::config::HealthSettings;
use crate::db::Database;
use crate::lifecycle::Phase;
use crate::metrics::Metrics;

/// The probes' side: a cheap handle on the latest snapshot.
#[derive(Clone)]
pub struct HealthHandle {
    latest: watch::Receiver<Arc<Snapshot>>,
    check_now: Arc<Notify>,
}

impl HealthHandle {
    /// The latest snapshot. Never waits on a check.
    pub fn latest(&self) -> Arc<Snapshot> {
        self.latest.borrow().clone()
    }

    /// The latest snapshot and the verdict it gives in `phase`: what every probe answers.
    pub fn verdict(&self, phase: Phase, settings: &HealthSettings) -> (Arc<Snapshot>, Verdict) {
        let snapshot = self.latest();
        // Three missed rounds, each allowed its timeout, before the snapshot is called stale.
        let max_age = (settings.interval + settings.check_timeout) * 3;
        let verdict = judge(&snapshot, phase, settings.ready_requires, max_age);
        (snapshot, verdict)
    }

    /// Asks for a round now and waits until one has completed after the request. Used once
    /// at start-up, right after migrations, so readiness does not wait a whole interval.
    pub async fn refresh(&self) -> Arc<Snapshot> {
        let mut rx = self.latest.clone();
        let before = rx.borrow_and_update().round;
        self.check_now.notify_one();
        loop {
            if rx.changed().await.is_err() {
                return self.latest();
            }
            let snapshot = rx.borrow_and_update().clone();
            if snapshot.round > before {
                return snapshot;
            }
        }
    }
}

/// Hysteresis: a failed check counts as failed only once it has failed `threshold` rounds
/// in a row; before that it is reported degraded, with the count. One good round resets
/// it. A single lost packet or a stop-the-world pause must not pull a replica out.
fn confirm_failure(
    check: DependencyCheck,
    failed_rounds: &mut u32,
    threshold: u32,
) -> DependencyCheck {
    if check.status != CheckStatus::Failed {
        *failed_rounds = 0;
        return check;
    }
    *failed_rounds = failed_rounds.saturating_add(1);
    if *failed_rounds >= threshold {
        return check;
    }
    let why = check.message.unwrap_or_else(|| "failed".to_owned());
    DependencyCheck {
        status: CheckStatus::Degraded,
        message: Some(format!(
            "{why} (failed {} of {threshold} rounds before it counts)",
            *failed_rounds
        )),
        ..check
    }
}

pub struct Monitor {
    db: Database,
    cache: Cache,
    metrics: Arc<Metrics>,
    settings: HealthSettings,
    probe: SystemProbe,
    publish: watch::Sender<Arc<Snapshot>>,
    check_now: Arc<Notify>,
    round: u64,
    /// Consecutive failed rounds of the database and Redis checks.
    failed_rounds: [u32; 2],
}

impl Monitor {
    pub fn new(
        db: Database,
        cache: Cache,
        metrics: Arc<Metrics>,
        settings: HealthSettings,
    ) -> (Self, HealthHandle) {
        let mut probe = SystemProbe::new();
        let not_yet = || DependencyCheck {
            status: CheckStatus::Failed,
            latency: None,
            message: Some("not checked yet".to_owned()),
        };
        let initial = Snapshot {
            checks: Checks {
                database: not_yet(),
                redis: not_yet(),
                memory: probe.memory(settings.memory),
                cpu: probe.cpu(settings.cpu),
            },
            checked_at: Utc::now(),
            checked_instant: Instant::now(),
            rendered: Default::default(),
            round: 0,
        };
        let (publish, latest) = watch::channel(Arc::new(initial));
        let check_now = Arc::new(Notify::new());
        let handle = HealthHandle {
            latest,
            check_now: check_now.clone(),
        };
        let monitor = Self {
            db,
            cache,
            metrics,
            settings,
            probe,
            publish,
            check_now,
            round: 0,
            failed_rounds: [0; 2],
        };
        (monitor, handle)
    }

    /// Runs a round every interval (or when asked) until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
                _ = self.check_now.notified() => ticker.reset(),
            }
            let snapshot = self.round().await;
            self.publish.send_replace(Arc::new(snapshot));
        }
        tracing::debug!("health monitor stopped");
    }

    async fn round(&mut self) -> Snapshot {
        let s = &self.settings;
        let (database, redis) = tokio::join!(
            self.timed(
                "database",
                checks::database(&self.db, s.check_timeout, s.database_latency)
            ),
            self.timed(
                "redis",
                checks::redis(&self.cache, s.check_timeout, s.redis_latency)
            ),
        );
        let database = confirm_failure(database, &mut self.failed_rounds[0], s.failure_threshold);
        let redis = confirm_failure(redis, &mut self.failed_rounds[1], s.failure_threshold);
        let started = Instant::now();
        let memory = self.probe.memory(s.memory);
        self.record("memory", memory.status, started.elapsed().as_secs_f64());
        let started = Instant::now();
        let cpu = self.probe.cpu(s.cpu);
        self.record("cpu", cpu.status, started.elapsed().as_secs_f64());
        for (name, check) in [("database", &database), ("redis", &redis)] {
            if check.status != CheckStatus::Ok {
                tracing::warn!(check = name, status = ?check.status, message = ?check.message, "dependency check not ok");
            }
        }
        self.round += 1;
        Snapshot {
            checks: Checks {
                database,
                redis,
                memory,
                cpu,
            },
            checked_at: Utc::now(),
            checked_instant: Instant::now(),
            rendered: Default::default(),
            round: self.round,
        }
    }

    async fn timed(
        &self,
        check_type: &str,
        check: impl std::future::Future<Output = DependencyCheck>,
    ) -> DependencyCheck {
        let started = Instant::now();
        let result = check.await;
        self.record(check_type, result.status, started.elapsed().as_secs_f64());
        result
    }

    fn record(&self, check_type: &str, status: CheckStatus, seconds: f64) {
        let labels = [check_type, self.metrics.instance.as_str()];
        self.metrics
            .health_check_total
            .with_label_values(&labels)
            .inc();
        if status == CheckStatus::Failed {
            self.metrics
                .health_check_failures
                .with_label_values(&labels)
                .inc();
        }
        self.metrics
            .health_check_status
            .with_label_values(&labels)
            .set(status.gauge());
        self.metrics
            .health_check_duration
            .with_label_values(&labels)
            .observe(seconds);
    }
}
