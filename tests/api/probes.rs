//! Probes read a snapshot: they cost the dependencies nothing, and never hang.

use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::helpers::{spawn_app_with, AppOptions, TestApp};
use crate::support::proxy::Mode;

/// The burst and the app share the test's runtime: on one thread the thousand requests
/// would starve the checks past their timeout, and `/health` would answer 503 for a reason
/// this test is not about. Two workers, and a check timeout far from the burst's length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_health_probes_cost_one_round_trip_per_interval() {
    let app = spawn_app_with(
        AppOptions::default()
            .proxy_postgres()
            .proxy_redis()
            .env("HEALTH_CHECK_INTERVAL_MS", "2000")
            .env("HEALTH_CHECK_TIMEOUT_MS", "1900"),
    )
    .await;
    app.wait_ready().await;
    let (pg, redis) = (app.pg_proxy(), app.redis_proxy());
    // Warm the client's connection pool first, so the burst measures the server.
    let _ = app.get("/health").await;

    let (queries_before, pg_conns_before, redis_conns_before) =
        (pg.queries(), pg.connections(), redis.connections());
    let polls_before = denylist_polls(&app).await;
    let round_before = app.round();
    let responses = join_all((0..1000).map(|_| app.client.get(app.url("/health")).send())).await;
    let rounds = app.round() - round_before;
    let failed: Vec<String> = responses
        .into_iter()
        .filter_map(|r| match r {
            Ok(r) if r.status() == 200 => None,
            Ok(r) => Some(r.status().to_string()),
            Err(e) => Some(e.to_string()),
        })
        .collect();
    let snapshot = app.state.verdict().0;
    assert!(
        failed.is_empty(),
        "{} probes failed, e.g. {:?}; latest checks: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)],
        snapshot.checks
    );

    // The denylist poll (4 a second, not the probes' doing) is no health check: its queries,
    // each at most a liveness ping plus the poll, are set apart.
    let polls = denylist_polls(&app).await - polls_before + 1;
    let queries = (pg.queries() - queries_before).saturating_sub(2 * polls);
    // Each round is at most a liveness ping of the pooled connection plus `SELECT 1`; the
    // round in flight when the burst began counts too.
    assert!(
        queries <= 2 * (rounds + 1),
        "{queries} PostgreSQL queries for 1000 probes while {rounds} rounds of checks ran"
    );
    assert!(
        pg.connections() - pg_conns_before < 2,
        "probes opened PostgreSQL connections"
    );
    assert!(
        redis.connections() - redis_conns_before < 2,
        "probes opened Redis connections"
    );

    // The counter does see the background checks: the bound above is not vacuous.
    let before = pg.queries();
    let seen = cartae_harness::process::wait_until(Duration::from_secs(20), || {
        std::future::ready(pg.queries() > before)
    })
    .await;
    assert!(seen, "background checks reach PostgreSQL");
}

#[tokio::test]
async fn a_hanging_database_fails_its_check_at_the_timeout_without_hanging_probes() {
    let app = spawn_app_with(AppOptions::default().proxy_postgres()).await;
    app.wait_ready().await;
    app.pg_proxy().set_mode(Mode::Hang);
    let body = app
        .wait_for("/health", Duration::from_secs(5), |_, b| {
            b["checks"]["database"]["status"] == "failed"
        })
        .await;
    let message = body["checks"]["database"]["message"].as_str().unwrap();
    assert!(message.contains("within 450 ms"), "{message}");
    for path in ["/health", "/ready", "/live", "/health/detailed"] {
        // A probe that waited on the hung database would wait forever: 5 s is far from that.
        let response = tokio::time::timeout(Duration::from_secs(5), app.get(path))
            .await
            .unwrap_or_else(|_| panic!("{path} hangs with the database"));
        let expected = if path == "/live" { 200 } else { 503 };
        assert_eq!(response.status(), expected, "{path}");
    }
    app.pg_proxy().set_mode(Mode::Forward);
    app.wait_ready().await;
}

