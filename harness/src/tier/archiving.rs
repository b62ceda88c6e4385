//! A private PostgreSQL that archives every WAL segment with pgBackRest into a private
//! repository, backed up and restored only by the shipped `infra/scripts/backup.sh` and
//! `infra/scripts/restore.sh`, configured by the shipped `infra/pgbackrest/pgbackrest.conf`
//! (its paths overridden by `PGBACKREST_*` variables, which pgBackRest ranks above the
//! file). The point-in-time recovery drill on it is `scenarios::pitr`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::{Connection, Executor, PgConnection};

use super::postgres::{initdb, postgres_bin, postgres_dir, PgAccount, PgServer};
use super::server::ServerDir;
use crate::process::free_port;
use crate::process::require_program;

pub const STANZA: &str = "cartae";

/// A private PostgreSQL with `archive_mode=on` and the shipped `archive_command`, its
/// pgBackRest repository, and the servers `restore.sh` started from it.
pub struct ArchivingPostgres {
    pub port: u16,
    account: PgAccount,
    bin: PathBuf,
    server: PgServer,
    /// Data directories of restored servers (run by `pg_ctl`, not by us): stopped on drop.
    restored: std::sync::Mutex<Vec<PathBuf>>,
    dir: ServerDir,
}

/// The shipped configuration file, pointed at the server and repository in `dir`.
fn pgbackrest_env(dir: &Path, port: u16) -> Vec<(String, String)> {
    let conf = crate::repo_root().join("infra/pgbackrest/pgbackrest.conf");
    [
        ("CONFIG", conf),
        ("REPO1_PATH", dir.join("repo")),
        ("LOG_PATH", dir.join("log")),
        ("LOCK_PATH", dir.join("lock")),
        ("PG1_PATH", dir.join("data")),
        ("PG1_PORT", PathBuf::from(port.to_string())),
        ("PG1_SOCKET_PATH", dir.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("PGBACKREST_{k}"), v.to_string_lossy().into_owned()))
    .collect()
}

/// A server `restore.sh` left running.
pub struct Restored {
    pub port: u16,
    pub data: PathBuf,
    /// How long `restore.sh` took: restore, start, replay, promote.
    pub elapsed: Duration,
}

impl ArchivingPostgres {
    pub fn start() -> anyhow::Result<Self> {
        require_program("pgbackrest", "apt-get install pgbackrest")?;
        let account = PgAccount::find()?;
        let bin = postgres_bin()?;
        let dir = postgres_dir("pitr")?;
        let data = dir.path().join("data");
        initdb(&bin, &data)?;
        for sub in ["repo", "log"] {
            let path = dir.path().join(sub);
            std::fs::create_dir(&path)?;
            account.own(&path)?;
        }
        let builder = PgServer::builder("pitr-postgres", &data)?;
        let port = builder.port;
        let server = builder
            // What the shipped configuration asks of every PostgreSQL host.
            .setting("archive_mode", "on")
            .setting("archive_timeout", "30s")
            .setting(
                "archive_command",
                format!("pgbackrest --stanza={STANZA} archive-push %p"),
            )
            // archive-push runs as the server's child, with its environment.
            .envs(pgbackrest_env(dir.path(), port))
            .start()?;
        Ok(Self {
            port,
            account,
            bin,
            server,
            restored: std::sync::Mutex::new(Vec::new()),
            dir,
        })
    }

    pub fn url(&self, database: &str) -> String {
        self.server.url(database)
    }

    pub async fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect(&self.url("postgres")).await?;
        conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await?;
        Ok(())
    }

    /// Runs `program args` as the postgres account with the pgBackRest environment;
    /// fails with its output unless it succeeds.
    async fn run(
        &self,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Output> {
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .envs(pgbackrest_env(self.dir.path(), self.port))
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .uid(self.account.uid)
            .gid(self.account.gid)
            .kill_on_drop(true);
        let output = command
            .output()
            .await
            .with_context(|| format!("run {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} {} failed ({}):\n{}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output)
    }

    /// A full backup by the shipped `backup.sh` (which creates the stanza first).
    pub async fn backup_full(&self) -> anyhow::Result<()> {
        let script = crate::repo_root().join("infra/scripts/backup.sh");
        self.run(
            "bash",
            &[&script.to_string_lossy()],
            &[
                ("BACKUP_METHOD", "pgbackrest"),
                ("BACKUP_SOURCE", "direct"),
                ("BACKUP_TYPE", "full"),
            ],
        )
        .await?;
        Ok(())
    }

    /// Switches to a new WAL segment and waits until it is in the repository:
    /// `pgbackrest check`, which an operator runs too.
    pub async fn archive_check(&self) -> anyhow::Result<()> {
        self.run("pgbackrest", &[&format!("--stanza={STANZA}"), "check"], &[])
            .await?;
        Ok(())
    }

    /// Restores to `target` with the shipped `restore.sh`, into a fresh data directory,
    /// on a port of its own, archiving nothing (a drill must not push a timeline).
    pub async fn restore_to(&self, target: &str) -> anyhow::Result<Restored> {
        let port = free_port();
        let data = self.dir.path().join(format!("restored-{port}"));
        let script = crate::repo_root().join("infra/scripts/restore.sh");
        let dir = self.dir.path().to_string_lossy().into_owned();
        let started = Instant::now();
        // Recorded first: a failed recovery may still leave a server to stop.
        self.restored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(data.clone());
        let args = [
            &*script.to_string_lossy(),
            "--target",
            target,
            "--pgdata",
            &data.to_string_lossy(),
            "--port",
            &port.to_string(),
            "--socket-dir",
            &dir,
            "--listen",
            "127.0.0.1",
            "--no-archive",
            "--wait",
            "120",
        ];
        self.run("bash", &args, &[("PG_BIN", &self.bin.to_string_lossy())])
            .await?;
        Ok(Restored {
            port,
            data,
            elapsed: started.elapsed(),
        })
    }
}

impl Restored {
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }
}

impl Drop for ArchivingPostgres {
    fn drop(&mut self) {
        let restored =
            std::mem::take(&mut *self.restored.lock().unwrap_or_else(|e| e.into_inner()));
        for data in restored {
            let _ = self
                .account
                .command(self.bin.join("pg_ctl"))
                .args(["-m", "immediate", "stop", "-D"])
                .arg(&data)
                .output();
        }
        // The archiving server itself stops (fast shutdown) when `server` drops.
    }
}
