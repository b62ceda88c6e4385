//! Finding the Redis master through Sentinel, as Redis's guide for Sentinel clients asks:
//! ask a sentinel `SENTINEL get-master-addr-by-name`, connect to the address it gives, and
//! use it only if `ROLE` says it is a master (a sentinel may be behind, or partitioned).
//!
//! Why not the `redis` crate's `sentinel` feature (0.32): it asks the sentinels one after
//! another with no bound per sentinel, so one that hangs (a partition rather than a
//! refusal) holds every discovery until the caller's timeout, and the next discovery starts
//! with the same sentinel again: the service would never reach the others. It also gives up
//! when the first master candidate cannot be reached instead of trying what another
//! sentinel says, and verifies the master's role on one connection only to open another.
//! This layer asks every sentinel at once, takes answers as they come, and keeps the very
//! connection whose role it checked.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    RedisConnectionInfo, RedisError, RedisResult, Role,
};
use tokio::task::JoinSet;

use crate::config::{RedisSettings, SentinelSettings};

/// The sentinels and what the master's connection needs besides its address.
pub struct Sentinels {
    sentinels: Vec<ConnectionInfo>,
    name: String,
    /// The master's password, user name and database number, from the Redis settings.
    master: RedisConnectionInfo,
    config: AsyncConnectionConfig,
}

/// A master connection and the `host:port` it goes to.
pub struct Found {
    pub address: String,
    pub connection: MultiplexedConnection,
}

impl Sentinels {
    /// `attempt` bounds each connection and each reply, so a silent sentinel or master is
    /// given up on rather than waited for.
    pub fn new(
        redis: &RedisSettings,
        sentinel: &SentinelSettings,
        attempt: Duration,
    ) -> RedisResult<Self> {
        let master = redis.url.expose().into_connection_info()?.redis;
        let auth = RedisConnectionInfo {
            password: sentinel.password.as_ref().map(|p| p.expose().to_owned()),
            ..RedisConnectionInfo::default()
        };
        let sentinels = sentinel
            .addresses
            .iter()
            .map(|(host, port)| ConnectionInfo {
                addr: ConnectionAddr::Tcp(host.clone(), *port),
                redis: auth.clone(),
            })
            .collect();
        Ok(Self {
            sentinels,
            name: sentinel.master.clone(),
            master,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(attempt)
                .set_response_timeout(attempt),
        })
    }

    /// Connects to the master the sentinels name. Every sentinel is asked at once, so one
    /// that hangs costs nothing while another answers; the answers are tried in the order
    /// they arrive, each address once. Fails with the last error when none leads to a
    /// master.
    pub async fn connect(&self) -> RedisResult<Found> {
        let mut asking = self.ask_all();
        let mut tried: Vec<(String, u16)> = Vec::new();
        let mut last = None;
        // Dropping `asking` (on return, or when the caller's timeout drops this future)
        // aborts the questions still out.
        while let Some(answer) = asking.join_next().await {
            let (host, port) = match answer.map_err(join_error).and_then(|a| a) {
                Ok(address) if tried.contains(&address) => continue,
                Ok(address) => address,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            tried.push((host.clone(), port));
            match self.master_at(&host, port).await {
                Ok(connection) => {
                    return Ok(Found {
                        address: format!("{host}:{port}"),
                        connection,
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(no_sentinel))
    }

    /// The master the first sentinel to answer names, as `host:port`.
    pub async fn named(&self) -> RedisResult<String> {
        let mut asking = self.ask_all();
        let mut last = None;
        while let Some(answer) = asking.join_next().await {
            match answer {
                Ok(Ok((host, port))) => return Ok(format!("{host}:{port}")),
                Ok(Err(e)) => last = Some(e),
                Err(e) => last = Some(join_error(e)),
            }
        }
        Err(last.unwrap_or_else(no_sentinel))
    }

    /// Asks every sentinel at once; dropping the set aborts the questions still out.
    fn ask_all(&self) -> JoinSet<RedisResult<(String, u16)>> {
        let mut asking = JoinSet::new();
        for sentinel in &self.sentinels {
            asking.spawn(ask(
                sentinel.clone(),
                self.name.clone(),
                self.config.clone(),
            ));
        }
        asking
    }

    /// A connection to `host:port` if that node is a master now.
    async fn master_at(&self, host: &str, port: u16) -> RedisResult<MultiplexedConnection> {
        let info = ConnectionInfo {
            addr: ConnectionAddr::Tcp(host.to_owned(), port),
            redis: self.master.clone(),
        };
        let mut connection = Client::open(info)?
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        check_master(&mut connection).await?;
        Ok(connection)
    }
}

fn join_error(e: tokio::task::JoinError) -> RedisError {
    RedisError::from((
        ErrorKind::ClientError,
        "sentinel query failed",
        e.to_string(),
    ))
}

fn no_sentinel() -> RedisError {
    RedisError::from((ErrorKind::EmptySentinelList, "no sentinel configured"))
}

/// One sentinel's answer: the master's address, or an error naming the sentinel when it
/// does not know the name.
async fn ask(
    sentinel: ConnectionInfo,
    name: String,
    config: AsyncConnectionConfig,
) -> RedisResult<(String, u16)> {
    let where_ = sentinel.addr.to_string();
    let mut connection = Client::open(sentinel)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let answer: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(&name)
        .query_async(&mut connection)
        .await?;
    answer.ok_or_else(|| {
        RedisError::from((
            ErrorKind::MasterNameNotFoundBySentinel,
            "the sentinel does not monitor REDIS_SENTINEL_MASTER",
            format!("sentinel {where_}, master name {name:?}"),
        ))
    })
}

/// Fails with [`ErrorKind::ReadOnly`] unless the node says it is a master: a demoted master
/// still answers reads, stale ones, so it must not be used (and the error drops the
/// connection, see `link::breaks_connection`).
pub async fn check_master(connection: &mut MultiplexedConnection) -> RedisResult<()> {
    match redis::cmd("ROLE").query_async(connection).await? {
        Role::Primary { .. } => Ok(()),
        _ => Err(RedisError::from((
            ErrorKind::ReadOnly,
            "the node the sentinels named is not a master (yet)",
        ))),
    }
}
