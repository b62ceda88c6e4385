//! Redis: one multiplexed connection ([`link`]), and one way to run a command with a short
//! timeout.
//!
//! Redis is a cache here, never the source of truth. Every call is bounded by
//! `REDIS_TIMEOUT_MS`, and every failure is counted and reported to the caller, who falls
//! back to PostgreSQL. A Redis outage makes the service slower, never wrong.
//!
//! - [`stamped`]: cache-aside entries stamped with a cluster epoch and a per-user
//!   generation, so one increment makes every cached read of a user stale at once, on every
//!   replica.
//! - [`login_failures`]: failed logins per account and client network, shared by the
//!   replicas so that the login throttle's wait holds across them and across restarts.
//! - [`trust`]: after a failed invalidation this replica stops reading the entries it could
//!   have left stale until a background repair has applied it (see there why).

pub mod items;
mod link;
pub mod login_failures;
mod sentinel;
pub mod stamped;
pub mod trust;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use crate::config::{CacheSettings, RedisSettings};
use crate::error::Permanent;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis timed out after {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Where and how to connect: the URL, plus for `rediss://` the CA and client certificate
/// that the URL cannot carry; or the sentinels, which name the master.
fn target(settings: &RedisSettings) -> redis::RedisResult<link::Target> {
    if let Some(sentinels) = &settings.sentinel {
        tracing::info!(
            sentinels = ?sentinels.addresses,
            master = %sentinels.master,
            "redis master found through the sentinels; the host of REDIS_URL is not used"
        );
        return sentinel::Sentinels::new(settings, sentinels, settings.timeout)
            .map(link::Target::Sentinels);
    }
    match settings.tls.certificates() {
        Some(certificates) => redis::Client::build_with_tls(settings.url.expose(), certificates),
        None => redis::Client::open(settings.url.expose()),
    }
    .map(link::Target::Fixed)
}

/// Whether a Redis error needs the configuration or the server changed before a retry can
/// succeed, and what to check. `None`: transient (a timeout, a connection refused or cut).
pub fn permanent(error: &CacheError) -> Option<Permanent> {
    let redis = match error {
        CacheError::Redis(e) => e,
        CacheError::Timeout(_) => return None,
    };
    match redis.kind() {
        redis::ErrorKind::AuthenticationFailed => Some(Permanent {
            kind: "authentication",
            hint: "Redis refused the password (REDIS_URL or REDIS_PASSWORD; REDIS_SENTINEL_PASSWORD for the sentinels)",
        }),
        redis::ErrorKind::MasterNameNotFoundBySentinel => Some(Permanent {
            kind: "configuration",
            hint: "no sentinel knows the master REDIS_SENTINEL_MASTER names",
        }),
        redis::ErrorKind::InvalidClientConfig => Some(Permanent {
            kind: "configuration",
            hint: "the Redis connection settings are unusable",
        }),
        _ if crate::error::is_tls_failure(redis) => Some(Permanent::tls(
            "Redis's TLS certificate does not verify, or the server refused ours: check REDIS_CA_CERT (and REDIS_CLIENT_CERT), and that the port speaks TLS",
        )),
        _ => None,
    }
}

#[derive(Clone)]
pub struct Cache {
    link: Arc<link::Link>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// Shared rather than a `String`: every handler clones the state, and with it this.
    pub key_prefix: Arc<str>,
    /// How long an item read stays cached (`CACHE_ITEM_TTL_MS`).
    pub item_ttl: Duration,
    /// How long a list or search page stays cached (`CACHE_QUERY_TTL_MS`).
    pub query_ttl: Duration,
    /// Which entries may be read, after failed invalidations.
    pub trust: Arc<trust::Trust>,
    /// Whether the last call failed: one log line when Redis starts failing and one when
    /// it answers again, not one per request.
    failing: Arc<AtomicBool>,
}

impl Cache {
    /// Like the database pool, it connects on first use, so a missing Redis never blocks
    /// start-up.
    pub fn new(
        settings: &RedisSettings,
        cache: &CacheSettings,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        // Starts distrustful: see `trust`.
        let trust = Arc::new(trust::Trust::default());
        Ok(Self {
            link: Arc::new(link::Link::new(
                target(settings)?,
                settings.timeout,
                trust.clone(),
            )),
            metrics,
            timeout: settings.timeout,
            key_prefix: cache.key_prefix.as_str().into(),
            item_ttl: cache.item_ttl,
            query_ttl: cache.query_ttl,
            trust,
            failing: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Runs a cache operation on the shared connection within `REDIS_TIMEOUT_MS`. A failure
    /// is counted in `cache_errors_total`: the caller then falls back to PostgreSQL.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, CacheError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        let result = self.exec(self.timeout, op).await;
        match &result {
            Err(e) => {
                self.metrics.cache_errors.inc();
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "redis failed: serving from PostgreSQL until it answers again");
                }
            }
            Ok(_) if self.failing.load(Ordering::Relaxed) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis answers again");
                }
            }
            Ok(_) => {}
        }
        result
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs `op` within `timeout`, recording `redis_latency_seconds`. A failure that leaves
    /// the connection unusable, or a timeout, discards it (see [`link`]).
    async fn exec<T, F, Fut>(&self, timeout: Duration, op: F) -> Result<T, CacheError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        let started = Instant::now();
        let mut used = None;
        let result = match tokio::time::timeout(timeout, async {
            let (number, conn) = self.link.get().await?;
            used = Some(number);
            Ok::<_, CacheError>(op(conn).await?)
        })
        .await
        {
            Ok(result) => result,
            Err(_) => Err(CacheError::Timeout(timeout)),
        };
        let broken = match &result {
            Err(CacheError::Redis(e)) => link::breaks_connection(e),
            Err(CacheError::Timeout(_)) => true,
            Ok(_) => false,
        };
        if let (true, Some(number)) = (broken, used) {
            self.link.discard(number);
        }
        self.metrics
            .redis_latency
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// The health check's round trip: one `PING`, with the check's own timeout. Its
    /// failures are health-check failures, not cache fallbacks, so they are not counted in
    /// `cache_errors_total`.
    ///
    /// A failed ping loses no write, so it makes no entry suspect (see [`trust`]).
    /// With sentinels it asks `ROLE` instead, and the sentinels which master they name: a
    /// master demoted without its clients being cut, or not demoted yet, would otherwise
    /// keep this replica on it (see [`link::Link::check_named`]). Either failure drops
    /// the connection, and the next call asks the sentinels again.
    pub async fn ping(&self, timeout: Duration) -> Result<(), CacheError> {
        let link = self.link.clone();
        let result = self
            .exec(timeout, |mut conn| async move {
                if link.follows_sentinels() {
                    sentinel::check_master(&mut conn).await?;
                    return link.check_named().await;
                }
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map(|_| ())
            })
            .await;
        if let Err(e) = &result {
            if let Some(permanent) = permanent(e) {
                self.metrics.record_permanent("redis", &permanent);
                tracing::error!(kind = permanent.kind, error = %permanent.describe(e), "Redis connection refused: retrying will not help until this is fixed");
            }
        }
        result
    }

    /// The error, prefixed with what it means when it is permanent.
    pub fn describe(error: &CacheError) -> String {
        match permanent(error) {
            Some(p) => p.describe(error),
            None => error.to_string(),
        }
    }

    /// Whether the shared connection is open (for `/health/detailed`).
    pub fn connected(&self) -> bool {
        self.link.connected()
    }

    /// `host:port` of the master in use when the sentinels name it, `None` without sentinels
    /// or while no connection is open (for `/health/detailed`).
    pub fn master(&self) -> Option<String> {
        self.link.master()
    }

    /// Closes the shared connection at shutdown, once the server has drained.
    pub fn close(&self) {
        self.link.close();
    }

    /// A namespaced key.
    pub fn key(&self, parts: std::fmt::Arguments<'_>) -> String {
        format!("{}{}", self.key_prefix, parts)
    }
}
