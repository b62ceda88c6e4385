//! The API's data: what clients send, what they get back, and the rules input must follow.
//!
//! Request types deny unknown fields (a misspelt field is an error, not silently ignored)
//! and are checked by `validate` functions that collect every problem with its JSON path,
//! so one 422 lists them all.

pub mod auth;
pub mod item;
pub mod limits;
pub mod schema;

use crate::error::FieldError;

/// PostgreSQL refuses NUL in `text` and `jsonb`; catch it here as a 422 rather than as a
/// database error.
pub(crate) fn check_text(
    errors: &mut Vec<FieldError>,
    path: &str,
    value: &str,
    max_chars: usize,
    allow_empty: bool,
) {
    if value.contains('\0') {
        errors.push(FieldError::new(path, "must not contain NUL characters"));
    } else if !allow_empty && value.trim().is_empty() {
        errors.push(FieldError::new(path, "must not be empty"));
    } else if value.chars().count() > max_chars {
        errors.push(FieldError::new(
            path,
            format!("must be at most {max_chars} characters"),
        ));
    }
}
