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
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::config::DatabaseSettings;
use crate::metrics::Metrics;

/// The migrations, embedded in the binary so an image needs no SQL files beside it.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a request waits for a pooled connection before failing. Short, so that when
/// PostgreSQL is down requests fail fast instead of piling up behind the pool.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The pool plus the bookkeeping that the pool itself does not expose.
#[derive(Clone)]
pub struct Database {
    pub pool: PgPool,
    metrics: Arc<Metrics>,
    /// Queries started and not yet finished; those beyond the busy connections are waiting
    /// for one, which is how `db_pool_size{state="waiting"}` is derived.
    in_flight: Arc<AtomicI64>,
    /// `SHOW server_version`, read once after migrations for `/health/detailed`.
    server_version: Arc<OnceLock<String>>,
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
    /// re-made after an outage (each is tested before it is handed out).
    pub fn connect_lazy(settings: &DatabaseSettings, metrics: Arc<Metrics>) -> Self {
        let pool = PgPoolOptions::new()
            .min_connections(settings.pool_min)
            .max_connections(settings.pool_max)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Duration::from_secs(300))
            .test_before_acquire(true)
            .connect_lazy_with(settings.connect.clone());
        Self {
            pool,
            metrics,
            in_flight: Arc::new(AtomicI64::new(0)),
            server_version: Arc::new(OnceLock::new()),
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

    /// The health check's round trip: one `SELECT 1` on a pooled connection.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        self.timed("health_check", sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map(|_| ())
    }

    /// Applies the embedded migrations. sqlx's migrator holds a PostgreSQL advisory lock
    /// (`pg_advisory_lock`) for the whole run, so replicas starting together take turns:
    /// the first applies, the others find nothing left to do.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
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
