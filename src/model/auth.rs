//! Users and tokens.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use utoipa::ToSchema;
use uuid::Uuid;

use super::check_text;
use super::limits::{EMAIL_MAX, PASSWORD_MAX, PASSWORD_MIN};
use crate::error::FieldError;

/// Passwords of 8 characters or more that lead every leaked-password list: the first ones
/// any guesser tries, so the throttle's five free failures would be enough. Compared
/// case-insensitively. A short list on purpose: it refuses what is certainly guessed, not
/// everything weak.
const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "password1",
    "password12",
    "password123",
    "password!",
    "passw0rd",
    "p@ssw0rd",
    "p@ssword",
    "12345678",
    "123456789",
    "1234567890",
    "0123456789",
    "87654321",
    "11111111",
    "00000000",
    "12341234",
    "11223344",
    "123123123",
    "qwertyui",
    "qwertyuiop",
    "qwerty123",
    "qwerty12",
    "1q2w3e4r",
    "1qaz2wsx",
    "zaq12wsx",
    "asdfghjk",
    "asdfasdf",
    "abcd1234",
    "abc12345",
    "abcdefgh",
    "iloveyou",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "welcome1",
    "welcome123",
    "letmein1",
    "trustno1",
    "superman",
    "starwars",
    "whatever",
    "computer",
    "internet",
    "michelle",
    "jennifer",
    "changeme",
    "admin123",
    "administrator",
    "qazwsxedc",
    "q1w2e3r4",
    "q1w2e3r4t5",
    "monkey123",
    "dragon123",
    "master123",
    "freedom1",
    "1q2w3e4r5t",
    "aa123456",
    "access14",
];

/// The body of register and login.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Compared case-insensitively and in any Unicode form (stored in NFC); surrounding
    /// white space is ignored.
    #[schema(example = "ada@example.com", schema_with = super::schema::email)]
    pub email: String,
    /// Register also refuses the most common passwords (`password`, `12345678`...) and
    /// the email or its local part.
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
    /// Register's rules for a new password, beyond [`Credentials::check`]'s: not one of
    /// the passwords every guesser tries first, nor the email or its local part. Login does
    /// not apply them: an account made before them must still be able to log in.
    pub fn check_new_password(&self, errors: &mut Vec<FieldError>) {
        let password = self.password.to_lowercase();
        let email = self.normalized_email();
        let local = email
            .split_once('@')
            .map_or(email.as_str(), |(local, _)| local);
        if COMMON_PASSWORDS.contains(&password.as_str()) {
            errors.push(FieldError::new(
                "$.password",
                "is one of the most common passwords: choose another",
            ));
        } else if password == email || password == local {
            errors.push(FieldError::new("$.password", "must not be the email"));
        }
    }

    /// Emails compare case-insensitively and whatever the Unicode form they are sent in
    /// (`é` as one character, or as `e` and a combining accent): stored and looked up
    /// lower-cased, in NFC.
    pub fn normalized_email(&self) -> String {
        self.email.trim().to_lowercase().nfc().collect()
    }

    /// The email as accounts made before NFC were stored: lower-cased only. Login falls
    /// back to it, so that those accounts still log in.
    pub fn email_as_stored_before_nfc(&self) -> String {
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
