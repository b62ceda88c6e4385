//! Password hashing with Argon2id, behind a bulkhead.
//!
//! Hashing is deliberately slow and memory-hard (19 MiB a hash by default), so it runs on
//! the blocking pool, never on the async workers that serve every other request, and at
//! most [`PasswordSettings::concurrency`] hashes run at once (as many as CPUs by default).
//! A few more wait in a short queue; beyond it a login or register is refused at once
//! ([`PasswordError::Busy`], a 503), so a login storm, which needs no token to start,
//! costs at most `concurrency × memory cost` of RAM and cannot starve the other routes.
//!
//! The cost comes from the settings; verifying always uses the parameters stored in the
//! hash itself, so changing the cost never locks anyone out.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::OnceCell;

use std::sync::Arc;

use crate::bulkhead::{Bulkhead, Rejected};
use crate::config::PasswordSettings;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Every hashing slot is busy and the queue is full: retryable.
    #[error("password hashing is at capacity: {0}")]
    Busy(#[from] Rejected),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Hashes and verifies passwords, at most `concurrency` at a time.
pub struct Passwords {
    argon2: Argon2<'static>,
    bulkhead: Bulkhead,
    /// A hash to verify against when the email is unknown, so that "no such user" takes as
    /// long as "wrong password" and response times do not reveal which emails exist.
    dummy: OnceCell<String>,
    metrics: Arc<Metrics>,
}

impl Passwords {
    pub fn new(settings: &PasswordSettings, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let params = Params::new(settings.memory_kib, settings.iterations, 1, None)
            .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
        Ok(Self {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            bulkhead: Bulkhead::new(settings.concurrency, settings.queue, settings.queue_timeout),
            dummy: OnceCell::new(),
            metrics,
        })
    }

    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let argon2 = self.argon2.clone();
        self.run(move || {
            argon2
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("argon2 hashing failed: {e}"))
        })
        .await?
        .map_err(PasswordError::Internal)
    }

    /// False for a wrong password or an unreadable hash.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, PasswordError> {
        self.run(move || {
            Argon2::default()
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok()
        })
        .await
    }

    /// Spends the time of a verification, against a hash no password matches.
    pub async fn verify_dummy(&self, password: String) -> Result<(), PasswordError> {
        let dummy = self
            .dummy
            .get_or_try_init(|| self.hash("dummy password, never matches".to_owned()))
            .await?
            .clone();
        self.verify(password, dummy).await.map(|_| ())
    }

    /// Hashes waiting for a slot, for `/health/detailed`.
    pub fn stats(&self) -> (usize, usize, usize) {
        (
            self.bulkhead.in_use(),
            self.bulkhead.queued(),
            self.bulkhead.capacity(),
        )
    }

    /// Runs `work` on the blocking pool once a slot is free. The permit moves into the
    /// blocking task: if the client gives up, the hash still finishes, and its memory
    /// still counts against the bound until then.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let permit = self.bulkhead.enter().await.inspect_err(|rejected| {
            self.metrics
                .record_rejection("password_hashing", rejected.as_str())
        })?;
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        })
        .await
        .map_err(|e| PasswordError::Internal(anyhow::anyhow!("hashing task failed: {e}")))
    }
}
