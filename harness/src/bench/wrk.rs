//! The load generator: `wrk` runs, their Lua request cycles, and the check that every
//! request of a workload succeeds before it is measured.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use super::replica::{pinned, LOAD_CPU};
use super::table::{ms, thousands};

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
    /// p99 of the successful answers alone: see `REPORT_LUA`.
    pub p99_ok_ms: f64,
}

impl Stats {
    /// Answers below 400 per second: what a client got done.
    pub fn goodput(&self) -> f64 {
        let ok = self.requests.saturating_sub(self.status_errors) as f64;
        if self.requests == 0 {
            0.0
        } else {
            ok * self.rps / self.requests as f64
        }
    }
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

/// wrk's histogram holds every answer, refusals included. The last figure is the p99 of
/// the successful ones, assuming every refusal was faster than it (a shed 503 takes
/// microseconds, a served request at saturation milliseconds): the slowest 1 % of the
/// `ok` successes are then the slowest `ok / n` percent of all `n` answers.
const REPORT_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  local n = summary.requests
  local ok = n - e.status
  local q = 99
  if n > 0 and ok > 0 then q = 100 - ok / n end
  io.write(string.format("BENCH %d %d %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect, e.read, e.write, e.timeout, latency:percentile(q)))
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
    if n.len() != 10 {
        bail!("unexpected wrk report: {line}");
    }
    let seconds = (n[1] / 1e6).max(1e-9);
    Ok(Stats {
        requests: n[0] as u64,
        rps: n[0] / seconds,
        p50_ms: n[2] / 1000.0,
        p99_ms: n[3] / 1000.0,
        errors: n[4..9].iter().sum::<f64>() as u64,
        status_errors: n[4] as u64,
        socket_errors: format!(
            "connect {}, read {}, write {}, timeout {}",
            n[5], n[6], n[7], n[8]
        ),
        p99_ok_ms: n[9] / 1000.0,
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

/// One request of a workload: method, path and JSON body.
pub type Request = (&'static str, String, Option<String>);

/// Sends each request of a workload once and fails unless every answer is a success: a
/// throughput figure made of error responses would mean nothing.
pub async fn check_requests(
    client: &reqwest::Client,
    base: &str,
    requests: &[Request],
    headers: &[(&str, &str)],
) -> anyhow::Result<()> {
    for (method, path, body) in requests {
        let mut request = client.request(method.parse()?, format!("{base}{path}"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.clone());
        }
        let response = request.send().await?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "{method} {base}{path} answered {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
    }
    Ok(())
}

pub fn gets(paths: impl IntoIterator<Item = String>) -> Vec<Request> {
    paths.into_iter().map(|p| ("GET", p, None)).collect()
}
