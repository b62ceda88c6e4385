//! A real Prometheus, with the shipped configuration and alert rules, scraping the cluster
//! and the balancer on loopback.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::balancer::Balancer;
use crate::cluster::Cluster;
use crate::process::{free_port, require_program, send_signal, wait_ready, ManagedChild};

pub struct Prometheus {
    pub port: u16,
    child: ManagedChild,
}

fn rewrite(text: &str, from: &str, to: &str) -> anyhow::Result<String> {
    if !text.contains(from) {
        bail!("{from:?} not found in the shipped configuration");
    }
    Ok(text.replace(from, to))
}

/// One alerting or recording rule as Prometheus loaded it (`/api/v1/rules`).
#[derive(Debug, Clone)]
pub struct Rule {
    pub group: String,
    pub name: String,
    /// The expression as Prometheus parsed and printed it.
    pub query: String,
    /// "ok", "err" or "unknown" (not evaluated yet).
    pub health: String,
    pub last_error: String,
    pub evaluated: bool,
}

/// The shipped replica discovery: Docker's DNS, which this host does not have.
const DNS_DISCOVERY: &str = "    dns_sd_configs:
      - names:
          - database-api
        type: A
        port: 9090
        refresh_interval: 10s
";

/// The first scrape job that only the compose stack has targets for (Alertmanager, the
/// data tier): the drills that run the replicas alone cut the shipped file here, so that
/// their rules see no target down. [`Prometheus::start_shipped`] keeps them.
const STACK_ONLY_JOBS: &str = "  - job_name: alertmanager\n";

/// Where compose's prometheus service writes the desired replica count.
const DESIRED_RULES: &str = "/prometheus/desired-*.yml";

/// The recording rule compose's prometheus service writes from CARTAE_REPLICAS.
pub fn desired_rules(replicas: usize) -> String {
    format!(
        "groups:\n  - name: desired\n    rules:\n      - record: cartae:replicas_desired\n        \
         expr: vector({replicas})\n"
    )
}

/// The shipped `prometheus.yml` with targets on loopback, the desired count's rules read
/// from `desired`, and a one-second scrape interval.
pub fn config(
    cluster: &Cluster,
    balancer: &Balancer,
    own_port: u16,
    desired: &Path,
) -> anyhow::Result<String> {
    let targets: String = cluster
        .instances
        .iter()
        .map(|i| format!("          - 127.0.0.1:{}\n", i.metrics_port))
        .collect();
    let text = rewrite(
        &shipped_config()?,
        DNS_DISCOVERY,
        &format!("    static_configs:\n      - targets:\n{targets}"),
    )?;
    on_loopback(text, balancer, own_port, desired)
}

/// The shipped `prometheus.yml` with its DNS discovery kept: the replicas' metrics port
/// is `metrics_port` and the name is asked again every `refresh`; the rest as [`config`].
/// The name is resolved by the system resolver, which [`Prometheus::start_dns`] points at
/// the drill's DNS server.
pub fn dns_config(
    metrics_port: u16,
    refresh: Duration,
    balancer: &Balancer,
    own_port: u16,
    desired: &Path,
) -> anyhow::Result<String> {
    let discovery = DNS_DISCOVERY
        .replace("port: 9090", &format!("port: {metrics_port}"))
        .replace(
            "refresh_interval: 10s",
            &format!("refresh_interval: {}ms", refresh.as_millis()),
        );
    let text = rewrite(&shipped_config()?, DNS_DISCOVERY, &discovery)?;
    on_loopback(text, balancer, own_port, desired)
}

fn shipped_config() -> anyhow::Result<String> {
    let shipped = crate::repo_root().join("infra/prometheus/prometheus.yml");
    std::fs::read_to_string(&shipped).with_context(|| format!("read {}", shipped.display()))
}

/// The desired count from `desired`, the balancer and Prometheus itself on loopback, and
/// a one-second scrape interval.
fn on_loopback(
    mut text: String,
    balancer: &Balancer,
    own_port: u16,
    desired: &Path,
) -> anyhow::Result<String> {
    let cut = text
        .find(STACK_ONLY_JOBS)
        .context("no stack-only scrape jobs")?;
    text.truncate(cut);
    text = rewrite(&text, DESIRED_RULES, &desired.display().to_string())?;
    text = rewrite(
        &text,
        "traefik:8082",
        &format!("127.0.0.1:{}", balancer.metrics_port),
    )?;
    text = rewrite(&text, "localhost:9090", &format!("127.0.0.1:{own_port}"))?;
    Ok(every_second(text))
}

/// Every scrape and evaluation interval of `text` made one second.
fn every_second(mut text: String) -> String {
    for interval in [
        "scrape_interval: 15s",
        "scrape_interval: 10s",
        "evaluation_interval: 15s",
    ] {
        let (key, _) = interval.split_once(':').unwrap_or_default();
        text = text.replace(interval, &format!("{key}: 1s"));
    }
    text
}

/// Writes the desired count's rules file in `dir`; returns its path.
fn write_desired(dir: &Path, replicas: usize) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let desired = dir.join("desired-replicas.yml");
    std::fs::write(&desired, desired_rules(replicas))?;
    Ok(desired)
}

/// The shipped `alerts.yml` with every group evaluated each second instead of every 30 s,
/// so that a short test sees each rule evaluated.
pub fn alert_rules() -> anyhow::Result<String> {
    let shipped = crate::repo_root().join("infra/prometheus/alerts.yml");
    let text =
        std::fs::read_to_string(&shipped).with_context(|| format!("read {}", shipped.display()))?;
    rewrite(&text, "interval: 30s", "interval: 1s")
}

