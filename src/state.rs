//! The one state shared by every handler.

use std::sync::Arc;

use hmac::Hmac;
use sha2::Sha256;

use crate::auth::jwt::TokenKeys;
use crate::auth::password::Passwords;
use crate::bulkhead::Bulkhead;
use crate::cache::Cache;
use crate::config::Settings;
use crate::db::Database;
use crate::health::{HealthHandle, Snapshot, Verdict};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;

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
    /// Admission control of the data API: requests in flight and queued.
    pub admission: Arc<Bulkhead>,
    /// Signs page cursors; derived from `JWT_SECRET` once at start.
    pub cursor_key: Arc<Hmac<Sha256>>,
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
