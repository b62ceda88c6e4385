//! PostgreSQL: the pool, the embedded migrations, and one way to time every query.
//!
//! SQL lives in this module's submodules, one small function per query, each run through
//! [`Database::timed`] so that `database_latency_seconds{query_type}` and
//! `db_query_errors_total{error_type}` cover every call.

pub mod idempotency;
pub mod items;
pub mod retention;
pub mod revocations;
pub mod users;

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::config::DatabaseSettings;
use crate::metrics::Metrics;

/// The migrations, embedded in the binary so an image needs no SQL files beside it.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The pool plus the bookkeeping that the pool itself does not expose.
#[derive(Clone)]
pub struct Database {
    pub pool: PgPool,
    /// One connection that only the health check uses. Requests can hold every connection
    /// of `pool` under load; a busy pool is not a dead database, and readiness must never
    /// depend on load, so the check never waits behind them.
    health_pool: PgPool,
    /// How to open the migrations' own connection: no `statement_timeout`.
    migrate_with: PgConnectOptions,
    metrics: Arc<Metrics>,
    /// Queries started and not yet finished; those beyond the busy connections are waiting
    /// for one, which is how `db_pool_size{state="waiting"}` is derived.
    in_flight: Arc<AtomicI64>,
    /// `SHOW server_version`, read once after migrations for `/health/detailed`.
    server_version: Arc<OnceLock<String>>,
    /// When the health check last failed; see [`StaleAfterOutage`].
    outages: StaleAfterOutage,
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
        let pool = PgPoolOptions::new()
            .min_connections(settings.pool_min)
            .max_connections(settings.pool_max)
            .acquire_timeout(settings.acquire_timeout)
            .idle_timeout(Duration::from_secs(300))
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                let ping = stale.may_be_stale(meta.idle_for);
                Box::pin(async move {
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
        let health_pool = PgPoolOptions::new()
            .min_connections(0)
            .max_connections(1)
            // Longer than the check's own timeout, which therefore always decides.
            .acquire_timeout(check_timeout * 2)
            .test_before_acquire(false)
            .connect_lazy_with(with_timeout(check_timeout));
        Self {
            pool,
            health_pool,
            migrate_with: settings.connect.clone(),
            metrics,
            in_flight: Arc::new(AtomicI64::new(0)),
            server_version: Arc::new(OnceLock::new()),
            outages,
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
        self.timed("health_check", async {
            let mut conn = self.health_pool.acquire().await?;
            let result = sqlx::query("SELECT 1").execute(&mut *conn).await;
            if result.is_err() {
                // Possibly broken: never hand it to the next round.
                let _ = conn.close().await;
            } else {
                unanswered.0 = None;
            }
            result.map(|_| ())
        })
        .await
    }

    /// Applies the embedded migrations. sqlx's migrator holds a PostgreSQL advisory lock
    /// (`pg_advisory_lock`) for the whole run, so replicas starting together take turns:
    /// the first applies, the others find nothing left to do.
    ///
    /// On a connection of its own, closed afterwards: a migration may outlast the request
    /// deadline (so no `statement_timeout`), and a failed run must not leave a connection
    /// that still holds the session lock in the request pool.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.pool.options().get_acquire_timeout())
            .connect_with(self.migrate_with.clone())
            .await?;
        let result = MIGRATOR.run(&own).await;
        own.close().await;
        result
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
    }
}

/// Whether a failed query may succeed if simply tried again, on this replica or another:
/// the database is restarting or failing over, the pool or the server is full, the
/// request's deadline cancelled the statement, or PostgreSQL chose this transaction as a
/// deadlock or serialization victim. Clients get a 503 with `Retry-After` for these, never
/// a 500, which is reserved for bugs.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 40001 serialization failure, 40P01 deadlock;
            // 53300 too many connections; 57014 statement timeout (our deadline);
            // 57P01..57P03 admin/crash shutdown, cannot connect now (failover, restart).
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "40001" | "40P01" | "53300" | "57014" | "57P01" | "57P02" | "57P03"
                )
        }),
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PoolStats {
    pub size: i64,
    pub active: i64,
    pub idle: i64,
    pub waiting: i64,
    pub max: i64,
}
