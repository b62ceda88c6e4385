//! Running a POST once per `Idempotency-Key`.
//!
//! The key is claimed in the same PostgreSQL transaction as the write it guards, and the
//! response is stored in it too. So there is never a key without its write, nor a write
//! without its key: a replica dying mid-request rolls both back, and the retry runs anew.
//! A concurrent request with the same key blocks on the key's primary key until the first
//! commits (it then replays the stored response) or rolls back (it then runs). Only
//! successful responses are stored: errors roll back, so a retry tries again.

use std::future::Future;
use std::pin::Pin;

use axum::http::header::ETAG;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::idempotency;
use crate::http::{ApiError, ApiResult};
use crate::state::AppState;

/// A response that can be stored and replayed byte for byte (same status, body, ETag).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub etag: Option<String>,
}

impl Reply {
    pub fn json(status: StatusCode, body: &impl Serialize) -> ApiResult<Self> {
        Ok(Self {
            status,
            body: serde_json::to_value(body).map_err(anyhow::Error::from)?,
            etag: None,
        })
    }

    pub fn with_etag(mut self, etag: String) -> Self {
        self.etag = Some(etag);
        self
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(value) = self.etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
            response.headers_mut().insert(ETAG, value);
        }
        response
    }
}

/// Who a key belongs to: keys of different users never meet.
pub enum Scope<'a> {
    User(Uuid),
    /// A registration, by the (normalised) email it registers: without a user, the
    /// account asked for is what a key belongs to. One scope for every anonymous caller
    /// let one caller's key turn another's registration into a 422.
    Registration(&'a str),
}

impl Scope<'_> {
    fn as_string(&self) -> String {
        match self {
            Scope::User(id) => format!("user:{id}"),
            Scope::Registration(email) => {
                let digest = Sha256::digest(email.as_bytes());
                let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
                format!("register:{hex}")
            }
        }
    }
}

/// The request a key is bound to; reusing the key for another request is a 422.
pub struct Keyed {
    scope: String,
    key: String,
    fingerprint: Vec<u8>,
}

impl Keyed {
    /// `None` without a key. The fingerprint covers the route and the parsed body, so
    /// formatting differences (whitespace, key order) do not count as a different request.
    pub fn new(
        key: Option<String>,
        scope: Scope,
        route: &str,
        body: &impl Serialize,
    ) -> ApiResult<Option<Self>> {
        let Some(key) = key else {
            return Ok(None);
        };
        let body = serde_json::to_value(body).map_err(anyhow::Error::from)?;
        let mut hasher = Sha256::new();
        hasher.update(route.as_bytes());
        hasher.update([0]);
        hasher.update(canonical(&body).as_bytes());
        Ok(Some(Self {
            scope: scope.as_string(),
            key,
            fingerprint: hasher.finalize().to_vec(),
        }))
    }
}

/// JSON with object keys sorted at every level.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), canonical(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", inner.join(","))
        }
        other => other.to_string(),
    }
}

pub enum Outcome {
    /// Ran now: the caller does its post-commit work (cache invalidation).
    Fresh(Reply),
    /// The stored first response; nothing was written.
    Replayed(Reply),
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        match self {
            Outcome::Fresh(reply) => reply.into_response(),
            Outcome::Replayed(reply) => {
                let mut response = reply.into_response();
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                response
            }
        }
    }
}

pub type Work<'c> = Pin<Box<dyn Future<Output = ApiResult<Reply>> + Send + 'c>>;

/// Runs `work` in one transaction, at most once per key.
pub async fn run_once<F>(state: &AppState, keyed: Option<Keyed>, work: F) -> ApiResult<Outcome>
where
    F: for<'c> FnOnce(&'c mut PgConnection) -> Work<'c>,
{
    let (db, ttl) = (&state.db, state.settings.idempotency_key_ttl);
    let mut tx = db.timed("begin", db.pool.begin()).await?;
    if let Some(k) = &keyed {
        if !idempotency::claim(db, &mut tx, &k.scope, &k.key, &k.fingerprint, ttl).await? {
            let stored = idempotency::find(db, &mut tx, &k.scope, &k.key).await?;
            if stored.fingerprint != k.fingerprint {
                return Err(ApiError::Unprocessable(
                    "Idempotency-Key was already used for a different request".to_owned(),
                ));
            }
            return Ok(Outcome::Replayed(Reply {
                status: StatusCode::from_u16(stored.status as u16).unwrap_or(StatusCode::OK),
                body: stored.body.0,
                etag: stored.etag,
            }));
        }
    }
    // On error the transaction is dropped, which rolls back the key with the write.
    let reply = work(&mut tx).await?;
    if let Some(k) = &keyed {
        let response = (
            reply.status.as_u16() as i16,
            &reply.body,
            reply.etag.as_deref(),
        );
        idempotency::complete(db, &mut tx, &k.scope, &k.key, response).await?;
    }
    db.timed("commit", tx.commit()).await?;
    Ok(Outcome::Fresh(reply))
}
