//! Password hashing with Argon2id. Hashing is deliberately slow, so it runs on the blocking
//! pool, never on the async workers that serve every other request.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;

pub async fn hash(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
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
pub async fn verify_dummy(password: String) -> anyhow::Result<()> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = match DUMMY.get() {
        Some(hash) => hash.clone(),
        None => {
            let hash = hash("dummy password, never matches".to_owned()).await?;
            DUMMY.get_or_init(|| hash).clone()
        }
    };
    verify(password, dummy).await.map(|_| ())
}
