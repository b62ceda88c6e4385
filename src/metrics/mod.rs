//! Prometheus metrics, with the seed's names, labels and buckets.
//!
//! Each [`Metrics`] owns its own registry rather than the global default one, so that several
//! instances can live in one process (the tests start many) without clashing. Every series
//! carries the `instance` label, as in the seed, so the cluster can be read at a glance.

mod requests;

pub use requests::method_label;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::Permanent;

const REQUEST_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0];
const CHECK_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0];
/// Database and Redis calls are mostly sub-millisecond; the seed's buckets start at 10 ms,
/// so finer ones are prepended to keep fast queries distinguishable.
const QUERY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0,
];

/// The check types reported by the health monitor, used as `check_type` label values.
pub const CHECK_TYPES: [&str; 4] = ["database", "redis", "memory", "cpu"];

/// Every metric the service exports. Cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    pub instance: String,
    pub lb_requests: IntCounterVec,
    pub request_distribution: IntCounter,
    pub active_connections: IntGauge,
    pub request_duration: HistogramVec,
    /// The children of the two vectors above, resolved once per (route, method, status).
    request_series: requests::RequestSeries,
    pub instance_health: Gauge,
    pub health_check_duration: HistogramVec,
    pub health_check_failures: IntCounterVec,
    pub health_check_total: IntCounterVec,
    pub health_check_status: GaugeVec,
    pub database_latency: HistogramVec,
    pub db_pool_size: IntGaugeVec,
    pub db_query_errors: IntCounterVec,
    pub redis_latency: Histogram,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_errors: IntCounter,
    pub cache_bypasses: IntCounter,
    /// Logins refused (429) because their account and address failed too often.
    pub login_throttled: IntCounter,
    pub lifecycle_phase: IntGaugeVec,
    /// Work refused by admission control or a bulkhead, by resource and reason.
    pub overload_rejections: IntCounterVec,
    /// Connection errors that need a fix, not a retry, by dependency and kind.
    pub permanent_errors: IntCounterVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

fn hist(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(buckets.to_vec())
}

