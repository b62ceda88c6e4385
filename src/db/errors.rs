//! What a failed query means: worth a retry (a 503), or a configuration to fix.

use crate::error::Permanent;

/// Whether a failed query may succeed if simply tried again, on this replica or another:
/// the database is restarting or failing over, the pool or the server is full, the
/// request's deadline cancelled the statement, or PostgreSQL chose this transaction as a
/// deadlock or serialization victim. Clients get a 503 with `Retry-After` for these, never
/// a 500, which is reserved for bugs.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => true,
        // A connection cut while it negotiates TLS: sqlx reads the missing answer to its
        // SSLRequest as a zero byte and calls it a protocol error (found by the TLS drill).
        sqlx::Error::Protocol(message) => {
            message.starts_with("unexpected response from SSLRequest")
        }
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 25006 read-only transaction (a standby: the
            // primary moved); 40001 serialization failure, 40P01 deadlock;
            // 53300 too many connections; 57014 statement timeout (our deadline);
            // 57P01..57P03 admin/crash shutdown, cannot connect now (failover, restart).
            code.starts_with("08")
                || matches!(
                    code.as_ref(),
                    "25006" | "40001" | "40P01" | "53300" | "57014" | "57P01" | "57P02" | "57P03"
                )
        }),
        _ => false,
    }
}

/// Whether a connection error needs the configuration or the server changed before a
/// retry can succeed, and what to check. `None`: transient, or not a connection error.
pub fn permanent(error: &sqlx::Error) -> Option<Permanent> {
    const CA: &str = "PostgreSQL's TLS certificate does not verify: check the CA (sslrootcert or POSTGRES_SSLROOTCERT) and, with verify-full, the host name";
    match error {
        // Only ever raised when TLS is required and the server answers that it has none.
        sqlx::Error::Tls(e) if e.to_string().contains("does not support TLS") => Some(Permanent {
            kind: "tls_unavailable",
            hint: "PostgreSQL refused TLS, which sslmode requires: enable ssl on the server, or lower sslmode",
        }),
        sqlx::Error::Tls(_) => Some(Permanent::tls(CA)),
        sqlx::Error::Io(e) if crate::error::is_tls_failure(e) => Some(Permanent::tls(CA)),
        sqlx::Error::Configuration(_) => Some(Permanent {
            kind: "configuration",
            hint: "the PostgreSQL connection settings are unusable",
        }),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01") => Some(Permanent {
                kind: "authentication",
                hint: "PostgreSQL refused the password",
            }),
            // pg_hba.conf has no line for this host, user, database and encryption.
            Some("28000") => Some(Permanent {
                kind: "access_denied",
                hint: "PostgreSQL refused the connection (pg_hba.conf): check the user, and whether the server requires TLS (sslmode)",
            }),
            Some("3D000") => Some(Permanent {
                kind: "unknown_database",
                hint: "the PostgreSQL database does not exist",
            }),
            _ => None,
        },
        _ => None,
    }
}

/// The error, prefixed with what it means when it is permanent.
pub fn describe(error: &sqlx::Error) -> String {
    match permanent(error) {
        Some(p) => p.describe(error),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_cut_during_tls_negotiation_is_transient() {
        let cut = sqlx::Error::Protocol(
            "unexpected response from SSLRequest: 0x00 (sqlx_postgres::connection::tls:95)".into(),
        );
        assert!(is_transient(&cut));
        assert!(permanent(&cut).is_none());
        assert!(!is_transient(&sqlx::Error::Protocol(
            "unknown message type".into()
        )));
    }
}
