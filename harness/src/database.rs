//! A PostgreSQL database of its own, on the machine's server, dropped when the guard is.

use sqlx::{Connection, Executor, PgConnection};

pub const PG_ADDR: &str = "127.0.0.1:5432";
pub const REDIS_ADDR: &str = "127.0.0.1:6379";

pub fn pg_url(addr: &str, database: &str) -> String {
    format!("postgres://postgres@{addr}/{database}?sslmode=disable")
}

pub struct TestDatabase {
    pub name: String,
    /// The server's maintenance database, to create and drop this one.
    admin_url: String,
    /// This database.
    url: String,
}

impl TestDatabase {
    /// A database of its own on the machine's PostgreSQL.
    pub async fn create() -> anyhow::Result<Self> {
        Self::create_on(&pg_url(PG_ADDR, "postgres"), |name| pg_url(PG_ADDR, name)).await
    }

    /// A database of its own on the server that `admin_url` reaches; `url` gives the URL of
    /// a database on that server from its name.
    pub async fn create_on(admin_url: &str, url: impl Fn(&str) -> String) -> anyhow::Result<Self> {
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(admin_url).await?;
        conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await?;
        Ok(Self {
            url: url(&name),
            name,
            admin_url: admin_url.to_owned(),
        })
    }

    pub async fn connect(&self) -> anyhow::Result<PgConnection> {
        Ok(PgConnection::connect(&self.url).await?)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (name, admin_url) = (self.name.clone(), self.admin_url.clone());
        // Drop runs outside async context: a private runtime on a private thread.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin_url).await {
                    let _ = conn
                        .execute(
                            format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str(),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// Release N+1's migration, as the drill and the tests play it without a second build:
/// an additive change (a nullable column the running release does not read) and the
/// record sqlx writes for it, so that the schema is exactly what N+1's `migrate` leaves.
pub const NEXT_RELEASE_VERSION: i64 = 20991231000001;
const NEXT_RELEASE_SQL: &str = "ALTER TABLE items ADD COLUMN IF NOT EXISTS priority smallint";

/// Applies [`NEXT_RELEASE_VERSION`] to an already migrated database, in one transaction as
/// sqlx would; a second call changes nothing.
pub async fn apply_next_release_migration(conn: &mut PgConnection) -> anyhow::Result<()> {
    let mut tx = conn.begin().await?;
    tx.execute(NEXT_RELEASE_SQL).await?;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, 'items priority', true, sha384($2::bytea), 0) ON CONFLICT DO NOTHING",
    )
    .bind(NEXT_RELEASE_VERSION)
    .bind(NEXT_RELEASE_SQL.as_bytes())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Advisory locks, held or awaited, in `database`: after any migration, failed or not,
/// there must be none.
pub async fn advisory_locks(conn: &mut PgConnection, database: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND d.datname = $1",
    )
    .bind(database)
    .fetch_one(conn)
    .await?)
}
