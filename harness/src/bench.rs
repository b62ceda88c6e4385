//! Building blocks of the benchmark suite (`src/bin/bench.rs`): one replica of the
//! release binary, the load generator (`wrk`), resident-memory sampling, and the table of
//! figures with its Markdown rendering.
//!
//! Every figure is printed beside a baseline measured in the same run: the machine is
//! shared and noisy, so only ratios within one run mean something.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::process::{free_port, ManagedChild};

/// The CPU the servers under test are pinned to, and the one the load generator runs on,
/// when `taskset` exists. A server and its load generator fighting over one core make
/// results swing from run to run; apart, both are steadier.
pub const SERVER_CPU: &str = "0";
pub const LOAD_CPU: &str = "1";

pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Installs `wrk` from the distribution when it is missing.
pub fn ensure_wrk() -> anyhow::Result<()> {
    if have("wrk") {
        return Ok(());
    }
    eprintln!("wrk not found: installing it with apt-get");
    let status = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk",
        ])
        .status()
        .context("run apt-get")?;
    if !status.success() || !have("wrk") {
        bail!("could not install wrk (apt-get install wrk)");
    }
    Ok(())
}

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
            .env("JWT_SECRET", "bench-secret-bench-secret-bench-secret-42")
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

/// One `wrk` run: closed loop, fixed connections, keep-alive.
#[derive(Debug, Clone)]
pub struct Load {
    pub url: String,
    pub connections: u32,
    pub duration: Duration,
    /// Lua defining `request` (and anything else wrk accepts); the reporting `done` is
    /// appended. None: GET `url` every time.
    pub script: Option<String>,
    pub headers: Vec<String>,
    pub cpus: Option<&'static str>,
}

impl Load {
    pub fn get(url: String, connections: u32, duration: Duration) -> Self {
        Self {
            url,
            connections,
            duration,
            script: None,
            headers: Vec::new(),
            cpus: Some(LOAD_CPU),
        }
    }
}

/// What one load run measured.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Responses of status 400 or more, plus socket errors and timeouts.
    pub errors: u64,
    pub status_errors: u64,
    pub socket_errors: String,
}

impl Stats {
    pub fn text(&self) -> String {
        let mut s = format!(
            "{} req/s, p50 {} ms, p99 {} ms",
            thousands(self.rps),
            ms(self.p50_ms),
            ms(self.p99_ms)
        );
        if self.errors > 0 {
            s.push_str(&format!(
                ", {} errors ({} >= 400; {})",
                self.errors, self.status_errors, self.socket_errors
            ));
        }
        s
    }
}

/// Milliseconds with sensible precision.
pub fn ms(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.3}")
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

pub fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

const REPORT_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout))
end
"#;

