//! The real binary as a child process, for what only a process can show: signals, exit
//! codes, the command line. Every child runs in its own temporary directory (so no `.env`
//! of the repository reaches it), binds port 0 and reports the ports it got, and is
//! killed by its PID when the guard drops, even when the test panics.
#![allow(dead_code)] // Shared by every test module; not each uses every helper.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_cartae-database-api");

/// Far above any run the tests make (a migration, a failed start): only a hang reaches it.
const RUN_TO_END_TIMEOUT: Duration = Duration::from_secs(30);
/// From spawning to the `listening` line; a debug build on a busy 2-core machine.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// A fresh directory under the system's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("cartae-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&path).expect("temporary directory created");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the binary with `args` and exactly `env` (plus PATH), in `dir`, stdout and stderr
/// interleaved into `log`.
fn spawn(args: &[&str], env: &HashMap<String, String>, dir: &Path, log: &Path) -> Child {
    let file = std::fs::File::create(log).expect("log file created");
    Command::new(BINARY)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().expect("log file handle")))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("binary starts")
}

/// Polls for the child's exit, up to `within`.
fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("child status") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct Replica {
    pub child: Child,
    pub port: u16,
    pub metrics_port: u16,
    pub log: PathBuf,
    _dir: TempDir,
}

impl Replica {
    /// Starts `cartae-database-api serve` with exactly `env` (plus PATH) on port 0, and
    /// returns once its `listening` log line names the ports it bound. That line is logged
    /// at info: `LOG_LEVEL` defaults to info here, and must not hide it.
    pub async fn start(env: HashMap<String, String>) -> Self {
        let mut replica = Self::spawn(env);
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        loop {
            let logs = replica.logs();
            if let Some((port, metrics_port)) = listening_ports(&logs) {
                (replica.port, replica.metrics_port) = (port, metrics_port);
                return replica;
            }
            let exited = replica.child.try_wait().expect("child status");
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "no `listening` line (exit: {exited:?}); logs:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Spawns the replica without waiting: its ports are not known yet (0).
    pub fn spawn(mut env: HashMap<String, String>) -> Self {
        env.insert("PORT".into(), "0".into());
        env.insert("METRICS_PORT".into(), "0".into());
        env.insert("LOG_FORMAT".into(), "json".into());
        env.entry("LOG_LEVEL".into())
            .or_insert_with(|| "info".into());
        let dir = TempDir::new();
        let log = dir.path().join("replica.log");
        Self {
            child: spawn(&["serve"], &env, dir.path(), &log),
            port: 0,
            metrics_port: 0,
            log,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: &str) {
        assert!(
            cartae_harness::process::send_signal(self.pid(), signal),
            "kill -{signal} failed"
        );
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit, up to `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, within)
    }

    pub async fn wait_ready(&self, client: &reqwest::Client, within: Duration) {
        let ready = cartae_harness::process::wait_until(within, || async {
            let answer = client.get(self.url("/ready")).send().await;
            answer.is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(
            ready,
            "replica not ready in {within:?}; logs:\n{}",
            self.logs()
        );
    }
}

/// The API and metrics ports of the JSON `listening` line, once it is in `logs`.
fn listening_ports(logs: &str) -> Option<(u16, u16)> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|line| line["message"] == "listening")
        .map(|line| {
            let port = |key: &str| {
                line[key]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or_else(|| panic!("no {key} in the listening line: {line}"))
            };
            (port("port"), port("metrics_port"))
        })
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion with `args` and exactly `env`, in a temporary directory;
/// returns status and output. A run past [`RUN_TO_END_TIMEOUT`] is killed and fails the test.
pub fn run_to_end(args: &[&str], env: &HashMap<String, String>) -> (ExitStatus, String) {
    let dir = TempDir::new();
    let log = dir.path().join("output.log");
    let mut child = spawn(args, env, dir.path(), &log);
    let status = wait_exit(&mut child, RUN_TO_END_TIMEOUT);
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(status) => (status, output),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} still running after {RUN_TO_END_TIMEOUT:?}; output:\n{output}");
        }
    }
}
