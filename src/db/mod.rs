//! PostgreSQL: the pool and one way to time every query; the embedded migrations
//! ([`migrate`]) and what a failed query means ([`errors`]) beside it.
//!
//! SQL lives in this module's submodules, one small function per query, each run through
//! [`Database::timed`] so that `database_latency_seconds{query_type}` and
//! `db_query_errors_total{error_type}` cover every call.

pub mod budget;
mod errors;
pub mod idempotency;
pub mod items;
mod migrate;
pub mod primary;
pub mod retention;
pub mod revocations;
pub mod users;

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::DatabaseSettings;
use crate::metrics::Metrics;
use primary::Topology;

pub use errors::{describe, is_transient, permanent};
pub use migrate::{migration_lock_key, MigrationError, SchemaVersions, MIGRATOR};

/// The longest a denylist poll may wait for its connection, and then run.
const FEED_TIMEOUT: Duration = Duration::from_secs(1);

/// The pool plus the bookkeeping that the pool itself does not expose.
#[derive(Clone)]
pub struct Database {
    pub pool: PgPool,
    /// One connection that only the health check uses. Requests can hold every connection
    /// of `pool` under load; a busy pool is not a dead database, and readiness must never
    /// depend on load, so the check never waits behind them.
    health_pool: PgPool,
    /// One connection that only the denylist poll uses (see `crate::auth::revocation`):
    /// how fast a logout reaches every replica must not depend on request load either.
    feed_pool: PgPool,
    metrics: Arc<Metrics>,
    /// Queries started and not yet finished; those beyond the busy connections are waiting
    /// for one, which is how `db_pool_size{state="waiting"}` is derived.
    in_flight: Arc<AtomicI64>,
    /// `SHOW server_version`, read once after migrations for `/health/detailed`.
    server_version: Arc<OnceLock<String>>,
    /// When the health check last failed; see [`StaleAfterOutage`].
    outages: StaleAfterOutage,
    /// The hosts, and which one the pools use (see [`primary`]).
    topology: Arc<Topology>,
}

/// The health check's connection while its round trip is under way. Dropped unfinished
/// (the check's timeout cut it), the connection is closed, never returned: on its next use
/// sqlx would first wait for the answer this round never got, and on a socket that died
/// silently (a replica cut from the network, then reconnected with a new address) every
/// later round would time out waiting for it too.
struct Unfinished(Option<sqlx::pool::PoolConnection<sqlx::Postgres>>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(conn.detach());
        }
    }
}

/// Records a failed check when dropped unanswered: also when the check's timeout drops it.
struct FailedCheck<'a>(Option<&'a StaleAfterOutage>);

impl Drop for FailedCheck<'_> {
    fn drop(&mut self) {
        if let Some(outages) = self.0 {
            outages.record_failure();
        }
    }
}

/// Which idle connections may have died in an outage.
///
/// Connections are not pinged before every query: on loopback that is a round trip of
/// tens of microseconds, between availability zones up to a millisecond, on every query.
/// A connection that breaks while in use fails its query (a 503, see [`is_transient`])
/// and sqlx's own test on release evicts it. What that leaves is a connection that sat
/// idle in the pool through an outage or a restart: it looks fine until its first query.
/// So a connection idle since before the health check last failed is pinged once before
/// it is handed out; every other connection is used as it is. A restart quicker than one
/// check round goes unseen: its stale connections then cost one 503 each, never a 500.
#[derive(Clone)]
struct StaleAfterOutage {
    since: Instant,
    /// Milliseconds after `since` of the last failed check; 0 for never.
    failed_at_ms: Arc<AtomicU64>,
}

impl StaleAfterOutage {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            failed_at_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn record_failure(&self) {
        let ms = self.since.elapsed().as_millis() as u64;
        self.failed_at_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// True for a connection that went idle before the last failed check.
    fn may_be_stale(&self, idle_for: Duration) -> bool {
        match self.failed_at_ms.load(Ordering::Relaxed) {
            0 => false,
            at => {
                let since_failure = self
                    .since
                    .elapsed()
                    .saturating_sub(Duration::from_millis(at));
                idle_for >= since_failure
            }
        }
    }
}

/// Decrements the in-flight count even if the query future is dropped mid-way.
struct InFlightQuery<'a>(&'a AtomicI64);

