//! The embedded migrations, applied under a lock whose wait is bounded and visible.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{Connection, PgConnection};

use super::{is_transient, Database};
use crate::lifecycle::StartupStep;

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

impl Database {
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
}
