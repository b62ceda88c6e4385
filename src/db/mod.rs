//! PostgreSQL: the pool, the embedded migrations, and one way to time every query.
//!
//! SQL lives in this module's submodules, one small function per query, each run through
//! [`Database::timed`] so that `database_latency_seconds{query_type}` and
//! `db_query_errors_total{error_type}` cover every call.

pub mod budget;
pub mod idempotency;
pub mod items;
pub mod primary;
pub mod retention;
pub mod revocations;
pub mod users;

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::DatabaseSettings;
use crate::error::Permanent;
use crate::lifecycle::StartupStep;
use crate::metrics::Metrics;
use primary::Topology;

/// The migrations, embedded in the binary so an image needs no SQL files beside it.
///
/// Migrations this binary does not know are ignored: a newer release may have applied
/// them, and this one must still start on that schema (a rollback, or a replica of the
/// older release restarting mid-rollout). Expand/contract keeps such a schema compatible;
/// see docs/deployment.md. The lock is taken by [`Database::migrate`] itself, so that the
/// wait is bounded and visible.
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator.set_locking(false);
    migrator
});

/// How often a migration waiting for the lock tries again.
const LOCK_POLL: Duration = Duration::from_millis(250);

fn embedded_versions() -> Vec<i64> {
    MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .collect()
}

/// The key of the advisory lock that sqlx's own migrator takes, so that this binary and
/// any release still using sqlx's locking exclude each other.
pub fn migration_lock_key(database_name: &str) -> i64 {
    const CRC_IEEE: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32ad9e * i64::from(CRC_IEEE.checksum(database_name.as_bytes()))
}

/// Why the migrations were not applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("cannot reach PostgreSQL: {0}")]
    Unreachable(sqlx::Error),
    #[error(
        "another session held the migration lock for more than {} s; \
         is a long migration still running?",
        .0.as_secs()
    )]
    LockTimeout(Duration),
    #[error("{0}")]
    NoPrimary(String),
    #[error(transparent)]
    Failed(#[from] MigrateError),
}

impl MigrationError {
    /// Worth trying again: PostgreSQL unreachable, or a failure it may not repeat (a
    /// deadlock, a restart). A migration that fails on its own SQL, a schema edited by
    /// hand, or a lock never released will fail the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            MigrationError::Unreachable(_) | MigrationError::NoPrimary(_) => true,
            MigrationError::LockTimeout(_) => false,
            MigrationError::Failed(
                MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _),
            ) => is_transient(e),
            MigrationError::Failed(_) => false,
        }
    }
}

impl From<sqlx::Error> for MigrationError {
    fn from(e: sqlx::Error) -> Self {
        MigrationError::Failed(MigrateError::Execute(e))
    }
}

/// The schema's migrations against this binary's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaVersions {
    /// This binary's migrations that are not applied yet.
    pub pending: Vec<i64>,
    /// Applied migrations this binary does not know: a newer release's.
    pub unknown: Vec<i64>,
}

impl SchemaVersions {
    fn compare(applied: &[i64], embedded: &[i64]) -> Self {
        Self {
            pending: embedded
                .iter()
                .filter(|v| !applied.contains(v))
                .copied()
                .collect(),
            unknown: applied
                .iter()
                .filter(|v| !embedded.contains(v))
                .copied()
                .collect(),
        }
    }
}

