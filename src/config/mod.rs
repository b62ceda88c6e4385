//! Typed, validated settings read from the environment (and an optional `.env` file).
//!
//! Every variable is parsed once at start. A bad value becomes a [`ConfigError`] that names
//! the variable and the problem, so `main` can print one line and exit non-zero instead of
//! failing later, half-started, behind a load balancer.
//!
//! [`Settings::from_source`] assembles them; how one variable is read is in [`source`],
//! and each dependency's settings in a file of its own: [`database`] (with
//! [`pg_hosts`]), [`redis`] (with [`sentinel`]), [`overload`]; [`secrets`] refuses
//! guessable signing secrets.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

mod database;
mod overload;
mod pg_hosts;
mod redis;
mod secrets;
mod sentinel;
mod source;

use database::database;
pub use database::{DatabaseSettings, STATEMENT_TIMEOUT_MARGIN};
pub use overload::OverloadSettings;
use overload::{cpus, overload};
pub use pg_hosts::SessionAttrs;
use redis::redis;
pub use redis::{RedisSettings, RedisTls};
pub use sentinel::SentinelSettings;
use source::{at_least, millis, parse_or, port, set, string_or, WithSecretFiles};
pub use source::{Environment, Source};

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
mod tests;
