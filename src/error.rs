//! Errors of the domain layer, which know nothing of HTTP.
//!
//! Domain functions return `sqlx::Error` when storage fails and [`FieldError`]s when input
//! breaks a rule; `crate::http::error` alone decides which status code each becomes, so a
//! change to the HTTP answers never touches the model, the cache or the database code.

use serde::Serialize;

/// One problem with the input: where (`path`, a JSON pointer-like path or a parameter
/// name) and what.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}
