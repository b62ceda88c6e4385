//! One multiplexed Redis connection shared by every request of the replica.
//!
//! A pooled connection cost a round trip per command: deadpool-redis checks a connection
//! on every checkout (`PING`) before the command runs. A multiplexed connection needs no
//! checkout: concurrent commands are written one after another on the same socket and
//! matched to their answers in order. The bench measured both (BENCHMARKS.md, "Redis:
//! one multiplexed connection").
//!
//! Recovery is this module's job, since no pool recycles anything any more:
//!
//! - nothing connects at start, so a missing Redis never blocks start-up; the first call
//!   connects, within the caller's timeout;
//! - a call that fails on the socket (refused, reset, closed) or times out discards the
//!   connection, and the next call connects anew. A timeout discards too: a connection
//!   whose peer vanished without a reset (a network partition) would otherwise hold every
//!   later command until the kernel gives up on it, many minutes later;
//! - one call connects at a time; the others wait for it, within their own timeouts,
//!   instead of opening a connection each.
//!
//! With sentinels ([`super::sentinel`]), connecting means asking them for the master, so
//! a failover is followed the same way: the old master's connection fails (Sentinel
//! closes its clients when it demotes it; a dead one resets or times out), a `READONLY`
//! reply says the node is a replica now, and the next call asks the sentinels again. A
//! connection to a different master than the last one makes every cached entry suspect:
//! Redis replicates asynchronously, so invalidations the old master acknowledged may be
//! missing on the new one ([`super::trust::Trust::master_changed`]).

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError};

use super::sentinel::Sentinels;
use super::trust::Trust;

/// Where the master is: one fixed address, or whichever node the sentinels name.
pub enum Target {
    Fixed(Client),
    Sentinels(Sentinels),
}

/// What the link holds between calls.
#[derive(Default)]
struct Current {
    connection: Option<Numbered>,
    /// `host:port` of the open connection's master (sentinels only).
    master: Option<String>,
}

/// Guarded by the connecting lock.
#[derive(Default)]
struct Made {
    /// Connections made so far.
    count: u64,
    /// The master of the last connection made (sentinels only).
    last_master: Option<String>,
}

/// A connection and the number it was given when it was made, so that a call discards
/// only the connection it used, not one made since by another call.
pub type Numbered = (u64, MultiplexedConnection);

pub struct Link {
    target: Target,
    config: AsyncConnectionConfig,
    current: RwLock<Current>,
    /// Held while connecting.
    connecting: tokio::sync::Mutex<Made>,
    /// Told when the master changes.
    trust: Arc<Trust>,
}

impl Link {
    /// `connect_timeout` bounds each connection attempt (the callers' own timeouts bound
    /// the whole call anyway).
    pub fn new(target: Target, connect_timeout: Duration, trust: Arc<Trust>) -> Self {
        Self {
            target,
            config: AsyncConnectionConfig::new().set_connection_timeout(connect_timeout),
            current: RwLock::default(),
            connecting: tokio::sync::Mutex::default(),
            trust,
        }
    }

    /// The shared connection, connecting first if there is none.
    pub async fn get(&self) -> Result<Numbered, RedisError> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let mut made = self.connecting.lock().await;
        // Another call may have connected while this one waited.
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let (connection, master) = match &self.target {
            Target::Fixed(client) => (
                client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await?,
                None,
            ),
            Target::Sentinels(sentinels) => {
                let found = sentinels.connect().await?;
                (found.connection, Some(found.address))
            }
        };
        if made.last_master.is_some() && made.last_master != master {
            tracing::warn!(from = ?made.last_master, to = ?master, "redis master changed");
            self.trust.master_changed();
        }
        made.count += 1;
        made.last_master.clone_from(&master);
        let numbered = (made.count, connection);
        *self.write() = Current {
            connection: Some(numbered.clone()),
            master,
        };
        Ok(numbered)
    }

    /// Forgets connection `number` if it is still the current one.
    pub fn discard(&self, number: u64) {
        let mut current = self.write();
        if current
            .connection
            .as_ref()
            .is_some_and(|(n, _)| *n == number)
        {
            *current = Current::default();
        }
    }

    /// Drops the current connection; its socket closes once no call uses it any more.
    pub fn close(&self) {
        *self.write() = Current::default();
    }

    /// Whether a connection is open (for `/health/detailed`).
    pub fn connected(&self) -> bool {
        self.current().is_some()
    }

    /// Whether the sentinels name the master, which must then be checked to be one.
    pub fn follows_sentinels(&self) -> bool {
        matches!(self.target, Target::Sentinels(_))
    }

    /// Fails with [`ErrorKind::ReadOnly`] when the sentinels now name another master than
    /// the one in use. During a failover the old master may still call itself master for
    /// seconds (until Sentinel reconfigures it), so `ROLE` alone would keep this replica on
    /// it while others use the new one; the health check asks this every round.
    pub async fn check_named(&self) -> Result<(), RedisError> {
        let (Target::Sentinels(sentinels), Some(in_use)) = (&self.target, self.master()) else {
            return Ok(());
        };
        let named = sentinels.named().await?;
        if named == in_use {
            return Ok(());
        }
        Err(RedisError::from((
            ErrorKind::ReadOnly,
            "the sentinels name another master now",
            format!("{in_use} -> {named}"),
        )))
    }

    /// `host:port` of the master the open connection goes to, when the sentinels named it.
    pub fn master(&self) -> Option<String> {
        self.read().master.clone()
    }

    fn current(&self) -> Option<Numbered> {
        self.read().connection.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        // A panic while holding this lock cannot leave `Current` half-written.
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Current> {
        self.current.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether an error means the connection itself is unusable, rather than one command
/// refused by Redis (`NOSCRIPT`, `WRONGTYPE`, out of memory...), after which the
/// connection still works. `READONLY` and `MASTERDOWN` mean the node is a replica now
/// (demoted by a failover): the connection works, but to the wrong node.
pub fn breaks_connection(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_unrecoverable_error()
        || matches!(error.kind(), ErrorKind::ReadOnly | ErrorKind::MasterDown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_or_a_cut_socket_drops_the_connection_a_refused_command_does_not() {
        let error = |kind| RedisError::from((kind, "test"));
        assert!(breaks_connection(&error(ErrorKind::ReadOnly)));
        assert!(breaks_connection(&error(ErrorKind::MasterDown)));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(breaks_connection(&RedisError::from(reset)));
        assert!(!breaks_connection(&error(ErrorKind::NoScriptError)));
        assert!(!breaks_connection(&error(ErrorKind::TypeError)));
    }
}
