//! What every private server of the data tier shares: a folder of its own, removed on
//! drop; a wait for the line that says it is ready; a stop by signal.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::process::{is_alive, send_signal, ManagedChild};

/// A fresh directory for one server, removed on drop.
pub struct ServerDir(PathBuf);

impl ServerDir {
    pub fn new(what: &str) -> anyhow::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("cartae-{what}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ServerDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `child`'s log contains `line`, or fails with the log.
pub fn wait_for_log(child: &mut ManagedChild, line: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !child.logs().contains(line) {
        if child.has_exited() || Instant::now() > deadline {
            bail!("{} did not start:\n{}", child.name, child.logs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Stops a server as its operator would (a signal it handles), then waits for it to go.
pub fn stop(child: &ManagedChild, signal: &str) {
    send_signal(child.pid(), signal);
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_alive(child.pid()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}
