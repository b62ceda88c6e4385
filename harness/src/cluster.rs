//! Replicas of the release binary (three unless a drill names its own, which it may add to
//! or remove from), managed through the shipped rolling-update script.
//!
//! Replicas are started, replaced and rolled back only by `infra/scripts/rolling-update.sh`
//! with `RUNTIME=process`, so the script's own wait and rollback code is what the drill
//! proves. The cluster reaches PostgreSQL and Redis through proxies it controls.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::database::{pg_url, TestDatabase, PG_ADDR, REDIS_ADDR};
use crate::process::{free_port, is_alive, require_program, send_signal};
use crate::proxy::TcpProxy;
use crate::tier::tls::{postgres_url, redis_url, TlsServers};

/// Production timings scaled down for a drill that runs in minutes.
#[derive(Debug, Clone)]
pub struct Timings {
    /// The service's `HEALTH_CHECK_INTERVAL_MS`.
    pub check_interval: Duration,
    pub check_timeout: Duration,
    /// The service's `DRAIN_DELAY_MS`: longer than the load balancer's check interval
    /// plus timeout, as in production (15 s against HAProxy's 2 x 5 s + 3 s).
    pub drain_delay: Duration,
    /// The load balancer's active health check.
    pub lb_check_interval: Duration,
    pub lb_check_timeout: Duration,
    /// The script's pause between replicas: one load-balancer check interval and more,
    /// so a new replica is back in rotation before the next one leaves.
    pub rollout_pause: Duration,
    /// The script's limit on waiting for `/ready`.
    pub rollout_wait_max: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            // The timeout stays well above the brownout's 300 ms per PostgreSQL round
            // trip, as production's 2 s is, and the interval above the timeout: a slow
            // database only degrades the check. (At 500/450 ms, a check cut off by its
            // timeout left its answer to the next round, which then timed out in turn.)
            check_interval: Duration::from_millis(1000),
            check_timeout: Duration::from_millis(800),
            drain_delay: Duration::from_secs(3),
            lb_check_interval: Duration::from_secs(1),
            lb_check_timeout: Duration::from_millis(500),
            rollout_pause: Duration::from_secs(3),
            rollout_wait_max: Duration::from_secs(6),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    /// The loopback address it binds (`HOST`): 127.0.0.1, or one of its own when replicas
    /// share a port and are told apart by address, as containers are.
    pub host: String,
    pub port: u16,
    pub metrics_port: u16,
}

impl Instance {
    /// `api-N` on 127.0.0.1, on ports of its own.
    pub fn on_loopback(number: usize) -> Self {
        Self {
            name: format!("api-{number}"),
            host: "127.0.0.1".to_owned(),
            port: free_port(),
            metrics_port: free_port(),
        }
    }
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{}", self.host, self.port, path)
    }
    pub fn metrics_url(&self) -> String {
        format!("http://{}:{}/metrics", self.host, self.metrics_port)
    }
}

pub struct Cluster {
    pub instances: Vec<Instance>,
    pub state_dir: PathBuf,
    pub binary: PathBuf,
    pub timings: Timings,
    pub pg_proxy: TcpProxy,
    pub redis_proxy: TcpProxy,
    pub database: TestDatabase,
    pub key_prefix: String,
    /// Private TLS-only servers the replicas use instead of the machine's, for a drill
    /// over TLS; `None`: the machine's PostgreSQL and Redis, in plain text.
    pub tls: Option<TlsServers>,
    /// The signing keys a replica gets when the script (re)starts it: a rollout that
    /// rotates the secret changes them first, and a restart after a crash keeps them.
    jwt_keys: std::sync::Mutex<JwtKeys>,
    /// Set last in every replica's environment: how a drill points the replicas at a data
    /// tier of its own (a PostgreSQL cluster, Redis through Sentinel) instead of the proxies.
    extra_env: Vec<(String, String)>,
}

