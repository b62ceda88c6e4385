//! A private PostgreSQL data tier on loopback: one etcd and two PostgreSQL servers, each
//! run by its own Patroni, with synchronous replication (RPO 0) and `pg_rewind` (a lost
//! primary rejoins as a standby). Patroni, not the test, elects and promotes; the test
//! only kills and restarts whole nodes, as a machine loss would.
//!
//! Everything runs as the `postgres` user (initdb and Patroni refuse root) in a temporary
//! directory it owns, on free ports, and is killed by PID when the cluster is dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::{Connection, Executor, PgConnection};

use super::postgres::{postgres_bin, PgAccount};
use crate::process::require_program;
use crate::process::{free_port, send_signal, wait_until, ManagedChild};

/// Patroni's timings, as small as its rule `loop_wait + 2 * retry_timeout <= ttl` allows
/// with a margin: a dead primary's leader key expires within `ttl` (8 s), and the sync
/// standby, checking every `loop_wait` (1 s), promotes itself within about a second more.
/// A shorter `retry_timeout` would demote a healthy primary when etcd stalls on a busy
/// machine.
const TTL_S: u32 = 8;
const LOOP_WAIT_S: u32 = 1;
const RETRY_TIMEOUT_S: u32 = 3;

/// One machine of the data tier: a Patroni and the PostgreSQL it runs.
pub struct PgNode {
    pub name: String,
    pub pg_port: u16,
    pub api_port: u16,
    dir: PathBuf,
    patroni: Option<ManagedChild>,
}

impl PgNode {
    /// A URL to `database` on this node alone, as `user`.
    pub fn url(&self, user: &str, database: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{}/{database}?sslmode=disable",
            self.pg_port
        )
    }

    pub fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The postmaster's PID, from the file PostgreSQL keeps while it runs.
    fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILL to Patroni, the postmaster and every one of its children at once: what a
    /// machine loss leaves (nothing flushed, no goodbye to the standby or to etcd). Only
    /// the clients' sockets differ: they get a reset rather than silence.
    fn kill(&mut self) {
        let mut pids: Vec<i32> = self.patroni.iter().map(ManagedChild::pid).collect();
        if let Some(postmaster) = self.postmaster_pid() {
            pids.push(postmaster);
            pids.extend(children_of(postmaster));
        }
        for pid in pids {
            send_signal(pid, "KILL");
        }
        // Reaps Patroni (ManagedChild kills and waits on drop).
        self.patroni = None;
    }
}

/// The PIDs whose parent is `parent`, from /proc.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                // The parent is the 4th field, after the command in parentheses.
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse::<i32>()
                        .ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Which role Patroni gives each member, from its `/cluster` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub leader: Option<String>,
    pub sync_standby: Option<String>,
    pub members: Vec<String>,
}

/// What a test may change in the data tier: more etcd flags (its compaction), and more
/// PostgreSQL parameters (a failing `archive_command`). `Default` is the failover drill's tier.
#[derive(Debug, Clone, Default)]
pub struct TierOptions {
    pub etcd_args: Vec<String>,
    /// `name: value` lines, put under each node's `postgresql.parameters`.
    pub pg_parameters: Vec<(String, String)>,
}

pub struct PatroniCluster {
    pub dir: PathBuf,
    pub scope: String,
    pub nodes: Vec<PgNode>,
    /// etcd's client URL (its `/metrics` and `/health` are under it).
    pub etcd_url: String,
    etcd: ManagedChild,
    owner: PgAccount,
    /// The installed PostgreSQL's binaries, which Patroni runs.
    bin: PathBuf,
    client: reqwest::Client,
    keep: bool,
}

