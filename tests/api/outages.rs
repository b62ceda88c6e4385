//! Dependency outages, cut by a proxy the test controls: detection, degradation, recovery
//! without a restart.

use std::time::{Duration, Instant};

use crate::helpers::{spawn_app_with, AppOptions, TestApp};
use crate::support::proxy::Mode;

const INTERVAL: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_millis(200);

fn options() -> AppOptions {
    AppOptions::default()
        .env(
            "HEALTH_CHECK_INTERVAL_MS",
            &INTERVAL.as_millis().to_string(),
        )
        .env("HEALTH_CHECK_TIMEOUT_MS", &TIMEOUT.as_millis().to_string())
}

/// Two intervals, plus one check's timeout, plus the polling step.
fn two_intervals() -> Duration {
    INTERVAL * 2 + TIMEOUT + Duration::from_millis(250)
}

async fn time_until(
    app: &TestApp,
    path: &str,
    check: impl Fn(u16, &serde_json::Value) -> bool,
) -> Duration {
    let started = Instant::now();
    app.wait_for(path, Duration::from_secs(10), check).await;
    started.elapsed()
}

#[tokio::test]
async fn a_postgres_outage_unreadies_the_replica_and_recovery_needs_no_restart() {
    let app = spawn_app_with(options().proxy_postgres()).await;
    app.wait_ready().await;

    app.pg_proxy().set_mode(Mode::Cut);
    let detected = time_until(&app, "/ready", |s, _| s == 503).await;
    assert!(
        detected <= two_intervals(),
        "outage detected after {detected:?}"
    );
    let (_, body) = app.get_json("/ready").await;
    assert!(
        body["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("database:"),
        "{body}"
    );
    let (status, body) = app.get_json("/health").await;
    assert_eq!((status, body["status"].as_str()), (503, Some("unhealthy")));
    assert_eq!(body["checks"]["database"]["status"], "failed");
    let (status, _) = app.get_json("/live").await;
    assert_eq!(status, 200, "a database outage must not trigger restarts");

    app.pg_proxy().set_mode(Mode::Forward);
    let recovered = time_until(&app, "/ready", |s, _| s == 200).await;
    assert!(
        recovered <= two_intervals(),
        "recovered after {recovered:?}"
    );
    let metrics = app.metrics().await;
    assert!(
        crate::helpers::metric_value(
            &metrics,
            "health_check_failures_total",
            &[("check_type", "database")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_redis_outage_degrades_but_keeps_the_replica_ready() {
    let app = spawn_app_with(options().proxy_redis()).await;
    app.wait_ready().await;

    app.redis_proxy().set_mode(Mode::Cut);
    let body = app
        .wait_for("/health", two_intervals(), |_, b| {
            b["checks"]["redis"]["status"] == "failed"
        })
        .await;
    assert_eq!(body["status"], "degraded");
    let (status, _) = app.get_json("/health").await;
    assert_eq!(status, 200, "degraded answers 200");
    let (status, _) = app.get_json("/ready").await;
    assert_eq!(status, 200, "Redis is not critical by default");
    let metrics = app.metrics().await;
    assert_eq!(
        crate::helpers::metric_value(&metrics, "instance_health", &[]),
        0.5
    );

    app.redis_proxy().set_mode(Mode::Forward);
    app.wait_for("/health", two_intervals(), |s, b| {
        s == 200 && b["status"] == "healthy"
    })
    .await;
}

#[tokio::test]
async fn ready_requires_restores_the_strict_rule_for_redis() {
    let app = spawn_app_with(
        options()
            .proxy_redis()
            .env("READY_REQUIRES", "database,redis"),
    )
    .await;
    app.wait_ready().await;
    app.redis_proxy().set_mode(Mode::Cut);
    let body = app
        .wait_for("/ready", two_intervals(), |s, _| s == 503)
        .await;
    assert!(
        body["reasons"][0].as_str().unwrap().starts_with("redis:"),
        "{body}"
    );
    let (status, body) = app.get_json("/health").await;
    assert_eq!((status, body["status"].as_str()), (503, Some("unhealthy")));
    app.redis_proxy().set_mode(Mode::Forward);
    app.wait_for("/ready", two_intervals(), |s, _| s == 200)
        .await;
}
