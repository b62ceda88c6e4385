//! Admission control's settings: requests in flight, queued, and connections.

use std::time::Duration;

use super::source::{at_least, millis, parse_or, Source};
use super::{ConfigError, DatabaseSettings};

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

/// CPUs this process may use: the cgroup quota when there is one (Rust reads it).
pub(super) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Defaults that are safe without tuning. A replica serves at most `POSTGRES_POOL_MAX`
/// queries at once, so admitting twice that keeps every connection busy with the next
/// query ready; CPU-bound cache hits add a few per CPU. An equal number may queue for
/// 200 ms, enough to absorb a burst, short enough that a refused client retries
/// elsewhere well within its own timeout.
pub(super) fn overload(
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
pub(super) const RESERVED_DESCRIPTORS: usize = 128;

/// The most connections allowed by default: each costs about 11 KiB silent and 23 KiB with
/// half a head in (BENCHMARKS.md), so 4,096 of them hold under 100 MiB, while a container's
/// open-file limit (often 1,048,576) would bound nothing.
pub(super) const MAX_CONNECTIONS_DEFAULT: usize = 4096;

/// [`MAX_CONNECTIONS_DEFAULT`], or the open-file limit less [`RESERVED_DESCRIPTORS`] when
/// lower: past that limit `accept` fails for everyone, probes included, while a capped
/// connection costs only its own client.
pub(super) fn default_max_connections() -> usize {
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
