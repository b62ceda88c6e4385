//! (Long: one drill of nine scenarios sharing one stack's helpers; split by scenario, each
//! file would import them all back.)
//!
//! The drill on a real Docker engine: the shipped compose stack, up with the image built
//! from the shipped Dockerfile, its load sent through Traefik's published port, and each
//! scenario an operator's own command (`docker compose --scale`, `rolling-update.sh`,
//! `docker kill`, `docker pause`, `docker network disconnect`). Every request's first
//! attempt is counted, as on loopback.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use super::shared::{check_write_counts, counted, judge, killed_replica_excuse, Window};
use crate::engine::docker::{docker, docker_with, health, inspect};
use crate::engine::stack::Stack;
use crate::load::{Kind, LoadRun, LoadSpec, Outcome, Workload};
use crate::process::{send_signal, wait_until, wait_until_every};
use crate::report::Row;

pub const BALANCER: &str = "Traefik (Docker provider)";

/// Requests per second through Traefik: under its shipped rate limit (100/s per client
/// address; every request here comes from the one address of Docker's port proxy).
const RATE: f64 = 40.0;

const NO_FAILURE: &str = "none";

/// Waits for a condition that asks Traefik or the engine, once a second: a check through
/// Traefik costs 20 requests of its rate limit.
async fn until<F, Fut>(within: Duration, check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until_every(Duration::from_secs(1), within, check).await
}

pub struct EngineDrill {
    pub stack: Stack,
    client: reqwest::Client,
    workload: Workload,
}

/// A client for Traefik's HTTPS entry point, which serves its default self-signed
/// certificate; no cookie store, so the sticky cookie never pins it.
pub fn https_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()?)
}

impl EngineDrill {
    /// `up` of the stack, then waits until Traefik routes to the three replicas and
    /// Prometheus scrapes them; the time that took.
    pub async fn start(image: &str, dir: &Path) -> anyhow::Result<(Self, Duration)> {
        let stack = Stack::prepare(image, dir).await?;
        let started = Instant::now();
        stack.up().await?;
        let client = https_client()?;
        if !until(Duration::from_secs(240), || async {
            routed(&client, &stack).await.len() == 3
        })
        .await
        {
            stack.save_logs().await;
            bail!(
                "Traefik did not route to 3 replicas within 240 s of `up` (logs in {})",
                stack.dir.display()
            );
        }
        let up = started.elapsed();
        let workload = Workload::prepare(&client, &stack.url("")).await?;
        let drill = Self {
            stack,
            client,
            workload,
        };
        drill.until_scraped(3, Duration::from_secs(60)).await?;
        Ok((drill, up))
    }

    fn load(&self, spec: LoadSpec) -> LoadRun {
        LoadRun::start(
            self.client.clone(),
            self.stack.url(""),
            self.workload.clone(),
            LoadSpec {
                rate: RATE,
                workers: 4,
                ..spec
            },
        )
    }

    /// Waits until the load has had `count` more successes (at most 20 s).
    async fn successes(&self, load: &LoadRun, count: usize) {
        let target = load.successes() + count;
        wait_until(Duration::from_secs(20), || async {
            load.successes() >= target
        })
        .await;
    }