/// Takes the lock (polling, so the wait is bounded and a shutdown can cut it short), then
/// applies what is missing. The lock is left to the session's end.
async fn migrate_on(
    conn: &mut PgConnection,
    lock_timeout: Duration,
    report: impl Fn(StartupStep),
) -> Result<(), MigrationError> {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *conn)
        .await?;
    let key = migration_lock_key(&database);
    let deadline = Instant::now() + lock_timeout;
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        if locked {
            break;
        }
        report(StartupStep::WaitingForMigrationLock);
        if Instant::now() >= deadline {
            return Err(MigrationError::LockTimeout(lock_timeout));
        }
        tokio::time::sleep(LOCK_POLL).await;
    }
    report(StartupStep::Migrating);
    MIGRATOR.run_direct(&mut *conn).await?;
    Ok(())
}

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

    /// Applies the embedded migrations on a connection of its own, never pooled, and closed
    /// whatever the outcome: a migration may outlast the request deadline (so no
    /// `statement_timeout`), and sqlx returns a failed migration's error with its session
    /// lock still held. Closing the session is what releases that lock.
    ///
    /// `report` hears each step: waiting for the lock, then migrating.
    pub async fn migrate(
        &self,
        lock_timeout: Duration,
        report: impl Fn(StartupStep),
    ) -> Result<(), MigrationError> {
        // No `statement_timeout` on the migrations' connection, and on the primary.
        if self.topology.follows() && self.topology.discover().await.is_none() {
            return Err(MigrationError::NoPrimary(
                self.no_primary()
                    .unwrap_or_else(|| "no writable primary".to_owned()),
            ));
        }
        let target = self.topology.current_target();
        let connect = PgConnection::connect_with(&target);
        let mut conn = tokio::time::timeout(self.pool.options().get_acquire_timeout(), connect)
            .await
            .map_err(|_| MigrationError::Unreachable(sqlx::Error::PoolTimedOut))?
            .map_err(MigrationError::Unreachable)?;
        let result = migrate_on(&mut conn, lock_timeout, report).await;
        // A close that hangs is abandoned; dropping the connection then shuts the socket,
        // which ends the session all the same.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
        result
    }

    /// Which migrations the schema has and this binary does not (a newer release applied
    /// them), and which this binary has and the schema lacks.
    pub async fn schema_versions(&self) -> Result<SchemaVersions, sqlx::Error> {
        let applied = self
            .timed(
                "schema_versions",
                sqlx::query_scalar::<_, i64>(
                    "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
                )
                .fetch_all(&self.pool),
            )
            .await;
        let applied = match applied {
            Ok(applied) => applied,
            // No table yet: nothing applied.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(SchemaVersions::compare(&applied, &embedded_versions()))
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
        // A connection cut while it negotiates TLS: sqlx reads the missing answer to its
        // SSLRequest as a zero byte and calls it a protocol error (found by the TLS drill).
        sqlx::Error::Protocol(message) => {
            message.starts_with("unexpected response from SSLRequest")
        }
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 25006 read-only transaction (a standby: the
            // primary moved); 40001 serialization failure, 40P01 deadlock;
            // 53300 too many connections; 57014 statement timeout (our deadline);
            // 57P01..57P03 admin/crash shutdown, cannot connect now (failover, restart).
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "25006" | "40001" | "40P01" | "53300" | "57014" | "57P01" | "57P02" | "57P03"
                )
        }),
        _ => false,
    }
}

/// Whether a connection error needs the configuration or the server changed before a
/// retry can succeed, and what to check. `None`: transient, or not a connection error.
pub fn permanent(error: &sqlx::Error) -> Option<Permanent> {
    const CA: &str = "PostgreSQL's TLS certificate does not verify: check the CA (sslrootcert or POSTGRES_SSLROOTCERT) and, with verify-full, the host name";
    match error {
        // Only ever raised when TLS is required and the server answers that it has none.
        sqlx::Error::Tls(e) if e.to_string().contains("does not support TLS") => Some(Permanent {
            kind: "tls_unavailable",
            hint: "PostgreSQL refused TLS, which sslmode requires: enable ssl on the server, or lower sslmode",
        }),
        sqlx::Error::Tls(_) => Some(Permanent::tls(CA)),
        sqlx::Error::Io(e) if crate::error::is_tls_failure(e) => Some(Permanent::tls(CA)),
        sqlx::Error::Configuration(_) => Some(Permanent {
            kind: "configuration",
            hint: "the PostgreSQL connection settings are unusable",
        }),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01") => Some(Permanent {
                kind: "authentication",
                hint: "PostgreSQL refused the password",
            }),
            // pg_hba.conf has no line for this host, user, database and encryption.
            Some("28000") => Some(Permanent {
                kind: "access_denied",
                hint: "PostgreSQL refused the connection (pg_hba.conf): check the user, and whether the server requires TLS (sslmode)",
            }),
            Some("3D000") => Some(Permanent {
                kind: "unknown_database",
                hint: "the PostgreSQL database does not exist",
            }),
            _ => None,
        },
        _ => None,
    }
}

/// The error, prefixed with what it means when it is permanent.
pub fn describe(error: &sqlx::Error) -> String {
    match permanent(error) {
        Some(p) => p.describe(error),
        None => error.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_schema_has_unknown_versions_and_an_older_one_pending_ones() {
        let embedded = [1, 2];
        assert_eq!(
            SchemaVersions::compare(&[1, 2, 3], &embedded),
            SchemaVersions {
                pending: vec![],
                unknown: vec![3]
            }
        );
        assert_eq!(
            SchemaVersions::compare(&[1], &embedded),
            SchemaVersions {
                pending: vec![2],
                unknown: vec![]
            }
        );
    }

    #[test]
    fn a_connection_cut_during_tls_negotiation_is_transient() {
        let cut = sqlx::Error::Protocol(
            "unexpected response from SSLRequest: 0x00 (sqlx_postgres::connection::tls:95)".into(),
        );
        assert!(is_transient(&cut));
        assert!(permanent(&cut).is_none());
        assert!(!is_transient(&sqlx::Error::Protocol(
            "unknown message type".into()
        )));
    }
}
