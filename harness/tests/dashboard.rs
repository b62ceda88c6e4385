//! Every Grafana panel query and every alert rule, run by a real Prometheus scraping live
//! replicas and Traefik: a dashboard is useless if its queries name metrics that do not
//! exist, and an alert that fires on a healthy cluster, or fails to evaluate, is noise.

use std::sync::Mutex;
use std::time::Duration;

use cartae_harness::balancer::{Balancer, BalancerKind};
use cartae_harness::cluster::{Cluster, Timings};
use cartae_harness::process::wait_until;
use cartae_harness::prometheus::Prometheus;

/// A panel query's fallback: the panel shows 0 instead of "no data", which also hides a
/// left-hand side that names no existing metric.
const FALLBACK: &str = "or vector(0)";

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

/// The alert names `alerts.yml` declares.
fn shipped_alerts() -> Vec<String> {
    let path = cartae_harness::repo_root().join("infra/prometheus/alerts.yml");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|name| name.trim().to_owned())
        .collect()
}

/// `expr` with every comparison made a `bool` one, so that it keeps every series it reads
/// instead of filtering them by value: it then returns data exactly when its metrics exist,
/// even where the filter rightly drops everything on a healthy cluster (`up == 0`).
fn keep_every_series(expr: &str) -> String {
    let mut out = String::new();
    // Inside `{…}`, `!=` matches a label, and anything goes inside quotes.
    let (mut depth, mut quoted) = (0, false);
    let mut chars = expr.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        out.push(c);
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            '{' => depth += 1,
            '}' => depth -= 1,
            '=' | '!' | '<' | '>' if depth == 0 => {
                if let Some((_, '=')) = chars.peek() {
                    out.push('=');
                    chars.next();
                } else if c == '=' || c == '!' {
                    continue;
                }
                let rest = chars.peek().map_or("", |&(i, _)| &expr[i..]);
                if !rest.trim_start().starts_with("bool") {
                    out.push_str(" bool");
                }
            }
            _ => {}
        }
    }
    out
}

/// What is wrong right now: panel queries without data (or whose fallback hides that
/// their metrics are missing), and rules not loaded, not evaluated, unhealthy, or whose
/// expression matches anything on this healthy cluster.
async fn problems(
    prometheus: &Prometheus,
    client: &reqwest::Client,
    queries: &[(String, String)],
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut checks = Vec::new();
    for (title, expr) in queries {
        checks.push((title.clone(), expr.clone()));
        if let Some(lhs) = expr.trim().strip_suffix(FALLBACK) {
            checks.push((
                format!("{title} (without `{FALLBACK}`)"),
                keep_every_series(lhs.trim()),
            ));
        }
    }
    for (title, expr) in &checks {
        match prometheus.query(client, expr).await {
            Ok(result) if result.is_empty() => {
                problems.push(format!("{title}: no data for {expr}"))
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("{title}: invalid query {expr}: {e}")),
        }
    }

    let rules = match prometheus.rules(client).await {
        Ok(rules) => rules,
        Err(e) => {
            problems.push(format!("/api/v1/rules: {e}"));
            return problems;
        }
    };
    for name in shipped_alerts() {
        if !rules.iter().any(|r| r.name == name) {
            problems.push(format!("rule {name} is not loaded"));
        }
    }
    for rule in &rules {
        let what = format!("rule {} (group {})", rule.name, rule.group);
        if !rule.evaluated {
            problems.push(format!("{what} not evaluated yet"));
        } else if rule.health != "ok" || !rule.last_error.is_empty() {
            problems.push(format!(
                "{what} is unhealthy ({}): {}",
                rule.health, rule.last_error
            ));
        }
        // Its `for:` (30 s or more) outlasts this test, so `ALERTS` would stay empty
        // whatever the expression says: run the expression itself. Watchdog matches
        // always, by design (the pipeline's heartbeat).
        if rule.name == "Watchdog" {
            continue;
        }
        match prometheus.query(client, &rule.query).await {
            Ok(result) if result.is_empty() => {}
            Ok(result) => problems.push(format!(
                "{what} matches on a healthy cluster: {} gives {result:?}",
                rule.query
            )),
            Err(e) => problems.push(format!("{what}: invalid query {}: {e}", rule.query)),
        }
    }
    problems
}

#[test]
fn keep_every_series_makes_only_comparisons_bool() {
    assert_eq!(
        keep_every_series(r#"count(up{job!="x"} == 0)"#),
        r#"count(up{job!="x"} == bool 0)"#
    );
    assert_eq!(
        keep_every_series("a > 1 and b <= 2 or c != d"),
        "a > bool 1 and b <= bool 2 or c != bool d"
    );
    assert_eq!(keep_every_series("a >= bool 1"), "a >= bool 1");
    assert_eq!(
        keep_every_series(r#"label_replace(a, "x", "<", "y", "=")"#),
        r#"label_replace(a, "x", "<", "y", "=")"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_and_alert_rule_holds_on_live_replicas() {
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

    // Some traffic through the balancer, including a 404, so request series exist. Only
    // `/api/` is routed through it.
    for i in 0..30 {
        let path = if i % 10 == 0 {
            "/api/no-such-route"
        } else {
            "/api/openapi.json"
        };
        let _ = client.get(balancer.url(path)).send().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_up = wait_until(Duration::from_secs(20), || async {
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

    let queries = panel_queries();
    assert!(
        queries.len() >= 10,
        "the dashboard has {} queries",
        queries.len()
    );
    assert!(
        shipped_alerts().len() >= 5,
        "alerts.yml declares {:?}",
        shipped_alerts()
    );
    // Rates need two scrapes and rules their first evaluation: poll until all holds.
    let last = Mutex::new(Vec::new());
    let clean = wait_until(Duration::from_secs(45), || async {
        let found = problems(&prometheus, &client, &queries).await;
        let clean = found.is_empty();
        *last.lock().unwrap() = found;
        clean
    })
    .await;
    let logs = prometheus.logs();
    drop(prometheus);
    drop(balancer);
    drop(cluster);
    assert!(
        clean,
        "{}\n\nprometheus log:\n{logs}",
        last.lock().unwrap().join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
