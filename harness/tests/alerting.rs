//! Alerts reach someone, from the real data tier: a Patroni tier on loopback (etcd, two
//! PostgreSQL, synchronous replication) whose `archive_command` always fails, Debian's
//! postgres-exporter on its primary, a real Prometheus with the whole shipped
//! `prometheus.yml` (the stack's host names rewritten to these loopback servers) and the
//! shipped alert rules, a real Alertmanager with the shipped `alertmanager.yml`, and a
//! webhook receiver in the test in place of the receivers' URLs.
//!
//! Only timings are shortened: scrapes and evaluations every second, each rule's `for:`
//! 5 s, Alertmanager's grouping waits 1 s. Shown, in order: the Watchdog heartbeat arrives
//! at the `heartbeat` receiver; the failing archive fires PostgresArchiveFailing at
//! `oncall`; the data-tier dashboard's queries return data (those of Redis and the node
//! exporter aside, not run here); killing the synchronous standby fires
//! PostgresSyncStandbyMissing at `oncall`.
//!
//! Needs patroni, etcd, prometheus, prometheus-alertmanager and
//! prometheus-postgres-exporter (scripts/test-all.sh installs them). About a minute.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use cartae_harness::alertmanager::{Alertmanager, Webhook};
use cartae_harness::process::require_program;
use cartae_harness::process::{free_port, ManagedChild};
use cartae_harness::prometheus::{alert_rules, Prometheus};
use cartae_harness::scenarios::run::DrillRun;
use cartae_harness::tier::patroni::{PatroniCluster, TierOptions};
use sqlx::Executor;

/// How long each alert may take to arrive: scrape, evaluation, `for:` and grouping are
/// about 10 s together here.
const ARRIVES_WITHIN: Duration = Duration::from_secs(60);

/// Debian's postgres-exporter on `pg_port` (trusted on loopback), on a free port.
fn postgres_exporter(pg_port: u16, dir: &std::path::Path) -> anyhow::Result<(ManagedChild, u16)> {
    let binary = "prometheus-postgres-exporter";
    require_program(binary, "apt-get install prometheus-postgres-exporter")?;
    let port = free_port();
    let mut command = Command::new(binary);
    command
        .env(
            "DATA_SOURCE_NAME",
            format!("postgresql://postgres@127.0.0.1:{pg_port}/postgres?sslmode=disable"),
        )
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let child = ManagedChild::spawn(
        "postgres-exporter",
        command,
        dir.join("postgres-exporter.log"),
    )?;
    Ok((child, port))
}