/// What a drill changes in the cluster it starts; the default is the plain drill.
#[derive(Default)]
pub struct ClusterOptions {
    /// Private TLS-only servers, reached through the proxies; `None`: the machine's.
    pub tls: Option<TlsServers>,
    /// Variables set after the dependencies' ones, so they override them.
    pub extra_env: Vec<(String, String)>,
    /// The replicas to start; empty: three, `api-1` to `api-3` on 127.0.0.1.
    pub instances: Vec<Instance>,
}

/// `JWT_SECRET` and `JWT_SECRET_PREVIOUS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtKeys {
    pub current: String,
    pub previous: Option<String>,
}

impl JwtKeys {
    /// The drill's own secret, with no previous key: what every scenario starts from.
    pub fn drill() -> Self {
        Self {
            current: DRILL_JWT_SECRET.to_owned(),
            previous: None,
        }
    }
}

/// Starts each instance at `$VERSION` on the ports chosen for it. `$VERSION` is the path of
/// an executable: the release binary, or a wrapper the drill writes for a bad version.
/// The drill's signing secret: random, as the service requires; public, as only a test's
/// may be.
pub const DRILL_JWT_SECRET: &str = "LElfRZ7YQooGhrbAt-5kVfC8JJIKcDWM2zQuL9UNXgF15pln";

const START_CMD: &str = r#"hosts=($API_HOSTS); ports=($API_PORTS); mports=($METRICS_PORTS); i=$((INSTANCE_INDEX - 1)); HOST=${hosts[$i]} PORT=${ports[$i]} METRICS_PORT=${mports[$i]} INSTANCE_ID=$INSTANCE exec "$VERSION" serve"#;

/// The script's migration step: `$VERSION migrate`, before any replica is replaced.
const MIGRATE_CMD: &str = r#"exec "$VERSION" migrate"#;

