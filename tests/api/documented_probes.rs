//! Probe behaviour the README documents: start-up while PostgreSQL is down, `/startup`
//! through an outage, `Retry-After` on 503, the IETF rendering's mapping, `READY_REQUIRES=none`.
//! Progress is counted in health-check rounds, not wall-clock time.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{
    metric_value, pg_url, spawn_app_with, AppOptions, TestApp, TestDatabase, PG_ADDR,
};
use crate::support::api_client::{answer, unique_email, Answer, PASSWORD};
use crate::support::proxy::{Mode, TcpProxy};

/// Long enough for several rounds, on a 2-core machine shared with the rest of the suite.
const WITHIN: Duration = Duration::from_secs(20);

/// Rounds of the database check run so far.
async fn database_rounds(app: &TestApp) -> f64 {
    metric_value(
        &app.metrics().await,
        "health_check_total",
        &[("check_type", "database")],
    )
}

/// Polls `path` for `rounds` more health-check rounds, asserting `check` on every answer.
async fn holds_for_rounds(
    app: &TestApp,
    path: &str,
    rounds: f64,
    check: impl Fn(u16, &Value) -> bool,
) {
    let until = database_rounds(app).await + rounds;
    let held = cartae_harness::process::wait_until(WITHIN, || async {
        let (status, body) = app.get_json(path).await;
        assert!(check(status, &body), "{path}: {status} {body}");
        database_rounds(app).await >= until
    })
    .await;
    assert!(held, "{rounds} rounds did not run within {WITHIN:?}");
}

fn assert_retry_after(what: &str, answer: &Answer) {
    assert_eq!(answer.status, 503, "{what}: {}", answer.body);
    assert_eq!(answer.header("retry-after"), Some("1"), "{what}");
}

async fn probe(app: &TestApp, path: &str) -> Answer {
    app.call(Method::GET, path, None, None).await
}

#[tokio::test]
async fn a_replica_started_while_postgres_is_down_becomes_ready_when_it_returns() {
    let db = TestDatabase::create().await.unwrap();
    let pg = TcpProxy::start(PG_ADDR.parse().unwrap(), true).await;
    pg.set_mode(Mode::Cut);
    let options = AppOptions {
        database: Some(db.name.clone()),
        ..AppOptions::default()
    };
    let app =
        spawn_app_with(options.env("DATABASE_URL", &pg_url(&pg.addr.to_string(), &db.name))).await;

    // Three failed rounds: the replica has seen the outage, and is still only starting.
    let failed_rounds = || async {
        metric_value(
            &app.metrics().await,
            "health_check_failures_total",
            &[("check_type", "database")],
        ) >= 3.0
    };
    assert!(cartae_harness::process::wait_until(WITHIN, failed_rounds).await);
    for path in ["/startup", "/ready", "/health"] {
        let answer = probe(&app, path).await;
        assert_retry_after(path, &answer);
    }
    assert_eq!(probe(&app, "/startup").await.body["phase"], "starting");
    assert_eq!(probe(&app, "/live").await.status, 200);
    let refused = app.register(&unique_email(), PASSWORD).await;
    assert_retry_after("register while starting", &refused);
    assert_eq!(refused.body["error"], "starting, retry later");

    // Back: the migrations' retry loop and the next round make it ready, with no restart.
    pg.set_mode(Mode::Forward);
    app.wait_ready().await;
    assert_eq!(probe(&app, "/startup").await.status, 200);
    assert_eq!(app.register(&unique_email(), PASSWORD).await.status, 201);
}

#[tokio::test]
async fn startup_stays_200_and_503s_carry_retry_after_during_an_outage() {
    let app = spawn_app_with(AppOptions::default().proxy_postgres()).await;
    let token = app.new_user().await;
    app.pg_proxy().set_mode(Mode::Cut);
    app.wait_for("/ready", WITHIN, |s, _| s == 503).await;

    holds_for_rounds(&app, "/startup", 3.0, |s, b| {
        s == 200 && b["started"] == true
    })
    .await;
    for path in ["/ready", "/health", "/health/detailed"] {
        assert_retry_after(path, &probe(&app, path).await);
    }
    let listed = app.list_items(&token, "").await;
    assert_retry_after("GET /api/items during the outage", &listed);
    let created = app
        .create_item(&token, &serde_json::json!({"type": "note", "title": "t"}))
        .await;
    assert_retry_after("POST /api/items during the outage", &created);

    app.pg_proxy().set_mode(Mode::Forward);
    app.wait_ready().await;
    assert_eq!(app.list_items(&token, "").await.status, 200);
}

