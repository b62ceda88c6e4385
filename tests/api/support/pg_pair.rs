//! A private PostgreSQL primary and its streaming standby (`pg_basebackup -R`), for the
//! tests of following the primary across hosts: two of the tier's [`PgServer`]s with
//! replication settings, in one folder the PostgreSQL account owns.
#![allow(dead_code)] // Shared by every test module; not each uses every helper.

use std::ffi::OsStr;
use std::time::Duration;

use anyhow::bail;
use cartae_harness::tier::postgres::{
    initdb, postgres_bin, postgres_dir, run_as_postgres, PgServer,
};
use cartae_harness::tier::server::ServerDir;
use sqlx::{Connection, Executor, PgConnection};

/// The database the service uses on the pair; made on the primary, replicated to the standby.
pub const DATABASE: &str = "cartae";

pub struct PgPair {
    pub primary: PgServer,
    pub standby: PgServer,
    // Last: removed once both servers have stopped.
    dir: ServerDir,
}

/// A server of the pair: streaming replication allowed, standbys readable.
fn start_server(data: &std::path::Path, ready: &'static str) -> anyhow::Result<PgServer> {
    let name = data
        .file_name()
        .map_or("postgres".into(), |n| n.to_string_lossy().into_owned());
    PgServer::builder(&name, data)?
        .setting("wal_level", "replica")
        .setting("max_wal_senders", 5)
        .setting("hot_standby", "on")
        .setting("wal_receiver_status_interval", "1s")
        .ready_when(ready, Duration::from_secs(60))
        .start()
}

/// The service's database on `server`.
pub async fn connect(server: &PgServer) -> anyhow::Result<PgConnection> {
    Ok(PgConnection::connect(&server.url(DATABASE)).await?)
}

impl PgPair {
    /// initdb, the primary, `pg_basebackup -R`, the standby; then the service's database,
    /// once the standby has it too.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = postgres_bin()?;
        let dir: ServerDir = postgres_dir("pg-pair")?;
        let primary_data = dir.path().join("primary");
        let standby_data = dir.path().join("standby");
        initdb(&bin, &primary_data)?;
        std::fs::write(
            primary_data.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        )?;
        let primary = start_server(&primary_data, "ready to accept connections")?;
        let basebackup = [
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
        ];
        let mut args: Vec<&OsStr> = basebackup.iter().map(OsStr::new).collect();
        args.push(standby_data.as_os_str());
        run_as_postgres(&bin, "pg_basebackup", &args)?;
        let standby = start_server(&standby_data, "ready to accept read-only connections")?;
        let pair = Self {
            primary,
            standby,
            dir,
        };
        let mut admin = PgConnection::connect(&pair.primary.url("postgres")).await?;
        admin
            .execute(format!("CREATE DATABASE {DATABASE}").as_str())
            .await?;
        admin.close().await?;
        let replicated = cartae_harness::process::wait_until(Duration::from_secs(30), || async {
            connect(&pair.standby).await.is_ok()
        })
        .await;
        if !replicated {
            bail!("the standby never received the database");
        }
        Ok(pair)
    }

    /// libpq's multi-host URL over `servers`, in that order.
    pub fn url(servers: &[&PgServer], params: &str) -> String {
        let hosts: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
        format!(
            "postgres://postgres@{}/{DATABASE}?sslmode=disable{params}",
            hosts.join(",")
        )
    }

    /// What a failover manager does: the standby leaves recovery and takes writes.
    pub async fn promote_standby(&self) -> anyhow::Result<()> {
        let mut conn = connect(&self.standby).await?;
        let promoted: bool = sqlx::query_scalar("SELECT pg_promote(true, 30)")
            .fetch_one(&mut conn)
            .await?;
        if !promoted {
            bail!("the standby was not promoted within 30 s");
        }
        Ok(())
    }
}
