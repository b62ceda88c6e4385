//! A private Redis Sentinel group on loopback: a master, one replica and three sentinels
//! (`redis-server <conf> --sentinel`), each on a free port, each killed by its PID on drop.
//!
//! The timings are short so a failover takes seconds, not the production minute:
//! a node is down for a sentinel after [`DOWN_AFTER`], and a failover that stalls is
//! retried after [`FAILOVER_TIMEOUT`]. The failover itself is Sentinel's: tests only kill a
//! node or ask `SENTINEL FAILOVER`, as an operator would.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, RedisConnectionInfo};

use super::server::{stop, wait_for_log, ServerDir};
use crate::process::{free_port, send_signal, wait_until, ManagedChild};

/// The master's name in every sentinel's configuration.
pub const MASTER_NAME: &str = "cartae";
/// Sentinel's `down-after-milliseconds`.
pub const DOWN_AFTER: Duration = Duration::from_millis(1_000);
/// Sentinel's `failover-timeout`.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_millis(5_000);
/// Every query the harness makes to a node or a sentinel.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Passwords the group asks for; `None` leaves that side open.
#[derive(Clone, Default)]
pub struct Passwords {
    /// `requirepass` of the master and the replica (and `masterauth`, `auth-pass`).
    pub master: Option<String>,
    /// `requirepass` of the sentinels (and `sentinel-pass` between them).
    pub sentinels: Option<String>,
}

struct Server {
    port: u16,
    child: Option<ManagedChild>,
}

impl Server {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

pub struct SentinelGroup {
    /// The master (first) and the replica.
    nodes: Vec<Server>,
    sentinels: Vec<Server>,
    passwords: Passwords,
    dir: ServerDir,
}

impl SentinelGroup {
    /// Starts the group and returns once every sentinel knows the replica and the other
    /// sentinels: before that, a failover could not elect a leader.
    pub async fn start(passwords: Passwords) -> anyhow::Result<Self> {
        crate::process::require_program("redis-server", "apt-get install redis-server")?;
        let dir = ServerDir::new("sentinel")?;
        let mut group = Self {
            nodes: Vec::new(),
            sentinels: Vec::new(),
            passwords,
            dir,
        };
        let master = group.start_node(None)?;
        group.nodes.push(master);
        let replica = group.start_node(Some(group.nodes[0].port))?;
        group.nodes.push(replica);
        for index in 0..3 {
            let sentinel = group.start_sentinel(index)?;
            group.sentinels.push(sentinel);
        }
        group.wait_discovered().await?;
        Ok(group)
    }

    fn start_node(&self, replica_of: Option<u16>) -> anyhow::Result<Server> {
        let port = free_port();
        let name = format!("redis-{port}");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--dbfilename", &format!("{name}.rdb")]);
        if let Some(password) = &self.passwords.master {
            command.args(["--requirepass", password, "--masterauth", password]);
        }
        if let Some(master) = replica_of {
            command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        let log = self.dir.path().join(format!("{name}.log"));
        let mut child = ManagedChild::spawn(&name, command, log)?;
        wait_for_log(
            &mut child,
            "Ready to accept connections",
            Duration::from_secs(20),
        )?;
        Ok(Server {
            port,
            child: Some(child),
        })
    }

    fn start_sentinel(&self, index: usize) -> anyhow::Result<Server> {
        let port = free_port();
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} {down}\n\
             sentinel failover-timeout {MASTER_NAME} {failover}\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            dir = self.dir.path().display(),
            master = self.nodes[0].port,
            down = DOWN_AFTER.as_millis(),
            failover = FAILOVER_TIMEOUT.as_millis(),
        );
        if let Some(password) = &self.passwords.master {
            conf.push_str(&format!("sentinel auth-pass {MASTER_NAME} {password}\n"));
        }
        if let Some(password) = &self.passwords.sentinels {
            conf.push_str(&format!(
                "requirepass {password}\nsentinel sentinel-pass {password}\n"
            ));
        }
        // Sentinel rewrites its configuration file as it learns: one writable file each.
        let path = self.dir.path().join(format!("sentinel-{index}.conf"));
        std::fs::write(&path, conf).context("write sentinel.conf")?;
        let mut command = Command::new("redis-server");
        command.arg(&path).arg("--sentinel");
        let name = format!("sentinel-{index}");
        let log = self.dir.path().join(format!("{name}.log"));
        let mut child = ManagedChild::spawn(&name, command, log)?;
        wait_for_log(&mut child, "+monitor master", Duration::from_secs(20))?;
        Ok(Server {
            port,
            child: Some(child),
        })
    }

