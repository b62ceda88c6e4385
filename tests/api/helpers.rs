//! Spawning the real application for a test: its own database, Redis key prefix and ports.
#![allow(dead_code)] // Shared by every test module; not each uses every helper.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cartae_database_api::config::Settings;
use cartae_database_api::health::{DependencyCheck, Snapshot, Verdict};
use cartae_database_api::lifecycle::StopSignal;
use cartae_database_api::metrics::Metrics;
use cartae_database_api::startup::{Application, Stopped};
use cartae_database_api::state::AppState;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use uuid::Uuid;

use crate::support::proxy::TcpProxy;

pub use cartae_harness::database::{pg_url, TestDatabase, PG_ADDR, REDIS_ADDR};

/// Random, as a real one must be (the service refuses patterns); public, as only a test's may be.
pub const JWT_SECRET: &str = "rjrpPtTVobHCzGx9pCv6164rAs3kdc5E4hf_h-yWkf0MqSMb";

/// Settings every test starts from: loopback, free ports, frequent checks, and latency and
/// CPU thresholds no shared 2-core machine reaches, so that "healthy" does not mean "every
/// ping was fast" (the tests about thresholds set their own).
pub fn base_env(database_url: &str, redis_url: &str) -> HashMap<String, String> {
    let prefix = format!("test:{}:", Uuid::new_v4().simple());
    [
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("METRICS_PORT", "0"),
        ("DATABASE_URL", database_url),
        ("REDIS_URL", redis_url),
        ("JWT_SECRET", JWT_SECRET),
        ("CACHE_KEY_PREFIX", &prefix),
        ("HEALTH_CHECK_INTERVAL_MS", "500"),
        ("HEALTH_CHECK_TIMEOUT_MS", "450"),
        // Beyond the timeout: only a check that times out is not "ok".
        ("DB_LATENCY_DEGRADED_MS", "1000"),
        ("DB_LATENCY_CRITICAL_MS", "1000"),
        ("REDIS_LATENCY_DEGRADED_MS", "1000"),
        ("REDIS_LATENCY_CRITICAL_MS", "1000"),
        ("CPU_DEGRADED_PERCENT", "1000000"),
        ("CPU_CRITICAL_PERCENT", "1000000"),
        ("DRAIN_DELAY_MS", "300"),
        ("SHUTDOWN_TIMEOUT_MS", "5000"),
        ("LOG_LEVEL", "warn"),
        // Cheap Argon2: the suite creates many users, and full-cost hashing would starve
        // the timing-sensitive tests running beside them on a 2-core machine.
        ("PASSWORD_HASH_MEMORY_KIB", "1024"),
        ("PASSWORD_HASH_ITERATIONS", "1"),
        // The suite runs many tests at once on 2 cores in a debug build: a 1,000-item batch
        // can take seconds. Tests of the deadline itself set their own.
        ("REQUEST_TIMEOUT_MS", "30000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// How a test wants its app: extra variables, and proxies in front of the dependencies.
#[derive(Default)]
pub struct AppOptions {
    pub env: Vec<(String, String)>,
    pub proxy_postgres: bool,
    pub proxy_redis: bool,
    /// Reuse another app's database (several replicas of one cluster).
    pub database: Option<String>,
    /// Reuse a Redis key prefix (replicas sharing a cache).
    pub key_prefix: Option<String>,
}

impl AppOptions {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
    pub fn proxy_postgres(mut self) -> Self {
        self.proxy_postgres = true;
        self
    }
    pub fn proxy_redis(mut self) -> Self {
        self.proxy_redis = true;
        self
    }
    pub fn sharing_with(mut self, other: &TestApp) -> Self {
        self.database = Some(other.database_name.clone());
        self.key_prefix = Some(other.key_prefix.clone());
        self
    }
}

pub struct TestApp {
    pub address: String,
    pub metrics_address: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub database_name: String,
    pub key_prefix: String,
    pub pg_proxy: Option<TcpProxy>,
    pub redis_proxy: Option<TcpProxy>,
    signals: UnboundedSender<StopSignal>,
    pub run: tokio::task::JoinHandle<anyhow::Result<Stopped>>,
    _database: Option<TestDatabase>,
    _documented: StatusesDocumented,
}

/// Fails the test that dropped it if its app answered an operation with a status the
/// OpenAPI document does not list for that operation: the whole suite checks the document.
struct StatusesDocumented(std::sync::Arc<Metrics>);

impl Drop for StatusesDocumented {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let undocumented = crate::contract::undocumented(&self.0.render());
        assert!(
            undocumented.is_empty(),
            "answers the OpenAPI document does not list: {undocumented:?}"
        );
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    let owned_db = match &options.database {
        Some(_) => None,
        None => Some(TestDatabase::create().await.expect("PostgreSQL is running")),
    };
    let database_name = options
        .database
        .clone()
        .unwrap_or_else(|| owned_db.as_ref().unwrap().name.clone());
    let pg_proxy = match options.proxy_postgres {
        true => Some(TcpProxy::start(PG_ADDR.parse().unwrap(), true).await),
        false => None,
    };
    let redis_proxy = match options.proxy_redis {
        true => Some(TcpProxy::start(REDIS_ADDR.parse().unwrap(), false).await),
        false => None,
    };
    let pg_addr = pg_proxy
        .as_ref()
        .map(|p| p.addr.to_string())
        .unwrap_or(PG_ADDR.to_owned());
    let redis_addr: SocketAddr = redis_proxy
        .as_ref()
        .map(|p| p.addr)
        .unwrap_or(REDIS_ADDR.parse().unwrap());
    let mut env = base_env(
        &pg_url(&pg_addr, &database_name),
        &format!("redis://{redis_addr}"),
    );
    if let Some(prefix) = &options.key_prefix {
        env.insert("CACHE_KEY_PREFIX".to_owned(), prefix.clone());
    }
    env.extend(options.env.iter().cloned());
    let key_prefix = env["CACHE_KEY_PREFIX"].clone();
    let settings = Settings::from_source(&env).expect("test settings are valid");
    let app = Application::build(settings).await.expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let metrics_address = format!("http://127.0.0.1:{}", app.metrics_port());
    let state = app.state();
    let (signals, rx) = tokio::sync::mpsc::unbounded_channel();
    let run = tokio::spawn(app.run_until_stopped(rx));
    let documented = StatusesDocumented(state.metrics.clone());
    TestApp {
        address,
        metrics_address,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        state,
        database_name,
        key_prefix,
        pg_proxy,
        redis_proxy,
        signals,
        run,
        _database: owned_db,
        _documented: documented,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.metrics_address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sends a stop signal, exactly as SIGTERM would.
    pub fn signal(&self) {
        let _ = self.signals.send(StopSignal::Terminate);
    }

    pub fn pg_proxy(&self) -> &TcpProxy {
        self.pg_proxy
            .as_ref()
            .expect("app started with proxy_postgres")
    }

    pub fn redis_proxy(&self) -> &TcpProxy {
        self.redis_proxy
            .as_ref()
            .expect("app started with proxy_redis")
    }

    pub async fn wait_ready(&self) {
        self.wait_for("/ready", Duration::from_secs(20), |status, _| status == 200)
            .await;
    }

    /// Polls `path` until `check` holds, returning the body; panics with the last body.
    pub async fn wait_for(
        &self,
        path: &str,
        within: Duration,
        check: impl Fn(u16, &Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self.get_json(path).await;
            if check(status, &body) {
                return body;
            }
            if Instant::now() > deadline {
                panic!("{path} did not reach the expected state within {within:?}; last: {status} {body}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// How long [`TestApp::within_a_round`] waits: many rounds, even on a busy machine.
const ROUNDS_DEADLINE: Duration = Duration::from_secs(20);

impl TestApp {
    /// The number of the latest published round of checks.
    pub fn round(&self) -> u64 {
        self.state.verdict().0.round
    }

    /// Call right after changing a dependency: waits for a published snapshot where `holds`,
    /// and asserts that no round begun after the change was seen without it. Measured in
    /// rounds, not milliseconds: a round in flight at the change may miss it, the next one
    /// must not. For a recovery: one good round is enough.
    pub async fn within_a_round(&self, holds: impl Fn(&Snapshot, &Verdict) -> bool) {
        self.within_rounds(1, holds).await;
    }

    /// As [`Self::within_a_round`], for a dependency that fails: a failure counts only once
    /// it has lasted `HEALTH_CHECK_FAILURE_THRESHOLD` rounds, so that many rounds begun
    /// after the change may pass before it shows, and no more.
    pub async fn within_failure_threshold(&self, holds: impl Fn(&Snapshot, &Verdict) -> bool) {
        let rounds = u64::from(self.state.settings.health.failure_threshold);
        self.within_rounds(rounds, holds).await;
    }

    async fn within_rounds(&self, rounds: u64, holds: impl Fn(&Snapshot, &Verdict) -> bool) {
        let changed = Instant::now();
        let timeout = self.state.settings.health.check_timeout;
        let mut missed: std::collections::BTreeMap<u64, Duration> = Default::default();
        let seen = cartae_harness::process::wait_until(ROUNDS_DEADLINE, || {
            let (snapshot, verdict) = self.state.verdict();
            let held = holds(&snapshot, &verdict);
            if !held {
                let began = round_began(&snapshot, timeout);
                if began > changed {
                    missed.entry(snapshot.round).or_insert(began - changed);
                }
            }
            std::future::ready(held)
        })
        .await;
        assert!(seen, "not seen in {ROUNDS_DEADLINE:?}");
        if missed.len() as u64 >= rounds {
            panic!(
                "{} rounds began after the change without seeing it (allowed: {}): {missed:?}",
                missed.len(),
                rounds - 1
            );
        }
    }
}

/// When a round began, at the latest: its end less its slowest dependency check (a check
/// that failed without a round trip may have taken up to the timeout).
fn round_began(snapshot: &Snapshot, timeout: Duration) -> Instant {
    let took = |check: &DependencyCheck| {
        check
            .latency
            .map_or(timeout, |ms| Duration::from_secs_f64(ms / 1000.0))
    };
    let checks = &snapshot.checks;
    snapshot.checked_instant - took(&checks.database).max(took(&checks.redis))
}

/// Sums every sample of `name` whose labels contain all of `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}
