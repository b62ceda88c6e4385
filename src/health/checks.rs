//! The four checks. Each returns a result; none panics or blocks past its timeout.

use std::time::{Duration, Instant};

use sysinfo::{MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::{grade, CheckStatus, CpuDetails, DependencyCheck, MemoryDetails, ResourceCheck};
use crate::cache::Cache;
use crate::config::Thresholds;
use crate::db::Database;

const MB: f64 = 1024.0 * 1024.0;

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

/// Times a dependency round trip and grades its latency. A timeout or an error fails the
/// check with a message saying which. Latency alone only degrades it, however high: a
/// slow answer is an answer, and a replica pulled out for being slow pushes its load onto
/// the others (the monitor then decides whether a failure has lasted long enough).
async fn dependency<E: std::fmt::Display>(
    timeout: Duration,
    thresholds: Thresholds,
    round_trip: impl std::future::Future<Output = Result<(), E>>,
) -> DependencyCheck {
    let started = Instant::now();
    match tokio::time::timeout(timeout, round_trip).await {
        Ok(Ok(())) => {
            let latency = millis(started.elapsed());
            let (status, message) = match grade(latency, thresholds) {
                CheckStatus::Ok => (CheckStatus::Ok, None),
                CheckStatus::Degraded => (
                    CheckStatus::Degraded,
                    Some(format!(
                        "latency {latency} ms above {} ms",
                        thresholds.degraded
                    )),
                ),
                CheckStatus::Failed => (
                    CheckStatus::Degraded,
                    Some(format!(
                        "latency {latency} ms above {} ms (critical)",
                        thresholds.critical
                    )),
                ),
            };
            DependencyCheck {
                status,
                latency: Some(latency),
                message,
            }
        }
        Ok(Err(e)) => DependencyCheck {
            status: CheckStatus::Failed,
            latency: None,
            message: Some(e.to_string()),
        },
        Err(_) => DependencyCheck {
            status: CheckStatus::Failed,
            latency: None,
            message: Some(format!("no answer within {} ms", timeout.as_millis())),
        },
    }
}

/// One `SELECT 1` on the check's own connection: no connection is opened per check, and
/// requests holding every pooled connection cannot make the check wait.
///
/// With several hosts, a failed check (an error or a timeout) also asks for a discovery
/// round, and once a round has found no host that takes writes, that is the message.
pub async fn database(db: &Database, timeout: Duration, thresholds: Thresholds) -> DependencyCheck {
    let ping = async { db.ping().await.map_err(|e| crate::db::describe(&e)) };
    let mut check = dependency(timeout, thresholds, ping).await;
    if check.status == CheckStatus::Failed {
        db.rediscover();
        if let Some(why) = db.no_primary() {
            check.message = Some(why);
        }
    }
    check
}

/// One `PING` on the service's own Redis connection (a failed one drops it: see `cache::link`).
pub async fn redis(cache: &Cache, timeout: Duration, thresholds: Thresholds) -> DependencyCheck {
    let ping = async { cache.ping(timeout).await.map_err(|e| Cache::describe(&e)) };
    dependency(timeout, thresholds, ping).await
}

/// Reads process and host facts. Owned by the monitor task, so it needs no lock.
pub struct SystemProbe {
    system: System,
    pid: Pid,
    cpus: usize,
}

impl Default for SystemProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemProbe {
    pub fn new() -> Self {
        Self {
            system: System::new(),
            pid: Pid::from_u32(std::process::id()),
            // `available_parallelism` honours cgroup CPU quotas and affinity masks, so a
            // container granted one CPU on a 64-core host counts as one.
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }

    pub fn cpus(&self) -> usize {
        self.cpus
    }

    /// Resident memory against the cgroup limit when there is one, host memory otherwise.
    pub fn memory(&mut self, thresholds: Thresholds) -> ResourceCheck<MemoryDetails> {
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[self.pid]),
            false,
            ProcessRefreshKind::nothing().with_memory(),
        );
        let rss = self
            .system
            .process(self.pid)
            .map(|p| p.memory())
            .unwrap_or(0) as f64;
        let host_total = self.system.total_memory() as f64;
        let host_available = self.system.available_memory() as f64;
        let (limit, limit_source) = match self.system.cgroup_limits() {
            Some(cg) if cg.total_memory > 0 && (cg.total_memory as f64) < host_total => {
                (cg.total_memory as f64, "cgroup")
            }
            _ => (host_total, "host"),
        };
        let usage_percent = if limit > 0.0 {
            (rss / limit * 100.0 * 100.0).round() / 100.0
        } else {
            0.0
        };
        let status = grade(usage_percent, thresholds);
        ResourceCheck {
            status,
            message: (status != CheckStatus::Ok)
                .then(|| format!("memory at {usage_percent}% of limit")),
            details: MemoryDetails {
                rss_mb: round1(rss / MB),
                limit_mb: round1(limit / MB),
                limit_source,
                usage_percent,
                host_total_mb: round1(host_total / MB),
                host_available_mb: round1(host_available / MB),
            },
        }
    }

    /// Load average normalised by the CPUs this process may use.
    ///
    /// Deliberately never `failed`: a busy replica is not a broken one. Failing it would
    /// drop the busiest replica from the pool and push its load onto the others, which
    /// would then fail in turn. Above either threshold the check is `degraded`.
    pub fn cpu(&self, thresholds: Thresholds) -> ResourceCheck<CpuDetails> {
        let load = System::load_average();
        let normalized = round1(load.one / self.cpus as f64 * 100.0);
        let (status, message) = match grade(normalized, thresholds) {
            CheckStatus::Ok => (CheckStatus::Ok, None),
            CheckStatus::Degraded => (
                CheckStatus::Degraded,
                Some(format!("high CPU load: {normalized}%")),
            ),
            CheckStatus::Failed => (
                CheckStatus::Degraded,
                Some(format!("critical CPU load: {normalized}%")),
            ),
        };
        ResourceCheck {
            status,
            message,
            details: CpuDetails {
                load_average: [round2(load.one), round2(load.five), round2(load.fifteen)],
                normalized_load: normalized,
                cpus: self.cpus,
            },
        }
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