    /// Every sentinel sees the replica and the two other sentinels (they find each other
    /// through the master's hello channel, every two seconds).
    async fn wait_discovered(&self) -> anyhow::Result<()> {
        let discovered = wait_until(Duration::from_secs(30), || async {
            for sentinel in &self.sentinels {
                let known = |kind: &'static str| {
                    let mut cmd = redis::cmd("SENTINEL");
                    cmd.arg(kind).arg(MASTER_NAME);
                    cmd
                };
                let Ok(mut conn) = self.sentinel_connection(sentinel).await else {
                    return false;
                };
                let replicas: Vec<redis::Value> = known("replicas")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                let others: Vec<redis::Value> = known("sentinels")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if replicas.is_empty() || others.len() < self.sentinels.len() - 1 {
                    return false;
                }
            }
            true
        })
        .await;
        if !discovered {
            bail!(
                "the sentinels did not discover each other and the replica within 30 s:\n{}",
                self.logs()
            );
        }
        Ok(())
    }

    pub fn sentinel_addrs(&self) -> Vec<SocketAddr> {
        self.sentinels.iter().map(Server::addr).collect()
    }

    /// `host:port,...` of the sentinels, as `REDIS_SENTINELS` takes them.
    pub fn sentinel_list(&self) -> String {
        self.sentinel_addrs()
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The service's Redis settings for this group. `REDIS_URL` names a closed port on
    /// purpose: the master must come from the sentinels, and only its password from the URL.
    pub fn env(&self) -> Vec<(String, String)> {
        let closed = free_port();
        let auth = self
            .passwords
            .master
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        let mut env = vec![
            (
                "REDIS_URL".to_owned(),
                format!("redis://{auth}127.0.0.1:{closed}/0"),
            ),
            ("REDIS_SENTINELS".to_owned(), self.sentinel_list()),
            ("REDIS_SENTINEL_MASTER".to_owned(), MASTER_NAME.to_owned()),
        ];
        if let Some(password) = &self.passwords.sentinels {
            env.push(("REDIS_SENTINEL_PASSWORD".to_owned(), password.clone()));
        }
        env
    }

    /// The master's address according to the first sentinel that answers.
    pub async fn master(&self) -> anyhow::Result<SocketAddr> {
        let mut last = None;
        for sentinel in &self.sentinels {
            match self.ask_master(sentinel).await {
                Ok(addr) => return Ok(addr),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no sentinel")))
    }

    async fn ask_master(&self, sentinel: &Server) -> anyhow::Result<SocketAddr> {
        let mut conn = self.sentinel_connection(sentinel).await?;
        let (host, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER_NAME)
            .query_async(&mut conn)
            .await?;
        Ok(format!("{host}:{port}").parse()?)
    }

    /// Waits until every sentinel names a master other than `old`, and that node says it
    /// is a master. Returns it.
    pub async fn wait_new_master(
        &self,
        old: SocketAddr,
        within: Duration,
    ) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(new) = self.agreed_master().await {
                if new != old && self.is_master(new).await {
                    return Ok(new);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no new master within {within:?} (old {old}):\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The master every live sentinel names, if they agree.
    async fn agreed_master(&self) -> Option<SocketAddr> {
        let mut agreed = None;
        for sentinel in self.sentinels.iter().filter(|s| s.child.is_some()) {
            let named = self.ask_master(sentinel).await.ok()?;
            if agreed.is_some_and(|a| a != named) {
                return None;
            }
            agreed = Some(named);
        }
        agreed
    }

    /// Whether the node at `addr` answers `ROLE` with master.
    pub async fn is_master(&self, addr: SocketAddr) -> bool {
        let Ok(mut conn) = self.node_connection(addr).await else {
            return false;
        };
        matches!(
            redis::cmd("ROLE").query_async(&mut conn).await,
            Ok(redis::Role::Primary { .. })
        )
    }

    /// Asks a sentinel for a failover, as an operator would for maintenance: the master is
    /// demoted, not killed.
    pub async fn failover(&self) -> anyhow::Result<()> {
        let mut conn = self.sentinel_connection(&self.sentinels[0]).await?;
        redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// SIGKILLs the data node at `addr` (no shutdown, no goodbye to its clients).
    pub fn kill_node(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.addr() == addr)
            .context("no such node")?;
        let mut child = node.child.take().context("node already stopped")?;
        send_signal(child.pid(), "KILL");
        let gone = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            child.has_exited()
        });
        if !gone {
            bail!("{addr} survived SIGKILL");
        }
        Ok(())
    }

    pub async fn node_connection(&self, addr: SocketAddr) -> anyhow::Result<MultiplexedConnection> {
        connect(addr, self.passwords.master.clone()).await
    }

    async fn sentinel_connection(
        &self,
        sentinel: &Server,
    ) -> anyhow::Result<MultiplexedConnection> {
        connect(sentinel.addr(), self.passwords.sentinels.clone()).await
    }

    /// Every server's log, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .chain(&self.sentinels)
            .filter_map(|s| s.child.as_ref())
            .map(|c| format!("--- {}\n{}", c.name, tail(&c.logs(), 40)))
            .collect()
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        // Sentinels first, so none starts a failover while the nodes stop.
        for server in self.sentinels.iter_mut().chain(self.nodes.iter_mut()) {
            if let Some(child) = server.child.take() {
                stop(&child, "KILL");
            }
        }
    }
}

async fn connect(
    addr: SocketAddr,
    password: Option<String>,
) -> anyhow::Result<MultiplexedConnection> {
    let info = ConnectionInfo {
        addr: ConnectionAddr::Tcp(addr.ip().to_string(), addr.port()),
        redis: RedisConnectionInfo {
            password,
            ..RedisConnectionInfo::default()
        },
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(QUERY_TIMEOUT)
        .set_response_timeout(QUERY_TIMEOUT);
    Ok(Client::open(info)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
