//! PostgreSQL's settings: the URL and its hosts, TLS, the pool and the timeouts.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::pg_hosts::{self, SessionAttrs};
use super::source::{
    certificates_pem, millis, parse, parse_or, private_key_pem, set, string_or, Source,
};
use super::ConfigError;

/// PostgreSQL's `statement_timeout` runs this much past the request deadline: the two
/// timers would otherwise race, and a query PostgreSQL cancelled first answers as a
/// cancelled query instead of the deadline. The service answers at its deadline, and
/// PostgreSQL ends the abandoned query just after.
pub const STATEMENT_TIMEOUT_MARGIN: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// The first host's options (the only one's, usually).
    pub connect: PgConnectOptions,
    /// Every host, in the order given, each with the same user, database and TLS settings.
    /// With several, the service follows whichever accepts `target_session_attrs`.
    pub hosts: Vec<PgConnectOptions>,
    pub target_session_attrs: SessionAttrs,
    pub pool_min: u32,
    pub pool_max: u32,
    /// How long a query waits for a pooled connection before a 503.
    pub acquire_timeout: Duration,
    /// PostgreSQL's `statement_timeout` on request connections: the request deadline plus
    /// [`STATEMENT_TIMEOUT_MARGIN`].
    pub statement_timeout: Duration,
    /// `REPLICAS_MAX`: the most replicas the deployment may run (the HPA's maximum), for
    /// the pool budget check at start; `None` when the deployment does not say.
    pub replicas_max: Option<u32>,
    /// Which of [`LIBPQ_VARIABLES`] the environment sets: named in a warning at start.
    pub libpq_variables_set: Vec<&'static str>,
}

/// libpq's variables, which sqlx reads too, beneath `DATABASE_URL` and the `POSTGRES_*`
/// settings: whatever those leave unset comes from these (an inherited `PGSSLMODE` changes
/// TLS). Listed in the README; the ones set are named at start, so none acts unseen.
pub const LIBPQ_VARIABLES: [&str; 11] = [
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGAPPNAME",
    "PGOPTIONS",
];

/// libpq's TLS parameters, from `DATABASE_URL`'s query or from the split variables.
pub(super) struct PgTls {
    mode: Option<String>,
    root_cert: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    /// The variables that set the mode and the CA, named in errors.
    mode_var: &'static str,
    root_cert_var: &'static str,
}

/// The TLS parameters of a PostgreSQL URL, under libpq's names and sqlx's aliases; the
/// last occurrence wins, as in sqlx's own parsing.
pub(super) fn url_tls(url: &str) -> Result<PgTls, ConfigError> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ConfigError::new("DATABASE_URL", format!("unreadable query string: {e}")))?;
    let last = |names: &[&str]| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.clone())
    };
    Ok(PgTls {
        mode: last(&["sslmode", "ssl-mode"]),
        root_cert: last(&["sslrootcert", "ssl-root-cert", "ssl-ca"]),
        client_cert: last(&["sslcert", "ssl-cert"]),
        client_key: last(&["sslkey", "ssl-key"]),
        mode_var: "DATABASE_URL",
        root_cert_var: "DATABASE_URL",
    })
}

pub(super) fn ssl_mode(value: &str, var: &'static str) -> Result<PgSslMode, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "disable" => Ok(PgSslMode::Disable),
        "prefer" => Ok(PgSslMode::Prefer),
        "require" => Ok(PgSslMode::Require),
        "verify-ca" => Ok(PgSslMode::VerifyCa),
        "verify-full" => Ok(PgSslMode::VerifyFull),
        // sqlx would connect without TLS and never try it: refused rather than surprising.
        "allow" => Err(ConfigError::new(var, "sslmode allow is not supported; use prefer")),
        other => Err(ConfigError::new(
            var,
            format!("unknown sslmode {other:?}; expected disable, prefer, require, verify-ca or verify-full"),
        )),
    }
}

/// Applies libpq's TLS rules to `opts`. A CA makes `require` verify the chain, as libpq
/// does; a CA with a mode that never verifies is refused, since the operator surely meant
/// it to be used. Every file is read and checked now, not at the first connection.
pub(super) fn postgres_tls(
    opts: PgConnectOptions,
    tls: &PgTls,
) -> Result<PgConnectOptions, ConfigError> {
    let mut mode = match &tls.mode {
        Some(value) => ssl_mode(value, tls.mode_var)?,
        None => opts.get_ssl_mode(),
    };
    let mut opts = opts;
    if let Some(path) = &tls.root_cert {
        if !matches!(
            mode,
            PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
        ) {
            return Err(ConfigError::new(
                tls.root_cert_var,
                "a CA (sslrootcert) needs sslmode require, verify-ca or verify-full; with this sslmode it would never be checked",
            ));
        }
        opts = opts.ssl_root_cert_from_pem(certificates_pem(tls.root_cert_var, path)?);
        if matches!(mode, PgSslMode::Require) {
            mode = PgSslMode::VerifyCa;
        }
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            opts = opts
                .ssl_client_cert_from_pem(certificates_pem(tls.mode_var, cert)?)
                .ssl_client_key_from_pem(private_key_pem(tls.mode_var, key)?);
        }
        (None, None) => {}
        _ => {
            return Err(ConfigError::new(
                tls.mode_var,
                "sslcert and sslkey must be given together",
            ))
        }
    }
    Ok(opts.ssl_mode(mode))
}

