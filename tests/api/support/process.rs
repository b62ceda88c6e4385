//! The real binary as a child process, for what only a process can show: signals, exit
#![allow(dead_code)] // Shared by every test module; not each uses every helper.
//! codes, the command line. Every child is killed by its PID when the guard drops, even when
//! the test panics.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_cartae-database-api");

pub use cartae_harness::process::free_port;

pub struct Replica {
    pub child: Child,
    pub port: u16,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Replica {
    /// Starts `cartae-database-api serve` with exactly `env` (plus PATH), output to a log file.
    pub fn start(mut env: HashMap<String, String>) -> Self {
        let port = free_port();
        let metrics_port = free_port();
        env.insert("PORT".into(), port.to_string());
        env.insert("METRICS_PORT".into(), metrics_port.to_string());
        env.entry("LOG_FORMAT".into())
            .or_insert_with(|| "json".into());
        let log = std::env::temp_dir().join(format!(
            "cartae-replica-{}.log",
            uuid::Uuid::new_v4().simple()
        ));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BINARY)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&env)
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("binary starts");
        Self {
            child,
            port,
            metrics_port,
            log,
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
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub async fn wait_ready(&self, client: &reqwest::Client, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = client.get(self.url("/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "replica not ready in {within:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Runs the binary to completion with `args` and exactly `env`; returns status and output.
pub fn run_to_end(args: &[&str], env: &HashMap<String, String>) -> (ExitStatus, String) {
    let output = Command::new(BINARY)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .expect("binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status, text)
}
