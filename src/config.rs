//! Typed, validated settings read from the environment (and an optional `.env` file).
//!
//! Every variable is parsed once at start. A bad value becomes a [`ConfigError`] that names
//! the variable and the problem, so `main` can print one line and exit non-zero instead of
//! failing later, half-started, behind a load balancer.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

mod pg_hosts;
mod secrets;
mod sentinel;

pub use sentinel::SentinelSettings;

pub use pg_hosts::SessionAttrs;

/// A configuration problem: which variable, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl ConfigError {
    fn new(var: &'static str, problem: impl Into<String>) -> Self {
        Self {
            var,
            problem: problem.into(),
        }
    }
}

/// A string that never shows up in `Debug` output or logs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// A pair of thresholds: above `degraded` a check is degraded, above `critical` it fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub degraded: f64,
    pub critical: f64,
}

/// The dependencies that may gate readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyRequires {
    pub database: bool,
    pub redis: bool,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub host: IpAddr,
    pub port: u16,
    pub metrics_port: u16,
    pub instance_id: String,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub log_level: String,
    pub log_format: LogFormat,
    pub health: HealthSettings,
    pub lifecycle: LifecycleSettings,
    pub migrations: MigrationSettings,
    pub auth: AuthSettings,
    pub cache: CacheSettings,
    /// How long an `Idempotency-Key` replays its first response; older keys are purged.
    pub idempotency_key_ttl: Duration,
    pub overload: OverloadSettings,
}

/// Admission control of the data API (see `crate::bulkhead`).
#[derive(Debug, Clone)]
pub struct OverloadSettings {
    /// Data-API requests served at once.
    pub max_in_flight: usize,
    /// Requests waiting for a slot; beyond, an immediate 503.
    pub max_queued: usize,
    /// The longest a request waits for a slot before a 503.
    pub queue_timeout: Duration,
    /// Every data-API request's deadline, also PostgreSQL's `statement_timeout`.
    pub request_timeout: Duration,
    /// How long a data-API request's body may take to arrive, before it is admitted.
    pub body_timeout: Duration,
    /// The bodies being received, all together, before they are admitted.
    pub receiving_max_bytes: usize,
    /// How long a connection may take to send a request's head, counted from when it is
    /// ready for one: when it opens, and on a kept-alive connection when the previous
    /// response is sent. hyper has one timer for both, so this is also the idle timeout.
    pub header_read_timeout: Duration,
    /// Connections of the API port open at once; beyond, a new one is closed at once.
    pub max_connections: usize,
    /// One user's writes in flight at once; more wait (`crate::user_writes`).
    pub max_writes_per_user: usize,
}

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
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Full connection URL; it may embed the password, hence a secret.
    pub url: Secret,
    /// The CA and client certificate of a `rediss://` URL, read and checked at start.
    pub tls: RedisTls,
    /// Upper bound for any single Redis call made on a request path.
    pub timeout: Duration,
    /// Sentinels that name the master; then the URL's host and port are not used.
    pub sentinel: Option<SentinelSettings>,
}

/// PEM contents for Redis over TLS. Without a CA, the platform's roots verify the server.
#[derive(Clone, Default)]
pub struct RedisTls {
    pub ca_cert: Option<Vec<u8>>,
    /// A client certificate and its key, for servers that ask for one.
    pub client: Option<(Vec<u8>, Secret)>,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca_cert", &self.ca_cert.is_some())
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

impl RedisTls {
    /// What the redis crate needs beyond the URL; `None` when the defaults do.
    pub fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.ca_cert.is_none() && self.client.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.expose().as_bytes().to_vec(),
                }),
            root_cert: self.ca_cert.clone(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub interval: Duration,
    pub check_timeout: Duration,
    pub memory: Thresholds,
    pub cpu: Thresholds,
    /// Milliseconds.
    pub database_latency: Thresholds,
    /// Milliseconds.
    pub redis_latency: Thresholds,
    pub ready_requires: ReadyRequires,
    /// Consecutive rounds a dependency must fail (error or timeout) before its check is
    /// reported failed. Fewer failures only degrade it.
    pub failure_threshold: u32,
}

#[derive(Debug, Clone)]
pub struct LifecycleSettings {
    pub drain_delay: Duration,
    pub shutdown_timeout: Duration,
}

/// How `serve` treats the schema (see docs/deployment.md, "Releases").
#[derive(Debug, Clone)]
pub struct MigrationSettings {
    /// Apply the embedded migrations before becoming ready (a one-command start). Off
    /// when the release runs `migrate` as its own step: the replica then only waits until
    /// its migrations have been applied.
    pub on_start: bool,
    /// The longest a migration waits for another session's migration lock before the
    /// process gives up with a non-zero exit.
    pub lock_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Signs new tokens and cursors, and verifies them.
    pub jwt_secret: Secret,
    /// During a key rotation, the secret being replaced: it still verifies what it signed
    /// (tokens, cursors) and signs nothing.
    pub jwt_secret_previous: Option<Secret>,
    /// Peers whose `X-Forwarded-For` is believed (the balancers): the client's address is
    /// what they say, for failed-login throttling. Anyone else's header is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub jwt_expires_in: Duration,
    pub password: PasswordSettings,
}

