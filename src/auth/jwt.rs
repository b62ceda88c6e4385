//! Access tokens: HS256 JWTs any replica can verify with the shared `JWT_SECRET`.
//!
//! Rotating the secret without signing anyone out: `JWT_SECRET_PREVIOUS` is a second key
//! that verifies and never signs. A rolling update replaces replicas one by one, so old and
//! new run side by side, and each must verify what the other signs. Hence three steps, each
//! a rolling update (docs/deployment.md):
//!
//! 1. `JWT_SECRET=old`, `JWT_SECRET_PREVIOUS=new`: still signs with the old key, already
//!    verifies the new one;
//! 2. `JWT_SECRET=new`, `JWT_SECRET_PREVIOUS=old`: signs with the new key, still verifies
//!    tokens (and cursors) made with the old one;
//! 3. after `JWT_EXPIRES_IN`, no old-key token is valid anyway: drop `JWT_SECRET_PREVIOUS`.

use std::convert::Infallible;

use chrono::{DateTime, Utc};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::keys::RotatingKeys;
use crate::config::AuthSettings;

pub const ISSUER: &str = "cartae-api";
pub const AUDIENCE: &str = "cartae-web";
/// Tolerated clock difference between the replica that issued a token and the one checking it.
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    /// Unique per token: what logout revokes.
    pub jti: Uuid,
}

impl Claims {
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.exp, 0).unwrap_or_else(Utc::now)
    }
}

pub struct Issued {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// The keys and rules for issuing and verifying tokens, built once at start: verifying
/// is on every authenticated request, and rebuilding the key and the validation rules
/// each time was a measurable part of a cached item read.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: RotatingKeys<DecodingKey>,
    validation: Validation,
    lifetime: chrono::Duration,
}

impl TokenKeys {
    pub fn new(settings: &AuthSettings) -> Self {
        let secret = settings.jwt_secret.expose().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        let Ok(decoding) = RotatingKeys::derive(settings, |secret| {
            Ok::<_, Infallible>(DecodingKey::from_secret(secret))
        });
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding,
            validation,
            lifetime: chrono::Duration::from_std(settings.jwt_expires_in)
                .unwrap_or_else(|_| chrono::Duration::hours(1)),
        }
    }

    pub fn issue(&self, user: Uuid) -> Result<Issued, jsonwebtoken::errors::Error> {
        let now = Utc::now();
        let expires_at = now + self.lifetime;
        let claims = Claims {
            sub: user,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
            jti: Uuid::new_v4(),
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok(Issued {
            token,
            expires_at: DateTime::from_timestamp(claims.exp, 0).unwrap_or(expires_at),
        })
    }

    /// Checks signature, algorithm, issuer, audience and expiry. Revocation is checked
    /// separately (it needs Redis or PostgreSQL).
    pub fn verify(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        self.decoding.verify(
            |key| self.verify_with(key, token),
            |e| matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature),
        )
    }

    fn verify_with(
        &self,
        key: &DecodingKey,
        token: &str,
    ) -> Result<Claims, jsonwebtoken::errors::Error> {
        decode::<Claims>(token, key, &self.validation).map(|data| data.claims)
    }
}
