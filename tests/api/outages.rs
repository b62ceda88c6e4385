//! Dependency outages, cut by a proxy the test controls: detection, degradation, recovery
//! without a restart. Detection is measured in rounds of checks (`within_a_round`), not
//! in milliseconds.

use cartae_database_api::health::CheckStatus;

use crate::helpers::{spawn_app_with, AppOptions};
use crate::support::proxy::Mode;

#[tokio::test]
async fn a_postgres_outage_unreadies_the_replica_and_recovery_needs_no_restart() {
    let app = spawn_app_with(AppOptions::default().proxy_postgres()).await;
    app.wait_ready().await;

    app.pg_proxy().set_mode(Mode::Cut);
    app.within_failure_threshold(|_, v| !v.ready()).await;
    let (status, body) = app.get_json("/ready").await;
    assert_eq!(status, 503, "{body}");
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
    app.within_a_round(|_, v| v.ready()).await;
    let (status, body) = app.get_json("/ready").await;
    assert_eq!(status, 200, "{body}");
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
    let app = spawn_app_with(AppOptions::default().proxy_redis()).await;
    app.wait_ready().await;

    app.redis_proxy().set_mode(Mode::Cut);
    app.within_failure_threshold(|s, _| s.checks.redis.status == CheckStatus::Failed)
        .await;
    let (status, body) = app.get_json("/health").await;
    assert_eq!(body["checks"]["redis"]["status"], "failed", "{body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(status, 200, "degraded answers 200");
    let (status, _) = app.get_json("/ready").await;
    assert_eq!(status, 200, "Redis is not critical by default");
    let metrics = app.metrics().await;
    assert_eq!(
        crate::helpers::metric_value(&metrics, "instance_health", &[]),
        0.5
    );

    app.redis_proxy().set_mode(Mode::Forward);
    app.within_a_round(|s, _| s.checks.redis.status == CheckStatus::Ok)
        .await;
    let (status, body) = app.get_json("/health").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("healthy")));
}

#[tokio::test]
async fn ready_requires_restores_the_strict_rule_for_redis() {
    let app = spawn_app_with(
        AppOptions::default()
            .proxy_redis()
            .env("READY_REQUIRES", "database,redis"),
    )
    .await;
    app.wait_ready().await;
    app.redis_proxy().set_mode(Mode::Cut);
    app.within_failure_threshold(|_, v| !v.ready()).await;
    let (status, body) = app.get_json("/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reasons"][0].as_str().unwrap().starts_with("redis:"),
        "{body}"
    );
    let (status, body) = app.get_json("/health").await;
    assert_eq!((status, body["status"].as_str()), (503, Some("unhealthy")));
    app.redis_proxy().set_mode(Mode::Forward);
    app.within_a_round(|_, v| v.ready()).await;
    assert_eq!(app.get_json("/ready").await.0, 200);
}

/// Request connections are not pinged before every query. The ones left idle in the pool
/// through an outage are dead (the proxy's cut closes them, as a restart would); once the
/// replica is ready again, no request may fail on one of them.
#[tokio::test]
async fn after_a_postgres_outage_no_request_fails_on_a_stale_connection() {
    let app = spawn_app_with(
        AppOptions::default()
            .proxy_postgres()
            // Every read goes to PostgreSQL.
            .env("CACHE_ITEM_TTL_MS", "1"),
    )
    .await;
    app.wait_ready().await;
    let token = app.new_user().await;
    let id = app.note(&token, "kept").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let burst = || futures::future::join_all((0..8).map(|_| app.get_item(&token, &id)));
    // Several connections open and idle in the pool.
    for read in burst().await {
        assert_eq!(read.status, 200, "{}", read.body);
    }

    app.pg_proxy().set_mode(Mode::Cut);
    app.within_failure_threshold(|_, v| !v.ready()).await;
    app.pg_proxy().set_mode(Mode::Forward);
    app.within_a_round(|_, v| v.ready()).await;

    let mut failed = Vec::new();
    for _ in 0..3 {
        for read in burst().await {
            if read.status != 200 {
                failed.push(format!("{} {}", read.status, read.body));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "requests failed after recovery: {failed:#?}"
    );
}
