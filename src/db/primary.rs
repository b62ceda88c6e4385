//! Following the PostgreSQL primary across hosts, on sqlx's own hooks.
//!
//! sqlx connects to one host. With several (libpq's `h1:5432,h2:5432` list), this layer
//! decides which one the pools connect to:
//! - every new pooled connection is checked in `after_connect` against
//!   `target_session_attrs`; one that fails (a standby, a read-only session) is closed, and
//!   sqlx's own connect loop tries again until the acquire timeout;
//! - a refused connection, a connection error or a write refused as read-only (25006)
//!   asks for a discovery round: every host probed at once on a connection of its own,
//!   each bounded by a timeout, and the first acceptable one in the configured order wins;
//! - when the winner changes, [`Pool::set_connect_options`] points every pool at it (sqlx's
//!   connect loop re-reads the options on each attempt, so a waiting request moves too), and
//!   connections opened before the move are closed as they are next acquired.
//!
//! Rounds are single-flight: one at a time, requests made during a round are answered by
//! the next one, and rounds are at least [`MIN_SPACING`] apart, so a storm of failing
//! requests costs each host one probe connection per spacing, never one per request.
//! Which host is writable is decided by PostgreSQL (the failover manager promotes), never
//! here: this code only finds it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::SessionAttrs;

/// The least time between the start of two discovery rounds.
pub const MIN_SPACING: Duration = Duration::from_millis(250);

/// What a host's session answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Session {
    in_recovery: bool,
    read_only: bool,
}

impl Session {
    async fn read(conn: &mut PgConnection) -> Result<Self, sqlx::Error> {
        let (in_recovery, read_only): (bool, bool) = sqlx::query_as(
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
        )
        .fetch_one(conn)
        .await?;
        Ok(Self {
            in_recovery,
            read_only,
        })
    }

    fn role(self) -> &'static str {
        match (self.in_recovery, self.read_only) {
            (true, _) => "standby",
            (false, true) => "read-only",
            (false, false) => "primary",
        }
    }

    fn accepts(self, attrs: SessionAttrs) -> bool {
        match attrs {
            SessionAttrs::Any => true,
            SessionAttrs::ReadWrite => !self.in_recovery && !self.read_only,
            SessionAttrs::Primary => !self.in_recovery,
        }
    }
}

