//! The health model: background checks publish a snapshot, probes read it.
//!
//! Checks never run on a probe's request path. The [`monitor`] runs one round every
//! `HEALTH_CHECK_INTERVAL_MS`, each check bounded by `HEALTH_CHECK_TIMEOUT_MS`, and
//! publishes a [`Snapshot`]. `/health` and `/ready` only read the latest one, so any number
//! of probers costs PostgreSQL one round trip per interval, and a hung dependency fails its
//! check at the timeout instead of hanging the probe.

pub mod checks;
pub mod monitor;

pub use monitor::{HealthHandle, Monitor};

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::config::ReadyRequires;
use crate::lifecycle::Phase;

/// The result of one check, as in the seed: `ok`, `degraded` or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Ok,
    Degraded,
    Failed,
}

impl CheckStatus {
    /// The value of `health_check_status` and the IETF `pass`/`warn`/`fail`.
    pub fn gauge(self) -> f64 {
        match self {
            CheckStatus::Ok => 1.0,
            CheckStatus::Degraded => 0.5,
            CheckStatus::Failed => 0.0,
        }
    }

    pub fn ietf(self) -> &'static str {
        match self {
            CheckStatus::Ok => "pass",
            CheckStatus::Degraded => "warn",
            CheckStatus::Failed => "fail",
        }
    }
}

/// A dependency check (PostgreSQL, Redis): status and round-trip latency in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct DependencyCheck {
    pub status: CheckStatus,
    /// Absent when the check failed before a round trip completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResourceCheck<D> {
    pub status: CheckStatus,
    pub details: D,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryDetails {
    /// Resident memory of this process.
    pub rss_mb: f64,
    /// The cgroup limit when there is one, host memory otherwise.
    pub limit_mb: f64,
    pub limit_source: &'static str,
    pub usage_percent: f64,
    pub host_total_mb: f64,
    pub host_available_mb: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuDetails {
    pub load_average: [f64; 3],
    /// One-minute load as a percentage of the CPUs this process may use.
    pub normalized_load: f64,
    /// CPUs available to the process, after any cgroup quota.
    pub cpus: usize,
}

/// The four checks of one round.
#[derive(Debug, Clone, Serialize)]
pub struct Checks {
    pub database: DependencyCheck,
    pub redis: DependencyCheck,
    pub memory: ResourceCheck<MemoryDetails>,
    pub cpu: ResourceCheck<CpuDetails>,
}

/// What the monitor publishes after each round.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub checks: Checks,
    pub checked_at: DateTime<Utc>,
    pub checked_instant: Instant,
    /// Rounds completed so far; 0 means no round has run yet.
    pub round: u64,
    /// The JSON of the parts of a probe's answer that only change once per round,
    /// serialised by the first probe that needs them and reused by every later one.
    pub(crate) rendered: RenderCache,
}

/// The parts of the probes' answers that change once per round, as JSON text.
#[derive(Debug)]
pub struct Rendered {
    /// `checks`, as `/health` shows it.
    pub checks: String,
    /// `checkedAt`, a JSON string with its quotes.
    pub checked_at: String,
}

/// A snapshot's [`Rendered`], made on first use. A clone starts empty: whoever clones a
/// snapshot may change its checks, and must not inherit JSON that no longer matches.
#[derive(Debug, Default)]
pub(crate) struct RenderCache(std::sync::OnceLock<Rendered>);

impl Clone for RenderCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl Snapshot {
    /// The snapshot's JSON parts, serialised by the first probe that needs them.
    pub fn rendered(&self) -> &Rendered {
        self.rendered.0.get_or_init(|| Rendered {
            checks: serde_json::to_string(&self.checks).unwrap_or_else(|_| "{}".to_owned()),
            checked_at: serde_json::to_string(
                &self.checked_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            )
            .unwrap_or_else(|_| "\"\"".to_owned()),
        })
    }
}

/// Overall status, as in the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

impl HealthStatus {
    pub fn gauge(self) -> f64 {
        match self {
            HealthStatus::Healthy => 1.0,
            HealthStatus::Degraded => 0.5,
            HealthStatus::Unhealthy => 0.0,
        }
    }

    pub fn ietf(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "pass",
            HealthStatus::Degraded => "warn",
            HealthStatus::Unhealthy => "fail",
        }
    }
}

/// The verdict drawn from a snapshot and the lifecycle phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: HealthStatus,
    /// Why the replica is not ready; empty when it is.
    pub reasons: Vec<String>,
}

impl Verdict {
    pub fn ready(&self) -> bool {
        self.reasons.is_empty()
    }
}