#[derive(Debug, Clone)]
pub struct PasswordSettings {
    /// Argon2id cost. The defaults are OWASP's (19 MiB, 2 passes); lowering them is for
    /// tests and small machines, never for production.
    pub memory_kib: u32,
    pub iterations: u32,
    /// Hashes computed at once: peak hashing memory is `concurrency × memory_kib`.
    pub concurrency: usize,
    /// Hashes waiting for a slot; beyond, an immediate 503.
    pub queue: usize,
    /// The longest a hash waits for a slot (the request deadline).
    pub queue_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Prefix of every Redis key, so several deployments (or tests) can share one Redis.
    pub key_prefix: String,
    pub item_ttl: Duration,
    pub query_ttl: Duration,
}

/// Where settings come from. The process environment in production, a map in tests.
pub trait Source {
    fn get(&self, var: &str) -> Option<String>;
}

/// The process environment.
pub struct Environment;

impl Source for Environment {
    fn get(&self, var: &str) -> Option<String> {
        std::env::var(var).ok()
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, var: &str) -> Option<String> {
        HashMap::get(self, var).cloned()
    }
}

/// Reads one variable: `None` when unset or blank, an error when set but unparsable.
fn parse<T: FromStr>(src: &dyn Source, var: &'static str) -> Result<Option<T>, ConfigError>
where
    T::Err: fmt::Display,
{
    match src.get(var).map(|v| v.trim().to_owned()) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .parse::<T>()
            .map(Some)
            .map_err(|e| ConfigError::new(var, format!("cannot parse {v:?}: {e}"))),
    }
}

fn parse_or<T: FromStr>(src: &dyn Source, var: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    Ok(parse(src, var)?.unwrap_or(default))
}

