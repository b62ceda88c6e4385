//! Redis: a pool, and one way to run a command with a short timeout.
//!
//! Redis is a cache here, never the source of truth. Every call is bounded by
//! `REDIS_TIMEOUT_MS`, and every failure is counted and reported to the caller, who falls
//! back to PostgreSQL. A Redis outage makes the service slower, never wrong.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_redis::{Config, Connection, Pool, PoolConfig, Runtime, Timeouts};

use crate::config::RedisSettings;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis timed out after {0:?}")]
    Timeout(Duration),
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

#[derive(Clone)]
pub struct Cache {
    pool: Pool,
    metrics: Arc<Metrics>,
    timeout: Duration,
    pub key_prefix: String,
}

impl Cache {
    /// Builds the pool; like the database pool, it connects on first use, so a missing
    /// Redis never blocks start-up.
    pub fn new(
        settings: &RedisSettings,
        key_prefix: &str,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut config = Config::from_url(settings.url.expose());
        let timeouts = Timeouts {
            wait: Some(settings.timeout),
            create: Some(settings.timeout),
            recycle: Some(settings.timeout),
        };
        config.pool = Some(PoolConfig {
            max_size: settings.pool_max,
            timeouts,
            ..PoolConfig::default()
        });
        let pool = config.create_pool(Some(Runtime::Tokio1))?;
        Ok(Self {
            pool,
            metrics,
            timeout: settings.timeout,
            key_prefix: key_prefix.to_owned(),
        })
    }

    /// Runs a cache operation on a pooled connection within `REDIS_TIMEOUT_MS`. A failure
    /// is counted in `cache_errors_total`: the caller then falls back to PostgreSQL.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, CacheError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        let result = self.exec(self.timeout, op).await;
        if result.is_err() {
            self.metrics.cache_errors.inc();
        }
        result
    }

    /// Runs `op` within `timeout`, recording `redis_latency_seconds`.
    async fn exec<T, F, Fut>(&self, timeout: Duration, op: F) -> Result<T, CacheError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, async {
            let conn = self.pool.get().await?;
            Ok::<_, CacheError>(op(conn).await?)
        })
        .await
        {
            Ok(result) => result,
            Err(_) => Err(CacheError::Timeout(timeout)),
        };
        self.metrics
            .redis_latency
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// The health check's round trip: one `PING`, with the check's own timeout. Its
    /// failures are health-check failures, not cache fallbacks, so they are not counted in
    /// `cache_errors_total`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), CacheError> {
        self.exec(timeout, |mut conn| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(|_| ())
        })
        .await
    }

    pub fn status(&self) -> deadpool_redis::Status {
        self.pool.status()
    }

    pub fn close(&self) {
        self.pool.close();
    }

    /// A namespaced key.
    pub fn key(&self, parts: std::fmt::Arguments<'_>) -> String {
        format!("{}{}", self.key_prefix, parts)
    }
}