/// Decides status and readiness.
///
/// - Starting or draining: unhealthy and not ready, whatever the checks say.
/// - A stale snapshot (the monitor stopped publishing) is not trusted.
/// - A failed dependency listed in `READY_REQUIRES` makes the replica unhealthy and not
///   ready; a failed optional one (Redis by default) only degrades it.
/// - Critical memory is unhealthy and not ready: an out-of-memory kill is near.
/// - CPU never fails a replica (see `checks::cpu`): a busy replica is not a broken one.
pub fn judge(
    snapshot: &Snapshot,
    phase: Phase,
    requires: ReadyRequires,
    max_age: Duration,
) -> Verdict {
    let mut reasons = Vec::new();
    match phase {
        Phase::Starting => reasons.push("starting".to_owned()),
        Phase::Draining | Phase::Stopping => reasons.push("draining".to_owned()),
        Phase::Ready => {}
    }
    if phase == Phase::Ready && snapshot.checked_instant.elapsed() > max_age {
        reasons.push(format!(
            "health checks stale: last round {} ms ago",
            snapshot.checked_instant.elapsed().as_millis()
        ));
    }
    let checks = &snapshot.checks;
    let mut degraded =
        checks.memory.status == CheckStatus::Degraded || checks.cpu.status != CheckStatus::Ok;
    for (name, check, required) in [
        ("database", &checks.database, requires.database),
        ("redis", &checks.redis, requires.redis),
    ] {
        match check.status {
            CheckStatus::Ok => {}
            CheckStatus::Degraded => degraded = true,
            CheckStatus::Failed if required => {
                let why = check.message.as_deref().unwrap_or("failed");
                reasons.push(format!("{name}: {why}"));
            }
            CheckStatus::Failed => degraded = true,
        }
    }
    if checks.memory.status == CheckStatus::Failed {
        reasons.push(format!(
            "memory critical: {:.1}% of {:.0} MB",
            checks.memory.details.usage_percent, checks.memory.details.limit_mb
        ));
    }
    let status = if !reasons.is_empty() {
        HealthStatus::Unhealthy
    } else if degraded {
        HealthStatus::Degraded
    } else {
        HealthStatus::Healthy
    };
    Verdict { status, reasons }
}

/// Applies a pair of thresholds to a measured value.
pub fn grade(value: f64, thresholds: crate::config::Thresholds) -> CheckStatus {
    if value > thresholds.critical {
        CheckStatus::Failed
    } else if value > thresholds.degraded {
        CheckStatus::Degraded
    } else {
        CheckStatus::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(status: CheckStatus) -> DependencyCheck {
        DependencyCheck {
            status,
            latency: Some(1.0),
            message: (status == CheckStatus::Failed).then(|| "down".to_owned()),
        }
    }

    fn snapshot(
        db: CheckStatus,
        redis: CheckStatus,
        memory: CheckStatus,
        cpu: CheckStatus,
    ) -> Snapshot {
        Snapshot {
            checks: Checks {
                database: dep(db),
                redis: dep(redis),
                memory: ResourceCheck {
                    status: memory,
                    details: MemoryDetails {
                        rss_mb: 10.0,
                        limit_mb: 100.0,
                        limit_source: "host",
                        usage_percent: 10.0,
                        host_total_mb: 100.0,
                        host_available_mb: 90.0,
                    },
                    message: None,
                },
                cpu: ResourceCheck {
                    status: cpu,
                    details: CpuDetails {
                        load_average: [0.0; 3],
                        normalized_load: 0.0,
                        cpus: 1,
                    },
                    message: None,
                },
            },
            checked_at: Utc::now(),
            checked_instant: Instant::now(),
            round: 1,
            rendered: Default::default(),
        }
    }

    const DB_ONLY: ReadyRequires = ReadyRequires {
        database: true,
        redis: false,
    };
    const STRICT: ReadyRequires = ReadyRequires {
        database: true,
        redis: true,
    };
    const AGE: Duration = Duration::from_secs(60);
    use CheckStatus::{Degraded as D, Failed as F, Ok as O};

    #[test]
    fn all_ok_is_healthy_and_ready() {
        let v = judge(&snapshot(O, O, O, O), Phase::Ready, DB_ONLY, AGE);
        assert_eq!(v.status, HealthStatus::Healthy);
        assert!(v.ready());
    }

    #[test]
    fn redis_failure_degrades_by_default_and_fails_when_required() {
        let v = judge(&snapshot(O, F, O, O), Phase::Ready, DB_ONLY, AGE);
        assert_eq!((v.status, v.ready()), (HealthStatus::Degraded, true));
        let v = judge(&snapshot(O, F, O, O), Phase::Ready, STRICT, AGE);
        assert_eq!((v.status, v.ready()), (HealthStatus::Unhealthy, false));
        assert_eq!(v.reasons, vec!["redis: down".to_owned()]);
    }

    #[test]
    fn database_failure_and_critical_memory_are_unhealthy() {
        let v = judge(&snapshot(F, O, O, O), Phase::Ready, DB_ONLY, AGE);
        assert_eq!((v.status, v.ready()), (HealthStatus::Unhealthy, false));
        let v = judge(&snapshot(O, O, F, O), Phase::Ready, DB_ONLY, AGE);
        assert!(v.reasons[0].starts_with("memory critical"));
    }

    #[test]
    fn busy_cpu_only_degrades() {
        let v = judge(&snapshot(O, O, O, D), Phase::Ready, STRICT, AGE);
        assert_eq!((v.status, v.ready()), (HealthStatus::Degraded, true));
    }

    #[test]
    fn lifecycle_overrides_checks() {
        let v = judge(&snapshot(O, O, O, O), Phase::Starting, DB_ONLY, AGE);
        assert_eq!(v.reasons, vec!["starting".to_owned()]);
        let v = judge(&snapshot(O, O, O, O), Phase::Draining, DB_ONLY, AGE);
        assert_eq!(
            (v.status, v.reasons.clone()),
            (HealthStatus::Unhealthy, vec!["draining".to_owned()])
        );
    }

    #[test]
    fn stale_snapshot_is_not_trusted() {
        let v = judge(&snapshot(O, O, O, O), Phase::Ready, DB_ONLY, Duration::ZERO);
        assert!(!v.ready());
        assert!(v.reasons[0].starts_with("health checks stale"));
    }

    #[test]
    fn grading_uses_strict_greater_than() {
        let t = crate::config::Thresholds {
            degraded: 100.0,
            critical: 500.0,
        };
        assert_eq!(grade(100.0, t), O);
        assert_eq!(grade(100.1, t), D);
        assert_eq!(grade(500.1, t), F);
    }
}