fn string_or(src: &dyn Source, var: &str, default: &str) -> String {
    src.get(var)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn millis(
    src: &dyn Source,
    var: &'static str,
    default: u64,
    min: u64,
) -> Result<Duration, ConfigError> {
    let ms: u64 = parse_or(src, var, default)?;
    if ms < min {
        return Err(ConfigError::new(
            var,
            format!("must be at least {min} ms, got {ms}"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

fn port(src: &dyn Source, var: &'static str, default: u16) -> Result<u16, ConfigError> {
    // Port 0 asks the OS for a free port: tests rely on it.
    parse_or(src, var, default)
}

fn thresholds(
    src: &dyn Source,
    degraded_var: &'static str,
    critical_var: &'static str,
    defaults: (f64, f64),
) -> Result<Thresholds, ConfigError> {
    let degraded: f64 = parse_or(src, degraded_var, defaults.0)?;
    let critical: f64 = parse_or(src, critical_var, defaults.1)?;
    for (var, value) in [(degraded_var, degraded), (critical_var, critical)] {
        if !value.is_finite() || value <= 0.0 {
            return Err(ConfigError::new(
                var,
                format!("must be a positive number, got {value}"),
            ));
        }
    }
    if degraded > critical {
        return Err(ConfigError::new(
            degraded_var,
            format!("must not exceed {critical_var} ({degraded} > {critical})"),
        ));
    }
    Ok(Thresholds { degraded, critical })
}

/// Secrets that may come from a file instead, `{VAR}_FILE` (Docker and Kubernetes secrets):
/// the environment, which whoever may inspect the container reads (a balancer's Docker
/// provider included), then holds only a path.
const FILE_BACKED: &[(&str, &str)] = &[
    ("JWT_SECRET", "JWT_SECRET_FILE"),
    ("JWT_SECRET_PREVIOUS", "JWT_SECRET_PREVIOUS_FILE"),
    ("DATABASE_URL", "DATABASE_URL_FILE"),
    ("POSTGRES_PASSWORD", "POSTGRES_PASSWORD_FILE"),
    ("REDIS_URL", "REDIS_URL_FILE"),
    ("REDIS_PASSWORD", "REDIS_PASSWORD_FILE"),
    ("REDIS_SENTINEL_PASSWORD", "REDIS_SENTINEL_PASSWORD_FILE"),
];

/// A source with each `{VAR}_FILE` of [`FILE_BACKED`] read into `VAR`.
struct WithSecretFiles<'a> {
    src: &'a dyn Source,
    read: HashMap<&'static str, String>,
}

impl Source for WithSecretFiles<'_> {
    fn get(&self, var: &str) -> Option<String> {
        self.read.get(var).cloned().or_else(|| self.src.get(var))
    }
}

impl<'a> WithSecretFiles<'a> {
    fn read(src: &'a dyn Source) -> Result<Self, ConfigError> {
        let mut read = HashMap::new();
        for &(var, file_var) in FILE_BACKED {
            let Some(path) = set(src, file_var) else {
                continue;
            };
            if set(src, var).is_some() {
                return Err(ConfigError::new(
                    file_var,
                    format!("set {var} or {file_var}, not both"),
                ));
            }
            // The error names the path, never the content.
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::new(file_var, format!("cannot read {path}: {e}")))?;
            // `echo` and editors end the file with a newline that is no part of the secret.
            let value = text.strip_suffix('\n').unwrap_or(&text);
            let value = value.strip_suffix('\r').unwrap_or(value);
            read.insert(var, value.to_owned());
        }
        Ok(Self { src, read })
    }
}

/// A variable's value, trimmed; `None` when unset or blank.
fn set(src: &dyn Source, var: &str) -> Option<String> {
    src.get(var)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// libpq's TLS parameters, from `DATABASE_URL`'s query or from the split variables.
struct PgTls {
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
fn url_tls(url: &str) -> Result<PgTls, ConfigError> {
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

fn ssl_mode(value: &str, var: &'static str) -> Result<PgSslMode, ConfigError> {
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
fn postgres_tls(opts: PgConnectOptions, tls: &PgTls) -> Result<PgConnectOptions, ConfigError> {
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

fn read_file(var: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::new(var, format!("cannot read {path}: {e}")))
}

/// A PEM file holding at least one certificate.
fn certificates_pem(var: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    let pem = read_file(var, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(var, format!("{path}: not a PEM certificate: {e}")))?;
    if certificates.is_empty() {
        return Err(ConfigError::new(
            var,
            format!("{path}: no PEM certificate in it"),
        ));
    }
    Ok(pem)
}

/// A PEM file holding a private key.
fn private_key_pem(var: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    let pem = read_file(var, path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| ConfigError::new(var, format!("{path}: no PEM private key: {e}")))?;
    Ok(pem)
}

fn database(src: &dyn Source) -> Result<DatabaseSettings, ConfigError> {
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
    })
}

/// Reads a count that must be at least `min`.
fn at_least<T>(src: &dyn Source, var: &'static str, default: T, min: T) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + fmt::Display + Copy,
    T::Err: fmt::Display,
{
    let value = parse_or(src, var, default)?;
    if value < min {
        return Err(ConfigError::new(
            var,
            format!("must be at least {min}, got {value}"),
        ));
    }
    Ok(value)
}

/// CPUs this process may use: the cgroup quota when there is one (Rust reads it).
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Defaults that are safe without tuning. A replica serves at most `POSTGRES_POOL_MAX`
/// queries at once, so admitting twice that keeps every connection busy with the next
/// query ready; CPU-bound cache hits add a few per CPU. An equal number may queue for
/// 200 ms, enough to absorb a burst, short enough that a refused client retries
/// elsewhere well within its own timeout.
fn overload(
    src: &dyn Source,
    database: &DatabaseSettings,
) -> Result<OverloadSettings, ConfigError> {
    let default_in_flight = 2 * database.pool_max as usize + 8 * cpus();
    let max_in_flight = at_least(src, "MAX_IN_FLIGHT_REQUESTS", default_in_flight, 1)?;
    Ok(OverloadSettings {
        max_in_flight,
        max_queued: parse_or(src, "MAX_QUEUED_REQUESTS", max_in_flight)?,
        queue_timeout: millis(src, "QUEUE_TIMEOUT_MS", 200, 0)?,
        request_timeout: millis(src, "REQUEST_TIMEOUT_MS", 5_000, 10)?,
        body_timeout: millis(src, "BODY_TIMEOUT_MS", 5_000, 10)?,
        // At least two whole bodies: below, one large body would refuse every other.
        receiving_max_bytes: at_least(
            src,
            "RECEIVING_BODIES_MAX_BYTES",
            64 * 1024 * 1024,
            2 * 1024 * 1024,
        )?,
        header_read_timeout: millis(src, "HEADER_READ_TIMEOUT_MS", 30_000, 10)?,
        max_connections: at_least(src, "MAX_CONNECTIONS", default_max_connections(), 1)?,
        // Half the pool: one user's writes leave the other half to everyone else.
        max_writes_per_user: at_least(
            src,
            "MAX_WRITES_PER_USER",
            (database.pool_max as usize / 2).max(1),
            1,
        )?,
    })
}

/// Descriptors kept for everything but the API port's connections: the pools, the
/// metrics port, the probes' own clients, log and certificate files.
const RESERVED_DESCRIPTORS: usize = 128;

/// The most connections allowed by default: each costs about 11 KiB silent and 23 KiB with
/// half a head in (BENCHMARKS.md), so 4,096 of them hold under 100 MiB, while a container's
/// open-file limit (often 1,048,576) would bound nothing.
const MAX_CONNECTIONS_DEFAULT: usize = 4096;

/// [`MAX_CONNECTIONS_DEFAULT`], or the open-file limit less [`RESERVED_DESCRIPTORS`] when
/// lower: past that limit `accept` fails for everyone, probes included, while a capped
/// connection costs only its own client.
fn default_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let open_files = if read && limit.rlim_cur != libc::RLIM_INFINITY {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        65_536
    };
    open_files
        .saturating_sub(RESERVED_DESCRIPTORS)
        .clamp(16, MAX_CONNECTIONS_DEFAULT)
}

/// `REDIS_CA_CERT`, `REDIS_CLIENT_CERT` and `REDIS_CLIENT_KEY`, read and checked.
fn redis_tls(src: &dyn Source) -> Result<RedisTls, ConfigError> {
    let ca_cert = set(src, "REDIS_CA_CERT")
        .map(|path| certificates_pem("REDIS_CA_CERT", &path))
        .transpose()?;
    let client = match (set(src, "REDIS_CLIENT_CERT"), set(src, "REDIS_CLIENT_KEY")) {
        (Some(cert), Some(key)) => {
            let key = private_key_pem("REDIS_CLIENT_KEY", &key)?;
            let key = String::from_utf8(key)
                .map_err(|_| ConfigError::new("REDIS_CLIENT_KEY", "not a PEM text file"))?;
            Some((
                certificates_pem("REDIS_CLIENT_CERT", &cert)?,
                Secret::new(key),
            ))
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                "REDIS_CLIENT_KEY",
                "must be set with REDIS_CLIENT_CERT",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "REDIS_CLIENT_CERT",
                "must be set with REDIS_CLIENT_KEY",
            ))
        }
    };
    Ok(RedisTls { ca_cert, client })
}

/// Refuses TLS settings that the URL would silently ignore, and what rustls cannot do.
fn check_redis_tls(url: &str, tls: &RedisTls, src: &dyn Source) -> Result<(), ConfigError> {
    let parsed = redis::parse_redis_url(url);
    let is_tls = parsed.as_ref().is_some_and(|u| u.scheme() == "rediss");
    if !is_tls {
        let given = ["REDIS_CA_CERT", "REDIS_CLIENT_CERT", "REDIS_CLIENT_KEY"]
            .into_iter()
            .find(|var| set(src, var).is_some());
        if let Some(var) = given {
            return Err(ConfigError::new(
                var,
                "needs TLS: set REDIS_URL to a rediss:// URL",
            ));
        }
        return Ok(());
    }
    if parsed.as_ref().and_then(|u| u.fragment()) == Some("insecure") {
        return Err(ConfigError::new(
            "REDIS_URL",
            "#insecure (no certificate check) is not supported; give the server's CA in REDIS_CA_CERT",
        ));
    }
    let client = match tls.certificates() {
        Some(certificates) => redis::Client::build_with_tls(url, certificates),
        None => redis::Client::open(url),
    };
    client
        .map(|_| ())
        .map_err(|e| ConfigError::new("REDIS_URL", format!("unusable with TLS: {e}")))
}

fn redis(src: &dyn Source) -> Result<RedisSettings, ConfigError> {
    let url = match src.get("REDIS_URL").filter(|v| !v.trim().is_empty()) {
        Some(url) => {
            let url = url.trim().to_owned();
            redis::parse_redis_url(&url)
                .filter(|u| matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix"))
                .ok_or_else(|| ConfigError::new("REDIS_URL", "not a redis:// URL"))?;
            url
        }
        None => {
            let host = string_or(src, "REDIS_HOST", "localhost");
            let port: u16 = parse_or(src, "REDIS_PORT", 6379)?;
            let db: u8 = parse_or(src, "REDIS_DB", 0)?;
            if db > 15 {
                return Err(ConfigError::new(
                    "REDIS_DB",
                    format!("must be 0 to 15, got {db}"),
                ));
            }
            match src.get("REDIS_PASSWORD").filter(|p| !p.is_empty()) {
                Some(pw) => format!("redis://:{}@{host}:{port}/{db}", percent_encode(&pw)),
                None => format!("redis://{host}:{port}/{db}"),
            }
        }
    };
    let tls = redis_tls(src)?;
    check_redis_tls(&url, &tls, src)?;
    let sentinel = sentinel::sentinels(src, &url)?;
    Ok(RedisSettings {
        url: Secret::new(url),
        tls,
        timeout: millis(src, "REDIS_TIMEOUT_MS", 250, 1)?,
        sentinel,
    })
}

/// Passwords may hold any byte; the URL form needs them escaped.
fn percent_encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn ready_requires(src: &dyn Source) -> Result<ReadyRequires, ConfigError> {
    let raw = string_or(src, "READY_REQUIRES", "database");
    let mut requires = ReadyRequires {
        database: false,
        redis: false,
    };
    for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match name {
            "database" => requires.database = true,
            "redis" => requires.redis = true,
            "none" => {}
            other => {
                return Err(ConfigError::new(
                    "READY_REQUIRES",
                    format!(
                    "unknown dependency {other:?}; expected a list of database, redis (or none)"
                ),
                ))
            }
        }
    }
    Ok(requires)
}

fn default_instance_id() -> String {
    sysinfo::System::host_name().unwrap_or_else(|| "cartae-api".to_owned())
}

impl Settings {
    /// Reads and validates every setting from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Environment)
    }

    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigError> {
        let with_files = WithSecretFiles::read(src)?;
        let src: &dyn Source = &with_files;
        let host = parse_or(src, "HOST", IpAddr::from([0, 0, 0, 0]))?;
        let port = port(src, "PORT", 3001)?;
        let metrics_port = port_checked_apart(src, port)?;
        let log_format = match string_or(src, "LOG_FORMAT", "json")
            .to_ascii_lowercase()
            .as_str()
        {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => {
                return Err(ConfigError::new(
                    "LOG_FORMAT",
                    format!("expected json or pretty, got {other:?}"),
                ))
            }
        };
        let log_level = string_or(src, "LOG_LEVEL", "info");
        tracing_subscriber::EnvFilter::try_new(&log_level)
            .map_err(|e| ConfigError::new("LOG_LEVEL", format!("not a level or filter: {e}")))?;
        let instance_id = string_or(src, "INSTANCE_ID", &default_instance_id());

        let health = HealthSettings {
            interval: millis(src, "HEALTH_CHECK_INTERVAL_MS", 5_000, 50)?,
            check_timeout: millis(src, "HEALTH_CHECK_TIMEOUT_MS", 2_000, 10)?,
            memory: thresholds(
                src,
                "MEMORY_DEGRADED_PERCENT",
                "MEMORY_CRITICAL_PERCENT",
                (85.0, 95.0),
            )?,
            cpu: thresholds(
                src,
                "CPU_DEGRADED_PERCENT",
                "CPU_CRITICAL_PERCENT",
                (80.0, 95.0),
            )?,
            database_latency: thresholds(
                src,
                "DB_LATENCY_DEGRADED_MS",
                "DB_LATENCY_CRITICAL_MS",
                (100.0, 500.0),
            )?,
            redis_latency: thresholds(
                src,
                "REDIS_LATENCY_DEGRADED_MS",
                "REDIS_LATENCY_CRITICAL_MS",
                (50.0, 200.0),
            )?,
            ready_requires: ready_requires(src)?,
            failure_threshold: at_least(src, "HEALTH_CHECK_FAILURE_THRESHOLD", 2, 1)?,
        };
        if health.check_timeout > health.interval {
            return Err(ConfigError::new(
                "HEALTH_CHECK_TIMEOUT_MS",
                "must not exceed HEALTH_CHECK_INTERVAL_MS, or checks would pile up",
            ));
        }

        let jwt_secret = signing_secret(src, "JWT_SECRET")?.unwrap_or_default();
        let jwt_secret_previous = signing_secret(src, "JWT_SECRET_PREVIOUS")?;
        if jwt_secret_previous.as_deref() == Some(jwt_secret.as_str()) {
            return Err(ConfigError::new(
                "JWT_SECRET_PREVIOUS",
                "equals JWT_SECRET: set it only while rotating, to the secret being replaced",
            ));
        }
        let jwt_expires_in: u64 = parse_or(src, "JWT_EXPIRES_IN", 3600)?;
        if jwt_expires_in == 0 {
            return Err(ConfigError::new(
                "JWT_EXPIRES_IN",
                "must be a positive number of seconds",
            ));
        }

        let password_hash_memory_kib: u32 = parse_or(src, "PASSWORD_HASH_MEMORY_KIB", 19_456)?;
        if !(64..=4 * 1024 * 1024).contains(&password_hash_memory_kib) {
            return Err(ConfigError::new(
                "PASSWORD_HASH_MEMORY_KIB",
                format!("must be 64 to 4194304 KiB, got {password_hash_memory_kib}"),
            ));
        }
        let password_hash_iterations: u32 = parse_or(src, "PASSWORD_HASH_ITERATIONS", 2)?;
        if !(1..=64).contains(&password_hash_iterations) {
            return Err(ConfigError::new(
                "PASSWORD_HASH_ITERATIONS",
                format!("must be 1 to 64, got {password_hash_iterations}"),
            ));
        }

        let database = database(src)?;
        let overload = overload(src, &database)?;
        let database = DatabaseSettings {
            statement_timeout: overload.request_timeout + STATEMENT_TIMEOUT_MARGIN,
            ..database
        };
        if database.acquire_timeout > overload.request_timeout {
            return Err(ConfigError::new(
                "POSTGRES_ACQUIRE_TIMEOUT_MS",
                "must not exceed REQUEST_TIMEOUT_MS, or requests would time out waiting",
            ));
        }
        let hash_concurrency = at_least(src, "PASSWORD_HASH_CONCURRENCY", cpus(), 1)?;
        let password = PasswordSettings {
            memory_kib: password_hash_memory_kib,
            iterations: password_hash_iterations,
            concurrency: hash_concurrency,
            queue: parse_or(src, "PASSWORD_HASH_QUEUE", 4 * hash_concurrency)?,
            queue_timeout: overload.request_timeout,
        };

        let idempotency_key_ttl_hours: u64 = parse_or(src, "IDEMPOTENCY_KEY_TTL_HOURS", 24)?;
        if idempotency_key_ttl_hours == 0 {
            return Err(ConfigError::new(
                "IDEMPOTENCY_KEY_TTL_HOURS",
                "must be at least 1 hour",
            ));
        }

        Ok(Self {
            idempotency_key_ttl: Duration::from_secs(idempotency_key_ttl_hours * 3600),
            host,
            port,
            metrics_port,
            instance_id,
            database,
            overload,
            redis: redis(src)?,
            log_level,
            log_format,
            health,
            lifecycle: LifecycleSettings {
                drain_delay: millis(src, "DRAIN_DELAY_MS", 15_000, 0)?,
                shutdown_timeout: millis(src, "SHUTDOWN_TIMEOUT_MS", 10_000, 0)?,
            },
            migrations: MigrationSettings {
                on_start: parse_or(src, "MIGRATE_ON_START", true)?,
                lock_timeout: millis(src, "MIGRATION_LOCK_TIMEOUT_MS", 120_000, 1)?,
            },
            auth: AuthSettings {
                jwt_secret: Secret::new(jwt_secret),
                jwt_secret_previous: jwt_secret_previous.map(Secret::new),
                trusted_proxies: trusted_proxies(src)?,
                jwt_expires_in: Duration::from_secs(jwt_expires_in),
                password,
            },
            cache: CacheSettings {
                key_prefix: string_or(src, "CACHE_KEY_PREFIX", "cartae:"),
                item_ttl: millis(src, "CACHE_ITEM_TTL_MS", 300_000, 1)?,
                query_ttl: millis(src, "CACHE_QUERY_TTL_MS", 30_000, 1)?,
            },
        })
    }
}

/// `TRUSTED_PROXIES`: comma-separated addresses or CIDR ranges, none by default.
fn trusted_proxies(src: &dyn Source) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let raw = src.get("TRUSTED_PROXIES").unwrap_or_default();
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    ConfigError::new(
                        "TRUSTED_PROXIES",
                        format!("{s:?} is not an address or CIDR range"),
                    )
                })
        })
        .collect()
}

