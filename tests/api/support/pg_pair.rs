//! A private PostgreSQL primary and its streaming standby (`pg_basebackup -R`), for the
//! tests of following the primary across hosts. Both run as `postgres` from a temporary
//! directory it owns, listen on loopback on ports chosen at run time, and are stopped by
//! PID on drop (fast shutdown), even when the test panics.
#![allow(dead_code)] // Shared by every test module; not each uses every helper.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::bail;
use cartae_harness::process::{free_port, is_alive, ManagedChild};
use cartae_harness::tls::{initdb, postgres_account, postgres_bin, stop, wait_for_log, ServerDir};
use sqlx::{Connection, Executor, PgConnection};

/// The database the service uses on the pair; made on the primary, replicated to the standby.
pub const DATABASE: &str = "cartae";

/// One server of the pair.
pub struct PgServer {
    pub port: u16,
    pub data: PathBuf,
    child: Option<ManagedChild>,
}

impl PgServer {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// As a crash would: immediate shutdown ends every session at once.
    pub fn crash(&mut self) {
        if let Some(child) = self.child.take() {
            stop(&child, "QUIT");
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.as_ref().is_some_and(|c| is_alive(c.pid()))
    }

    pub async fn connect(&self) -> anyhow::Result<PgConnection> {
        let url = format!("postgres://postgres@{}/{DATABASE}", self.addr());
        Ok(PgConnection::connect(&url).await?)
    }

    pub async fn in_recovery(&self) -> anyhow::Result<bool> {
        let mut conn = self.connect().await?;
        Ok(sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await?)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop(&child, "INT");
        }
    }
}

pub struct PgPair {
    pub primary: PgServer,
    pub standby: PgServer,
    // Last: removed once both servers have stopped.
    dir: ServerDir,
}

/// Runs a PostgreSQL program as `postgres`; fails with its output.
fn run_as_postgres(program: &Path, args: &[&str]) -> anyhow::Result<()> {
    let (uid, gid) = postgres_account()?;
    let out = Command::new(program)
        .args(args)
        .uid(uid)
        .gid(gid)
        .output()?;
    if !out.status.success() {
        bail!(
            "{} failed: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn start_server(bin: &Path, dir: &Path, data: &Path, ready: &str) -> anyhow::Result<PgServer> {
    let (uid, gid) = postgres_account()?;
    let port = free_port();
    let mut command = Command::new(bin.join("postgres"));
    command
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        .args(["-c", "fsync=off", "-c", "max_connections=60"])
        .args(["-c", "wal_level=replica", "-c", "max_wal_senders=5"])
        .args([
            "-c",
            "hot_standby=on",
            "-c",
            "wal_receiver_status_interval=1s",
        ])
        .uid(uid)
        .gid(gid);
    let name = data
        .file_name()
        .map_or("postgres".into(), |n| n.to_string_lossy().into_owned());
    let mut child = ManagedChild::spawn(&name, command, dir.join(format!("{name}.log")))?;
    wait_for_log(&mut child, ready, Duration::from_secs(60))?;
    Ok(PgServer {
        port,
        data: data.to_owned(),
        child: Some(child),
    })
}

impl PgPair {
    /// initdb, the primary, `pg_basebackup -R`, the standby; then the service's database,
    /// once the standby has it too.
    pub async fn start() -> anyhow::Result<Self> {
        let (uid, gid) = postgres_account()?;
        let bin = postgres_bin()?;
        let dir = ServerDir::new("pg-pair")?;
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        let primary_data = dir.path().join("primary");
        let standby_data = dir.path().join("standby");
        initdb(&bin, &primary_data)?;
        std::fs::write(
            primary_data.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        )?;
        let primary = start_server(
            &bin,
            dir.path(),
            &primary_data,
            "ready to accept connections",
        )?;
        run_as_postgres(
            &bin.join("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--no-sync",
                "-D",
                &standby_data.to_string_lossy(),
            ],
        )?;
        let standby = start_server(
            &bin,
            dir.path(),
            &standby_data,
            "ready to accept read-only connections",
        )?;
        let pair = Self {
            primary,
            standby,
            dir,
        };
        let url = format!("postgres://postgres@{}/postgres", pair.primary.addr());
        let mut admin = PgConnection::connect(&url).await?;
        admin
            .execute(format!("CREATE DATABASE {DATABASE}").as_str())
            .await?;
        admin.close().await?;
        let replicated = cartae_harness::process::wait_until(Duration::from_secs(30), || async {
            pair.standby.connect().await.is_ok()
        })
        .await;
        if !replicated {
            bail!("the standby never received the database");
        }
        Ok(pair)
    }

    /// libpq's multi-host URL over `servers`, in that order.
    pub fn url(servers: &[&PgServer], params: &str) -> String {
        let hosts: Vec<String> = servers.iter().map(|s| s.addr()).collect();
        format!(
            "postgres://postgres@{}/{DATABASE}?sslmode=disable{params}",
            hosts.join(",")
        )
    }

    /// What a failover manager does: the standby leaves recovery and takes writes.
    pub async fn promote_standby(&self) -> anyhow::Result<()> {
        let mut conn = self.standby.connect().await?;
        let promoted: bool = sqlx::query_scalar("SELECT pg_promote(true, 30)")
            .fetch_one(&mut conn)
            .await?;
        if !promoted {
            bail!("the standby was not promoted within 30 s");
        }
        Ok(())
    }
}