/// One host as the last round saw it.
#[derive(Debug, Clone, Serialize)]
pub struct HostState {
    pub host: String,
    /// `primary`, `standby`, `read-only` or `unreachable`; `unknown` before any round.
    pub role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A standby as `pg_stat_replication` on the primary shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Replica {
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    pub state: Option<String>,
    pub sync_state: Option<String>,
    /// Seconds; null when PostgreSQL does not know (an idle standby, or no privilege).
    pub replay_lag_seconds: Option<f64>,
}

/// The result of the last discovery round.
#[derive(Debug, Clone)]
struct Round {
    hosts: Vec<HostState>,
    primary: Option<usize>,
    at: Option<DateTime<Utc>>,
    started: Option<Instant>,
    finished: Option<Instant>,
}

/// The hosts, which one the pools use, and the single-flight discovery.
pub struct Topology {
    targets: Vec<PgConnectOptions>,
    labels: Vec<String>,
    attrs: SessionAttrs,
    probe_timeout: Duration,
    /// The host the pools connect to now.
    current: AtomicUsize,
    /// Pools to move, each with its own `statement_timeout` (milliseconds).
    pools: Mutex<Vec<(PgPool, String)>>,
    since: Instant,
    /// Milliseconds after `since` of the last move; connections older are closed. 0: never.
    moved_at_ms: AtomicU64,
    last: Mutex<Round>,
    replication: Mutex<Option<Vec<Replica>>>,
    /// A round has been asked for and has not started yet.
    requested: AtomicBool,
    running: tokio::sync::Mutex<()>,
}

impl Topology {
    pub fn new(
        targets: Vec<PgConnectOptions>,
        attrs: SessionAttrs,
        probe_timeout: Duration,
    ) -> Arc<Self> {
        let labels: Vec<String> = targets.iter().map(label).collect();
        let hosts = labels
            .iter()
            .map(|host| HostState {
                host: host.clone(),
                role: "unknown",
                error: None,
            })
            .collect();
        Arc::new(Self {
            targets,
            labels,
            attrs,
            probe_timeout,
            current: AtomicUsize::new(0),
            pools: Mutex::new(Vec::new()),
            since: Instant::now(),
            moved_at_ms: AtomicU64::new(0),
            last: Mutex::new(Round {
                hosts,
                primary: None,
                at: None,
                started: None,
                finished: None,
            }),
            replication: Mutex::new(None),
            requested: AtomicBool::new(false),
            running: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether there is anything to follow: several hosts, or a session attribute to check.
    /// A single host with `any` behaves exactly as before this layer existed.
    pub fn follows(&self) -> bool {
        self.targets.len() > 1 || self.attrs != SessionAttrs::Any
    }

    /// The options of the host the pools use now.
    pub fn current_target(&self) -> PgConnectOptions {
        self.targets[self.current.load(Ordering::Relaxed)].clone()
    }

    /// Moves `pool` along with the primary; its connections carry `statement_timeout`.
    pub fn register(&self, pool: &PgPool, statement_timeout: Duration) {
        let ms = statement_timeout.as_millis().to_string();
        lock(&self.pools).push((pool.clone(), ms));
    }

    /// `after_connect`: refuses a session that does not meet `target_session_attrs`, and
    /// asks for a round, since the pools point at the wrong host.
    pub async fn check_new(self: &Arc<Self>, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.attrs == SessionAttrs::Any {
            return Ok(());
        }
        let session = Session::read(conn).await?;
        if session.accepts(self.attrs) {
            return Ok(());
        }
        self.trigger();
        Err(sqlx::Error::Io(std::io::Error::other(format!(
            "{} is {}, target_session_attrs={} needs a writable primary",
            self.labels[self.current.load(Ordering::Relaxed)],
            session.role(),
            self.attrs.as_str()
        ))))
    }

    /// `before_acquire`: false for a connection opened before the pools last moved.
    pub fn still_current(&self, age: Duration) -> bool {
        match self.moved_at_ms.load(Ordering::Relaxed) {
            0 => true,
            at => {
                age < self
                    .since
                    .elapsed()
                    .saturating_sub(Duration::from_millis(at))
            }
        }
    }

    /// Asks for a discovery round without waiting for it; at most one waits to run.
    pub fn trigger(self: &Arc<Self>) {
        if !self.follows() || self.requested.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            if let Some(me) = Weak::upgrade(&me) {
                me.discover().await;
            }
        });
    }

    /// Runs a round, unless one started after this call, whose result is then used.
    /// Returns the primary's index, if any host is acceptable.
    pub async fn discover(&self) -> Option<usize> {
        let asked = Instant::now();
        let _running = self.running.lock().await;
        let (started, finished, primary) = {
            let last = lock(&self.last);
            (last.started, last.finished, last.primary)
        };
        if started.is_some_and(|s| s >= asked) {
            return primary;
        }
        if let Some(wait) =
            finished.and_then(|f| (f + MIN_SPACING).checked_duration_since(Instant::now()))
        {
            tokio::time::sleep(wait).await;
        }
        self.requested.store(false, Ordering::Release);
        let started = Instant::now();
        let results = probe_all(&self.targets, self.probe_timeout).await;
        let primary = results
            .iter()
            .position(|r| r.as_ref().is_ok_and(|s| s.accepts(self.attrs)));
        let hosts = self
            .labels
            .iter()
            .zip(&results)
            .map(|(host, result)| HostState {
                host: host.clone(),
                role: result.as_ref().map_or("unreachable", |s| s.role()),
                error: result.as_ref().err().cloned(),
            })
            .collect();
        let current = self.current.load(Ordering::Relaxed);
        match primary {
            Some(new) if new != current => self.move_to(new),
            Some(_) => {}
            None => {
                // The current host answered and is not acceptable (demoted, read-only):
                // its connections can only fail writes. A host that did not answer keeps
                // them; they fail by themselves if it is really gone.
                if results[current].is_ok() {
                    self.evict_all();
                }
                tracing::warn!(hosts = %self.labels.join(", "), "no PostgreSQL host accepts target_session_attrs={}", self.attrs.as_str());
            }
        }
        *lock(&self.last) = Round {
            hosts,
            primary,
            at: Some(Utc::now()),
            started: Some(started),
            finished: Some(Instant::now()),
        };
        primary
    }

    fn move_to(&self, new: usize) {
        let target = &self.targets[new];
        for (pool, ms) in lock(&self.pools).iter() {
            pool.set_connect_options(target.clone().options([("statement_timeout", ms.as_str())]));
        }
        self.current.store(new, Ordering::Relaxed);
        self.evict_all();
        tracing::warn!(primary = %self.labels[new], "PostgreSQL primary moved: new connections go there");
    }

    fn evict_all(&self) {
        let ms = self.since.elapsed().as_millis() as u64;
        self.moved_at_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Whether a discovery round has run yet.
    pub fn discovered(&self) -> bool {
        lock(&self.last).at.is_some()
    }

    /// Why no host can take writes, when the last round found none.
    pub fn no_primary(&self) -> Option<String> {
        let last = lock(&self.last);
        (self.follows() && last.at.is_some() && last.primary.is_none()).then(|| {
            format!(
                "no writable primary among {} (target_session_attrs={})",
                self.labels.join(", "),
                self.attrs.as_str()
            )
        })
    }

    pub fn set_replication(&self, replicas: Option<Vec<Replica>>) {
        *lock(&self.replication) = replicas;
    }

    /// The topology for `/health/detailed`.
    pub fn describe(&self) -> serde_json::Value {
        let last = lock(&self.last).clone();
        let current = self.current.load(Ordering::Relaxed);
        serde_json::json!({
            "hosts": last.hosts,
            // The host the pools use; null while the last round found none acceptable.
            "primary": if last.at.is_some() && last.primary.is_none() {
                None
            } else {
                Some(&self.labels[current])
            },
            "targetSessionAttrs": self.attrs.as_str(),
            "discoveredAt": last.at.map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true)),
            "replication": lock(&self.replication).clone(),
        })
    }
}

/// The standbys and their lag, read on the primary; `None` if it cannot be read.
pub async fn replication(conn: &mut PgConnection) -> Option<Vec<Replica>> {
    sqlx::query_as::<_, Replica>(
        "SELECT application_name, client_addr::text AS client_addr, state, sync_state, \
         EXTRACT(EPOCH FROM replay_lag)::float8 AS replay_lag_seconds \
         FROM pg_stat_replication ORDER BY application_name",
    )
    .fetch_all(conn)
    .await
    .ok()
}

/// Whether a failed query suggests the pools point at the wrong host: the session is read
/// only (25006), or the connection failed or was cut.
pub fn suggests_moved(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code == "25006" || code.starts_with("08") || code.starts_with("57P")
        }),
        _ => false,
    }
}

