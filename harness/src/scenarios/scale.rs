//! (Long: one stack, its two steps and the judging they share.)
//!
//! Scaling out and in under load with the stack's own discovery (issue 14): the replicas
//! share one port on addresses of their own (127.0.0.x), as containers do, and a real DNS
//! server (dnsmasq) publishes them under the compose service's name, `database-api`, as
//! Docker's DNS does. HAProxy runs the shipped configuration with its `server-template`
//! and `resolvers` kept (only the nameserver, ports and timings rewritten), and
//! Prometheus the shipped `dns_sd_configs` and alert rules, resolving through that DNS
//! server from a mount namespace of its own (its `/etc/resolv.conf` names dnsmasq).
//! Traefik, whose Docker provider needs a Docker engine, gets its router and service
//! rewritten from the shipped labels (`infra/scripts/traefik-labels.py`) at each change,
//! as that provider would; it watches the file.
//!
//! - scale up 3 -> 5 under load: the new replicas get traffic within one discovery round,
//!   then every replica serves its share within 10 %, and no request fails;
//! - scale down 5 -> 2 under load: the removed replicas drain (SIGTERM; `/ready` turns 503,
//!   the balancer takes each out before it exits) and no request fails;
//! - after each step Prometheus' `up` and `instance_health` name exactly the live
//!   replicas, and the replica-count alerts, with the desired count set to the new N,
//!   are quiet.
//!

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::counted;
use super::run::Logs;
use crate::balancer::{haproxy_dns_config, Balancer, BalancerKind};
use crate::cluster::{Cluster, ClusterOptions, Instance, Timings};
use crate::dns::Dns;
use crate::load::{LoadRun, LoadSpec, Outcome, Workload};
use crate::process::{free_port, wait_until};
use crate::prometheus::Prometheus;
use crate::report::Row;

/// HAProxy's `hold valid` and Prometheus' `refresh_interval` (shipped: 5 s and 10 s).
const DISCOVERY: Duration = Duration::from_secs(2);
/// How far any replica's share may stray from the mean once all are routed.
const EVEN_WITHIN: f64 = 0.10;
/// Requests counted for the distribution, once every replica is routed.
const EVEN_SAMPLE: usize = 500;

const SERVICE: &str = "database-api";

/// The drill's stack: the replicas and everything that discovers them.
pub struct Stack {
    cluster: Cluster,
    dns: Dns,
    balancer: Balancer,
    prometheus: Prometheus,
    client: reqwest::Client,
    workload: Workload,
    /// Replica `api-N` binds 127.0.0.(base + N); dnsmasq answers on 127.0.0.base.
    base: u8,
    api_port: u16,
    metrics_port: u16,
    dir: PathBuf,
}

impl Stack {
    pub async fn start(kind: BalancerKind, dir: &Path) -> anyhow::Result<Self> {
        // A block of addresses of the run's own, so another drill's leftovers cannot answer.
        let base = 16 + (uuid::Uuid::new_v4().as_bytes()[0] % 28) * 8;
        let (api_port, metrics_port) = (free_port(), free_port());
        let dns = Dns::start(Ipv4Addr::new(127, 0, 0, base), &dir.join("dns")).await?;
        let instances = (1..=3)
            .map(|n| replica(base, n, api_port, metrics_port))
            .collect();
        let options = ClusterOptions {
            instances,
            ..ClusterOptions::default()
        };
        let cluster =
            Cluster::start_with_options(Timings::default(), &dir.join("cluster"), options).await?;
        dns.publish(SERVICE, &hosts(&cluster)).await?;
        let balancer = match kind {
            BalancerKind::Haproxy => {
                let listen = (free_port(), free_port());
                let config =
                    haproxy_dns_config(&cluster.timings, listen, dns.addr, api_port, DISCOVERY)?;
                Balancer::start_haproxy(&config, listen, &dir.join(kind.name()))?
            }
            // Its router and service from the shipped labels, servers from the cluster;
            // it waits until it routes every replica.
            BalancerKind::Traefik => {
                Balancer::start(kind, &cluster, &dir.join(kind.name())).await?
            }
        };
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(32)
            .build()?;
        if routed_exactly(&balancer, &client, &cluster, Duration::from_secs(20))
            .await
            .is_none()
        {
            anyhow::bail!(
                "{} did not route the three replicas:\n{}",
                kind.name(),
                balancer.logs()
            );
        }
        let prometheus = Prometheus::start_dns(
            dns.addr.ip(),
            metrics_port,
            DISCOVERY,
            &balancer,
            cluster.instances.len(),
            &dir.join("prometheus"),
        )
        .await?;
        let workload = Workload::prepare(&client, &balancer.url("")).await?;
        Ok(Self {
            cluster,
            dns,
            balancer,
            prometheus,
            client,
            workload,
            base,
            api_port,
            metrics_port,
            dir: dir.to_owned(),
        })
    }