impl Prometheus {
    pub async fn start(cluster: &Cluster, balancer: &Balancer, dir: &Path) -> anyhow::Result<Self> {
        let port = free_port();
        let desired = write_desired(dir, cluster.instances.len())?;
        let config = config(cluster, balancer, port, &desired)?;
        Self::launch(Command::new("prometheus"), &config, port, dir).await
    }

    /// Prometheus with the shipped DNS discovery ([`dns_config`]), resolving through
    /// `nameserver` (port 53): it runs in a mount namespace of its own where
    /// `/etc/resolv.conf` names that server, so the machine's resolver is left alone.
    /// Needs root (`unshare -m`). `desired` is the replica count the alerts compare with.
    pub async fn start_dns(
        nameserver: std::net::IpAddr,
        metrics_port: u16,
        refresh: Duration,
        balancer: &Balancer,
        desired: usize,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        require_program("unshare", "apt-get install util-linux")?;
        let port = free_port();
        let desired = write_desired(dir, desired)?;
        let config = dns_config(metrics_port, refresh, balancer, port, &desired)?;
        let resolv = dir.join("resolv.conf");
        std::fs::write(&resolv, format!("nameserver {nameserver}\n"))?;
        let mut command = Command::new("unshare");
        // `$0` is the resolv.conf; exec keeps the pid, so dropping the child stops Prometheus.
        command.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"mount --bind "$0" /etc/resolv.conf && exec prometheus "$@""#,
        ]);
        command.arg(&resolv);
        Self::launch(command, &config, port, dir).await
    }

    /// Prometheus with the whole shipped `prometheus.yml`, every job kept (the data tier's
    /// and Alertmanager's included), each `(from, to)` of `targets` rewritten (a stack
    /// host name to a loopback address; each must be in the file), scraping and
    /// evaluating every second and resending firing alerts every 2 s, with `rules` as its
    /// `alerts.yml`. Targets left as stack
    /// names do not resolve here and are simply down.
    pub async fn start_shipped(
        targets: &[(&str, String)],
        rules: &str,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port();
        let mut text = shipped_config()?;
        for (from, to) in targets {
            text = rewrite(&text, from, to)?;
        }
        text = rewrite(&text, "localhost:9090", &format!("127.0.0.1:{port}"))?;
        let config = every_second(text);
        // Alerts evaluated before the Alertmanager is discovered (a few seconds) are
        // dropped, and only sent again after this delay (1 m by default).
        let mut command = Command::new("prometheus");
        command.arg("--rules.alert.resend-delay=2s");
        Self::launch_with(command, &config, rules, port, dir).await
    }

    /// Changes the desired replica count and has Prometheus load it (SIGHUP), as
    /// restarting compose's prometheus service with a new CARTAE_REPLICAS does.
    pub fn set_desired(&self, dir: &Path, replicas: usize) -> anyhow::Result<()> {
        write_desired(dir, replicas)?;
        if !send_signal(self.child.pid(), "HUP") {
            bail!("could not signal prometheus to reload");
        }
        Ok(())
    }

    async fn launch(command: Command, config: &str, port: u16, dir: &Path) -> anyhow::Result<Self> {
        Self::launch_with(command, config, &alert_rules()?, port, dir).await
    }

    async fn launch_with(
        mut command: Command,
        config: &str,
        rules: &str,
        port: u16,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        require_program("prometheus", "apt-get install prometheus")?;
        std::fs::write(dir.join("prometheus.yml"), config)?;
        std::fs::write(dir.join("alerts.yml"), rules)?;
        command
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let child = ManagedChild::spawn("prometheus", command, dir.join("prometheus.log"))?;
        let prometheus = Self { port, child };
        let url = format!("http://127.0.0.1:{port}/-/ready");
        if !wait_ready(&url, Duration::from_secs(30)).await {
            bail!(
                "prometheus did not become ready:\n{}",
                prometheus.child.logs()
            );
        }
        Ok(prometheus)
    }

    /// The `data` of an API answer, or the error Prometheus gave.
    async fn api(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let mut body: Value = request.send().await?.json().await?;
        if body["status"] != "success" {
            bail!("{}: {}", body["errorType"], body["error"]);
        }
        Ok(body["data"].take())
    }

    /// Runs an instant query; returns the result vector, or the error Prometheus gave.
    pub async fn query(&self, client: &reqwest::Client, expr: &str) -> anyhow::Result<Vec<Value>> {
        let data = self
            .api(
                client
                    .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
                    .query(&[("query", expr)]),
            )
            .await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Every rule of every loaded group, with its health after its last evaluation.
    /// The alerting rules (recording rules, such as the desired count, are not alerts).
    pub async fn rules(&self, client: &reqwest::Client) -> anyhow::Result<Vec<Rule>> {
        let data = self
            .api(client.get(format!(
                "http://127.0.0.1:{}/api/v1/rules?type=alert",
                self.port
            )))
            .await?;
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let mut rules = Vec::new();
        for group in data["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                rules.push(Rule {
                    group: text(&group["name"]),
                    name: text(&rule["name"]),
                    query: text(&rule["query"]),
                    health: text(&rule["health"]),
                    last_error: text(&rule["lastError"]),
                    // Never evaluated: Go's zero time.
                    evaluated: !text(&rule["lastEvaluation"]).starts_with("0001-"),
                });
            }
        }
        Ok(rules)
    }

    pub fn logs(&self) -> String {
        self.child.logs()
    }
}