impl PatroniCluster {
    /// etcd, then the first node (it bootstraps and leads), then the second (it clones the
    /// first with pg_basebackup); returns once a leader and a synchronous standby exist.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(TierOptions::default()).await
    }

    /// As [`PatroniCluster::start`], with `options`.
    pub async fn start_with(options: TierOptions) -> anyhow::Result<Self> {
        require_program("patroni", "apt-get install patroni")?;
        require_program("etcd", "apt-get install etcd-server")?;
        let bin = postgres_bin()?;
        let owner = PgAccount::find()?;
        let scope = format!("drill-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let dir = std::env::temp_dir().join(format!("cartae-{scope}"));
        for sub in ["", "etcd", "n1", "n2"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path)?;
            owner.own(&path)?;
        }
        // etcd refuses a data directory others can read.
        std::fs::set_permissions(
            dir.join("etcd"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        let etcd_port = free_port();
        let etcd = start_etcd(&owner, &dir, etcd_port, &options.etcd_args)?;
        let nodes = ["n1", "n2"]
            .iter()
            .map(|name| PgNode {
                name: (*name).to_owned(),
                pg_port: free_port(),
                api_port: free_port(),
                dir: dir.join(name),
                patroni: None,
            })
            .collect();
        let mut cluster = Self {
            dir,
            scope,
            nodes,
            etcd_url: format!("http://127.0.0.1:{etcd_port}"),
            etcd,
            owner,
            bin,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
            keep: false,
        };
        let etcd_url = format!("http://127.0.0.1:{etcd_port}/health");
        if !wait_until(Duration::from_secs(20), || async {
            cluster.client.get(&etcd_url).send().await.is_ok()
        })
        .await
        {
            bail!("etcd did not answer:\n{}", cluster.etcd.logs());
        }
        for i in 0..cluster.nodes.len() {
            cluster.write_config(i, etcd_port, &options.pg_parameters)?;
        }
        cluster.restart(0)?;
        if !wait_until(Duration::from_secs(60), || cluster.is_primary(0)).await {
            bail!("n1 did not bootstrap as primary:\n{}", cluster.logs());
        }
        cluster.restart(1)?;
        if !cluster.wait_healthy(Duration::from_secs(60)).await {
            bail!(
                "no leader with a synchronous standby within 60 s:\n{}",
                cluster.logs()
            );
        }
        Ok(cluster)
    }

    fn write_config(
        &self,
        index: usize,
        etcd_port: u16,
        parameters: &[(String, String)],
    ) -> anyhow::Result<()> {
        let node = &self.nodes[index];
        let mut config = patroni_config(&self.scope, node, &self.bin, etcd_port);
        for (name, value) in parameters {
            config.push_str(&format!("    {name}: {value:?}\n"));
        }
        let path = node.dir.join("patroni.yml");
        std::fs::write(&path, config)?;
        self.owner.own(&path)
    }

    /// Starts (again) node `index`'s Patroni, which starts its PostgreSQL: a first start
    /// bootstraps or clones, a restart after a kill rewinds and follows the leader.
    pub fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let node = &self.nodes[index];
        let mut command = self.owner.command("patroni");
        command
            .arg(node.dir.join("patroni.yml"))
            .current_dir(&node.dir)
            // Patroni and libpq look in $HOME; root's is not the postgres user's.
            .env("HOME", &node.dir);
        let log = node.dir.join(format!("patroni-{}.log", now_ms()));
        let child = ManagedChild::spawn(&format!("patroni {}", node.name), command, log)?;
        self.nodes[index].patroni = Some(child);
        Ok(())
    }

    /// Kills node `index` hard (Patroni and PostgreSQL, SIGKILL): a machine loss.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// What Patroni says of the cluster, asked of any node that answers.
    pub async fn topology(&self) -> Option<Topology> {
        for node in &self.nodes {
            let Ok(response) = self.client.get(node.api("/cluster")).send().await else {
                continue;
            };
            let Ok(body) = response.json::<serde_json::Value>().await else {
                continue;
            };
            let mut t = Topology::default();
            for m in body["members"].as_array().into_iter().flatten() {
                let name = m["name"].as_str().unwrap_or_default().to_owned();
                let running = m["state"] == "running" || m["state"] == "streaming";
                match m["role"].as_str() {
                    Some("leader") if running => t.leader = Some(name.clone()),
                    Some("sync_standby") if running => t.sync_standby = Some(name.clone()),
                    _ => {}
                }
                t.members.push(name);
            }
            return Some(t);
        }
        None
    }

    /// Waits until a leader and a synchronous standby both run: the state in which a
    /// primary loss can be failed over without losing an acknowledged write.
    pub async fn wait_healthy(&self, within: Duration) -> bool {
        wait_until(within, || async {
            self.topology()
                .await
                .is_some_and(|t| t.leader.is_some() && t.sync_standby.is_some())
        })
        .await
    }

    /// Whether node `index`'s Patroni says it runs the primary (REST `/primary` is 200).
    pub async fn is_primary(&self, index: usize) -> bool {
        let url = self.nodes[index].api("/primary");
        self.client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    }

    /// The node whose PostgreSQL is primary, asked of PostgreSQL itself.
    pub async fn primary(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if self.in_recovery(i).await.ok() == Some(false) {
                return Some(i);
            }
        }
        None
    }

    /// `pg_is_in_recovery()` on node `index`: true on a standby.
    pub async fn in_recovery(&self, index: usize) -> anyhow::Result<bool> {
        let mut conn = self.connect(index, "postgres").await?;
        Ok(sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await?)
    }

    /// A superuser connection to `database` on node `index`, bounded to 2 s.
    pub async fn connect(&self, index: usize, database: &str) -> anyhow::Result<PgConnection> {
        let url = self.nodes[index].url("postgres", database);
        tokio::time::timeout(Duration::from_secs(2), PgConnection::connect(&url))
            .await
            .with_context(|| format!("connect to {} timed out", self.nodes[index].name))?
            .with_context(|| format!("connect to {}", self.nodes[index].name))
    }

    /// Creates `role` (login, trusted on loopback) and `database` owned by it, on the
    /// primary; replication carries them to the standby.
    pub async fn create_database(&self, database: &str, role: &str) -> anyhow::Result<()> {
        let primary = self.primary().await.context("no primary")?;
        let mut conn = self.connect(primary, "postgres").await?;
        conn.execute(format!(r#"CREATE ROLE "{role}" LOGIN"#).as_str())
            .await?;
        conn.execute(format!(r#"CREATE DATABASE "{database}" OWNER "{role}""#).as_str())
            .await?;
        Ok(())
    }

    /// The libpq multi-host URL of `database` as `user`: every node, and only the one
    /// that accepts writes will do.
    pub fn url(&self, user: &str, database: &str) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.pg_port))
            .collect();
        format!(
            "postgres://{user}@{}/{database}?target_session_attrs=read-write&sslmode=disable",
            hosts.join(",")
        )
    }

    /// Every log of the tier, for a person reading a failure.
    pub fn logs(&self) -> String {
        let mut out = format!("== etcd\n{}", tail(&self.etcd.logs()));
        for node in &self.nodes {
            let Ok(entries) = std::fs::read_dir(&node.dir) else {
                continue;
            };
            let mut logs: Vec<PathBuf> = entries
                .filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            logs.sort();
            for log in logs {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                out.push_str(&format!("== {}\n{}", log.display(), tail(&text)));
            }
        }
        out
    }

    /// Keeps the directory (data and logs) after the cluster stops, for a failed test.
    pub fn keep(&mut self) -> PathBuf {
        self.keep = true;
        self.dir.clone()
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        // etcd is a ManagedChild: killed when the struct's fields drop.
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The last 40 lines of a log.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    lines[from..].join("\n") + "\n"
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

fn start_etcd(
    owner: &PgAccount,
    dir: &Path,
    client_port: u16,
    extra: &[String],
) -> anyhow::Result<ManagedChild> {
    let peer = format!("http://127.0.0.1:{}", free_port());
    let client = format!("http://127.0.0.1:{client_port}");
    let mut command = owner.command("etcd");
    command
        .args(["--name", "etcd", "--data-dir"])
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("etcd={peer}")])
        .args(extra);
    ManagedChild::spawn("etcd", command, dir.join("etcd.log"))
}

/// A node's Patroni configuration. Loopback is trusted (the drill's only network); the
/// superuser replicates and rewinds.
fn patroni_config(scope: &str, node: &PgNode, bin: &Path, etcd_port: u16) -> String {
    let dir = node.dir.display();
    let bin = bin.display();
    format!(
        r#"scope: {scope}
name: {name}
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
etcd3:
  hosts: 127.0.0.1:{etcd_port}
bootstrap:
  dcs:
    ttl: {TTL_S}
    loop_wait: {LOOP_WAIT_S}
    retry_timeout: {RETRY_TIMEOUT_S}
    maximum_lag_on_failover: 0
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_log_hints: "on"
        max_connections: 100
        shared_buffers: 16MB
  initdb:
    - encoding: UTF8
    - auth: trust
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {dir}/data
  bin_dir: {bin}
  pgpass: {dir}/pgpass
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
    rewind:
      username: postgres
  parameters:
    unix_socket_directories: {dir}
"#,
        name = node.name,
        api = node.api_port,
        pg = node.pg_port,
    )
}

/// How long `check` takes to hold, polled every 50 ms, or `None` past `within`.
pub async fn time_until<F, Fut>(within: Duration, check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    wait_until(within, check).await.then(|| started.elapsed())
}