    fn load(&self) -> LoadRun {
        LoadRun::start(
            self.client.clone(),
            self.balancer.url(""),
            self.workload.clone(),
            LoadSpec::default(),
        )
    }

    /// Waits until `count` more requests succeeded (at most 30 s).
    async fn run_for(&self, load: &LoadRun, count: usize) {
        let target = load.successes() + count;
        wait_until(Duration::from_secs(30), || async {
            load.successes() >= target
        })
        .await;
    }

    /// The desired count the alerts compare with, set as the operator sets CARTAE_REPLICAS
    /// with `--scale`.
    fn desire(&self, replicas: usize) -> anyhow::Result<()> {
        self.prometheus
            .set_desired(&self.dir.join("prometheus"), replicas)
    }

    /// Publishes the live replicas in DNS, as Docker does when containers start or are
    /// gone (and to Traefik, as its Docker provider does); waits for the balancer to route exactly them and for Prometheus to follow; then
    /// lets `sample` more requests succeed and stops the load.
    async fn settle(&self, load: LoadRun, sample: usize) -> anyhow::Result<Settled> {
        let began = load.started;
        let published = Instant::now();
        self.dns.publish(SERVICE, &hosts(&self.cluster)).await?;
        if self.balancer.kind == BalancerKind::Traefik {
            self.balancer.publish_traefik(&self.cluster)?;
        }
        let routed = routed_exactly(
            &self.balancer,
            &self.client,
            &self.cluster,
            Duration::from_secs(20),
        )
        .await;
        let even_from = Instant::now();
        let followed = self.prometheus_follows(published).await;
        self.run_for(&load, sample).await;
        Ok(Settled {
            began,
            published,
            routed,
            even_from,
            followed,
            outcomes: load.stop().await?,
        })
    }

