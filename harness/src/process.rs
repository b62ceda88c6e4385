//! Child processes that never outlive their owner.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A free loopback port. Another process could take it before ours binds it; on a test
/// machine that race is rare and shows up as a clear bind error in the child's log.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Sends `signal` (e.g. "TERM", "KILL") to a PID, or to a process group when `pid` is
/// negative.
pub fn send_signal(pid: i32, signal: &str) -> bool {
    Command::new("kill")
        .args([format!("-{signal}"), "--".to_owned(), pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn is_alive(pid: i32) -> bool {
    // A zombie (state Z) has exited; only its parent has not reaped it yet.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.split_whitespace()
                .nth(2)
                .is_some_and(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// A child process with its output in a log file, killed when dropped.
pub struct ManagedChild {
    child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl ManagedChild {
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> anyhow::Result<Self> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("start {name}"))?;
        Ok(Self {
            child,
            log,
            name: name.to_owned(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it holds or `within` passes.
pub async fn wait_until<F, Fut>(within: Duration, check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until_every(Duration::from_millis(50), within, check).await
}

/// As [`wait_until`], polling every `every`: for a check that costs its target something
/// (requests through a rate-limited balancer).
pub async fn wait_until_every<F, Fut>(every: Duration, within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Fails, saying how to install it, when `name` is not on the PATH.
pub fn require_program(name: &str, install: &str) -> anyhow::Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        bail!("{name} not found: install it with `{install}` (scripts/test-all.sh does)");
    }
    Ok(())
}

/// Waits until `url` answers 200 (a server's readiness endpoint), or `within` passes.
pub async fn wait_ready(url: &str, within: Duration) -> bool {
    let client = reqwest::Client::new();
    wait_until(within, || async {
        client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await
}
