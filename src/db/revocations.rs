//! The token denylist, durable: the table every replica's in-memory copy follows.

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::Database;

/// Revocations are kept this long past their token's expiry, beyond the leeway with
/// which an expired token is still accepted (see `crate::auth::jwt`).
const EXPIRY_MARGIN: &str = "interval '1 minute'";

#[derive(Debug, FromRow)]
pub struct RevokedToken {
    pub jti: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// Revoking twice is harmless. Returns once the revocation is committed.
pub async fn insert(
    db: &Database,
    jti: Uuid,
    user_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let query = sqlx::query(
        "INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT (jti) DO NOTHING",
    )
    .bind(jti)
    .bind(user_id)
    .bind(expires_at)
    .execute(&db.pool);
    db.timed("revocation_insert", query).await.map(|_| ())
}

pub async fn is_revoked(db: &Database, jti: Uuid) -> Result<bool, sqlx::Error> {
    let query = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $1)",
    )
    .bind(jti)
    .fetch_one(&db.pool);
    db.timed("revocation_check", query).await
}

/// What a poll of the denylist found.
#[derive(Debug)]
pub struct Changes {
    /// Pass it to the next poll: every transaction older than it had finished when this
    /// poll read, so the next poll misses nothing committed since.
    pub horizon: i64,
    /// The server's next transaction id then: below a horizon taken earlier, that horizon
    /// belongs to another history (a standby promoted without the old primary's last WAL).
    pub next: i64,
    /// Which server answered (its address, port and start time): a horizon is only
    /// meaningful on the server it came from.
    pub server: String,
    pub revoked: Vec<RevokedToken>,
}

impl Changes {
    /// Whether a horizon taken from `server` still tells what this poll has not seen: same
    /// server, and its transaction ids have not gone back below the horizon.
    pub fn continues(&self, server: &str, horizon: i64) -> bool {
        self.server == server && self.next >= horizon
    }
}

type FeedRow = (i64, i64, String, Option<Uuid>, Option<DateTime<Utc>>);

/// Unexpired revocations written by transactions from `horizon` on (all of them without
/// one). Horizon and rows come from one statement, hence one snapshot; rows of transactions
/// still running then are read again next time, so a slow commit is never skipped.
pub async fn since(db: &Database, horizon: Option<i64>) -> Result<Changes, sqlx::Error> {
    let sql = format!(
        "WITH h AS (SELECT txid_current_snapshot() AS s)
         SELECT txid_snapshot_xmin(h.s), txid_snapshot_xmax(h.s),
                format('%s:%s@%s', inet_server_addr(), inet_server_port(), pg_postmaster_start_time()),
                r.jti, r.expires_at
         FROM h
         LEFT JOIN revoked_tokens r
           ON r.txid >= $1 AND r.expires_at > now() - {EXPIRY_MARGIN}"
    );
    let query = sqlx::query_as::<_, FeedRow>(&sql)
        .bind(horizon.unwrap_or(i64::MIN))
        .fetch_all(&db.feed_pool);
    let rows = db.timed("revocation_feed", query).await?;
    let (horizon, next, server) = rows
        .first()
        .map(|row| (row.0, row.1, row.2.clone()))
        .ok_or(sqlx::Error::RowNotFound)?;
    let revoked = rows
        .into_iter()
        .filter_map(|(_, _, _, jti, expires_at)| {
            Some(RevokedToken {
                jti: jti?,
                expires_at: expires_at?,
            })
        })
        .collect();
    Ok(Changes {
        horizon,
        next,
        server,
        revoked,
    })
}

/// Deletes revocations of tokens that no replica accepts any more.
pub async fn purge(db: &Database) -> Result<u64, sqlx::Error> {
    let sql = format!("DELETE FROM revoked_tokens WHERE expires_at < now() - {EXPIRY_MARGIN}");
    let query = sqlx::query(&sql).execute(&db.pool);
    Ok(db.timed("revocation_purge", query).await?.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::Changes;

    fn answer(server: &str, next: i64) -> Changes {
        Changes {
            horizon: next,
            next,
            server: server.to_owned(),
            revoked: Vec::new(),
        }
    }

    #[test]
    fn a_horizon_continues_only_on_its_own_server_and_history() {
        assert!(answer("10.0.0.1:5432@t0", 900).continues("10.0.0.1:5432@t0", 900));
        assert!(answer("10.0.0.1:5432@t0", 1_000).continues("10.0.0.1:5432@t0", 900));
        // A promoted standby: another server, whatever its ids.
        assert!(!answer("10.0.0.2:5432@t1", 5_000).continues("10.0.0.1:5432@t0", 900));
        // The same address, restarted from a backup, or behind a virtual IP: ids went back.
        assert!(!answer("10.0.0.1:5432@t0", 850).continues("10.0.0.1:5432@t0", 900));
    }
}