impl Metrics {
    /// Builds and registers every metric. Registration only fails on a programming error
    /// (a duplicate name), which is fatal at start-up.
    pub fn new(instance: &str) -> Self {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric names are unique");
        };
        macro_rules! register {
            ($metric:expr) => {{
                let m = $metric.expect("metric definition is valid");
                reg(Box::new(m.clone()));
                m
            }};
        }
        let i = ["instance"];
        let lb_requests = register!(IntCounterVec::new(
            opts(
                "lb_requests_total",
                "Total requests served by this instance behind the load balancer"
            ),
            &["instance", "method", "status", "path"]
        ));
        let request_distribution = register!(IntCounterVec::new(
            opts(
                "request_distribution_total",
                "Request distribution across instances"
            ),
            &i
        ))
        .with_label_values(&[instance]);
        let active_connections = register!(IntGaugeVec::new(
            opts("active_connections", "Requests in flight on this instance"),
            &i
        ))
        .with_label_values(&[instance]);
        let request_duration = register!(HistogramVec::new(
            hist(
                "request_duration_seconds",
                "Request duration in seconds",
                REQUEST_BUCKETS
            ),
            &["instance", "method", "path", "status"]
        ));
        let instance_health = register!(GaugeVec::new(
            opts(
                "instance_health",
                "Instance health status (1=healthy, 0.5=degraded, 0=unhealthy)"
            ),
            &i
        ))
        .with_label_values(&[instance]);
        let health_check_duration = register!(HistogramVec::new(
            hist(
                "health_check_duration_seconds",
                "Health check duration in seconds",
                CHECK_BUCKETS
            ),
            &["check_type", "instance"]
        ));
        let health_check_failures = register!(IntCounterVec::new(
            opts("health_check_failures_total", "Total health check failures"),
            &["check_type", "instance"]
        ));
        let health_check_total = register!(IntCounterVec::new(
            opts("health_check_total", "Total health checks run"),
            &["check_type", "instance"]
        ));
        let health_check_status = register!(GaugeVec::new(
            opts(
                "health_check_status",
                "Latest result per check (1=ok, 0.5=degraded, 0=failed)"
            ),
            &["check_type", "instance"]
        ));
        let database_latency = register!(HistogramVec::new(
            hist(
                "database_latency_seconds",
                "Database query latency in seconds",
                QUERY_BUCKETS
            ),
            &["instance", "query_type"]
        ));
        let db_pool_size = register!(IntGaugeVec::new(
            opts(
                "db_pool_size",
                "Database connection pool size by state (active, idle, waiting)"
            ),
            &["instance", "state"]
        ));
        let db_query_errors = register!(IntCounterVec::new(
            opts("db_query_errors_total", "Total database query errors"),
            &["instance", "error_type"]
        ));
        let redis_latency = register!(HistogramVec::new(
            hist(
                "redis_latency_seconds",
                "Redis command latency in seconds",
                QUERY_BUCKETS
            ),
            &i
        ))
        .with_label_values(&[instance]);
        let cache_hits = register!(IntCounterVec::new(
            opts("cache_hits_total", "Cache hits"),
            &i
        ))
        .with_label_values(&[instance]);
        let cache_misses = register!(IntCounterVec::new(
            opts("cache_misses_total", "Cache misses"),
            &i
        ))
        .with_label_values(&[instance]);
        let cache_errors = register!(IntCounterVec::new(
            opts(
                "cache_errors_total",
                "Redis failures or timeouts that fell back to PostgreSQL"
            ),
            &i
        ))
        .with_label_values(&[instance]);
        let cache_bypasses = register!(IntCounterVec::new(
            opts(
                "cache_bypassed_total",
                "Cache lookups served from PostgreSQL without asking Redis, while Redis is distrusted after a failure"
            ),
            &i
        ))
        .with_label_values(&[instance]);
        let login_throttled = register!(IntCounterVec::new(
            opts(
                "login_throttled_total",
                "Logins refused with 429: too many wrong passwords for the account, or too many malformed logins, from the client's network"
            ),
            &i
        ))
        .with_label_values(&[instance]);
        let lifecycle_phase = register!(IntGaugeVec::new(
            opts(
                "lifecycle_phase",
                "Lifecycle phase of the instance (1 for the current phase)"
            ),
            &["instance", "phase"]
        ));
        let overload_rejections = register!(IntCounterVec::new(
            opts(
                "overload_rejections_total",
                "Work refused to protect the replica: resource (requests, password_hashing, request_bodies: a 503; connections: closed at once), reason (queue_full, queue_timeout, deadline, limit, budget)"
            ),
            &["instance", "resource", "reason"]
        ));
        let permanent_errors = register!(IntCounterVec::new(
            opts(
                "dependency_permanent_errors_total",
                "Connection errors that retrying will not fix (certificate, TLS refused, password, unknown database), by dependency and kind"
            ),
            &["instance", "dependency", "kind"]
        ));
        #[cfg(target_os = "linux")]
        reg(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));

        // Pre-create the label sets that are known up front, so dashboards and alerts see
        // zeros rather than missing series before the first event.
        for check in CHECK_TYPES {
            health_check_failures.with_label_values(&[check, instance]);
            health_check_total.with_label_values(&[check, instance]);
        }
        for error_type in DB_ERROR_TYPES {
            db_query_errors.with_label_values(&[instance, error_type]);
        }
        for state in ["active", "idle", "waiting"] {
            db_pool_size.with_label_values(&[instance, state]);
        }
        // Present at zero from the start, so that rate() and alerts see the first refusal.
        for (resource, reason) in [
            ("requests", "queue_full"),
            ("requests", "queue_timeout"),
            ("requests", "deadline"),
            ("password_hashing", "queue_full"),
            ("password_hashing", "queue_timeout"),
            ("connections", "limit"),
            ("request_bodies", "budget"),
        ] {
            overload_rejections.with_label_values(&[instance, resource, reason]);
        }

        for kind in Permanent::KINDS {
            permanent_errors.with_label_values(&[instance, "database", kind]);
        }
        for kind in ["tls", "authentication", "configuration"] {
            permanent_errors.with_label_values(&[instance, "redis", kind]);
        }

        Self {
            registry,
            instance: instance.to_owned(),
            lb_requests,
            request_distribution,
            active_connections,
            request_duration,
            request_series: requests::RequestSeries::default(),
            instance_health,
            health_check_duration,
            health_check_failures,
            health_check_total,
            health_check_status,
            database_latency,
            db_pool_size,
            db_query_errors,
            redis_latency,
            cache_hits,
            cache_misses,
            cache_errors,
            cache_bypasses,
            login_throttled,
            lifecycle_phase,
            overload_rejections,
            permanent_errors,
        }
    }

    /// Counts one piece of work refused to protect the replica.
    pub fn record_rejection(&self, resource: &str, reason: &str) {
        self.overload_rejections
            .with_label_values(&[self.instance.as_str(), resource, reason])
            .inc();
    }

    /// Counts one connection error that retrying will not fix.
    pub fn record_permanent(&self, dependency: &str, permanent: &Permanent) {
        self.permanent_errors
            .with_label_values(&[self.instance.as_str(), dependency, permanent.kind])
            .inc();
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed metric families.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "failed to encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Records one database call: its latency, and its error kind when it failed.
    pub fn observe_query(&self, query_type: &str, seconds: f64, error: Option<&sqlx::Error>) {
        self.database_latency
            .with_label_values(&[&self.instance, query_type])
            .observe(seconds);
        if let Some(e) = error {
            self.db_query_errors
                .with_label_values(&[&self.instance, db_error_type(e)])
                .inc();
        }
    }
}

/// Every value [`db_error_type`] can return.
const DB_ERROR_TYPES: [&str; 13] = [
    "pool_timeout",
    "pool_closed",
    "connection",
    "not_found",
    "unique_violation",
    "foreign_key_violation",
    "constraint_violation",
    "timeout",
    "serialization",
    "database",
    "decode",
    "protocol",
    "other",
];

/// A small, bounded set of error kinds, so the label cannot explode.
pub fn db_error_type(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::PoolTimedOut => "pool_timeout",
        sqlx::Error::PoolClosed => "pool_closed",
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => "connection",
        sqlx::Error::RowNotFound => "not_found",
        sqlx::Error::Database(db) => match db.kind() {
            sqlx::error::ErrorKind::UniqueViolation => "unique_violation",
            sqlx::error::ErrorKind::ForeignKeyViolation => "foreign_key_violation",
            sqlx::error::ErrorKind::CheckViolation | sqlx::error::ErrorKind::NotNullViolation => {
                "constraint_violation"
            }
            _ => match db.code().as_deref() {
                Some("57014") => "timeout",
                Some("40001") | Some("40P01") => "serialization",
                _ => "database",
            },
        },
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => "decode",
        sqlx::Error::Protocol(_) => "protocol",
        _ => "other",
    }
}
