//! The one error type of the HTTP API, and the JSON it becomes: the only place where
//! domain errors (`sqlx::Error`, [`FieldError`]s) turn into status codes.
//!
//! Every error answers `{error, details: [{path, message}]}`. Internal errors are logged
//! with their cause and answered with a generic message: details never leak to clients.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::auth::password::PasswordError;
pub use crate::error::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad request: {message}")]
    BadRequest {
        message: String,
        details: Vec<FieldError>,
    },
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("authentication required: {0}")]
    Unauthorized(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("unprocessable: {0}")]
    Unprocessable(String),
    /// Not serving yet (start-up: migrations not applied): retryable, so 503.
    #[error("starting")]
    Starting,
    /// PostgreSQL is unreachable, failing over, or the pool is exhausted; or the query was
    /// a deadlock victim or ran past the deadline: retryable, so 503.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Admission control or a bulkhead refused the request: retryable, so 503.
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    /// The request ran past `REQUEST_TIMEOUT_MS`: retryable, so 503.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The request's body did not arrive within `BODY_TIMEOUT_MS`: 408.
    #[error("request body timed out")]
    BodyTimeout(std::time::Duration),
    /// Too many failed logins for this account from this address: 429, with how many
    /// seconds to wait.
    #[error("too many failed logins")]
    LoginThrottled(u64),
    #[error(transparent)]
    Database(sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => ApiError::NotFound,
            e if crate::db::is_transient(&e) => ApiError::Unavailable(e),
            // A unique index said no: the client asked for something that already exists
            // (an email, a source id). Their request, not our fault.
            sqlx::Error::Database(ref db) if db.is_unique_violation() => {
                ApiError::Conflict("a resource with the same unique value already exists".into())
            }
            // Validation should catch bad values first; this is the safety net that keeps
            // one it missed (class 22: data exception; 23514: check violation) a 4xx.
            sqlx::Error::Database(ref db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("22") || c == "23514") =>
            {
                tracing::warn!(error = %db, "database refused a value that validation let through");
                ApiError::bad_request("a value was refused by the database")
            }
            e => ApiError::Database(e),
        }
    }
}

impl From<PasswordError> for ApiError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Busy(_) => ApiError::Overloaded("password hashing"),
            PasswordError::Internal(e) => ApiError::Internal(e),
        }
    }
}

/// The JSON of every error answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub details: Vec<FieldError>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn field(path: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(path, message)])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::LoginThrottled(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_)
            | ApiError::Starting
            | ApiError::Overloaded(_)
            | ApiError::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Database(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body this error answers with, for answers built once ahead of time.
    pub fn body_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body()).unwrap_or_default()
    }

    fn body(&self) -> ErrorBody {
        let (error, details) = match self {
            ApiError::BadRequest { message, details } => (message.clone(), details.clone()),
            ApiError::Validation(details) => ("validation failed".to_owned(), details.clone()),
            ApiError::Unauthorized(why) => (format!("unauthorized: {why}"), Vec::new()),
            ApiError::NotFound => ("not found".to_owned(), Vec::new()),
            ApiError::MethodNotAllowed => ("method not allowed".to_owned(), Vec::new()),
            ApiError::Conflict(why) => (why.clone(), Vec::new()),
            ApiError::PreconditionFailed(why) => (why.clone(), Vec::new()),
            ApiError::PayloadTooLarge => ("request body exceeds 1 MiB".to_owned(), Vec::new()),
            ApiError::UnsupportedMediaType(why) => (why.clone(), Vec::new()),
            ApiError::Unprocessable(why) => (why.clone(), Vec::new()),
            ApiError::BodyTimeout(timeout) => (
                format!(
                    "request body not received within {} ms",
                    timeout.as_millis()
                ),
                Vec::new(),
            ),
            ApiError::LoginThrottled(seconds) => (
                format!("too many failed logins for this account from your address, retry in {seconds} s"),
                Vec::new(),
            ),
            ApiError::Unavailable(_) => (
                format!("database unavailable, retry later; {MAY_HAVE_BEEN_APPLIED}"),
                Vec::new(),
            ),
            ApiError::Starting => ("starting, retry later".to_owned(), Vec::new()),
            ApiError::Overloaded(what) => (format!("{what} at capacity, retry later"), Vec::new()),
            ApiError::DeadlineExceeded => (
                format!(
                    "request took longer than the server's deadline, retry later; {MAY_HAVE_BEEN_APPLIED}"
                ),
                Vec::new(),
            ),
            ApiError::Database(_) | ApiError::Internal(_) => {
                ("internal error".to_owned(), Vec::new())
            }
        };
        ErrorBody { error, details }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            // A bug: the one kind of failure that must page someone.
            ApiError::Database(_) | ApiError::Internal(_) => {
                tracing::error!(error = ?self, "request failed");
            }
            // Retryable and expected during an outage or a failover: the cause matters,
            // but one line per request at error level would flood the logs exactly then.
            ApiError::Unavailable(e) => tracing::warn!(error = %e, "database unavailable"),
            // Shedding: counted by overload_rejections_total; a log line per refusal
            // would cost the overloaded replica the very CPU it is saving.
            _ => {}
        }
        let mut response = (status, Json(self.body())).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, RETRY_AFTER_SECONDS);
        }
        if let ApiError::LoginThrottled(seconds) = self {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The outcome of a write cut by the deadline or by a database failure is unknown: it may
/// commit after the answer, or have committed when the connection dropped. The same words
/// on reads cost nothing, and a layer that answers for the handler (the deadline) does not
/// know which it cut.
const MAY_HAVE_BEEN_APPLIED: &str = "a write may have been applied: retry a POST with the same Idempotency-Key (applied once), read the item before retrying a PATCH or DELETE";

/// What every 503 of the API port sends as `Retry-After`: all its causes are temporary.
pub const RETRY_AFTER_SECONDS: HeaderValue = HeaderValue::from_static("1");

pub type ApiResult<T> = Result<T, ApiError>;

/// Turns the problems a request's validation collected into a result: 422 listing them
/// all, or nothing.
pub fn validated(errors: Vec<FieldError>) -> ApiResult<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}
