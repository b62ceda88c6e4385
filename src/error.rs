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

/// A connection error that retrying will not fix: the configuration or the server must
/// change first (a certificate that does not verify, TLS refused, a wrong password, an
/// unknown database). Logged at ERROR, counted in `dependency_permanent_errors_total`, and
/// named in the probes' reasons; transient errors keep their quiet backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permanent {
    /// The metric's `kind` label: one of [`Permanent::KINDS`].
    pub kind: &'static str,
    /// What is wrong, and what to check, in the operator's words.
    pub hint: &'static str,
}

impl Permanent {
    pub const KINDS: [&'static str; 6] = [
        "tls",
        "tls_unavailable",
        "access_denied",
        "authentication",
        "unknown_database",
        "configuration",
    ];

    /// The certificate did not verify, or the TLS handshake was refused: `hint` says where
    /// the CA is configured.
    pub const fn tls(hint: &'static str) -> Self {
        Self { kind: "tls", hint }
    }

    /// `error` prefixed with what it means: the one line shown in reasons and logs.
    pub fn describe(&self, error: &dyn std::fmt::Display) -> String {
        format!("{} ({error})", self.hint)
    }
}

/// Whether rustls produced `error` or one of its causes, even wrapped in an I/O error as
/// the TLS streams do: a certificate that does not verify, an alert from the server.
pub fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<rustls::Error>() {
            return true;
        }
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<rustls::Error>());
        if inner {
            return true;
        }
        current = e.source();
    }
    false
}
