//! Point-in-time recovery on real engines: a private PostgreSQL that archives every WAL
//! segment with pgBackRest into a private repository, backed up and restored only by the
//! shipped `infra/scripts/backup.sh` and `infra/scripts/restore.sh`, configured by the
//! shipped `infra/pgbackrest/pgbackrest.conf` (its paths overridden by `PGBACKREST_*`
//! variables, which pgBackRest ranks above the file).
//!
//! [`drill`] writes through three replicas of the release binary, notes a time, writes
//! more, restores to the time into a fresh data directory and compares.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};

use crate::cluster::{require_program, Cluster, ClusterOptions, Timings};
use crate::load::{quantile, Workload};
use crate::process::{free_port, ManagedChild};
use crate::report::Row;
use crate::tls::{postgres_account, postgres_bin, stop, wait_for_log, ServerDir};

pub const STANZA: &str = "cartae";
pub const SCENARIO: &str = "PITR: restore to a timestamp";

/// A private PostgreSQL with `archive_mode=on` and the shipped `archive_command`, its
/// pgBackRest repository, and the servers `restore.sh` started from it.
pub struct ArchivingPostgres {
    pub port: u16,
    uid: u32,
    gid: u32,
    bin: PathBuf,
    child: ManagedChild,
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
        let (uid, gid) = postgres_account()?;
        let bin = postgres_bin()?;
        let dir = ServerDir::new("pitr")?;
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        crate::tls::initdb(&bin, &dir.path().join("data"))?;
        for sub in ["repo", "log"] {
            let path = dir.path().join(sub);
            std::fs::create_dir(&path)?;
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
        let port = free_port();
        let mut command = Command::new(bin.join("postgres"));
        command
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            // What the shipped configuration asks of every PostgreSQL host.
            .args(["-c", "archive_mode=on", "-c", "archive_timeout=30s"])
            .arg("-c")
            .arg(format!(
                "archive_command=pgbackrest --stanza={STANZA} archive-push %p"
            ))
            .args(["-c", "fsync=off", "-c", "max_connections=60"])
            // archive-push runs as the server's child, with its environment.
            .envs(pgbackrest_env(dir.path(), port))
            .current_dir(dir.path())
            .uid(uid)
            .gid(gid);
        let mut child =
            ManagedChild::spawn("pitr-postgres", command, dir.path().join("postgres.log"))?;
        wait_for_log(
            &mut child,
            "ready to accept connections",
            Duration::from_secs(30),
        )?;
        Ok(Self {
            port,
            uid,
            gid,
            bin,
            child,
            restored: std::sync::Mutex::new(Vec::new()),
            dir,
        })
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
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
            .uid(self.uid)
            .gid(self.gid)
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
            let _ = Command::new(self.bin.join("pg_ctl"))
                .args(["-m", "immediate", "stop", "-D"])
                .arg(&data)
                .uid(self.uid)
                .gid(self.gid)
                .output();
        }
        // Fast shutdown: no orphaned backends or shared memory left behind.
        stop(&self.child, "INT");
    }
}

/// What the drill wrote through the service, and what answered.
#[derive(Default)]
struct Writes {
    requests: usize,
    failed: usize,
    latencies_ms: Vec<f64>,
    problems: Vec<String>,
}

impl Writes {
    /// Sends one write, once; returns its JSON body when it was acknowledged (2xx).
    async fn send(&mut self, what: &str, request: reqwest::RequestBuilder) -> Option<Value> {
        self.requests += 1;
        let started = Instant::now();
        let answer = request.timeout(Duration::from_secs(10)).send().await;
        self.latencies_ms
            .push(started.elapsed().as_secs_f64() * 1000.0);
        match answer {
            Ok(r) if r.status().is_success() => Some(r.json().await.unwrap_or(Value::Null)),
            Ok(r) => {
                self.failed += 1;
                self.problems.push(format!("{what}: {}", r.status()));
                None
            }
            Err(e) => {
                self.failed += 1;
                self.problems.push(format!("{what}: {e}"));
                None
            }
        }
    }
}

/// The current time on the database server, as `restore.sh --target` takes it.
async fn server_time(url: &str) -> anyhow::Result<String> {
    let mut conn = PgConnection::connect(url).await?;
    Ok(sqlx::query_scalar(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    )
    .fetch_one(&mut conn)
    .await?)
}

/// Every item of `email`'s user, id to title, on the server `url` reaches.
async fn items_of(url: &str, email: &str) -> anyhow::Result<HashMap<String, String>> {
    let mut conn = PgConnection::connect(url).await?;
    let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT i.id, i.title FROM items i JOIN users u ON u.id = i.user_id WHERE u.email = $1",
    )
    .bind(email)
    .fetch_all(&mut conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, t)| (id.to_string(), t))
        .collect())
}

async fn users_named(url: &str, email: &str) -> anyhow::Result<i64> {
    let mut conn = PgConnection::connect(url).await?;
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM users WHERE email = $1")
            .bind(email)
            .fetch_one(&mut conn)
            .await?,
    )
}

