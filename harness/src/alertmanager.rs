//! A real Alertmanager with the shipped `infra/alertmanager/alertmanager.yml`, its
//! receivers' URLs pointed at a [`Webhook`] the test runs, and its grouping waits
//! shortened; nothing else rewritten.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::{Path as UrlPath, State};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;

use crate::process::require_program;
use crate::process::{free_port, wait_ready, wait_until, ManagedChild};

/// Debian's name for the `alertmanager` binary.
const BINARY: &str = "prometheus-alertmanager";

/// One notification as a receiver got it: which receiver path, and the alerts it named.
#[derive(Debug, Clone)]
pub struct Notification {
    pub receiver: String,
    pub status: String,
    pub alerts: Vec<String>,
}

/// An HTTP receiver on loopback that records every webhook notification it gets.
pub struct Webhook {
    pub port: u16,
    received: Arc<Mutex<Vec<Notification>>>,
    server: tokio::task::JoinHandle<()>,
}

async fn record(
    State(received): State<Arc<Mutex<Vec<Notification>>>>,
    UrlPath(receiver): UrlPath<String>,
    Json(body): Json<Value>,
) {
    let alerts = body["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
        .collect();
    let notification = Notification {
        receiver,
        status: body["status"].as_str().unwrap_or_default().to_owned(),
        alerts,
    };
    if let Ok(mut list) = received.lock() {
        list.push(notification);
    }
}

impl Webhook {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/{receiver}", post(record))
            .with_state(received.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            port,
            received,
            server,
        })
    }

    /// Every notification so far.
    pub fn received(&self) -> Vec<Notification> {
        self.received.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until `receiver` got a firing notification naming `alert`.
    pub async fn wait_for(&self, receiver: &str, alert: &str, within: Duration) -> bool {
        wait_until(within, || async {
            self.received().iter().any(|n| {
                n.receiver == receiver
                    && n.status == "firing"
                    && n.alerts.iter().any(|a| a == alert)
            })
        })
        .await
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub struct Alertmanager {
    pub port: u16,
    child: ManagedChild,
}

/// The shipped configuration with each receiver's URL on `webhook` (same path, so the
/// receiver's name is the path) and every grouping wait at most a second.
pub fn config(webhook: &Webhook) -> anyhow::Result<String> {
    let shipped = crate::repo_root().join("infra/alertmanager/alertmanager.yml");
    let text =
        std::fs::read_to_string(&shipped).with_context(|| format!("read {}", shipped.display()))?;
    let placeholder = "http://alert-receiver.invalid:8080/";
    if !text.contains(placeholder) {
        bail!("{placeholder} not found in {}", shipped.display());
    }
    let mut text = text.replace(placeholder, &format!("http://127.0.0.1:{}/", webhook.port));
    for wait in [
        "group_wait: 30s",
        "group_interval: 5m",
        "group_interval: 1m",
    ] {
        let (key, _) = wait.split_once(':').unwrap_or_default();
        text = text.replace(wait, &format!("{key}: 1s"));
    }
    Ok(text)
}

impl Alertmanager {
    pub async fn start(webhook: &Webhook, dir: &Path) -> anyhow::Result<Self> {
        require_program(BINARY, "apt-get install prometheus-alertmanager")?;
        std::fs::create_dir_all(dir)?;
        let config_path = dir.join("alertmanager.yml");
        std::fs::write(&config_path, config(webhook)?)?;
        let port = free_port();
        let mut command = Command::new(BINARY);
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // No gossip: a single Alertmanager, and nothing bound beyond loopback.
            .arg("--cluster.listen-address=");
        let child = ManagedChild::spawn("alertmanager", command, dir.join("alertmanager.log"))?;
        let alertmanager = Self { port, child };
        let url = format!("http://127.0.0.1:{port}/-/ready");
        if !wait_ready(&url, Duration::from_secs(20)).await {
            bail!(
                "alertmanager did not become ready:\n{}",
                alertmanager.logs()
            );
        }
        Ok(alertmanager)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn logs(&self) -> String {
        self.child.logs()
    }
}