    /// The replicas Prometheus scrapes as up, found by its DNS discovery.
    pub async fn scraped(&self) -> anyhow::Result<usize> {
        let url = self.stack.prometheus_url("/api/v1/query");
        let body: Value = self
            .client
            .get(url)
            .query(&[("query", "count(up{job=\"cartae-api\"} == 1)")])
            .send()
            .await?
            .json()
            .await?;
        Ok(body["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    async fn until_scraped(&self, count: usize, within: Duration) -> anyhow::Result<()> {
        let reached = until(within, || async {
            self.scraped().await.is_ok_and(|n| n == count)
        })
        .await;
        if !reached {
            bail!(
                "Prometheus did not scrape {count} replicas within {within:?} (it scrapes {:?})",
                self.scraped().await.ok()
            );
        }
        Ok(())
    }

    async fn until_routed(&self, count: usize, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        until(within, || async {
            routed(&self.client, &self.stack).await.len() == count
        })
        .await
        .then(|| started.elapsed())
    }

    /// The time since `since` until Traefik routes to the replica `hostname` (`routed`),
    /// or no longer does; `None` past `within`.
    async fn until_routing(
        &self,
        hostname: &str,
        routed_to: bool,
        since: Instant,
        within: Duration,
    ) -> Option<Duration> {
        until(within, || async {
            routed(&self.client, &self.stack).await.contains(hostname) == routed_to
        })
        .await
        .then(|| since.elapsed())
    }

    /// The scale row: `--scale database-api=5`, then `=2`, under load.
    pub async fn scale(&self) -> anyhow::Result<Row> {
        let load = self.load(LoadSpec::default());
        self.successes(&load, 40).await;
        let mut problems = Vec::new();
        let started = Instant::now();
        self.stack.scale(5).await?;
        let up = self.until_routed(5, Duration::from_secs(90)).await;
        if up.is_none() {
            problems.push("Traefik did not route to 5 replicas within 90 s".to_owned());
        }
        if let Err(e) = self.until_scraped(5, Duration::from_secs(60)).await {
            problems.push(e.to_string());
        }
        self.successes(&load, 40).await;
        let down_at = Instant::now();
        self.stack.scale(2).await?;
        let down = self.until_routed(2, Duration::from_secs(60)).await;
        if down.is_none() {
            problems.push("Traefik did not route to exactly 2 replicas within 60 s".to_owned());
        }
        if let Err(e) = self.until_scraped(2, Duration::from_secs(60)).await {
            problems.push(e.to_string());
        }
        self.successes(&load, 40).await;
        let outcomes = load.stop().await?;
        let mut r = counted("scale: 3 → 5 → 2", BALANCER, &outcomes);
        r.problems = problems;
        judge(&mut r, &outcomes, NO_FAILURE, |_| false);
        r.detection = up;
        r.recovery = down;
        r.notes = format!(
            "`docker compose up -d --scale database-api=5`, then `=2` (compose drains the 3 \
             it removes: SIGTERM, {:.0} s in all); detection = until Traefik routes to 5, \
             recovery = from the scale-down until it routes to 2; Prometheus followed both \
             through DNS, no file edited",
            down_at.duration_since(started).as_secs_f64()
        );
        // Back to three for the next scenario.
        self.stack.scale(3).await?;
        self.until_routed(3, Duration::from_secs(90))
            .await
            .context("back to 3 replicas")?;
        Ok(r)
    }

    /// The crash row: the replica's process killed (SIGKILL from the host, to the PID
    /// Docker reports) under load; its restart policy brings it back, and Traefik routes
    /// to it again. Not `docker kill`: Docker counts that as an operator's stop and does
    /// not restart the container (seen here: RestartCount stayed 0).
    pub async fn crash(&self) -> anyhow::Result<Row> {
        let victim = self.stack.replicas().await?.remove(0);
        let restarts_before = restart_count(&victim).await?;
        let load = self.load(LoadSpec {
            retry_writes: true,
            ..LoadSpec::default()
        });
        self.successes(&load, 40).await;
        let hostname = inspect(&victim, "{{.Config.Hostname}}").await?;
        let pid: i32 = inspect(&victim, "{{.State.Pid}}").await?.parse()?;
        let killed = Instant::now();
        send_signal(pid, "KILL");
        // Back when Docker restarted it and Traefik routes to it again.
        let back = until(Duration::from_secs(60), || async {
            restart_count(&victim).await.unwrap_or(0) > restarts_before
                && health(&victim).await.is_ok_and(|h| h == "healthy")
                && routed(&self.client, &self.stack).await.contains(&hostname)
        })
        .await
        .then(|| killed.elapsed());
        let window = Window::of(&load, killed, Instant::now());
        self.successes(&load, 40).await;
        let outcomes = load.stop().await?;
        let mut r = counted("crash (SIGKILL)", BALANCER, &outcomes);
        r.recovery = back;
        if back.is_none() {
            r.problems.push(
                "the killed replica was not restarted and routed again within 60 s".to_owned(),
            );
        }
        let in_flight = killed_replica_excuse(window);
        // Restarted at once by its policy, the replica listens again before Traefik's Docker
        // provider has seen its health go back to "starting": what it is sent then it
        // answers 503 with Retry-After (not ready), which tells the client when to retry.
        let restarting = |o: &Outcome| {
            window.overlaps(o)
                && o.first.instance.as_deref() == Some(hostname.as_str())
                && o.first.status == Some(503)
                && o.first.retry_after
        };
        judge(
            &mut r,
            &outcomes,
            "writes in flight to the killed replica may get no answer or a 502-504; the \
             client retries them with their key, and every retry must succeed. Requests the \
             restarted replica answers 503 with Retry-After (not ready yet) before Traefik \
             sees its health reset. Nothing else",
            |o| in_flight(o) || restarting(o),
        );
        self.check_writes(&outcomes, &mut r.problems).await?;
        r.notes = format!(
            "SIGKILL to the container's process; `restart: unless-stopped` restarted it \
             (RestartCount {} → {}); recovery = until Docker calls it healthy and Traefik \
             routes to it again",
            restarts_before,
            restart_count(&victim).await?
        );
        Ok(r)
    }

    /// The rolling-update row: the shipped script, compose runtime, to `target` and back
    /// to `previous`, under load. At least two replicas must answer in every second.
    pub async fn rolling_update(&self, target: &str, previous: &str) -> anyhow::Result<Row> {
        let load = self.load(LoadSpec {
            // Two updates of three replicas, each drained for 15 s: minutes.
            max_duration: Duration::from_secs(600),
            ..LoadSpec::default()
        });
        self.successes(&load, 40).await;
        let started = Instant::now();
        let mut problems = Vec::new();
        for image in [target, previous] {
            let (ok, log) = self.rolling_update_script(image, &[]).await?;
            std::fs::write(
                self.stack.dir.join(format!(
                    "rolling-update-{}.log",
                    image.replace([':', '/'], "_")
                )),
                &log,
            )?;
            if !ok {
                problems.push(format!(
                    "rolling-update.sh to {image} failed: {}",
                    tail(&log)
                ));
            }
            let images = self.replica_images().await?;
            if images.iter().any(|i| i != image) || images.len() != 3 {
                problems.push(format!(
                    "after the update to {image} the replicas run {images:?}"
                ));
            }
        }
        let took = started.elapsed();
        self.successes(&load, 40).await;
        let outcomes = load.stop().await?;
        let mut r = counted(
            "rolling update (rolling-update.sh, compose)",
            BALANCER,
            &outcomes,
        );
        r.problems = problems;
        judge(&mut r, &outcomes, NO_FAILURE, |_| false);
        let fewest = fewest_answering(&outcomes, Duration::from_secs(2));
        if fewest < 2 {
            r.problems.push(format!(
                "only {fewest} replica(s) answered in some 2-second window"
            ));
        }
        r.recovery = Some(took);
        r.notes = format!(
            "to a newly built tag and back, 3 replicas each way; at least {fewest} replicas \
             answered in every 2-second window; recovery = both updates"
        );
        Ok(r)
    }

    /// Runs `infra/scripts/rolling-update.sh TARGET` against the stack; whether it exited
    /// 0, and its output.
    async fn rolling_update_script(
        &self,
        target: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<(bool, String)> {
        let script = crate::repo_root().join("infra/scripts/rolling-update.sh");
        let output = tokio::process::Command::new(script)
            .arg(target)
            .env("COMPOSE_ENV_FILE", &self.stack.env_file)
            .env("BACKUP_DIR", self.stack.dir.join("rollback"))
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output()
            .await?;
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok((output.status.success(), log))
    }

    /// The failed-rollout row: an image whose replicas never become ready. The script must
    /// roll back by itself (exit 1) and no request may fail.
    pub async fn failed_rollout(&self, broken: &str, current: &str) -> anyhow::Result<Row> {
        let load = self.load(LoadSpec::default());
        self.successes(&load, 40).await;
        let started = Instant::now();
        let (ok, log) = self
            .rolling_update_script(broken, &[("WAIT_MAX", "20"), ("MIGRATE", "0")])
            .await?;
        std::fs::write(self.stack.dir.join("failed-rollout.log"), &log)?;
        let took = started.elapsed();
        self.successes(&load, 40).await;
        let outcomes = load.stop().await?;
        let mut r = counted("failed rollout (never ready)", BALANCER, &outcomes);
        if ok {
            r.problems
                .push("rolling-update.sh exited 0 with an image that is never ready".to_owned());
        }
        let images = self.replica_images().await?;
        if images.len() != 3 || images.iter().any(|i| i != current) {
            r.problems
                .push(format!("after the rollback the replicas run {images:?}"));
        }
        judge(&mut r, &outcomes, NO_FAILURE, |_| false);
        r.recovery = Some(took);
        r.notes = "an image whose `serve` exits at once (a bad flag), restarted in a loop by its \
                   policy; the script waited WAIT_MAX 20 s, removed it and exited 1; recovery \
                   = the whole script"
            .to_owned();
        Ok(r)
    }

    /// The images the running replicas were created from.
    async fn replica_images(&self) -> anyhow::Result<Vec<String>> {
        let mut images = Vec::new();
        for id in self.stack.replicas().await? {
            images.push(inspect(&id, "{{.Config.Image}}").await?);
        }
        Ok(images)
    }

    /// The partition row: one replica disconnected from the data network, then
    /// reconnected. It turns unready and Traefik takes it out; it comes back after.
    pub async fn partition(&self) -> anyhow::Result<Row> {
        let victim = self.stack.replicas().await?.remove(0);
        let hostname = inspect(&victim, "{{.Config.Hostname}}").await?;
        let load = self.load(LoadSpec {
            retry_writes: true,
            ..LoadSpec::default()
        });
        self.successes(&load, 40).await;
        let cut = Instant::now();
        docker(&["network", "disconnect", "cartae-data-network", &victim]).await?;
        let out = self
            .until_routing(&hostname, false, cut, Duration::from_secs(60))
            .await;
        let window = Window::of(&load, cut, Instant::now());
        self.successes(&load, 40).await;
        let reconnected = Instant::now();
        docker(&["network", "connect", "cartae-data-network", &victim]).await?;
        let back = self
            .until_routing(&hostname, true, reconnected, Duration::from_secs(60))
            .await;
        self.successes(&load, 40).await;
        let outcomes = load.stop().await?;
        let mut r = counted("partition (data network)", BALANCER, &outcomes);
        r.detection = out;
        r.recovery = back;
        if out.is_none() {
            r.problems
                .push("Traefik kept routing to the cut replica for 60 s".to_owned());
        }
        if back.is_none() {
            r.problems
                .push("the reconnected replica was not routed again within 60 s".to_owned());
        }
        let excused = |o: &Outcome| {
            window.overlaps(o)
                && o.first.instance.as_deref() == Some(hostname.as_str())
                && o.first.status == Some(503)
                && o.first.retry_after
                && (o.kind != Kind::Write || o.ok())
        };
        judge(
            &mut r,
            &outcomes,
            "requests the cut replica answered before Traefik took it out: 503 with \
             Retry-After (it cannot reach PostgreSQL); writes among them retried with their \
             key must succeed",
            excused,
        );
        self.check_writes(&outcomes, &mut r.problems).await?;
        r.notes = "`docker network disconnect cartae-data-network`; detection = until Traefik \
                   stops routing to it, recovery = from `connect` until routed again"
            .to_owned();
        Ok(r)
    }

    /// The frozen-replica row: `docker pause` of a replica under load for 12 s. It keeps
    /// its connections and never answers: Traefik's check (1 s, timeout 3 s) takes it
    /// out, and what was already sent to it is released by the transport's 6 s
    /// response-header bound: a GET is replayed on another replica, a write gets a 504
    /// and its client retries it with its key. After `unpause` it is routed again.
    pub async fn frozen(&self) -> anyhow::Result<Row> {
        let victim = self.stack.replicas().await?.remove(0);
        let hostname = inspect(&victim, "{{.Config.Hostname}}").await?;
        let load = self.load(LoadSpec {
            retry_writes: true,
            ..LoadSpec::default()
        });
        self.successes(&load, 40).await;
        let paused = Instant::now();
        docker(&["pause", &victim]).await?;
        let out = self
            .until_routing(&hostname, false, paused, Duration::from_secs(30))
            .await;
        tokio::time::sleep(Duration::from_secs(12).saturating_sub(paused.elapsed())).await;
        let unpaused = Instant::now();
        docker(&["unpause", &victim]).await?;
        let back = self
            .until_routing(&hostname, true, unpaused, Duration::from_secs(60))
            .await;
        let window = Window::of(&load, paused, unpaused);
        self.successes(&load, 40).await;
        let outcomes = load.stop().await?;
        let mut r = counted("frozen replica (docker pause 12 s)", BALANCER, &outcomes);
        r.detection = out;
        r.recovery = back;
        if out.is_none() {
            r.problems
                .push("Traefik kept routing to the paused replica for 30 s".to_owned());
        }
        if back.is_none() {
            r.problems
                .push("the unpaused replica was not routed again within 60 s".to_owned());
        }
        let slowest = outcomes.iter().map(|o| o.latency).max().unwrap_or_default();
        if slowest > Duration::from_secs(8) {
            r.problems.push(format!(
                "a request waited {:.1} s: nothing released it at the 6 s bound",
                slowest.as_secs_f64()
            ));
        }
        judge(
            &mut r,
            &outcomes,
            "writes sent to the paused replica before Traefik took it out: a 504 at 6 s, \
             retried with their key, and every retry must succeed. Reads: none (replayed \
             on another replica)",
            killed_replica_excuse(window),
        );
        self.check_writes(&outcomes, &mut r.problems).await?;
        r.notes = format!(
            "detection = until Traefik stops routing to it; slowest request {:.1} s (the \
             6 s bound, then a replay); recovery = from `unpause` until routed again",
            slowest.as_secs_f64()
        );
        Ok(r)
    }

    /// The OOM row: one replica's memory limit lowered to a few MiB above what it uses
    /// (`docker update`, as an operator tightening limits would), then 64 request bodies
    /// of 1 MB sent to it at once, directly on the app network from a throwaway
    /// container, each held 100 KB short of its end. The kernel kills it (exit 137, OOMKilled), its restart policy brings it
    /// back, and Traefik routes to it again; the load through Traefik is judged as a crash.
    pub async fn out_of_memory(&self) -> anyhow::Result<Row> {
        let victim = self.stack.replicas().await?.remove(0);
        let hostname = inspect(&victim, "{{.Config.Hostname}}").await?;
        let address = inspect(
            &victim,
            "{{(index .NetworkSettings.Networks \"cartae-app-network\").IPAddress}}",
        )
        .await?;
        let restarts_before = restart_count(&victim).await?;
        let load = self.load(LoadSpec {
            retry_writes: true,
            ..LoadSpec::default()
        });
        self.successes(&load, 40).await;
        let used = memory_usage(&victim).await?;
        let limit = used + 8 * 1024 * 1024;
        docker(&[
            "update",
            "--memory",
            &limit.to_string(),
            "--memory-swap",
            &limit.to_string(),
            &victim,
        ])
        .await?;
        let since = docker(&["info", "--format", "{{.SystemTime}}"]).await?;
        let pushed = Instant::now();
        let push = PUSH_BODIES.replace("ADDRESS", &address);
        let _ = docker(&[
            "run",
            "--rm",
            "--network",
            "cartae-app-network",
            "cartae-local/debian:bookworm",
            "bash",
            "-c",
            &push,
        ])
        .await;
        // The engine's own record of the kernel's kill.
        let oom_events = docker(&[
            "events",
            "--since",
            &since,
            "--until",
            "0s",
            "--filter",
            &format!("container={victim}"),
            "--filter",
            "event=oom",
            "--format",
            "{{.Action}}",
        ])
        .await?;
        let oom_killed = oom_events.lines().any(|l| l == "oom");
        // The operator puts the limit back; restarted under the tight one, the replica
        // would count itself near its limit and stay unready.
        docker(&["update", "--memory", "1g", "--memory-swap", "1g", &victim]).await?;
        let back = until(Duration::from_secs(60), || async {
            restart_count(&victim).await.unwrap_or(0) > restarts_before
                && health(&victim).await.is_ok_and(|h| h == "healthy")
                && routed(&self.client, &self.stack).await.contains(&hostname)
        })
        .await
        .then(|| pushed.elapsed());
        let window = Window::of(&load, pushed, Instant::now());
        self.successes(&load, 40).await;
        let outcomes = load.stop().await?;
        let mut r = counted("OOM kill (memory limit)", BALANCER, &outcomes);
        r.recovery = back;
        if !oom_killed {
            r.problems
                .push("the engine recorded no OOM kill of the pushed replica".to_owned());
        }
        if back.is_none() {
            r.problems.push(
                "the OOM-killed replica was not restarted and routed again within 60 s".to_owned(),
            );
        }
        judge(
            &mut r,
            &outcomes,
            "as for a crash: writes in flight to the killed replica may get no answer or a \
             502-504, retried with their key; every retry must succeed. Reads: none",
            killed_replica_excuse(window),
        );
        self.check_writes(&outcomes, &mut r.problems).await?;
        r.notes = format!(
            "limit lowered to {} MiB ({} MiB in use), then 64 bodies of 1 MB held 100 KB short on the \
             app network; the engine's `oom` event, RestartCount {restarts_before} → {}; \
             recovery = until Traefik routes to it again",
            limit / (1024 * 1024),
            used / (1024 * 1024),
            restart_count(&victim).await?
        );
        Ok(r)
    }

    /// Kills a data-tier container like a lost machine: `docker kill`, which Docker
    /// counts as an operator's stop, so its restart policy leaves it down until `revive`.
    async fn lose(&self, container: &str) -> anyhow::Result<()> {
        docker(&["kill", container]).await.map(drop)
    }

    /// Brings back what `lose` took.
    async fn revive(&self, container: &str) -> anyhow::Result<()> {
        docker(&["start", container]).await.map(drop)
    }

    /// The PostgreSQL row: `docker kill` of the Patroni primary under load. Writes answer
    /// 503 with Retry-After until the standby is promoted, then are acknowledged again;
    /// nothing acknowledged is lost (synchronous replication: RPO 0). The old primary then
    /// comes back and rejoins as the standby.
    pub async fn postgres_primary_killed(&self) -> anyhow::Result<Row> {
        let old = self.primary().await?;
        let old_id = self.stack.container(&old).await?;
        let load = self.load(LoadSpec {
            retry_writes: true,
            // 200 ms apart: 60 s before a write is given up (Patroni's leader key lives
            // 20 s, and its promotion has taken up to 36 s here).
            write_attempts: 300,
            ..LoadSpec::default()
        });
        self.successes(&load, 40).await;
        let killed = Instant::now();
        self.lose(&old_id).await?;
        let promoted = until(Duration::from_secs(60), || async {
            self.primary().await.is_ok_and(|p| p != old)
        })
        .await
        .then(|| killed.elapsed());
        // Settled once Traefik routes to every replica again: each must first see the new
        // primary, and pass Traefik's check and Docker's.
        let settled = until(Duration::from_secs(90), || async {
            routed(&self.client, &self.stack).await.len() == 3
        })
        .await;
        self.successes(&load, 40).await;
        let window = Window::of(&load, killed, Instant::now());
        let outcomes = load.stop().await?;
        let mut r = counted("PostgreSQL primary killed (Patroni)", BALANCER, &outcomes);
        if !settled {
            r.problems.push(
                "Traefik did not route to every replica within 90 s of the promotion".to_owned(),
            );
        }
        r.detection = promoted;
        if promoted.is_none() {
            r.problems
                .push("Patroni promoted no standby within 60 s".to_owned());
        }
        judge(
            &mut r,
            &outcomes,
            "only 503, only for requests in flight between the kill and the moment Traefik \
             routes to every replica again: from a replica with Retry-After (no writable \
             primary), or from Traefik itself while its check found no replica ready; every \
             such write retried with its Idempotency-Key until acknowledged",
            |o| {
                window.overlaps(o)
                    && o.first.status == Some(503)
                    && (o.first.retry_after || o.first.instance.is_none())
                    && (o.kind != Kind::Write || o.ok())
            },
        );
        self.check_writes(&outcomes, &mut r.problems).await?;
        let revived = Instant::now();
        self.revive(&old_id).await?;
        let rejoined = until(Duration::from_secs(90), || async {
            self.sync_standby().await.ok().flatten().as_deref() == Some(old.as_str())
        })
        .await
        .then(|| revived.elapsed());
        r.recovery = rejoined;
        if rejoined.is_none() {
            r.problems.push(format!(
                "{old} did not rejoin as the synchronous standby within 90 s"
            ));
        }
        let from_traefik = outcomes
            .iter()
            .filter(|o| !o.first_ok() && o.first.instance.is_none())
            .count();
        let failed = outcomes.iter().filter(|o| !o.first_ok()).count();
        r.notes = format!(
            "`docker kill` of {old} (Docker leaves it down: a lost machine); detection = until \
             the other node is primary; {failed} first attempts answered 503, {from_traefik} \
             of them by Traefik with no replica ready; recovery = from `docker start` until \
             {old} is the synchronous standby again; RPO 0 (every acknowledged write on the \
             new primary)"
        );
        Ok(r)
    }

    /// The Redis row: `docker kill` of the Redis master, kept down; the Sentinels promote
    /// the replica, and no request fails (Redis is a cache: PostgreSQL answers meanwhile).
    pub async fn redis_master_killed(&self) -> anyhow::Result<Row> {
        let master = self.redis_master().await?;
        let master_id = self.stack.container(&master).await?;
        let load = self.load(LoadSpec::default());
        self.successes(&load, 40).await;
        let killed = Instant::now();
        self.lose(&master_id).await?;
        let promoted = until(Duration::from_secs(60), || async {
            self.redis_master().await.is_ok_and(|m| m != master)
        })
        .await
        .then(|| killed.elapsed());
        self.successes(&load, 40).await;
        let outcomes = load.stop().await?;
        let mut r = counted("Redis master killed (Sentinel)", BALANCER, &outcomes);
        r.detection = promoted;
        if promoted.is_none() {
            r.problems
                .push("the Sentinels promoted no replica within 60 s".to_owned());
        }
        judge(&mut r, &outcomes, NO_FAILURE, |_| false);
        self.revive(&master_id).await?;
        r.notes = format!(
            "`docker kill` of {master}, kept down; detection = until the Sentinels name \
             the other node; then it is started again and rejoins as a replica"
        );
        Ok(r)
    }

    /// The Redis node (`redis-1` or `redis-2`) the Sentinels name as master, asked of
    /// sentinel-1 with the sentinels' password from its container's environment: they
    /// name it by its fixed address on the data network.
    async fn redis_master(&self) -> anyhow::Result<String> {
        let sentinel = self.stack.container("sentinel-1").await?;
        let answer = docker(&[
            "exec",
            &sentinel,
            "redis-cli",
            "-p",
            "26379",
            "--no-auth-warning",
            "SENTINEL",
            "get-master-addr-by-name",
            "cartae",
        ])
        .await?;
        let address = answer
            .lines()
            .next()
            .context("the sentinel named no master")?;
        for node in ["redis-1", "redis-2"] {
            // A stopped node has no running container, and no address.
            let Ok(id) = self.stack.container(node).await else {
                continue;
            };
            let ip = inspect(
                &id,
                "{{(index .NetworkSettings.Networks \"cartae-data-network\").IPAddress}}",
            )
            .await
            .unwrap_or_default();
            if ip == address {
                return Ok(node.to_owned());
            }
        }
        bail!("the sentinels name {address}, no Redis node's address")
    }

    /// Every write acknowledged in `outcomes` is in the primary's `items`, once.
    async fn check_writes(
        &self,
        outcomes: &[Outcome],
        problems: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let titles = self
            .psql_on_primary("SELECT title FROM items WHERE title LIKE 'drill-%'")
            .await?;
        let mut counts: HashMap<String, i64> = HashMap::new();
        for title in titles.lines() {
            *counts.entry(title.to_owned()).or_default() += 1;
        }
        check_write_counts(&counts, outcomes, problems);
        Ok(())
    }

    /// The PostgreSQL node Patroni made primary.
    pub async fn primary(&self) -> anyhow::Result<String> {
        for node in ["pg-1", "pg-2"] {
            let Ok(id) = self.stack.container(node).await else {
                continue;
            };
            let in_recovery = docker(&[
                "exec",
                "-u",
                "postgres",
                &id,
                "psql",
                "-d",
                "postgres",
                "-Atc",
                "SELECT pg_is_in_recovery()",
            ])
            .await;
            if in_recovery.is_ok_and(|v| v == "f") {
                return Ok(node.to_owned());
            }
        }
        bail!("no PostgreSQL node is primary")
    }

    /// One query on the primary, as its postgres user (peer authentication), rows one per
    /// line.
    pub async fn psql_on_primary(&self, sql: &str) -> anyhow::Result<String> {
        let id = self.stack.container(&self.primary().await?).await?;
        let db = "cartae";
        docker(&["exec", "-u", "postgres", &id, "psql", "-d", db, "-Atc", sql]).await
    }

    /// The synchronous standby Patroni reports, from the primary's pg_stat_replication.
    pub async fn sync_standby(&self) -> anyhow::Result<Option<String>> {
        let rows = self
            .psql_on_primary(
                "SELECT application_name FROM pg_stat_replication WHERE sync_state = 'sync'",
            )
            .await?;
        Ok(rows.lines().next().map(str::to_owned))
    }

    pub async fn docker_with(&self, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
        docker_with(args, env).await
    }

    /// How many replicas Docker says are healthy.
    pub async fn healthy(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        for id in self.stack.replicas().await? {
            if health(&id).await.is_ok_and(|h| h == "healthy") {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The replicas Traefik routes `/api/` to: the `X-Instance-Id` of 20 requests (round
/// robin, shared with the load: a replica of 3 is missed once in 3,000 checks).
pub async fn routed(client: &reqwest::Client, stack: &Stack) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        if let Ok(response) = client.get(stack.url("/api/openapi.json")).send().await {
            if let Some(id) = response
                .headers()
                .get("x-instance-id")
                .and_then(|v| v.to_str().ok())
            {
                seen.insert(id.to_owned());
            }
        }
    }
    seen
}

/// 64 register requests to ADDRESS:3001, each sending 900 KB of its announced 1 MB body
/// and then holding the connection for 15 s, so that the replica buffers them all at
/// once; bash alone (the Debian base has no curl). Whole bodies at once do not do it: each
/// is refused (422) and freed as soon as it is in.
const PUSH_BODIES: &str = r#"part="$(head -c 900000 /dev/zero | tr '\0' a)"
for i in $(seq 64); do
  ( exec 3<>/dev/tcp/ADDRESS/3001 &&
    printf 'POST /api/auth/register HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"email":"%s' "$part" >&3 &&
    sleep 15 ) 2>/dev/null &
done
wait"#;

/// A container's memory use as its cgroup counts it (v1 or v2), in bytes.
async fn memory_usage(container: &str) -> anyhow::Result<u64> {
    let stats = docker(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.MemUsage}}",
        container,
    ])
    .await?;
    // "12.5MiB / 1GiB"
    let used = stats.split('/').next().unwrap_or_default().trim();
    let (number, unit) = used.split_at(
        used.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(used.len()),
    );
    let number: f64 = number
        .parse()
        .with_context(|| format!("memory use {stats:?}"))?;
    let scale = match unit {
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => 1.0,
    };
    Ok((number * scale) as u64)
}

async fn restart_count(container: &str) -> anyhow::Result<u32> {
    Ok(inspect(container, "{{.RestartCount}}").await?.parse()?)
}

/// The fewest distinct replicas that answered in any `window` of the run (first
/// attempts), from the second window to the second to last (the edges are partial).
fn fewest_answering(outcomes: &[Outcome], window: Duration) -> usize {
    let mut by_window: HashMap<u64, BTreeSet<&str>> = HashMap::new();
    for o in outcomes {
        if let Some(instance) = o.first.instance.as_deref() {
            by_window
                .entry(o.started.as_millis() as u64 / window.as_millis() as u64)
                .or_default()
                .insert(instance);
        }
    }
    let last = by_window.keys().max().copied().unwrap_or(0);
    (1..last)
        .map(|w| by_window.get(&w).map_or(0, BTreeSet::len))
        .min()
        .unwrap_or(0)
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" / ")
}
