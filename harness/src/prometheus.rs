//! A real Prometheus, with the shipped configuration and alert rules, scraping the cluster
//! and the balancer on loopback.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::balancer::Balancer;
use crate::cluster::{require_program, Cluster};
use crate::process::{free_port, wait_until, ManagedChild};

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
    let shipped = crate::repo_root().join("infra/prometheus/prometheus.yml");
    let mut text =
        std::fs::read_to_string(&shipped).with_context(|| format!("read {}", shipped.display()))?;
    let targets: String = cluster
        .instances
        .iter()
        .map(|i| format!("          - 127.0.0.1:{}\n", i.metrics_port))
        .collect();
    text = rewrite(
        &text,
        DNS_DISCOVERY,
        &format!("    static_configs:\n      - targets:\n{targets}"),
    )?;
    text = rewrite(&text, DESIRED_RULES, &desired.display().to_string())?;
    text = rewrite(
        &text,
        "traefik:8082",
        &format!("127.0.0.1:{}", balancer.metrics_port),
    )?;
    text = rewrite(&text, "localhost:9090", &format!("127.0.0.1:{own_port}"))?;
    for interval in [
        "scrape_interval: 15s",
        "scrape_interval: 10s",
        "evaluation_interval: 15s",
    ] {
        let (key, _) = interval.split_once(':').unwrap_or_default();
        text = text.replace(interval, &format!("{key}: 1s"));
    }
    Ok(text)
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
        require_program("prometheus", "apt-get install prometheus")?;
        std::fs::create_dir_all(dir)?;
        let port = free_port();
        let desired = dir.join("desired-replicas.yml");
        std::fs::write(&desired, desired_rules(cluster.instances.len()))?;
        std::fs::write(
            dir.join("prometheus.yml"),
            config(cluster, balancer, port, &desired)?,
        )?;
        std::fs::write(dir.join("alerts.yml"), alert_rules()?)?;
        let mut command = Command::new("prometheus");
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
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/-/ready");
        if !wait_until(Duration::from_secs(30), || async {
            client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await
        {
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
