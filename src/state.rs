//! The one state shared by every handler.

use std::sync::Arc;

use crate::auth::jwt::TokenKeys;
use crate::cache::Cache;
use crate::config::Settings;
use crate::db::Database;
use crate::health::{judge, HealthHandle, Snapshot, Verdict};
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
}

impl AppState {
    /// The latest snapshot and the verdict it gives in the current phase.
    pub fn verdict(&self) -> (Arc<Snapshot>, Verdict) {
        let snapshot = self.health.latest();
        let health = &self.settings.health;
        // Three missed rounds, each allowed its timeout, before the snapshot is called stale.
        let max_age = (health.interval + health.check_timeout) * 3;
        let verdict = judge(
            &snapshot,
            self.lifecycle.phase(),
            health.ready_requires,
            max_age,
        );
        (snapshot, verdict)
    }
}