/// Runs `wrk` and parses the line its `done` hook prints.
pub async fn run_wrk(load: &Load, scratch: &Path) -> anyhow::Result<Stats> {
    let script_path = scratch.join(format!("wrk-{}.lua", uuid::Uuid::new_v4().simple()));
    let script = format!("{}\n{REPORT_LUA}", load.script.as_deref().unwrap_or(""));
    std::fs::write(&script_path, script)?;
    let wrk = PathBuf::from("wrk");
    let mut command = tokio::process::Command::from(pinned(&wrk, load.cpus));
    command
        .arg("-t1")
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration.as_secs().max(1)))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(&script_path);
    for h in &load.headers {
        command.arg("-H").arg(h);
    }
    command.arg(&load.url).kill_on_drop(true);
    let output = command.output().await.context("run wrk")?;
    let _ = std::fs::remove_file(&script_path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .with_context(|| {
            format!(
                "wrk gave no result for {}:\n{stdout}{}",
                load.url,
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let n: Vec<f64> = line
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(0.0))
        .collect();
    if n.len() != 9 {
        bail!("unexpected wrk report: {line}");
    }
    let seconds = (n[1] / 1e6).max(1e-9);
    Ok(Stats {
        requests: n[0] as u64,
        rps: n[0] / seconds,
        p50_ms: n[2] / 1000.0,
        p99_ms: n[3] / 1000.0,
        errors: n[4..].iter().sum::<f64>() as u64,
        status_errors: n[4] as u64,
        socket_errors: format!(
            "connect {}, read {}, write {}, timeout {}",
            n[5], n[6], n[7], n[8]
        ),
    })
}

/// Lua for a `request` function cycling through `requests`, each `(method, path, body)`.
pub fn cycle_script(
    requests: &[(&str, String, Option<String>)],
    headers: &[(&str, &str)],
) -> String {
    let mut lua = String::new();
    for (k, v) in headers {
        lua.push_str(&format!("wrk.headers[{}] = {}\n", lua_str(k), lua_str(v)));
    }
    // Built in `init`: only then has wrk added the Host header to `wrk.headers`, and
    // HTTP/1.1 without Host is a 400 for any real proxy.
    // `wrk.format` takes its headers instead of `wrk.headers`, not on top of them: a
    // request with a body gets a copy with its content type added.
    lua.push_str(
        "local reqs = {}\n\
         local function with_json()\n\
         \x20 local h = {}\n\
         \x20 for k, v in pairs(wrk.headers) do h[k] = v end\n\
         \x20 h[\"Content-Type\"] = \"application/json\"\n\
         \x20 return h\n\
         end\n\
         init = function(args)\n",
    );
    for (method, path, body) in requests {
        let (headers, body) = match body.as_deref() {
            Some(b) => ("with_json()".to_owned(), lua_str(b)),
            None => ("nil".to_owned(), "nil".to_owned()),
        };
        lua.push_str(&format!(
            "  table.insert(reqs, wrk.format({}, {}, {headers}, {body}))\n",
            lua_str(method),
            lua_str(path),
        ));
    }
    lua.push_str("end\n");
    // wrk runs with one thread, so one Lua state: the counter is shared by every
    // connection and the mix is exact.
    lua.push_str(
        "local i = 0\nrequest = function()\n  i = i + 1\n  return reqs[(i % #reqs) + 1]\nend\n",
    );
    lua
}

fn lua_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// How a figure compares with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// Reported, no target.
    Info,
    /// Could not be measured in this run.
    Missing,
}

impl Verdict {
    pub fn of(ok: bool) -> Self {
        if ok {
            Verdict::Pass
        } else {
            Verdict::Miss
        }
    }

    fn text(self, smoke: bool) -> &'static str {
        match (self, smoke) {
            (Verdict::Missing, _) => "MISSING",
            (Verdict::Info, _) => "-",
            (_, true) => "(smoke)",
            (Verdict::Pass, false) => "PASS",
            (Verdict::Miss, false) => "MISS",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Figure {
    pub section: &'static str,
    pub name: String,
    pub value: String,
    /// The baseline measured in the same run, with its name.
    pub baseline: String,
    pub ratio: Option<f64>,
    pub target: String,
    pub verdict: Verdict,
}

impl Figure {
    pub fn info(section: &'static str, name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            section,
            name: name.into(),
            value: value.into(),
            baseline: String::new(),
            ratio: None,
            target: String::new(),
            verdict: Verdict::Info,
        }
    }

    pub fn missing(section: &'static str, name: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Missing,
            ..Self::info(section, name, why)
        }
    }

    pub fn baseline(mut self, baseline: impl Into<String>) -> Self {
        self.baseline = baseline.into();
        self
    }

    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = Some(ratio);
        self
    }

    pub fn target(mut self, target: impl Into<String>, ok: bool) -> Self {
        self.target = target.into();
        self.verdict = Verdict::of(ok);
        self
    }
}

/// The figures as a Markdown table (readable as plain text too).
pub fn table(figures: &[Figure], smoke: bool) -> String {
    let mut out = String::from(
        "| Section | Figure | Value | Baseline (same run) | Ratio | Target | Verdict |\n\
         | --- | --- | --- | --- | ---: | --- | --- |\n",
    );
    for f in figures {
        let ratio = f
            .ratio
            .map(|r| format!("{:.0} %", r * 100.0))
            .unwrap_or_default();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            f.section,
            f.name,
            f.value.replace('|', "/"),
            f.baseline.replace('|', "/"),
            ratio,
            f.target,
            f.verdict.text(smoke)
        ));
    }
    out
}

fn first_line_with(path: &str, prefix: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// The machine the figures were measured on.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = first_line_with("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into());
    let memory = first_line_with("/proc/meminfo", "MemTotal")
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), {memory} RAM; load average at start {load}")
}

/// Replaces the text between `<!-- bench:begin -->` and `<!-- bench:end -->` in `path`
/// (appends the block when the markers are absent).
pub fn write_section(path: &Path, content: &str) -> anyhow::Result<()> {
    const BEGIN: &str =
        "<!-- bench:begin (generated by the bench binary; edits here are overwritten) -->";
    const END: &str = "<!-- bench:end -->";
    let block = format!("{BEGIN}\n{content}\n{END}");
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let text = match (existing.find("<!-- bench:begin"), existing.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{block}{}", &existing[..b], &existing[e + END.len()..])
        }
        _ if existing.is_empty() => format!("{block}\n"),
        _ => format!("{existing}\n{block}\n"),
    };
    std::fs::write(path, text)?;
    Ok(())
}

/// base64url without padding: how the data API encodes its page cursor.
pub fn base64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_the_reference() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1234.4), "1,234");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }

    #[test]
    fn the_section_is_replaced_in_place() {
        let dir = std::env::temp_dir().join(format!("bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("B.md");
        std::fs::write(&path, "# Title\n\nbefore\n").unwrap();
        write_section(&path, "one").unwrap();
        write_section(&path, "two").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# Title\n\nbefore\n"));
        assert!(text.contains("\ntwo\n") && !text.contains("one"));
        assert_eq!(text.matches("bench:end").count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
