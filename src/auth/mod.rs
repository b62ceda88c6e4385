//! Authentication: Argon2 passwords, HS256 JWTs, a denylist for logout, and the
//! [`AuthUser`] extractor that handlers take to require a valid token.

pub mod jwt;
pub mod password;
pub mod revocation;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::api::ApiError;
use crate::state::AppState;
use jwt::Claims;

/// The caller, from a valid, unrevoked bearer token. A handler that takes one answers 401
/// JSON to a missing, malformed, expired, tampered or revoked token.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub claims: Claims,
}

/// A token whose signature and expiry are valid, revoked or not: what logout needs, so that
/// logging out twice (a retry) succeeds instead of answering 401.
#[derive(Debug, Clone)]
pub struct VerifiedToken(pub Claims);

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::Unauthorized("expected Authorization: Bearer <token>".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthorized(
            "expected Authorization: Bearer <token>".into(),
        ));
    }
    Ok(token.trim())
}

fn verified(parts: &Parts, state: &AppState) -> Result<Claims, ApiError> {
    let token = bearer(parts)?;
    state.tokens.verify(token).map_err(|e| {
        let why = match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired",
            _ => "invalid token",
        };
        ApiError::Unauthorized(why.into())
    })
}

impl FromRequestParts<AppState> for VerifiedToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        verified(parts, state).map(VerifiedToken)
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let claims = verified(parts, state)?;
        if revocation::is_revoked(state, claims.jti).await? {
            return Err(ApiError::Unauthorized("token revoked".into()));
        }
        Ok(AuthUser {
            id: claims.sub,
            claims,
        })
    }
}
