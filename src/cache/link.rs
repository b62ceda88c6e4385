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

use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};

/// A connection and the number it was given when it was made, so that a call discards
/// only the connection it used, not one made since by another call.
pub type Numbered = (u64, MultiplexedConnection);

pub struct Link {
    client: Client,
    config: AsyncConnectionConfig,
    current: RwLock<Option<Numbered>>,
    /// Held while connecting; counts the connections made.
    connecting: tokio::sync::Mutex<u64>,
}

impl Link {
    /// `connect_timeout` bounds each connection attempt (the callers' own timeouts bound
    /// the whole call anyway).
    pub fn new(client: Client, connect_timeout: Duration) -> Self {
        Self {
            client,
            config: AsyncConnectionConfig::new().set_connection_timeout(connect_timeout),
            current: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(0),
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
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *made += 1;
        let numbered = (*made, connection);
        *self.write() = Some(numbered.clone());
        Ok(numbered)
    }

    /// Forgets connection `number` if it is still the current one.
    pub fn discard(&self, number: u64) {
        let mut current = self.write();
        if current.as_ref().is_some_and(|(n, _)| *n == number) {
            *current = None;
        }
    }

    /// Drops the current connection; its socket closes once no call uses it any more.
    pub fn close(&self) {
        self.write().take();
    }

    /// Whether a connection is open (for `/health/detailed`).
    pub fn connected(&self) -> bool {
        self.current().is_some()
    }

    fn current(&self) -> Option<Numbered> {
        // A panic while holding this lock cannot leave the `Option` half-written.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<Numbered>> {
        self.current.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether an error means the connection itself is unusable, rather than one command
/// refused by Redis (`NOSCRIPT`, `WRONGTYPE`, out of memory...), after which the
/// connection still works.
pub fn breaks_connection(error: &RedisError) -> bool {
    error.is_io_error() || error.is_unrecoverable_error()
}