/// The release binary: `CARTAE_BIN`, or `target/release/cartae-database-api`.
pub fn release_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("CARTAE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target/release/cartae-database-api"));
    if !path.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --release` (scripts/test-all.sh does)",
            path.display()
        );
    }
    Ok(path)
}

impl Cluster {
    /// A fresh database, proxies to PostgreSQL and Redis, and three ready replicas.
    pub async fn start(timings: Timings, state_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(timings, state_dir, None).await
    }

    /// As [`Self::start`], with the replicas reaching `tls`'s servers over TLS (verified
    /// against its CA) through the proxies, when given.
    pub async fn start_with(
        timings: Timings,
        state_dir: &Path,
        tls: Option<TlsServers>,
    ) -> anyhow::Result<Self> {
        let options = ClusterOptions {
            tls,
            ..ClusterOptions::default()
        };
        Self::start_with_options(timings, state_dir, options).await
    }

    /// As [`Self::start`], changed by `options`.
    pub async fn start_with_options(
        timings: Timings,
        state_dir: &Path,
        options: ClusterOptions,
    ) -> anyhow::Result<Self> {
        let ClusterOptions {
            tls,
            extra_env,
            mut instances,
        } = options;
        require_program("curl", "apt-get install curl")?;
        let binary = release_binary()?;
        std::fs::create_dir_all(state_dir)?;
        let (database, pg_addr, redis_addr) = match &tls {
            None => (
                TestDatabase::create().await?,
                PG_ADDR.parse()?,
                REDIS_ADDR.parse()?,
            ),
            Some(servers) => (
                servers.postgres.create_database().await?,
                servers.postgres.addr(),
                servers.redis.addr(),
            ),
        };
        let pg_proxy = TcpProxy::start(pg_addr, false).await;
        let redis_proxy = TcpProxy::start(redis_addr, false).await;
        if instances.is_empty() {
            instances = (1..=3).map(Instance::on_loopback).collect();
        }
        let cluster = Self {
            instances,
            state_dir: state_dir.to_owned(),
            binary: binary.clone(),
            timings,
            key_prefix: format!("drill:{}:", uuid::Uuid::new_v4().simple()),
            pg_proxy,
            redis_proxy,
            database,
            tls,
            jwt_keys: std::sync::Mutex::new(JwtKeys::drill()),
            extra_env,
        };
        let outcome = cluster
            .script(&["--bootstrap", &binary.to_string_lossy()])
            .await?;
        if !outcome.success {
            bail!("bootstrap failed:\n{}", outcome.output);
        }
        Ok(cluster)
    }

    fn ms(d: Duration) -> String {
        d.as_millis().to_string()
    }

    /// The keys replicas (re)started from now on get.
    pub fn jwt_keys(&self) -> JwtKeys {
        // A poisoned lock still holds a whole value: nothing panics mid-assignment.
        self.jwt_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets the keys replicas (re)started from now on get; running ones keep theirs.
    pub fn set_jwt_keys(&self, keys: JwtKeys) {
        *self.jwt_keys.lock().unwrap_or_else(|e| e.into_inner()) = keys;
    }

    /// Runs the rolling-update script with the process runtime; the replicas inherit this
    /// environment.
    pub async fn script(&self, args: &[&str]) -> anyhow::Result<ScriptOutcome> {
        let t = &self.timings;
        let keys = self.jwt_keys();
        let join =
            |f: fn(&Instance) -> String| self.instances.iter().map(f).collect::<Vec<_>>().join(" ");
        let mut command = tokio::process::Command::new("bash");
        command
            .arg(crate::repo_root().join("infra/scripts/rolling-update.sh"))
            .args(args)
            .env("RUNTIME", "process")
            .env("INSTANCES", join(|i| i.name.clone()))
            .env("API_HOSTS", join(|i| i.host.clone()))
            .env("READY_URLS", join(|i| i.url("/ready")))
            .env("API_PORTS", join(|i| i.port.to_string()))
            .env("METRICS_PORTS", join(|i| i.metrics_port.to_string()))
            .env("STATE_DIR", &self.state_dir)
            .env("BACKUP_DIR", self.state_dir.join("backup"))
            .env("PROCESS_START_CMD", START_CMD)
            .env("PROCESS_MIGRATE_CMD", MIGRATE_CMD)
            .env("WAIT_MAX", t.rollout_wait_max.as_secs().max(1).to_string())
            .env("PAUSE", t.rollout_pause.as_secs().to_string())
            .env("POLL_INTERVAL", "1")
            .env("STOP_TIMEOUT", (t.drain_delay.as_secs() + 10).to_string())
            .envs(self.dependency_env())
            .env("CACHE_KEY_PREFIX", &self.key_prefix)
            .env("JWT_SECRET", &keys.current)
            // The balancers run on loopback: their X-Forwarded-For names the client.
            .env("TRUSTED_PROXIES", "127.0.0.0/8")
            .env("HEALTH_CHECK_INTERVAL_MS", Self::ms(t.check_interval))
            .env("HEALTH_CHECK_TIMEOUT_MS", Self::ms(t.check_timeout))
            .env("DRAIN_DELAY_MS", Self::ms(t.drain_delay))
            .env("SHUTDOWN_TIMEOUT_MS", "5000")
            .env("POSTGRES_POOL_MAX", "10")
            // The drill's load is one user's: its writes may take the whole pool, as many
            // users' would (the pool-saturation row). The per-user bound, half the pool by
            // default, has its own API test (overload.rs).
            .env("MAX_WRITES_PER_USER", "10")
            .env("LOG_LEVEL", "info")
            .env("LOG_FORMAT", "json")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        match &keys.previous {
            Some(previous) => command.env("JWT_SECRET_PREVIOUS", previous),
            // Not inherited from whoever runs the drill either.
            None => command.env_remove("JWT_SECRET_PREVIOUS"),
        };
        let output = command.output().await.context("run rolling-update.sh")?;
        Ok(ScriptOutcome {
            success: output.status.success(),
            code: output.status.code(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }

    /// How the replicas reach PostgreSQL and Redis: through the proxies, over TLS verified
    /// against the run's CA (the certificate names 127.0.0.1) when the cluster has servers.
    fn dependency_env(&self) -> Vec<(&'static str, String)> {
        let pg = self.pg_proxy.addr;
        match &self.tls {
            None => vec![
                ("DATABASE_URL", pg_url(&pg.to_string(), &self.database.name)),
                ("REDIS_URL", format!("redis://{}", self.redis_proxy.addr)),
            ],
            Some(servers) => {
                let ca = servers.ca(true);
                let params = format!("sslmode=verify-full&sslrootcert={ca}");
                vec![
                    (
                        "DATABASE_URL",
                        postgres_url(pg, &self.database.name, &params),
                    ),
                    ("REDIS_URL", redis_url(self.redis_proxy.addr)),
                    ("REDIS_CA_CERT", ca),
                ]
            }
        }
    }

    /// The PID the script recorded for an instance: only to clean up, never as evidence.
    fn recorded_pid(&self, index: usize) -> Option<i32> {
        let file = self
            .state_dir
            .join(format!("{}.pid", self.instances[index].name));
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// The process that answers on an instance's port, as the operating system sees it.
    pub async fn identity(
        &self,
        client: &reqwest::Client,
        index: usize,
    ) -> anyhow::Result<Identity> {
        let instance = &self.instances[index];
        // `/health/detailed` answers (200 or 503) in every phase but a dead process.
        let body: serde_json::Value = client
            .get(instance.url("/health/detailed"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .with_context(|| format!("{}: /health/detailed", instance.name))?
            .json()
            .await?;
        let pid = body["system"]["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .with_context(|| format!("{}: no system.pid in /health/detailed", instance.name))?;
        Identity::of(pid).with_context(|| format!("{}: pid {pid}", instance.name))
    }

    /// Every instance's identity, or why it could not be read.
    pub async fn identities(&self, client: &reqwest::Client) -> Vec<Result<Identity, String>> {
        let all = (0..self.instances.len()).map(|i| self.identity(client, i));
        futures::future::join_all(all)
            .await
            .into_iter()
            .map(|r| r.map_err(|e| format!("{e:#}")))
            .collect()
    }

    /// SIGKILL, no drain: a crash. Kills the process that really serves the port (and its
    /// group), and returns it.
    pub async fn crash(&self, client: &reqwest::Client, index: usize) -> anyhow::Result<Identity> {
        let victim = self.identity(client, index).await?;
        send_signal(-victim.pid, "KILL");
        send_signal(victim.pid, "KILL");
        Ok(victim)
    }

    /// Starts every instance that is not running, at the version it last ran.
    pub async fn restart_missing(&self) -> anyhow::Result<()> {
        let outcome = self
            .script(&["--bootstrap", &self.binary.to_string_lossy()])
            .await?;
        if !outcome.success {
            bail!("restart failed:\n{}", outcome.output);
        }
        Ok(())
    }

    pub async fn wait_all_ready(&self, client: &reqwest::Client, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.ready_count(client).await == self.instances.len() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub async fn ready_count(&self, client: &reqwest::Client) -> usize {
        let probes = self.instances.iter().map(|i| {
            let request = client
                .get(i.url("/ready"))
                .timeout(Duration::from_millis(500))
                .send();
            async move { request.await.is_ok_and(|r| r.status() == 200) }
        });
        futures::future::join_all(probes)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count()
    }

    /// Copies the release binary under another name: a "new version" for a rollout.
    pub fn version(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.state_dir.join(name);
        if !path.exists() {
            std::fs::copy(&self.binary, &path)?;
        }
        Ok(path)
    }

    /// A version that starts but never becomes ready: its replicas' database is
    /// unreachable, so they never finish starting and `/ready` stays 503 (`starting`). Its
    /// migration step (nothing to apply) succeeds, so the script goes on to replace.
    pub fn broken_version(&self) -> anyhow::Result<PathBuf> {
        let path = self.state_dir.join("broken-version");
        let script = format!(
            "#!/bin/sh\n[ \"$1\" = migrate ] && exec '{0}' migrate\n\
             DATABASE_URL=postgres://postgres@127.0.0.1:1/none?sslmode=disable exec '{0}' \"$@\"\n",
            self.binary.display()
        );
        std::fs::write(&path, script)?;
        Command::new("chmod").args(["+x"]).arg(&path).status()?;
        Ok(path)
    }

    /// Every log line of every replica, for a person reading a failure.
    pub fn logs(&self) -> String {
        self.instances
            .iter()
            .map(|i| {
                let log = std::fs::read_to_string(self.state_dir.join(format!("{}.log", i.name)))
                    .unwrap_or_default();
                format!("===== {} =====\n{log}", i.name)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Starts `added` beside the running replicas, as `--scale` up does, and waits until
    /// every replica is ready.
    pub async fn add_instances(&mut self, added: Vec<Instance>) -> anyhow::Result<()> {
        self.instances.extend(added);
        self.restart_missing().await
    }

    /// Stops the replicas `names` together with `signal` (TERM: they drain, as `--scale`
    /// down stops the containers it removes) and waits up to `within` for them to exit;
    /// then they are no longer the cluster's. Returns each with how long it took to exit.
    pub async fn remove_instances(
        &mut self,
        names: &[&str],
        signal: &str,
        within: Duration,
    ) -> anyhow::Result<Vec<(Instance, Duration)>> {
        let mut pids = Vec::new();
        for name in names {
            let index = self
                .instances
                .iter()
                .position(|i| i.name == *name)
                .with_context(|| format!("no replica {name}"))?;
            pids.push(
                self.recorded_pid(index)
                    .with_context(|| format!("{name}: no pid file"))?,
            );
        }
        let sent = Instant::now();
        for &pid in &pids {
            // The group first: the script started each replica as a process-group leader.
            if !send_signal(-pid, signal) {
                send_signal(pid, signal);
            }
        }
        let exits = pids.iter().map(|&pid| async move {
            crate::process::wait_until(within, || async { !is_alive(pid) })
                .await
                .then(|| sent.elapsed())
        });
        let exits = futures::future::join_all(exits).await;
        let mut removed = Vec::new();
        for (name, exit) in names.iter().zip(exits) {
            let took =
                exit.with_context(|| format!("{name} still running {within:?} after SIG{signal}"))?;
            let _ = std::fs::remove_file(self.state_dir.join(format!("{name}.pid")));
            let index = self
                .instances
                .iter()
                .position(|i| i.name == *name)
                .with_context(|| format!("no replica {name}"))?;
            removed.push((self.instances.remove(index), took));
        }
        Ok(removed)
    }

    pub fn stop_all(&self) {
        for index in 0..self.instances.len() {
            if let Some(pid) = self.recorded_pid(index) {
                if is_alive(pid) {
                    send_signal(-pid, "KILL");
                    send_signal(pid, "KILL");
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// A process as the kernel knows it. The pid alone could be reused; with its start time
/// it names one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot.
    pub start_ticks: u64,
    /// The executable it runs (`/proc/<pid>/exe`): the "version" of a rollout.
    pub exe: PathBuf,
}

impl Identity {
    pub fn of(pid: i32) -> anyhow::Result<Self> {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // The command name (field 2) may hold spaces; fields after its ")" are plain.
        let start_ticks = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(19))
            .and_then(|t| t.parse().ok())
            .context("no start time in /proc/<pid>/stat")?;
        Ok(Self {
            pid,
            start_ticks,
            exe,
        })
    }

    /// The executable's file name, e.g. `cartae-v2`.
    pub fn version(&self) -> String {
        self.exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

pub struct ScriptOutcome {
    pub success: bool,
    pub code: Option<i32>,
    pub output: String,
}
