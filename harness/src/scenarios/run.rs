//! The one drill runner: every drill test takes its turn, gets a log folder, prints its
//! table and gives its verdict here.

use std::path::{Path, PathBuf};

use tokio::sync::{Mutex, MutexGuard};

use super::Drill;
use crate::report::{table, Row};
use crate::tier::patroni::PatroniCluster;
use crate::tier::sentinel::SentinelGroup;

/// Drills run one after the other: each is timing-sensitive, and two at once would
/// oversubscribe a small CI machine and stretch each other's timings.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// What holds a drill's servers: kept for reading when a row fails; dropped (its servers
/// stopped) before the folder goes when every row passed.
pub trait Logs {
    /// Writes what it has into `dir`, and says where to look.
    fn keep_in(self, dir: &Path) -> String;
}

impl Logs for () {
    fn keep_in(self, dir: &Path) -> String {
        format!("logs in {}", dir.display())
    }
}

impl Logs for Drill {
    fn keep_in(self, _dir: &Path) -> String {
        format!("logs in {}", self.keep_logs().display())
    }
}

impl Logs for SentinelGroup {
    fn keep_in(self, dir: &Path) -> String {
        let _ = std::fs::write(dir.join("sentinel.log"), self.logs());
        format!("Sentinel group's logs in {}", dir.display())
    }
}

impl Logs for PatroniCluster {
    fn keep_in(mut self, _dir: &Path) -> String {
        let logs = self.logs();
        format!("data tier kept in {}:\n{logs}", self.keep().display())
    }
}

impl<A: Logs, B: Logs> Logs for (A, B) {
    fn keep_in(self, dir: &Path) -> String {
        format!("{}; {}", self.0.keep_in(dir), self.1.keep_in(dir))
    }
}

/// One drill test's run: its turn, and its folder `ha-logs/<name>-<uuid>`.
pub struct DrillRun {
    pub dir: PathBuf,
    name: String,
    _turn: MutexGuard<'static, ()>,
}

impl DrillRun {
    /// Waits for the drill's turn.
    pub async fn begin(name: &str) -> Self {
        let turn = ONE_AT_A_TIME.lock().await;
        let dir = crate::repo_root()
            .join("ha-logs")
            .join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
        Self {
            dir,
            name: name.to_owned(),
            _turn: turn,
        }
    }

    /// Prints the table. Every row passed and no other problem: `held` is dropped, then the
    /// folder removed. Otherwise the logs are kept and the test panics with the table.
    pub fn finish(self, rows: &[Row], problems: &[String], held: impl Logs) {
        println!("{}", table(rows));
        if problems.is_empty() && rows.iter().all(Row::passed) {
            drop(held);
            let _ = std::fs::remove_dir_all(&self.dir);
            return;
        }
        std::fs::create_dir_all(&self.dir).ok();
        let kept = held.keep_in(&self.dir);
        panic!(
            "{} failed; {kept}\n{problems:#?}\n{}",
            self.name,
            table(rows)
        );
    }
}

/// Whether `scenario` runs: `variable` (e.g. `HA_SCENARIOS`), a comma list of parts of
/// scenario names, runs only those (to work on a few without the whole drill); unset,
/// every scenario runs.
pub fn selected(variable: &str, scenario: &str) -> bool {
    match std::env::var(variable) {
        Ok(wanted) if !wanted.trim().is_empty() => {
            wanted.split(',').any(|part| scenario.contains(part.trim()))
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(problems: &[&str]) -> Row {
        Row {
            scenario: "runner self-test".to_owned(),
            balancer: "none",
            requests: 0,
            failed: 0,
            retried: 0,
            failed_after_retries: 0,
            p50_ms: 0.0,
            p95_ms: 0.0,
            p99_ms: 0.0,
            detection: None,
            recovery: None,
            budget: String::new(),
            problems: problems.iter().map(|p| (*p).to_owned()).collect(),
            notes: String::new(),
        }
    }

    /// Runs `finish` on a fresh run; whether it panicked, and whether the folder stayed.
    async fn verdict(rows: &[Row], problems: &[String]) -> (bool, bool) {
        let run = DrillRun::begin("runner-self-test").await;
        let dir = run.dir.clone();
        std::fs::create_dir_all(&dir).unwrap();
        let (rows, problems) = (rows.to_vec(), problems.to_vec());
        let finish = std::panic::AssertUnwindSafe(move || run.finish(&rows, &problems, ()));
        let panicked = std::panic::catch_unwind(finish).is_err();
        let kept = dir.exists();
        let _ = std::fs::remove_dir_all(&dir);
        (panicked, kept)
    }

    #[tokio::test]
    async fn a_failed_row_or_problem_keeps_the_logs_and_fails_the_test() {
        assert_eq!(verdict(&[row(&[])], &[]).await, (false, false));
        assert_eq!(verdict(&[row(&["broke"])], &[]).await, (true, true));
        assert_eq!(verdict(&[], &["no standby".to_owned()]).await, (true, true));
    }
}
