//! The keys derived from `JWT_SECRET` and, during a rotation, `JWT_SECRET_PREVIOUS`:
//! token signatures ([`super::jwt::TokenKeys`]) and page-cursor MACs ([`CursorKeys`]).
//! One rotation rule for both, here: the current secret's key signs and verifies; the
//! previous secret's key only verifies, and only what the current key refused for its
//! signature.

use hmac::digest::InvalidLength;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::AuthSettings;

/// A key derived from each secret.
pub struct RotatingKeys<K> {
    /// From `JWT_SECRET`: signs and verifies.
    pub current: K,
    /// From `JWT_SECRET_PREVIOUS`: verifies only.
    pub previous: Option<K>,
}

impl<K> RotatingKeys<K> {
    /// Derives a key from each secret with `derive`.
    pub fn derive<E>(
        auth: &AuthSettings,
        derive: impl Fn(&[u8]) -> Result<K, E>,
    ) -> Result<Self, E> {
        let previous = auth.jwt_secret_previous.as_ref();
        Ok(Self {
            current: derive(auth.jwt_secret.expose().as_bytes())?,
            previous: previous
                .map(|s| derive(s.expose().as_bytes()))
                .transpose()?,
        })
    }

    /// `verify` with the current key, then with the previous one when the current key
    /// refused the signature (`wrong_signature`): what a rotation's other key may have
    /// signed. Anything else (expired, malformed) is refused for what it is.
    pub fn verify<T, E>(
        &self,
        verify: impl Fn(&K) -> Result<T, E>,
        wrong_signature: impl Fn(&E) -> bool,
    ) -> Result<T, E> {
        let current = verify(&self.current);
        match (&current, &self.previous) {
            (Err(e), Some(previous)) if wrong_signature(e) => verify(previous),
            _ => current,
        }
    }
}

/// The MAC of page cursors, keyed once at start; cloned per use.
pub type CursorKey = Hmac<Sha256>;

/// The page cursors' MAC keys.
pub type CursorKeys = RotatingKeys<CursorKey>;

/// Separates the cursor key from every other use of `JWT_SECRET` (token signatures).
const CURSOR_KEY_LABEL: &[u8] = b"cartae-database-api/items-cursor/v2";

/// Derives the cursor key from a secret: every replica derives the same one, and changing
/// the secret invalidates outstanding cursors.
pub fn cursor_key(secret: &[u8]) -> Result<CursorKey, InvalidLength> {
    let mut derive = CursorKey::new_from_slice(secret)?;
    derive.update(CURSOR_KEY_LABEL);
    CursorKey::new_from_slice(&derive.finalize().into_bytes())
}

/// The cursor keys of `JWT_SECRET` and, during a rotation, of `JWT_SECRET_PREVIOUS`.
pub fn cursor_keys(auth: &AuthSettings) -> Result<CursorKeys, InvalidLength> {
    RotatingKeys::derive(auth, cursor_key)
}