pub(super) fn database(src: &dyn Source) -> Result<DatabaseSettings, ConfigError> {
    let (hosts, asked) = match src.get("DATABASE_URL").filter(|v| !v.trim().is_empty()) {
        Some(url) => {
            let url = url.trim();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::new(
                    "DATABASE_URL",
                    "must start with postgres:// or postgresql://",
                ));
            }
            for var in ["POSTGRES_SSLMODE", "POSTGRES_SSLROOTCERT"] {
                if set(src, var).is_some() {
                    return Err(ConfigError::new(
                        var,
                        "applies only without DATABASE_URL; put sslmode or sslrootcert in DATABASE_URL's query instead",
                    ));
                }
            }
            let tls = url_tls(url)?;
            let (urls, asked) = pg_hosts::split_url(url)?;
            let hosts = urls
                .iter()
                .map(|url| {
                    let opts = PgConnectOptions::from_str(url).map_err(|e| {
                        ConfigError::new("DATABASE_URL", format!("not a PostgreSQL URL: {e}"))
                    })?;
                    postgres_tls(opts, &tls)
                })
                .collect::<Result<Vec<_>, _>>()?;
            (hosts, asked)
        }
        None => {
            let port = parse_or(src, "POSTGRES_PORT", 5432)?;
            let tls = PgTls {
                mode: set(src, "POSTGRES_SSLMODE"),
                root_cert: set(src, "POSTGRES_SSLROOTCERT"),
                client_cert: None,
                client_key: None,
                mode_var: "POSTGRES_SSLMODE",
                root_cert_var: "POSTGRES_SSLROOTCERT",
            };
            let list = string_or(src, "POSTGRES_HOST", "localhost");
            let hosts = pg_hosts::split_hosts(&list, port)?
                .into_iter()
                .map(|(host, port)| {
                    let mut opts = PgConnectOptions::new_without_pgpass()
                        .host(&host)
                        .port(port)
                        .database(&string_or(src, "POSTGRES_DB", "cartae"))
                        .username(&string_or(src, "POSTGRES_USER", "postgres"));
                    if let Some(password) = src.get("POSTGRES_PASSWORD").filter(|p| !p.is_empty()) {
                        opts = opts.password(&password);
                    }
                    postgres_tls(opts, &tls)
                })
                .collect::<Result<Vec<_>, _>>()?;
            (hosts, None)
        }
    };
    let hosts: Vec<PgConnectOptions> = hosts
        .into_iter()
        .map(|opts| opts.application_name("cartae-database-api"))
        .collect();
    let target_session_attrs = SessionAttrs::or_default(asked, hosts.len());
    let Some(connect) = hosts.first().cloned() else {
        return Err(ConfigError::new("DATABASE_URL", "no host"));
    };
    let pool_min: u32 = parse_or(src, "POSTGRES_POOL_MIN", 2)?;
    let pool_max: u32 = parse_or(src, "POSTGRES_POOL_MAX", 10)?;
    if pool_max == 0 {
        return Err(ConfigError::new("POSTGRES_POOL_MAX", "must be at least 1"));
    }
    if pool_min > pool_max {
        return Err(ConfigError::new(
            "POSTGRES_POOL_MIN",
            format!("must not exceed POSTGRES_POOL_MAX ({pool_min} > {pool_max})"),
        ));
    }
    let replicas_max: Option<u32> = parse(src, "REPLICAS_MAX")?;
    if replicas_max == Some(0) {
        return Err(ConfigError::new("REPLICAS_MAX", "must be at least 1"));
    }
    Ok(DatabaseSettings {
        connect,
        hosts,
        target_session_attrs,
        pool_min,
        pool_max,
        acquire_timeout: millis(src, "POSTGRES_ACQUIRE_TIMEOUT_MS", 1_000, 1)?,
        statement_timeout: Duration::ZERO,
        replicas_max,
        libpq_variables_set: LIBPQ_VARIABLES
            .into_iter()
            .filter(|var| set(src, var).is_some())
            .collect(),
    })
}
