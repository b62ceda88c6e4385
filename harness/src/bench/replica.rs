//! One replica of the release binary for a benchmark, pinned to its CPU, and the sampling
//! of a process's resident memory.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::wrk::have;
use crate::process::{free_port, ManagedChild};

/// The CPU the servers under test are pinned to, and the one the load generator runs on,
/// when `taskset` exists. A server and its load generator fighting over one core make
/// results swing from run to run; apart, both are steadier.
pub const SERVER_CPU: &str = "0";
pub const LOAD_CPU: &str = "1";

/// The replicas' token secret, which the data floors verify tokens with too.
/// Random, as the service requires; public, as only a benchmark's may be.
pub const JWT_SECRET: &str = "tM84HDi1oiQ3cu5cUK-e79wAmudPXLHkj2UzJHs9_k4JI0V7";

/// Pinning is only possible with `taskset` and at least two CPUs.
pub fn can_pin() -> bool {
    have("taskset") && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

/// `program args…`, pinned to `cpus` when pinning is possible. `taskset` execs the
/// program, so the child's PID is the program's.
pub fn pinned(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) if can_pin() => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpus).arg(program);
            command
        }
        _ => Command::new(program),
    }
}

/// Resident memory of a process, in MiB, from `/proc/PID/status`.
pub fn rss_mib(pid: i32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// CPU time a process has used so far (user and system), in seconds, from
/// `/proc/PID/stat`: what a request costs the server, whether or not the load generator
/// could keep it busy.
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // USER_HZ: 100 on every Linux this runs on (sysconf(_SC_CLK_TCK)).
    Some((utime + stime) / 100.0)
}

/// Samples a process's resident memory every 50 ms and keeps the peak, until dropped.
pub struct RssPeak {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssPeak {
    pub fn start(pid: i32) -> Self {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak_kib.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Some(mib) = rss_mib(pid) {
                    p.fetch_max((mib * 1024.0) as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self { peak_kib, stop }
    }

    pub fn peak_mib(&self) -> f64 {
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How one replica of the service is configured for a benchmark.
#[derive(Debug, Clone)]
pub struct ReplicaSpec {
    pub name: String,
    pub database_url: String,
    pub redis_url: String,
    pub cpus: Option<&'static str>,
    /// Extra environment, e.g. a shorter health-check interval.
    pub env: Vec<(String, String)>,
}

/// One replica of the release binary on loopback, free ports, killed when dropped.
pub struct Replica {
    pub child: ManagedChild,
    pub port: u16,
    pub metrics_port: u16,
    pub spawned_at: Instant,
}

impl Replica {
    pub fn spawn(binary: &Path, spec: &ReplicaSpec, log_dir: &Path) -> anyhow::Result<Self> {
        let (port, metrics_port) = (free_port(), free_port());
        let mut command = pinned(binary, spec.cpus);
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("METRICS_PORT", metrics_port.to_string())
            .env("INSTANCE_ID", &spec.name)
            .env("DATABASE_URL", &spec.database_url)
            .env("REDIS_URL", &spec.redis_url)
            .env(
                "CACHE_KEY_PREFIX",
                format!("bench:{}:", uuid::Uuid::new_v4().simple()),
            )
            .env("JWT_SECRET", JWT_SECRET)
            .env("LOG_LEVEL", "info")
            .env("LOG_FORMAT", "json")
            .env("DRAIN_DELAY_MS", "0")
            .env("SHUTDOWN_TIMEOUT_MS", "1000");
        for (k, v) in &spec.env {
            command.env(k, v);
        }
        // The working directory holds no `.env`, so only this environment applies.
        command.current_dir(log_dir);
        let log = log_dir.join(format!("{}.log", spec.name));
        let spawned_at = Instant::now();
        let child = ManagedChild::spawn(&spec.name, command, log)?;
        Ok(Self {
            child,
            port,
            metrics_port,
            spawned_at,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// Polls `/ready` every 2 ms; returns the time from exec to the first 200.
    pub async fn wait_ready(
        &mut self,
        client: &reqwest::Client,
        within: Duration,
    ) -> anyhow::Result<Duration> {
        let url = self.url("/ready");
        while self.spawned_at.elapsed() < within {
            let ok = client
                .get(&url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                return Ok(self.spawned_at.elapsed());
            }
            if self.child.has_exited() {
                bail!("{} exited:\n{}", self.child.name, self.child.logs());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bail!(
            "{} not ready within {within:?}:\n{}",
            self.child.name,
            self.child.logs()
        )
    }
}