#[tokio::test]
async fn database_latency_degrades_the_check_but_never_fails_it() {
    let app = spawn_app_with(
        AppOptions::default()
            .proxy_postgres()
            .env("DB_LATENCY_DEGRADED_MS", "60")
            .env("DB_LATENCY_CRITICAL_MS", "250")
            .env("HEALTH_CHECK_INTERVAL_MS", "1000")
            .env("HEALTH_CHECK_TIMEOUT_MS", "900"),
    )
    .await;
    app.wait_ready().await;
    // A round is one query on the check's own connection: one delayed answer.
    app.pg_proxy().set_latency(Duration::from_millis(90));
    let body = app
        .wait_for("/health", Duration::from_secs(6), |_, b| {
            b["checks"]["database"]["status"] == "degraded"
        })
        .await;
    assert_eq!(body["status"], "degraded");
    assert!(body["checks"]["database"]["latency"].as_f64().unwrap() > 60.0);
    let (status, _) = app.get_json("/ready").await;
    assert_eq!(
        status, 200,
        "a slow database degrades, it does not remove the replica"
    );

    // Past the critical threshold a slow answer is still an answer: degraded, never
    // failed, so load alone can never pull a replica out.
    app.pg_proxy().set_latency(Duration::from_millis(400));
    let body = app
        .wait_for("/health", Duration::from_secs(8), |_, b| {
            b["checks"]["database"]["latency"].as_f64().unwrap_or(0.0) > 250.0
        })
        .await;
    assert_eq!(body["checks"]["database"]["status"], "degraded", "{body}");
    assert!(
        body["checks"]["database"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("critical")),
        "{body}"
    );
    let (status, _) = app.get_json("/health").await;
    assert_eq!(status, 200);
    let (status, _) = app.get_json("/ready").await;
    assert_eq!(status, 200, "latency alone never makes a replica unready");

    app.pg_proxy().set_latency(Duration::ZERO);
    app.wait_for("/health", Duration::from_secs(6), |s, b| {
        s == 200 && b["status"] == "healthy"
    })
    .await;
}

#[tokio::test]
async fn redis_latency_moves_its_check_to_degraded() {
    let app = spawn_app_with(
        AppOptions::default()
            .proxy_redis()
            .env("REDIS_LATENCY_DEGRADED_MS", "40")
            .env("REDIS_LATENCY_CRITICAL_MS", "400")
            .env("HEALTH_CHECK_INTERVAL_MS", "1000")
            .env("HEALTH_CHECK_TIMEOUT_MS", "900"),
    )
    .await;
    app.wait_ready().await;
    app.redis_proxy().set_latency(Duration::from_millis(100));
    let body = app
        .wait_for("/health", Duration::from_secs(6), |_, b| {
            b["checks"]["redis"]["status"] == "degraded"
        })
        .await;
    assert_eq!(body["status"], "degraded");
    // Past the check's 900 ms timeout: latency alone only degrades, no answer fails.
    app.redis_proxy().set_latency(Duration::from_millis(1000));
    let body = app
        .wait_for("/health", Duration::from_secs(6), |_, b| {
            b["checks"]["redis"]["status"] == "failed"
        })
        .await;
    // Redis is optional by default: failed, yet only degraded overall, and still ready.
    assert_eq!(body["status"], "degraded");
    let (status, _) = app.get_json("/ready").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn critical_memory_takes_the_replica_out_of_rotation() {
    // Any process uses more than 0.002 % of host memory.
    let app = spawn_app_with(
        AppOptions::default()
            .env("MEMORY_DEGRADED_PERCENT", "0.001")
            .env("MEMORY_CRITICAL_PERCENT", "0.002"),
    )
    .await;
    let body = app
        .wait_for("/ready", Duration::from_secs(10), |s, b| {
            s == 503
                && b["reasons"].as_array().is_some_and(|r| {
                    r.iter()
                        .any(|r| r.as_str().unwrap().starts_with("memory critical"))
                })
        })
        .await;
    assert_eq!(body["ready"], false);
    let (status, body) = app.get_json("/health").await;
    assert_eq!(
        (status, body["checks"]["memory"]["status"].as_str()),
        (503, Some("failed"))
    );
}

#[tokio::test]
async fn high_cpu_degrades_but_never_fails_or_unreadies() {
    let app = spawn_app_with(
        AppOptions::default()
            .env("CPU_DEGRADED_PERCENT", "0.0001")
            .env("CPU_CRITICAL_PERCENT", "0.0002"),
    )
    .await;
    // Burn some CPU so the load average is above the tiny thresholds.
    let burn = tokio::task::spawn_blocking(|| {
        let until = Instant::now() + Duration::from_millis(1500);
        let mut x = 0u64;
        while Instant::now() < until {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        x
    });
    app.wait_ready().await;
    let body = app
        .wait_for("/health", Duration::from_secs(10), |_, b| {
            b["checks"]["cpu"]["status"] == "degraded"
        })
        .await;
    assert_eq!(body["status"], "degraded");
    let _ = burn.await;
    let (status, body) = app.get_json("/health").await;
    assert_eq!(status, 200, "a busy replica is not a broken one: {body}");
    let (status, _) = app.get_json("/ready").await;
    assert_eq!(status, 200);
}

/// Denylist polls so far (see `auth::revocation`).
async fn denylist_polls(app: &TestApp) -> u64 {
    let text = app.metrics().await;
    crate::helpers::metric_value(
        &text,
        "database_latency_seconds_count",
        &[("query_type", "revocation_feed")],
    ) as u64
}