fn label(opts: &PgConnectOptions) -> String {
    let host = opts.get_host();
    if host.contains(':') {
        format!("[{host}]:{}", opts.get_port())
    } else {
        format!("{host}:{}", opts.get_port())
    }
}

/// One host's session, on a connection of its own, closed after.
async fn probe(target: &PgConnectOptions, timeout: Duration) -> Result<Session, String> {
    let attempt = async {
        let mut conn = PgConnection::connect_with(target).await?;
        let session = Session::read(&mut conn).await;
        let _ = conn.close().await;
        session
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(session)) => Ok(session),
        Ok(Err(e)) => Err(super::describe(&e)),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// Probes every host at once, so a round lasts one timeout however many hosts are down.
async fn probe_all(
    targets: &[PgConnectOptions],
    timeout: Duration,
) -> Vec<Result<Session, String>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, target) in targets.iter().enumerate() {
        let target = target.clone();
        set.spawn(async move { (i, probe(&target, timeout).await) });
    }
    let mut results = vec![Err("not probed".to_owned()); targets.len()];
    while let Some(done) = set.join_next().await {
        if let Ok((i, result)) = done {
            results[i] = result;
        }
    }
    results
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_session_attribute_accepts_its_sessions() {
        let primary = Session {
            in_recovery: false,
            read_only: false,
        };
        let read_only = Session {
            in_recovery: false,
            read_only: true,
        };
        let standby = Session {
            in_recovery: true,
            read_only: true,
        };
        let accepted = |attrs| {
            [primary, read_only, standby]
                .iter()
                .map(|s| s.accepts(attrs))
                .collect::<Vec<_>>()
        };
        assert_eq!(accepted(SessionAttrs::ReadWrite), [true, false, false]);
        assert_eq!(accepted(SessionAttrs::Primary), [true, true, false]);
        assert_eq!(accepted(SessionAttrs::Any), [true, true, true]);
    }

    #[tokio::test]
    async fn a_move_retires_only_the_connections_opened_before_it() {
        let hosts = ["postgres://a:1/db", "postgres://b:2/db"]
            .map(|url| url.parse::<PgConnectOptions>().unwrap());
        let topology = Topology::new(hosts.to_vec(), SessionAttrs::ReadWrite, MIN_SPACING);
        assert!(topology.still_current(Duration::from_secs(3600)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        topology.evict_all();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!topology.still_current(Duration::from_millis(30)));
        assert!(topology.still_current(Duration::from_millis(5)));
        assert_eq!(topology.no_primary(), None, "no round has run yet");
        assert_eq!(topology.describe()["primary"], "a:1");
    }
}
