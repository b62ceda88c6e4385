//! Password hashing with Argon2id. Hashing is deliberately slow, so it runs on the blocking
//! pool, never on the async workers that serve every other request.
//!
//! The cost comes from the settings; verifying always uses the parameters stored in the
//! hash itself, so changing the cost never locks anyone out.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::config::AuthSettings;

fn hasher(settings: &AuthSettings) -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(
        settings.password_hash_memory_kib,
        settings.password_hash_iterations,
        1,
        None,
    )
    .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

pub async fn hash(settings: &AuthSettings, password: String) -> anyhow::Result<String> {
    let argon2 = hasher(settings)?;
    tokio::task::spawn_blocking(move || {
        argon2
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("argon2 hashing failed: {e}"))
    })
    .await?
}

/// False for a wrong password or an unreadable hash.
pub async fn verify(password: String, hash: String) -> anyhow::Result<bool> {
    Ok(tokio::task::spawn_blocking(move || {
        Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok()
    })
    .await?)
}

/// A hash to verify against when the email is unknown, so that "no such user" takes as
/// long as "wrong password" and response times do not reveal which emails exist.
pub async fn verify_dummy(settings: &AuthSettings, password: String) -> anyhow::Result<()> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = match DUMMY.get() {
        Some(hash) => hash.clone(),
        None => {
            let hash = hash(settings, "dummy password, never matches".to_owned()).await?;
            DUMMY.get_or_init(|| hash).clone()
        }
    };
    verify(password, dummy).await.map(|_| ())
}