impl Drop for InFlightQuery<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Database {
    /// Creates the pool without connecting: the service must start, and answer `/live`,
    /// even while PostgreSQL is still coming up. Connections are made on first use, and
    /// re-made after an outage (see [`StaleAfterOutage`] for which are tested first).
    ///
    /// Request connections carry `statement_timeout` (the request deadline), so PostgreSQL
    /// itself stops a query whose request has been answered 503 already.
    pub fn connect_lazy(
        settings: &DatabaseSettings,
        check_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let with_timeout = |timeout: Duration| {
            let ms = timeout.as_millis().to_string();
            settings
                .connect
                .clone()
                .options([("statement_timeout", ms.as_str())])
        };
        let outages = StaleAfterOutage::new();
        let stale = outages.clone();
        let topology = Topology::new(
            settings.hosts.clone(),
            settings.target_session_attrs,
            check_timeout,
        );
        let follow = Arc::downgrade(&topology);
        let pool = follow_primary(PgPoolOptions::new(), &topology)
            .min_connections(settings.pool_min)
            .max_connections(settings.pool_max)
            .acquire_timeout(settings.acquire_timeout)
            .idle_timeout(Duration::from_secs(300))
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                let ping = stale.may_be_stale(meta.idle_for);
                let moved = follow.upgrade().is_some_and(|t| !t.still_current(meta.age));
                Box::pin(async move {
                    if moved {
                        // Opened on the host the pools left: closed, and another opened.
                        return Ok(false);
                    }
                    if ping {
                        // An error closes the connection; the pool then opens another.
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(with_timeout(settings.statement_timeout));
        // No test before acquire: the check's own query is the test, and a connection it
        // finds broken is closed (see `ping`) so the next round opens a fresh one.
        let health_pool = evict_moved(follow_primary(PgPoolOptions::new(), &topology), &topology)
            .min_connections(0)
            .max_connections(1)
            // Longer than the check's own timeout, which therefore always decides.
            .acquire_timeout(check_timeout * 2)
            .test_before_acquire(false)
            .connect_lazy_with(with_timeout(check_timeout));
        let feed_pool = evict_moved(follow_primary(PgPoolOptions::new(), &topology), &topology)
            .min_connections(0)
            .max_connections(1)
            .acquire_timeout(FEED_TIMEOUT)
            .connect_lazy_with(with_timeout(FEED_TIMEOUT));
        topology.register(&pool, settings.statement_timeout);
        topology.register(&health_pool, check_timeout);
        topology.register(&feed_pool, FEED_TIMEOUT);
        Self {
            pool,
            health_pool,
            feed_pool,
            metrics,
            in_flight: Arc::new(AtomicI64::new(0)),
            server_version: Arc::new(OnceLock::new()),
            outages,
            topology,
        }
    }

    /// Runs one query future, recording its latency under `query_type` and counting its
    /// error, if any, by kind.
    pub async fn timed<T, F>(&self, query_type: &str, query: F) -> Result<T, sqlx::Error>
    where
        F: Future<Output = Result<T, sqlx::Error>>,
    {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let _guard = InFlightQuery(&self.in_flight);
        let started = Instant::now();
        let result = query.await;
        if let Err(e) = &result {
            self.suspect_moved(e);
        }
        self.metrics.observe_query(
            query_type,
            started.elapsed().as_secs_f64(),
            result
                .as_ref()
                .err()
                .filter(|e| !matches!(e, sqlx::Error::RowNotFound)),
        );
        result
    }

    /// The health check's round trip: one `SELECT 1` on the check's own connection.
    /// A check that fails, or is dropped at its timeout, marks the idle request
    /// connections as possibly stale (see [`StaleAfterOutage`]).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        let mut unanswered = FailedCheck(Some(&self.outages));
        let result = self
            .timed("health_check", async {
                let mut in_use = Unfinished(Some(self.health_pool.acquire().await?));
                let Some(conn) = in_use.0.as_mut() else {
                    return Err(sqlx::Error::PoolClosed);
                };
                let result = if self.topology.follows() {
                    self.check_primary(conn).await
                } else {
                    sqlx::query("SELECT 1")
                        .execute(&mut **conn)
                        .await
                        .map(|_| ())
                };
                let Some(conn) = in_use.0.take() else {
                    return result;
                };
                if result.is_err() {
                    // Possibly broken: never hand it to the next round.
                    let _ = conn.close().await;
                } else {
                    unanswered.0 = None;
                }
                result
            })
            .await;
        if let Err(e) = &result {
            self.record_if_permanent(e);
        }
        result
    }

    /// The check's query with several hosts: is this still a host the service may write
    /// to? And, on the primary, the standbys' lag, for `/health/detailed`.
    async fn check_primary(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        self.topology.check_new(conn).await?;
        if !self.topology.discovered() {
            // Nothing failed, so no round ran: one, so that every host's role is known.
            self.topology.trigger();
        }
        self.topology
            .set_replication(primary::replication(conn).await);
        Ok(())
    }

    /// A failed query that may mean the pools point at the wrong host asks for a discovery
    /// round (single-flight, see [`primary`]). A pool timeout counts only when the pool
    /// had room: then it was waiting for a new connection, not for a busy one.
    fn suspect_moved(&self, error: &sqlx::Error) {
        let pool_could_grow = || self.pool.size() < self.pool.options().get_max_connections();
        if primary::suggests_moved(error)
            || (matches!(error, sqlx::Error::PoolTimedOut) && pool_could_grow())
        {
            self.topology.trigger();
        }
    }

    /// The hosts, which is primary, and the replication lag, for `/health/detailed`.
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topology
    }

    /// Why the database check fails, when the reason is that no host takes writes.
    pub fn no_primary(&self) -> Option<String> {
        self.topology.no_primary()
    }

    /// After a failed check: look for the primary in the background.
    pub fn rediscover(&self) {
        self.topology.trigger();
    }

    /// Logs a permanent connection error at ERROR and counts it; returns whether it was.
    pub fn record_if_permanent(&self, error: &sqlx::Error) -> bool {
        let Some(permanent) = permanent(error) else {
            return false;
        };
        self.metrics.record_permanent("database", &permanent);
        tracing::error!(kind = permanent.kind, error = %permanent.describe(error), "PostgreSQL connection refused: retrying will not help until this is fixed");
        true
    }

    /// Reads and remembers the server's version; a failure only leaves it unknown.
    pub async fn load_server_version(&self) {
        let version = self
            .timed(
                "server_version",
                sqlx::query_scalar::<_, String>("SHOW server_version").fetch_one(&self.pool),
            )
            .await;
        if let Ok(version) = version {
            let _ = self.server_version.set(version);
        }
    }

    /// The pool budget as this replica sees it now (see [`budget`]).
    pub async fn pool_budget(
        &self,
        pool_max: u32,
        replicas_max: Option<u32>,
    ) -> Result<budget::Budget, sqlx::Error> {
        let limits = self
            .timed("pool_budget", budget::server_limits(&self.pool))
            .await?;
        Ok(budget::Budget::of(pool_max, replicas_max, limits))
    }

    pub fn server_version(&self) -> Option<&str> {
        self.server_version.get().map(String::as_str)
    }

    pub fn stats(&self) -> PoolStats {
        let size = i64::from(self.pool.size());
        let idle = self.pool.num_idle() as i64;
        let active = (size - idle).max(0);
        let waiting = (self.in_flight.load(Ordering::Relaxed) - active).max(0);
        PoolStats {
            size,
            active,
            idle,
            waiting,
            max: i64::from(self.pool.options().get_max_connections()),
        }
    }

    pub fn record_pool_sizes(&self, metrics: &Metrics) {
        let stats = self.stats();
        for (state, value) in [
            ("active", stats.active),
            ("idle", stats.idle),
            ("waiting", stats.waiting),
        ] {
            metrics
                .db_pool_size
                .with_label_values(&[metrics.instance.as_str(), state])
                .set(value);
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.health_pool.close().await;
        self.feed_pool.close().await;
    }
}

/// Refuses, in `after_connect`, a session that does not meet `target_session_attrs`.
fn follow_primary(options: PgPoolOptions, topology: &Arc<Topology>) -> PgPoolOptions {
    if !topology.follows() {
        return options;
    }
    let topology = Arc::downgrade(topology);
    options.after_connect(move |conn, _| {
        let topology = topology.upgrade();
        Box::pin(async move {
            match topology {
                Some(topology) => topology.check_new(conn).await,
                None => Ok(()),
            }
        })
    })
}

/// Closes, in `before_acquire`, a connection opened before the pools moved to another host.
fn evict_moved(options: PgPoolOptions, topology: &Arc<Topology>) -> PgPoolOptions {
    let topology = Arc::downgrade(topology);
    options.before_acquire(move |_, meta| {
        let current = topology.upgrade().is_none_or(|t| t.still_current(meta.age));
        Box::pin(async move { Ok(current) })
    })
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PoolStats {
    pub size: i64,
    pub active: i64,
    pub idle: i64,
    pub waiting: i64,
    pub max: i64,
}