/// `/health` in the IETF draft format: asserts its status code and content type.
async fn ietf_health(app: &TestApp, expected: u16) -> Value {
    let request = app.request(Method::GET, "/health", None);
    let reply = answer(request.header("Accept", "application/health+json")).await;
    assert_eq!(reply.status, expected, "{}", reply.body);
    let content_type = reply.header("content-type");
    assert_eq!(content_type, Some("application/health+json"));
    reply.body
}

fn check_status<'a>(body: &'a Value, key: &str) -> &'a Value {
    &body["checks"][key][0]["status"]
}

#[tokio::test]
async fn health_json_maps_degraded_to_warn_and_unhealthy_to_fail_with_503() {
    let app = spawn_app_with(
        AppOptions::default()
            .proxy_postgres()
            .proxy_redis()
            .env("REDIS_LATENCY_DEGRADED_MS", "40")
            .env("REDIS_LATENCY_CRITICAL_MS", "400")
            .env("HEALTH_CHECK_INTERVAL_MS", "1000")
            .env("HEALTH_CHECK_TIMEOUT_MS", "900"),
    )
    .await;
    app.wait_ready().await;

    // A degraded check: warn, and overall warn with 200.
    app.redis_proxy().set_latency(Duration::from_millis(100));
    app.wait_for("/health", WITHIN, |_, b| {
        b["checks"]["redis"]["status"] == "degraded"
    })
    .await;
    let body = ietf_health(&app, 200).await;
    assert_eq!(body["status"], "warn", "{body}");
    assert_eq!(check_status(&body, "redis:responseTime"), "warn", "{body}");
    assert_eq!(
        check_status(&body, "postgres:responseTime"),
        "pass",
        "{body}"
    );

    // A failed optional dependency: its check fails, the service only warns.
    app.redis_proxy().set_latency(Duration::ZERO);
    app.redis_proxy().set_mode(Mode::Cut);
    app.wait_for("/health", WITHIN, |_, b| {
        b["checks"]["redis"]["status"] == "failed"
    })
    .await;
    let body = ietf_health(&app, 200).await;
    assert_eq!(body["status"], "warn", "{body}");
    assert_eq!(check_status(&body, "redis:responseTime"), "fail", "{body}");

    // A failed required dependency: fail, with 503 and the reason as output.
    app.pg_proxy().set_mode(Mode::Cut);
    app.wait_for("/health", WITHIN, |s, _| s == 503).await;
    let body = ietf_health(&app, 503).await;
    assert_eq!(body["status"], "fail", "{body}");
    assert_eq!(
        check_status(&body, "postgres:responseTime"),
        "fail",
        "{body}"
    );
    assert!(
        body["checks"]["postgres:responseTime"][0]["output"].is_string(),
        "{body}"
    );
    assert!(
        body["output"]
            .as_str()
            .unwrap_or_default()
            .contains("database"),
        "{body}"
    );
}

#[tokio::test]
async fn ready_requires_none_keeps_the_replica_ready_through_both_outages() {
    let app = spawn_app_with(
        AppOptions::default()
            .proxy_postgres()
            .proxy_redis()
            .env("READY_REQUIRES", "none"),
    )
    .await;
    app.wait_ready().await;
    app.pg_proxy().set_mode(Mode::Cut);
    app.redis_proxy().set_mode(Mode::Cut);
    let body = app
        .wait_for("/health", WITHIN, |_, b| {
            b["checks"]["database"]["status"] == "failed"
                && b["checks"]["redis"]["status"] == "failed"
        })
        .await;
    assert_eq!(body["status"], "degraded", "{body}");
    holds_for_rounds(&app, "/ready", 3.0, |s, b| {
        s == 200 && b["reasons"] == serde_json::json!([])
    })
    .await;
    holds_for_rounds(&app, "/health", 1.0, |s, b| {
        s == 200 && b["status"] == "degraded"
    })
    .await;
}