    /// Time until Prometheus' `up` and `instance_health` name exactly the live replicas
    /// (all up), then the replica-count alerts quiet (not even pending); or what it saw.
    async fn prometheus_follows(&self, since: Instant) -> Result<Duration, String> {
        let targets: BTreeSet<String> = self
            .cluster
            .instances
            .iter()
            .map(|i| format!("{}:{}", i.host, self.metrics_port))
            .collect();
        let names: BTreeSet<String> = self
            .cluster
            .instances
            .iter()
            .map(|i| i.name.clone())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = self
                .labels(r#"up{job="cartae-api"} == 1"#, "instance")
                .await;
            let all = self.labels(r#"up{job="cartae-api"}"#, "instance").await;
            let health = self.labels("instance_health", "instance").await;
            let alerts = self.labels(REPLICA_ALERTS, "alertname").await;
            if up == targets && all == targets && health == names && alerts.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Prometheus did not follow within 20 s: up {up:?} of {all:?}, \
                     instance_health {health:?}, replica alerts {alerts:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let took = since.elapsed();
        let rules = self
            .prometheus
            .rules(&self.client)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let broken: Vec<String> = rules
            .iter()
            .filter(|r| REPLICA_ALERT_NAMES.contains(&r.name.as_str()))
            .filter(|r| r.health != "ok" || !r.evaluated)
            .map(|r| format!("{} ({} {})", r.name, r.health, r.last_error))
            .collect();
        if !broken.is_empty() || rules.is_empty() {
            return Err(format!("replica-count rules not evaluated: {broken:?}"));
        }
        Ok(took)
    }

    /// The values of `label` over the answer to `expr` (empty when Prometheus fails).
    async fn labels(&self, expr: &str, label: &str) -> BTreeSet<String> {
        let series = self
            .prometheus
            .query(&self.client, expr)
            .await
            .unwrap_or_default();
        series
            .iter()
            .filter_map(|s| s["metric"][label].as_str().map(str::to_owned))
            .collect()
    }
}

impl Logs for Stack {
    fn keep_in(self, _dir: &Path) -> String {
        let _ = std::fs::write(self.dir.join("replicas.log"), self.cluster.logs());
        let _ = std::fs::write(self.dir.join("haproxy.log"), self.balancer.logs());
        let _ = std::fs::write(self.dir.join("prometheus.log"), self.prometheus.logs());
        let _ = std::fs::write(self.dir.join("dnsmasq.log"), self.dns.logs());
        format!("logs in {}", self.dir.display())
    }
}

/// What [`Stack::settle`] saw.
struct Settled {
    /// When the load began: outcomes count from there.
    began: Instant,
    published: Instant,
    /// Time until the balancer routed exactly the live replicas.
    routed: Option<Duration>,
    /// From when every live replica was routed: the distribution's window.
    even_from: Instant,
    followed: Result<Duration, String>,
    outcomes: Vec<Outcome>,
}

impl Settled {
    /// The step's row: no failed request, the balancer routed exactly the live replicas, they
    /// shared the load evenly from then on, and Prometheus followed. Also returns the
    /// distribution, for the notes.
    fn judge(&self, scenario: &str, budget: &str, stack: &Stack) -> (Row, String) {
        let live = &stack.cluster;
        let mut r = row(scenario, stack.balancer.kind, &self.outcomes);
        r.budget = budget.to_owned();
        let names: Vec<String> = live.instances.iter().map(|i| i.name.clone()).collect();
        if self.routed.is_none() {
            r.problems
                .push(format!("the balancer did not route exactly {names:?}"));
        }
        let from = self.even_from.saturating_duration_since(self.began);
        let spread = distribution(&self.outcomes, from, &names, &mut r.problems);
        match &self.followed {
            Ok(took) => r.recovery = Some(*took),
            Err(e) => r.problems.push(e.clone()),
        }
        (r, spread)
    }

    /// Prometheus' part of the notes.
    fn prometheus_note(&self, replicas: usize) -> String {
        match &self.followed {
            Ok(took) => format!(
                "Prometheus: up and instance_health = the {replicas} live replicas, replica \
                 alerts quiet (desired {replicas}) {:.2} s after DNS",
                took.as_secs_f64()
            ),
            Err(_) => "Prometheus did not follow".to_owned(),
        }
    }
}

/// The alerts that compare the serving replicas with the desired count, pending or firing.
const REPLICA_ALERTS: &str =
    r#"ALERTS{alertname=~"InsufficientHealthyInstances|ReplicasBelowDesired"}"#;
const REPLICA_ALERT_NAMES: [&str; 2] = ["InsufficientHealthyInstances", "ReplicasBelowDesired"];

fn replica(base: u8, number: u8, port: u16, metrics_port: u16) -> Instance {
    Instance {
        name: format!("api-{number}"),
        host: Ipv4Addr::new(127, 0, 0, base + number).to_string(),
        port,
        metrics_port,
    }
}

fn hosts(cluster: &Cluster) -> Vec<String> {
    cluster.instances.iter().map(|i| i.host.clone()).collect()
}

/// The addresses (`host:port`) the balancer routes to now, by its own account: HAProxy's
/// slots that DNS filled and that are up, or which of `instances` Traefik has up. `None`
/// when it could not tell.
async fn routed(
    balancer: &Balancer,
    client: &reqwest::Client,
    instances: &[Instance],
) -> Option<Vec<String>> {
    let mut up = match balancer.kind {
        BalancerKind::Haproxy => balancer.haproxy_up_addresses(client).await?,
        BalancerKind::Traefik => {
            let mut up = Vec::new();
            for i in instances {
                if balancer.server_up(client, i).await? {
                    up.push(format!("{}:{}", i.host, i.port));
                }
            }
            up
        }
    };
    up.sort();
    Some(up)
}

/// Time until the balancer routes exactly the cluster's replicas.
async fn routed_exactly(
    balancer: &Balancer,
    client: &reqwest::Client,
    cluster: &Cluster,
    within: Duration,
) -> Option<Duration> {
    let since = Instant::now();
    let mut wanted: Vec<String> = cluster
        .instances
        .iter()
        .map(|i| format!("{}:{}", i.host, i.port))
        .collect();
    wanted.sort();
    wait_until(within, || async {
        routed(balancer, client, &cluster.instances).await.as_ref() == Some(&wanted)
    })
    .await
    .then(|| since.elapsed())
}

/// The row of a step, counted from first attempts; no failure is allowed.
fn row(scenario: &str, kind: BalancerKind, outcomes: &[Outcome]) -> Row {
    let mut r = counted(scenario, kind.name(), outcomes);
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.first_ok()).collect();
    if let Some(first) = failed.first() {
        r.problems.push(format!(
            "{} failed requests, first {:?} at {:.2} s: {:?} {:?} from {:?}",
            failed.len(),
            first.kind,
            first.started.as_secs_f64(),
            first.first.status,
            first.first.error,
            first.first.instance
        ));
    }
    r
}

/// Requests per replica among those started from `from` (offset in the run), and the
/// largest deviation from the mean; a problem when a live replica got none or the spread
/// is past [`EVEN_WITHIN`].
fn distribution(
    outcomes: &[Outcome],
    from: Duration,
    names: &[String],
    problems: &mut Vec<String>,
) -> String {
    let mut served: BTreeMap<&str, usize> = names.iter().map(|n| (n.as_str(), 0)).collect();
    for o in outcomes.iter().filter(|o| o.started >= from) {
        if let Some(n) = o.first.instance.as_deref().and_then(|i| served.get_mut(i)) {
            *n += 1;
        }
    }
    let mean = served.values().sum::<usize>() as f64 / served.len().max(1) as f64;
    let worst = served
        .values()
        .map(|&s| (s as f64 - mean).abs() / mean.max(1.0))
        .fold(0.0, f64::max);
    if worst > EVEN_WITHIN || mean < 1.0 {
        problems.push(format!(
            "distribution off by {:.1} % (allowed {:.0} %): {served:?}",
            worst * 100.0,
            EVEN_WITHIN * 100.0
        ));
    }
    format!(
        "{} (max deviation {:.1} %)",
        served
            .iter()
            .map(|(n, s)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(" / "),
        worst * 100.0
    )
}

/// 3 -> 5: the two new replicas start, discovery publishes them, the balancer and
/// Prometheus follow.
async fn scale_up(stack: &mut Stack) -> anyhow::Result<Row> {
    let t = stack.cluster.timings.clone();
    // One discovery round, then the health check's `rise 2` before a new server is up.
    let bound = DISCOVERY + t.lb_check_interval * 2 + t.lb_check_timeout;
    stack.desire(5)?;
    let load = stack.load();
    stack.run_for(&load, 100).await;
    let added = vec![
        replica(stack.base, 4, stack.api_port, stack.metrics_port),
        replica(stack.base, 5, stack.api_port, stack.metrics_port),
    ];
    let new_names: Vec<String> = added.iter().map(|i| i.name.clone()).collect();
    stack.cluster.add_instances(added).await?;
    let settled = stack.settle(load, EVEN_SAMPLE).await?;
    let (mut r, spread) = settled.judge(
        "scale up 3 → 5",
        "none: new replicas are routed only once ready",
        stack,
    );
    let published_at = settled.published.saturating_duration_since(settled.began);
    let first_traffic: Vec<Option<Duration>> = new_names
        .iter()
        .map(|name| {
            settled
                .outcomes
                .iter()
                .filter(|o| o.first.instance.as_deref() == Some(name))
                .map(|o| o.ended().saturating_sub(published_at))
                .min()
        })
        .collect();
    match first_traffic.iter().copied().collect::<Option<Vec<_>>>() {
        Some(times) => {
            let slowest = times.into_iter().max().unwrap_or_default();
            r.detection = Some(slowest);
            if slowest > bound {
                r.problems.push(format!(
                    "a new replica got its first request {slowest:.2?} after discovery published it, \
                     past one discovery round ({bound:?})"
                ));
            }
        }
        None => r.problems.push(format!(
            "a new replica got no traffic: {new_names:?} {first_traffic:?}"
        )),
    }
    r.notes = format!(
        "first request on the new replicas ≤ {} after discovery published them (bound {bound:?}); from then on: {spread}; {}",
        secs(r.detection),
        settled.prometheus_note(5)
    );
    Ok(r)
}

/// 5 -> 2: the three highest replicas are stopped together with SIGTERM, as `--scale`
/// stops the containers it removes; their records leave DNS once they have exited.
async fn scale_down(stack: &mut Stack, signal: &str) -> anyhow::Result<Row> {
    let drain = stack.cluster.timings.drain_delay;
    stack.desire(2)?;
    let load = stack.load();
    stack.run_for(&load, 100).await;
    let leaving: Vec<Instance> = stack.cluster.instances[2..].to_vec();
    let names: Vec<&str> = leaving.iter().map(|i| i.name.as_str()).collect();
    let done = AtomicBool::new(false);
    let sent = Instant::now();
    let (cluster, balancer, client) = (&mut stack.cluster, &stack.balancer, &stack.client);
    let (removed, watched) = tokio::join!(
        async {
            let removed = cluster.remove_instances(&names, signal, drain * 4).await;
            done.store(true, Ordering::SeqCst);
            removed
        },
        watch_leaving(balancer, client, &leaving, &done, sent)
    );
    let removed = removed?;
    let mut problems = Vec::new();
    let mut drains = Vec::new();
    for ((instance, exited), (saw_503, unrouted)) in removed.iter().zip(&watched) {
        drains.push(format!(
            "{} /ready 503 {}, out of rotation at {}, exited at {:.2} s",
            instance.name,
            if *saw_503 { "seen" } else { "never seen" },
            secs(*unrouted),
            exited.as_secs_f64()
        ));
        if !saw_503 {
            problems.push(format!(
                "{}: /ready never turned 503 (no drain)",
                instance.name
            ));
        }
        if *exited < drain {
            problems.push(format!(
                "{} exited {exited:.2?} after SIG{signal}, before its drain delay ({drain:?})",
                instance.name
            ));
        }
        if !unrouted.is_some_and(|u| u < *exited) {
            problems.push(format!(
                "{}: the balancer still routed it when it exited",
                instance.name
            ));
        }
    }
    let settled = stack.settle(load, EVEN_SAMPLE / 2).await?;
    let (mut r, spread) = settled.judge(
        "scale down 5 → 2",
        "none: every removed replica drains",
        stack,
    );
    r.problems.extend(problems);
    let last = slowest(removed.iter().map(|(_, d)| *d));
    r.detection = slowest(watched.iter().filter_map(|(_, u)| *u));
    r.notes = format!(
        "SIG{signal} to 3 at once (drain {drain:?}), last exit {}: {}; then: {spread}; {}",
        secs(last),
        drains.join("; "),
        settled.prometheus_note(2)
    );
    Ok(r)
}

/// Every 100 ms until `done`: whether each leaving replica's `/ready` answered 503, and
/// when the balancer first stopped routing to it (from `since`).
async fn watch_leaving(
    balancer: &Balancer,
    client: &reqwest::Client,
    leaving: &[Instance],
    done: &AtomicBool,
    since: Instant,
) -> Vec<(bool, Option<Duration>)> {
    let mut seen = vec![(false, None); leaving.len()];
    while !done.load(Ordering::SeqCst) {
        // No answer from the balancer says nothing about routing: no routing sample.
        let up = routed(balancer, client, leaving).await;
        for (instance, (saw_503, unrouted)) in leaving.iter().zip(seen.iter_mut()) {
            let address = format!("{}:{}", instance.host, instance.port);
            if unrouted.is_none() && up.as_ref().is_some_and(|up| !up.contains(&address)) {
                *unrouted = Some(since.elapsed());
            }
            let ready = client
                .get(instance.url("/ready"))
                .timeout(Duration::from_millis(300))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status() == 503) {
                *saw_503 = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

fn slowest(times: impl Iterator<Item = Duration>) -> Option<Duration> {
    times.max()
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2} s", d.as_secs_f64()))
        .unwrap_or_else(|| "-".to_owned())
}

/// Both steps on one stack: scale up, then down with SIGTERM.
pub async fn steps(stack: &mut Stack) -> Vec<Row> {
    let mut rows = Vec::new();
    for step in [scale_up(stack).await, scale_down(stack, "TERM").await] {
        rows.push(step.unwrap_or_else(|e| {
            let mut r = row("scale step", stack.balancer.kind, &[]);
            r.problems.push(format!("{e:#}"));
            r
        }));
    }
    rows
}
