//! Every Grafana panel query, run by a real Prometheus scraping live replicas and Traefik:
//! a dashboard is useless if its queries name metrics that do not exist.

use std::time::Duration;

use cartae_harness::balancer::{Balancer, BalancerKind};
use cartae_harness::cluster::{Cluster, Timings};
use cartae_harness::prometheus::Prometheus;

fn panel_queries() -> Vec<(String, String)> {
    let path = cartae_harness::repo_root().join("infra/grafana/dashboards/cartae-ha.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    let mut panels: Vec<serde_json::Value> =
        dashboard["panels"].as_array().cloned().unwrap_or_default();
    while let Some(panel) = panels.pop() {
        // Rows may nest panels.
        panels.extend(panel["panels"].as_array().cloned().unwrap_or_default());
        for target in panel["targets"].as_array().cloned().unwrap_or_default() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push((
                    panel["title"].as_str().unwrap_or("?").to_owned(),
                    expr.to_owned(),
                ));
            }
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_query_returns_data_from_live_replicas() {
    let dir = cartae_harness::repo_root()
        .join("ha-logs")
        .join(format!("dashboard-{}", uuid::Uuid::new_v4().simple()));
    let cluster = Cluster::start(Timings::default(), &dir.join("cluster"))
        .await
        .expect("replicas start");
    let balancer = Balancer::start(BalancerKind::Traefik, &cluster, &dir.join("traefik"))
        .await
        .expect("traefik starts");
    let prometheus = Prometheus::start(&cluster, &balancer, &dir.join("prometheus"))
        .await
        .expect("prometheus starts");
    let client = reqwest::Client::new();

    // Some traffic through the balancer, including a 404, so request series exist.
    for i in 0..30 {
        let path = if i % 10 == 0 {
            "/no-such-route"
        } else {
            "/live"
        };
        let _ = client.get(balancer.url(path)).send().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let every target be scraped a few times.
    let all_up = cartae_harness::process::wait_until(Duration::from_secs(20), || async {
        prometheus
            .query(
                &client,
                r#"count(up{job="cartae-api"} == 1) == 3 and count(up{job="traefik"} == 1) == 1"#,
            )
            .await
            .is_ok_and(|r| !r.is_empty())
    })
    .await;
    assert!(
        all_up,
        "Prometheus never scraped every target:\n{}",
        prometheus.logs()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    let queries = panel_queries();
    assert!(
        queries.len() >= 10,
        "the dashboard has {} queries",
        queries.len()
    );
    let mut problems = Vec::new();
    for (title, expr) in &queries {
        match prometheus.query(&client, expr).await {
            Ok(result) if result.is_empty() => {
                problems.push(format!("{title}: no data for {expr}"))
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("{title}: invalid query {expr}: {e}")),
        }
    }
    // The rules loaded too, and those that must not fire on a healthy cluster do not.
    let firing = prometheus
        .query(&client, r#"ALERTS{alertstate="firing"}"#)
        .await
        .unwrap();
    let names: Vec<&str> = firing
        .iter()
        .filter_map(|a| a["metric"]["alertname"].as_str())
        .collect();
    for healthy_alert in [
        "InstanceDown",
        "InsufficientHealthyInstances",
        "DatabaseDown",
        "LoadBalancerDown",
    ] {
        if names.contains(&healthy_alert) {
            problems.push(format!("{healthy_alert} fires on a healthy cluster"));
        }
    }
    drop(prometheus);
    drop(balancer);
    drop(cluster);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}