/// Items created, updated and deleted before and after the noted time.
const CREATES: usize = 20;
const CHANGES: usize = 5;

/// Back up, write through the service, note the time, write more (creates, updates,
/// deletes, a new user), restore to the time: exactly the state acknowledged before it.
pub async fn drill(state_dir: &Path) -> anyhow::Result<Row> {
    let pg = ArchivingPostgres::start()?;
    pg.create_database("cartae").await?;
    let options = ClusterOptions {
        extra_env: vec![("DATABASE_URL".to_owned(), pg.url("cartae"))],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with_options(Timings::default(), state_dir, options).await?;
    let backup_started = Instant::now();
    pg.backup_full().await?;
    let backup_took = backup_started.elapsed();
    // pgBackRest restores to a time only from a backup whose stop time, in whole seconds
    // and taken once its WAL is archived, is before the target: on a quiet machine the
    // writes below took under a second and the target fell inside the backup's last second.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let client = reqwest::Client::new();
    let base = cluster.instances[0].url("");
    let workload = Workload::prepare(&client, &base).await?;
    let email = workload.credentials["email"]
        .as_str()
        .context("workload has no email")?
        .to_owned();
    let mut writes = Writes::default();
    let item = |id: &str| format!("{base}/api/items/{id}");
    for i in 0..CREATES {
        let body = json!({"type": "note", "title": format!("before {i}")});
        let request = client
            .post(format!("{base}/api/items"))
            .bearer_auth(&workload.token)
            .json(&body);
        writes.send("create before", request).await;
    }
    // The state every acknowledged write before the time left, as the primary has it.
    let expected = items_of(&pg.url("cartae"), &email).await?;
    // Commit timestamps on either side of the target are apart by more than any clock
    // granularity.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let target = server_time(&pg.url("cartae")).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut after = Vec::new();
    for i in 0..CREATES {
        let body = json!({"type": "note", "title": format!("after {i}")});
        let request = client
            .post(format!("{base}/api/items"))
            .bearer_auth(&workload.token)
            .json(&body);
        if let Some(created) = writes.send("create after", request).await {
            after.push(created["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    let earlier: Vec<&String> = expected.keys().collect();
    for id in earlier.iter().take(CHANGES) {
        let request = client
            .patch(item(id))
            .bearer_auth(&workload.token)
            .json(&json!({"title": "changed after"}));
        writes.send("update after", request).await;
    }
    for id in earlier.iter().skip(CHANGES).take(CHANGES) {
        let request = client.delete(item(id)).bearer_auth(&workload.token);
        writes.send("delete after", request).await;
    }
    let late_email = format!("late-{}@example.com", uuid::Uuid::new_v4().simple());
    let register = client
        .post(format!("{base}/api/auth/register"))
        .json(&json!({"email": late_email, "password": "drill-password-0123456789"}));
    writes.send("register after", register).await;
    // The state after the time differs from the one before it, or the drill proves nothing.
    let later = items_of(&pg.url("cartae"), &email).await?;
    drop(cluster);

    pg.archive_check().await?;
    let restored = pg.restore_to(&target).await?;
    let found = items_of(&restored.url("cartae"), &email).await?;
    let late_users = users_named(&restored.url("cartae"), &late_email).await?;

    let mut problems = writes.problems.clone();
    if later == expected {
        problems.push("the writes after the time changed nothing".to_owned());
    }
    let missing = expected
        .keys()
        .filter(|id| !found.contains_key(*id))
        .count();
    let extra = found
        .keys()
        .filter(|id| !expected.contains_key(*id))
        .count();
    let changed = expected
        .iter()
        .filter(|(id, title)| found.get(*id).is_some_and(|t| t != *title))
        .count();
    if missing > 0 {
        problems.push(format!(
            "{missing} item(s) acknowledged before the time are missing"
        ));
    }
    if extra > 0 {
        problems.push(format!("{extra} item(s) created after the time are there"));
    }
    if changed > 0 {
        problems.push(format!(
            "{changed} item(s) carry a change made after the time"
        ));
    }
    if late_users != 0 {
        problems.push("the user registered after the time is there".to_owned());
    }
    let ms = &writes.latencies_ms;
    Ok(Row {
        scenario: SCENARIO.to_owned(),
        balancer: "direct",
        requests: writes.requests,
        failed: writes.failed,
        retried: 0,
        failed_after_retries: writes.failed,
        p50_ms: quantile(ms, 0.50),
        p95_ms: quantile(ms, 0.95),
        p99_ms: quantile(ms, 0.99),
        detection: None,
        recovery: Some(restored.elapsed),
        budget: "none: every write is acknowledged".to_owned(),
        problems,
        notes: format!(
            "full backup by backup.sh {:.1} s; restore.sh to the noted time (restore, replay, promote) in the Recovery column. \
             Restored {} of {} items acknowledged before it, {} missing; after it: {} creates, {CHANGES} updates, {CHANGES} deletes \
             and a sign-up, {extra} created item(s) and {changed} change(s) found",
            backup_took.as_secs_f64(),
            expected.len() - missing,
            expected.len(),
            missing,
            after.len(),
        ),
    })
}
