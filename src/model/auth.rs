//! Users and tokens.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::check_text;
use crate::error::FieldError;

pub const EMAIL_MAX: usize = 254;
pub const PASSWORD_MIN: usize = 8;
/// Argon2 takes any length, but hashing megabytes per login attempt is a cheap attack.
pub const PASSWORD_MAX: usize = 128;

/// The body of register and login.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Compared case-insensitively; surrounding white space is ignored.
    #[schema(example = "ada@example.com", schema_with = super::schema::email)]
    pub email: String,
    #[schema(
        example = "correct horse battery staple",
        min_length = 8,
        max_length = 128
    )]
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("email", &self.email)
            .field("password", &"[redacted]")
            .finish()
    }
}

impl Credentials {
    /// Emails compare case-insensitively: stored and looked up lower-cased.
    pub fn normalized_email(&self) -> String {
        self.email.trim().to_lowercase()
    }

    pub fn check(&self, errors: &mut Vec<FieldError>) {
        let email = self.normalized_email();
        check_text(errors, "$.email", &email, EMAIL_MAX, false);
        let shaped = email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
            && !email.chars().any(char::is_whitespace);
        if !shaped {
            errors.push(FieldError::new("$.email", "must be an email address"));
        }
        let length = self.password.chars().count();
        if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&length) {
            errors.push(FieldError::new(
                "$.password",
                format!("must be {PASSWORD_MIN} to {PASSWORD_MAX} characters"),
            ));
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    /// A JWT (HS256) for `Authorization: Bearer ...`.
    pub token: String,
    pub expires_at: DateTime<Utc>,
}