/// The shipped rules with every `for:` made 5 s, so that a short test sees them fire.
fn rules_with_short_for() -> anyhow::Result<String> {
    let mut rules = alert_rules()?;
    for wait in [
        "for: 30s", "for: 1m", "for: 2m", "for: 5m", "for: 10m", "for: 15m",
    ] {
        rules = rules.replace(wait, "for: 5s");
    }
    Ok(rules)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_tier_alerts_reach_the_receiver() {
    let run_ = DrillRun::begin("alerting").await;
    let dir = run_.dir.clone();
    std::fs::create_dir_all(&dir).unwrap();
    let webhook = Webhook::start().await.expect("the webhook receiver starts");
    let alertmanager = Alertmanager::start(&webhook, &dir.join("alertmanager"))
        .await
        .expect("alertmanager starts");
    let options = TierOptions {
        pg_parameters: vec![
            ("archive_mode".into(), "on".into()),
            ("archive_command".into(), "false".into()),
        ],
        ..TierOptions::default()
    };
    let mut tier = PatroniCluster::start_with(options)
        .await
        .expect("the data tier starts");
    let problems: Vec<String> = run(&mut tier, &webhook, &alertmanager, &dir)
        .await
        .err()
        .map(|e| {
            format!(
                "{e:#}\nreceived: {:?}\nalertmanager:\n{}",
                webhook.received(),
                alertmanager.logs()
            )
        })
        .into_iter()
        .collect();
    run_.finish(&[], &problems, tier);
}

async fn run(
    tier: &mut PatroniCluster,
    webhook: &Webhook,
    alertmanager: &Alertmanager,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let primary = tier.primary().await.context("no primary")?;
    let standby = 1 - primary;
    let (_exporter, exporter_port) = postgres_exporter(tier.nodes[primary].pg_port, dir)?;
    let etcd = tier.etcd_url.trim_start_matches("http://").to_owned();
    // The stack's names, each to the loopback server that plays it here. pg-N is node
    // N's Patroni; postgres-exporter-1 watches the primary, whichever it is.
    let targets = [
        ("pg-1:8008", format!("127.0.0.1:{}", tier.nodes[0].api_port)),
        ("pg-2:8008", format!("127.0.0.1:{}", tier.nodes[1].api_port)),
        ("etcd-1:2379", etcd),
        (
            "postgres-exporter-1:9187",
            format!("127.0.0.1:{exporter_port}"),
        ),
        ("alertmanager:9093", alertmanager.address()),
    ];
    let prometheus =
        Prometheus::start_shipped(&targets, &rules_with_short_for()?, &dir.join("prometheus"))
            .await?;
    let outcome = alerts_arrive(tier, primary, standby, webhook, &prometheus).await;
    if outcome.is_err() {
        println!("prometheus log:\n{}", prometheus.logs());
    }
    outcome
}

/// The data-tier dashboard's queries whose metrics this test has (no Redis, no node
/// exporter here): each must return data from the real tier.
async fn data_tier_panels_have_data(prometheus: &Prometheus) -> anyhow::Result<()> {
    let path = cartae_harness::repo_root().join("infra/grafana/dashboards/cartae-data-tier.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let client = reqwest::Client::new();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            if expr.contains("redis_") || expr.contains("node_filesystem") {
                continue;
            }
            if prometheus.query(&client, expr).await?.is_empty() {
                bail!("panel {}: no data for {expr}", panel["title"]);
            }
            checked += 1;
        }
    }
    println!("{checked} data-tier panel queries return data");
    Ok(())
}

async fn alerts_arrive(
    tier: &mut PatroniCluster,
    primary: usize,
    standby: usize,
    webhook: &Webhook,
    prometheus: &Prometheus,
) -> anyhow::Result<()> {
    if !webhook
        .wait_for("heartbeat", "Watchdog", ARRIVES_WITHIN)
        .await
    {
        bail!("Watchdog never reached the heartbeat receiver");
    }
    println!("Watchdog arrived at heartbeat");

    // A finished WAL segment for the failing archive_command to refuse.
    let mut conn = tier.connect(primary, "postgres").await?;
    conn.execute("CREATE TABLE IF NOT EXISTS archived (n int)")
        .await?;
    conn.execute("INSERT INTO archived SELECT generate_series(1, 1000)")
        .await?;
    conn.execute("SELECT pg_switch_wal()").await?;
    if !webhook
        .wait_for("oncall", "PostgresArchiveFailing", ARRIVES_WITHIN)
        .await
    {
        bail!("PostgresArchiveFailing never reached oncall");
    }
    println!("PostgresArchiveFailing arrived at oncall");

    data_tier_panels_have_data(prometheus).await?;

    // While the standby runs, the sync-standby alert must not have been sent.
    let early = webhook
        .received()
        .iter()
        .any(|n| n.alerts.iter().any(|a| a == "PostgresSyncStandbyMissing"));
    if early {
        bail!("PostgresSyncStandbyMissing was sent while the sync standby ran");
    }
    tier.kill(standby);
    if !webhook
        .wait_for("oncall", "PostgresSyncStandbyMissing", ARRIVES_WITHIN)
        .await
    {
        bail!("PostgresSyncStandbyMissing never reached oncall after the standby was killed");
    }
    println!("PostgresSyncStandbyMissing arrived at oncall after the standby was killed");
    Ok(())
}