/// A token-signing secret: absent (`None`, an error for `JWT_SECRET`), or strong enough.
fn signing_secret(src: &dyn Source, var: &'static str) -> Result<Option<String>, ConfigError> {
    let value = src.get(var).filter(|v| !v.is_empty());
    match (&value, var) {
        (None, "JWT_SECRET") => Err(ConfigError::new(
            var,
            "must be set (generate one with: openssl rand -base64 48)",
        )),
        (Some(secret), _) => match secrets::weakness(secret) {
            Some(why) => Err(ConfigError::new(var, why)),
            None => Ok(value),
        },
        (None, _) => Ok(None),
    }
}

fn port_checked_apart(src: &dyn Source, api_port: u16) -> Result<u16, ConfigError> {
    let metrics_port = port(src, "METRICS_PORT", 9090)?;
    if metrics_port != 0 && metrics_port == api_port {
        return Err(ConfigError::new(
            "METRICS_PORT",
            format!("must differ from PORT ({api_port})"),
        ));
    }
    Ok(metrics_port)
}

/// Reads only `PORT`, for the `healthcheck` subcommand: a probe must not fail because an
/// unrelated variable (say, a secret) is absent from the probe's environment.
pub fn api_port_from_env() -> Result<u16, ConfigError> {
    port(&Environment, "PORT", 3001)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut map: HashMap<String, String> = [("JWT_SECRET", "5Hq0Lw9Zc2Rk7Vt4Xy1Bn8Md3Fg6Js0P")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        map
    }

    fn error_var(pairs: &[(&str, &str)]) -> &'static str {
        Settings::from_source(&env(pairs)).unwrap_err().var
    }

    #[test]
    fn defaults_follow_the_seed() {
        let s = Settings::from_source(&env(&[])).unwrap();
        assert_eq!((s.port, s.metrics_port), (3001, 9090));
        assert_eq!((s.database.pool_min, s.database.pool_max), (2, 10));
        assert_eq!(
            s.health.memory,
            Thresholds {
                degraded: 85.0,
                critical: 95.0
            }
        );
        assert_eq!(
            s.health.cpu,
            Thresholds {
                degraded: 80.0,
                critical: 95.0
            }
        );
        assert_eq!(
            s.health.database_latency,
            Thresholds {
                degraded: 100.0,
                critical: 500.0
            }
        );
        assert_eq!(
            s.health.redis_latency,
            Thresholds {
                degraded: 50.0,
                critical: 200.0
            }
        );
        assert_eq!(
            s.health.ready_requires,
            ReadyRequires {
                database: true,
                redis: false
            }
        );
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn secrets_come_from_their_file_and_a_bad_file_names_its_variable() {
        let path = std::env::temp_dir().join(format!("jwt-secret-{}", std::process::id()));
        std::fs::write(&path, "rjrpPtTVobHCzGx9pCv6164rAs3kdc5E4hf_h-yWkf0\n").unwrap();
        let path = path.to_str().unwrap();
        let mut only_file = env(&[("JWT_SECRET_FILE", path)]);
        only_file.remove("JWT_SECRET");
        let s = Settings::from_source(&only_file).unwrap();
        assert_eq!(
            s.auth.jwt_secret.expose(),
            "rjrpPtTVobHCzGx9pCv6164rAs3kdc5E4hf_h-yWkf0",
            "read, without its newline"
        );
        assert_eq!(
            error_var(&[("JWT_SECRET_FILE", path)]),
            "JWT_SECRET_FILE",
            "both set"
        );
        let mut missing = env(&[("POSTGRES_PASSWORD_FILE", "/nonexistent/secret")]);
        missing.remove("POSTGRES_PASSWORD");
        assert_eq!(
            Settings::from_source(&missing).unwrap_err().var,
            "POSTGRES_PASSWORD_FILE"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert_eq!(error_var(&[("PORT", "http")]), "PORT");
        assert_eq!(error_var(&[("BODY_TIMEOUT_MS", "5")]), "BODY_TIMEOUT_MS");
        assert_eq!(
            error_var(&[("HEADER_READ_TIMEOUT_MS", "soon")]),
            "HEADER_READ_TIMEOUT_MS"
        );
        assert_eq!(error_var(&[("MAX_CONNECTIONS", "0")]), "MAX_CONNECTIONS");
        assert_eq!(
            error_var(&[("MAX_WRITES_PER_USER", "0")]),
            "MAX_WRITES_PER_USER"
        );
        assert_eq!(error_var(&[("PORT", "70000")]), "PORT");
        assert_eq!(error_var(&[("METRICS_PORT", "3001")]), "METRICS_PORT");
        assert_eq!(
            error_var(&[("POSTGRES_POOL_MIN", "20")]),
            "POSTGRES_POOL_MIN"
        );
        assert_eq!(
            error_var(&[("POSTGRES_POOL_MAX", "0")]),
            "POSTGRES_POOL_MAX"
        );
        assert_eq!(error_var(&[("DATABASE_URL", "mysql://x")]), "DATABASE_URL");
        assert_eq!(error_var(&[("REDIS_URL", "http://x")]), "REDIS_URL");
        assert_eq!(error_var(&[("REDIS_DB", "16")]), "REDIS_DB");
        assert_eq!(
            error_var(&[("REDIS_SENTINELS", "h1:26379")]),
            "REDIS_SENTINEL_MASTER"
        );
        assert_eq!(
            error_var(&[("REDIS_SENTINEL_MASTER", "cache")]),
            "REDIS_SENTINEL_MASTER"
        );
        assert_eq!(
            error_var(&[("REDIS_SENTINEL_PASSWORD", "pw")]),
            "REDIS_SENTINEL_PASSWORD"
        );
        assert_eq!(
            error_var(&[
                ("REDIS_SENTINELS", "h1:26379"),
                ("REDIS_SENTINEL_MASTER", "cache"),
                ("REDIS_URL", "rediss://cache:6380")
            ]),
            "REDIS_URL"
        );
        assert_eq!(error_var(&[("LOG_FORMAT", "xml")]), "LOG_FORMAT");
        assert_eq!(error_var(&[("LOG_LEVEL", "loud[")]), "LOG_LEVEL");
        assert_eq!(
            error_var(&[("MEMORY_DEGRADED_PERCENT", "99")]),
            "MEMORY_DEGRADED_PERCENT"
        );
        assert_eq!(
            error_var(&[("CPU_CRITICAL_PERCENT", "-1")]),
            "CPU_CRITICAL_PERCENT"
        );
        assert_eq!(
            error_var(&[("READY_REQUIRES", "database,kafka")]),
            "READY_REQUIRES"
        );
        assert_eq!(
            error_var(&[("HEALTH_CHECK_TIMEOUT_MS", "9000")]),
            "HEALTH_CHECK_TIMEOUT_MS"
        );
        assert_eq!(error_var(&[("JWT_SECRET", "short")]), "JWT_SECRET");
        assert_eq!(
            error_var(&[(
                "JWT_SECRET",
                "change-me-to-a-random-secret-of-at-least-32-characters"
            )]),
            "JWT_SECRET"
        );
        assert_eq!(
            error_var(&[("JWT_SECRET_PREVIOUS", "change-me-please-to-something-else")]),
            "JWT_SECRET_PREVIOUS"
        );
        assert_eq!(
            error_var(&[("JWT_SECRET_PREVIOUS", "5Hq0Lw9Zc2Rk7Vt4Xy1Bn8Md3Fg6Js0P")]),
            "JWT_SECRET_PREVIOUS"
        );
        assert_eq!(error_var(&[("HOST", "localhost:80")]), "HOST");
        assert_eq!(
            error_var(&[("TRUSTED_PROXIES", "10.0.0.0/8,traefik")]),
            "TRUSTED_PROXIES"
        );
        assert_eq!(
            error_var(&[("IDEMPOTENCY_KEY_TTL_HOURS", "0")]),
            "IDEMPOTENCY_KEY_TTL_HOURS"
        );
        assert_eq!(
            error_var(&[("PASSWORD_HASH_MEMORY_KIB", "8")]),
            "PASSWORD_HASH_MEMORY_KIB"
        );
        assert_eq!(
            error_var(&[("PASSWORD_HASH_ITERATIONS", "0")]),
            "PASSWORD_HASH_ITERATIONS"
        );
    }

    /// A CA made for the test, and a file that is not PEM, in a directory of their own.
    fn pem_files() -> (cartae_harness::tls::ServerDir, String, String) {
        let dir = cartae_harness::tls::ServerDir::new("config-test").unwrap();
        let certificates = cartae_harness::tls::Certificates::generate(dir.path()).unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        (dir, path(&certificates.ca), path(&not_pem))
    }

    #[test]
    fn postgres_tls_follows_libpq_and_refuses_what_would_not_work() {
        let (_dir, ca, not_pem) = pem_files();
        let url = |query: &str| format!("postgres://u@db/cartae?{query}");
        let mode = |pairs: &[(&str, &str)]| {
            Settings::from_source(&env(pairs))
                .unwrap()
                .database
                .connect
                .get_ssl_mode()
        };
        // A CA makes `require` verify the chain, as libpq does.
        let require_with_ca = url(&format!("sslmode=require&sslrootcert={ca}"));
        assert!(matches!(
            mode(&[("DATABASE_URL", &require_with_ca)]),
            PgSslMode::VerifyCa
        ));
        assert!(matches!(
            mode(&[
                ("POSTGRES_SSLMODE", "verify-full"),
                ("POSTGRES_SSLROOTCERT", &ca)
            ]),
            PgSslMode::VerifyFull
        ));
        assert!(matches!(mode(&[]), PgSslMode::Prefer));

        let bad_url = |query: String| error_var(&[("DATABASE_URL", &url(&query))]);
        assert_eq!(bad_url("sslmode=allow".into()), "DATABASE_URL");
        assert_eq!(bad_url("sslmode=maybe".into()), "DATABASE_URL");
        assert_eq!(
            bad_url(format!("sslmode=prefer&sslrootcert={ca}")),
            "DATABASE_URL"
        );
        assert_eq!(
            bad_url(format!("sslmode=require&sslrootcert={not_pem}")),
            "DATABASE_URL"
        );
        assert_eq!(
            bad_url("sslmode=require&sslrootcert=/nowhere".into()),
            "DATABASE_URL"
        );
        assert_eq!(
            bad_url(format!("sslmode=require&sslcert={ca}")),
            "DATABASE_URL"
        );
        assert_eq!(
            error_var(&[
                ("POSTGRES_SSLMODE", "verify-ca"),
                ("POSTGRES_SSLROOTCERT", &not_pem)
            ]),
            "POSTGRES_SSLROOTCERT"
        );
        assert_eq!(error_var(&[("POSTGRES_SSLMODE", "on")]), "POSTGRES_SSLMODE");
        // The split variables beside a URL would be silently ignored: refused instead.
        assert_eq!(
            error_var(&[("DATABASE_URL", &url("")), ("POSTGRES_SSLMODE", "require")]),
            "POSTGRES_SSLMODE"
        );
    }

    #[test]
    fn redis_tls_needs_rediss_and_readable_pem() {
        let (_dir, ca, not_pem) = pem_files();
        let tls_url = "rediss://cache:6380/0";
        let s =
            Settings::from_source(&env(&[("REDIS_URL", tls_url), ("REDIS_CA_CERT", &ca)])).unwrap();
        assert!(s.redis.tls.certificates().is_some());
        assert!(Settings::from_source(&env(&[("REDIS_URL", tls_url)]))
            .unwrap()
            .redis
            .tls
            .certificates()
            .is_none());
        assert_eq!(
            error_var(&[("REDIS_URL", "redis://cache"), ("REDIS_CA_CERT", &ca)]),
            "REDIS_CA_CERT"
        );
        assert_eq!(error_var(&[("REDIS_CA_CERT", &ca)]), "REDIS_CA_CERT");
        assert_eq!(
            error_var(&[("REDIS_URL", tls_url), ("REDIS_CA_CERT", &not_pem)]),
            "REDIS_CA_CERT"
        );
        assert_eq!(
            error_var(&[("REDIS_URL", tls_url), ("REDIS_CLIENT_CERT", &ca)]),
            "REDIS_CLIENT_KEY"
        );
        assert_eq!(
            error_var(&[
                ("REDIS_URL", tls_url),
                ("REDIS_CLIENT_CERT", &ca),
                ("REDIS_CLIENT_KEY", &ca)
            ]),
            "REDIS_CLIENT_KEY"
        );
        assert_eq!(
            error_var(&[("REDIS_URL", "rediss://cache:6380/#insecure")]),
            "REDIS_URL"
        );
    }

    #[test]
    fn several_hosts_follow_the_primary_in_both_forms() {
        let hosts = |s: &Settings| {
            s.database
                .hosts
                .iter()
                .map(|h| format!("{}:{}", h.get_host(), h.get_port()))
                .collect::<Vec<_>>()
        };
        let s = Settings::from_source(&env(&[(
            "DATABASE_URL",
            "postgres://u:p@h1:5432,h2:5433/cartae?sslmode=disable",
        )]))
        .unwrap();
        assert_eq!(hosts(&s), ["h1:5432", "h2:5433"]);
        assert_eq!(s.database.target_session_attrs, SessionAttrs::ReadWrite);
        assert_eq!(s.database.hosts[1].get_database(), Some("cartae"));
        assert!(matches!(
            s.database.hosts[1].get_ssl_mode(),
            PgSslMode::Disable
        ));
        let s = Settings::from_source(&env(&[(
            "DATABASE_URL",
            "postgres://u@h1,h2/cartae?target_session_attrs=any",
        )]))
        .unwrap();
        assert_eq!(s.database.target_session_attrs, SessionAttrs::Any);
        let s = Settings::from_source(&env(&[
            ("POSTGRES_HOST", "h1,h2:5433"),
            ("POSTGRES_PORT", "6543"),
        ]))
        .unwrap();
        assert_eq!(hosts(&s), ["h1:6543", "h2:5433"]);
        assert_eq!(s.database.target_session_attrs, SessionAttrs::ReadWrite);
        let s = Settings::from_source(&env(&[("DATABASE_URL", "postgres://u@h1/cartae")])).unwrap();
        assert_eq!(s.database.target_session_attrs, SessionAttrs::Any);
        let bad = "postgres://u@h1,h2/cartae?target_session_attrs=standby";
        assert_eq!(error_var(&[("DATABASE_URL", bad)]), "DATABASE_URL");
        assert_eq!(error_var(&[("POSTGRES_HOST", "h1,h2:x")]), "POSTGRES_HOST");
    }

    #[test]
    fn split_variables_build_connection_settings() {
        let s = Settings::from_source(&env(&[
            ("POSTGRES_HOST", "db"),
            ("POSTGRES_PORT", "6543"),
            ("POSTGRES_DB", "cartae"),
            ("REDIS_HOST", "cache"),
            ("REDIS_PASSWORD", "p@ss word"),
            ("REDIS_DB", "3"),
            ("READY_REQUIRES", "database, redis"),
        ]))
        .unwrap();
        assert_eq!(s.database.connect.get_host(), "db");
        assert_eq!(s.database.connect.get_port(), 6543);
        assert_eq!(s.redis.url.expose(), "redis://:p%40ss%20word@cache:6379/3");
        assert!(format!("{s:?}").contains("[redacted]"));
        assert!(!format!("{s:?}").contains("p%40ss"));
        assert_eq!(
            s.health.ready_requires,
            ReadyRequires {
                database: true,
                redis: true
            }
        );
    }
}
