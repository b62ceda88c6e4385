//! The token denylist: logout commits the token's `jti` to PostgreSQL, and every replica
//! keeps the unexpired revocations in memory, so checking a token costs no round trip.
//!
//! How a replica follows the table: it polls it every [`POLL_INTERVAL`] on a connection of
//! its own, reading only the rows written since a transaction horizon
//! ([`revocations::since`]); the first poll loads them all. We chose a poll over
//! `LISTEN/NOTIFY` because it has no delivery to lose: a notification sent while the
//! listener reconnects is gone and needs a full reload to recover, and a silently dead
//! listener looks exactly like a quiet one. A poll is exact by construction, and its
//! freshness is known: the start of the last successful poll.
//!
//! A horizon is a transaction id of one server's history. When the answer comes from
//! another server (the primary moved) or the server's next transaction id is below the
//! horizon (a promoted standby that never saw the old primary's last ids), the horizon
//! means nothing there, and the whole list is read again.
//!
//! What a check does when the copy may be behind: if the last successful poll began more
//! than [`FRESH_FOR`] ago (PostgreSQL slow or unreachable from this replica), the token is
//! checked in PostgreSQL itself, as before. So a revoked token is refused on every replica
//! within [`FRESH_FOR`] of the logout's commit, whatever Redis does; Redis is not involved.
//! `database_latency_seconds{query_type="revocation_check"}` counts those fallbacks.
//!
//! Memory: one entry per logout within a token lifetime (`JWT_EXPIRES_IN`), about 40 bytes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::jwt::Claims;
use crate::db::revocations::{self, Changes, RevokedToken};
use crate::db::Database;

/// How often each replica reads new revocations: four indexed reads a second per replica.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How old the copy may be before checks go to PostgreSQL. A revoked token is refused
/// everywhere within this time of the logout's commit (the promise is 1 s).
pub const FRESH_FOR: Duration = Duration::from_millis(750);
/// Expired entries are dropped this often (they are harmless meanwhile: the token is).
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Kept past the token's expiry: the leeway with which an expired token still verifies.
const EXPIRY_MARGIN_SECS: i64 = 60;

#[derive(Default)]
struct Copy {
    /// Revoked `jti` → the token's expiry (Unix seconds).
    revoked: HashMap<Uuid, i64>,
    /// When the last successful poll began: everything committed before is in `revoked`.
    synced: Option<Instant>,
}

/// Where the previous poll stopped: a transaction id of one server's history.
struct Horizon {
    server: String,
    txid: i64,
}

/// The revocations since `horizon`, or all of them when `horizon` does not belong to the
/// server that answers. After a failover the new primary's transaction ids may be below a
/// horizon taken on the old one (an aborted transaction whose WAL never reached the
/// standby pushed the old primary's ahead): reading from that horizon would skip the first
/// logouts on the new primary, so the whole list is read again.
async fn poll(db: &Database, horizon: Option<&Horizon>) -> Result<Changes, sqlx::Error> {
    let changes = revocations::since(db, horizon.map(|h| h.txid)).await?;
    match horizon {
        Some(h) if !changes.continues(&h.server, h.txid) => {
            tracing::warn!(
                from = %h.server,
                to = %changes.server,
                horizon = h.txid,
                next = changes.next,
                "the revocations now come from another primary or history: reloading them all"
            );
            revocations::since(db, None).await
        }
        _ => Ok(changes),
    }
}

#[derive(Default)]
pub struct Denylist {
    copy: RwLock<Copy>,
}

impl Denylist {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Revokes the token for the rest of its lifetime, answering once PostgreSQL has
    /// committed it (else the logout fails and can be retried). This replica refuses it at
    /// once; the others within [`FRESH_FOR`].
    pub async fn revoke(&self, db: &Database, claims: &Claims) -> Result<(), sqlx::Error> {
        revocations::insert(db, claims.jti, claims.sub, claims.expires_at()).await?;
        if let Ok(mut copy) = self.copy.write() {
            copy.revoked.insert(claims.jti, claims.exp);
        }
        Ok(())
    }

    pub async fn is_revoked(&self, db: &Database, jti: Uuid) -> Result<bool, sqlx::Error> {
        match self.lookup(jti) {
            Some(revoked) => Ok(revoked),
            None => revocations::is_revoked(db, jti).await,
        }
    }

    /// The answer of the in-memory copy, if it is fresh enough to give one.
    fn lookup(&self, jti: Uuid) -> Option<bool> {
        let copy = self.copy.read().ok()?;
        copy.synced
            .filter(|at| at.elapsed() <= FRESH_FOR)
            .map(|_| copy.revoked.contains_key(&jti))
    }

    /// Follows the table until `shutdown`; call once the migrations are applied.
    pub async fn follow(self: Arc<Self>, db: Database, shutdown: CancellationToken) {
        let mut ticker = crate::lifecycle::ticker(POLL_INTERVAL);
        let mut horizon = None;
        let mut pruned = Instant::now();
        let mut failing = false;
        while crate::lifecycle::next_tick(&mut ticker, &shutdown).await {
            let started = Instant::now();
            match poll(&db, horizon.as_ref()).await {
                Ok(changes) => {
                    let prune = pruned.elapsed() >= PRUNE_INTERVAL;
                    self.apply(changes.revoked, started, prune);
                    if prune {
                        pruned = started;
                    }
                    horizon = Some(Horizon {
                        server: changes.server,
                        txid: changes.horizon,
                    });
                    if std::mem::take(&mut failing) {
                        tracing::info!("denylist followed again");
                    }
                }
                // The horizon is kept: the next successful poll catches up exactly.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "denylist poll failed: token checks go to PostgreSQL until it succeeds");
                }
                Err(_) => {}
            }
        }
    }

    /// Adds what a poll found. Never clears: the first poll starts from an empty copy, and
    /// a revocation this replica added itself may be newer than the poll's snapshot.
    fn apply(&self, found: Vec<RevokedToken>, started: Instant, prune: bool) {
        let Ok(mut copy) = self.copy.write() else {
            return;
        };
        copy.revoked
            .extend(found.iter().map(|t| (t.jti, t.expires_at.timestamp())));
        if prune {
            let cutoff = Utc::now().timestamp() - EXPIRY_MARGIN_SECS;
            copy.revoked.retain(|_, expires| *expires > cutoff);
        }
        copy.synced = Some(started);
    }

    /// Revocations held in memory, for tests and `/health/detailed`.
    pub fn len(&self) -> usize {
        self.copy.read().map(|c| c.revoked.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether checks are answered from memory now.
    pub fn is_fresh(&self) -> bool {
        self.lookup(Uuid::nil()).is_some()
    }
}
