//! The one state shared by every handler.

use std::sync::Arc;

use crate::auth::jwt::TokenKeys;
use crate::auth::keys::CursorKeys;
use crate::auth::password::Passwords;
use crate::auth::revocation::Denylist;
use crate::auth::throttle::LoginThrottle;
use crate::bulkhead::Bulkhead;
use crate::cache::Cache;
use crate::config::Settings;
use crate::db::Database;
use crate::health::{HealthHandle, Snapshot, Verdict};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::user_writes::UserWrites;

/// Cheap to clone: every field is a handle.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: Database,
    pub cache: Cache,
    pub metrics: Arc<Metrics>,
    pub health: HealthHandle,
    pub lifecycle: Arc<Lifecycle>,
    pub tokens: Arc<TokenKeys>,
    pub passwords: Arc<Passwords>,
    /// The revoked tokens, followed from PostgreSQL.
    pub denylist: Arc<Denylist>,
    /// Failed logins, per account and client address.
    pub login_throttle: Arc<LoginThrottle>,
    /// Admission control of the data API: requests in flight and queued.
    pub admission: Arc<Bulkhead>,
    /// Each user's writes in flight, at most `MAX_WRITES_PER_USER`.
    pub user_writes: Arc<UserWrites>,
    /// Sign and verify page cursors; derived from the JWT secrets once at start.
    pub cursor_keys: Arc<CursorKeys>,
}

impl AppState {
    /// The latest snapshot and the verdict it gives in the current phase.
    /// While starting, the start-up step (a migration, its lock) is one more reason.
    pub fn verdict(&self) -> (Arc<Snapshot>, Verdict) {
        let (snapshot, mut verdict) = self
            .health
            .verdict(self.lifecycle.phase(), &self.settings.health);
        if let Some(reason) = self.lifecycle.starting_reason() {
            verdict.reasons.push(reason.to_owned());
        }
        (snapshot, verdict)
    }
}
