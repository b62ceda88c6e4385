//! The probe endpoints' shapes and status codes, over HTTP against a real server.

use std::time::Duration;

use crate::helpers::{spawn_app, spawn_app_with, AppOptions};

#[tokio::test]
async fn live_answers_with_the_seed_fields() {
    let app = spawn_app().await;
    let (status, body) = app.get_json("/live").await;
    assert_eq!(status, 200);
    assert_eq!(body["alive"], true);
    assert_eq!(body["instance"], app.state.metrics.instance.as_str());
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn ready_turns_200_once_migrations_and_first_checks_are_done() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let (status, body) = app.get_json("/ready").await;
    assert_eq!(status, 200);
    assert_eq!(body["ready"], true);
    assert_eq!(body["reasons"], serde_json::json!([]));
    assert!(body["snapshotAgeMs"].as_u64().is_some());
    let (status, body) = app.get_json("/startup").await;
    assert_eq!((status, body["started"].as_bool()), (200, Some(true)));
}

#[tokio::test]
async fn health_reports_every_check_with_the_seed_fields() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let (status, body) = app.get_json("/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "healthy", "{body}");
    for dependency in ["database", "redis"] {
        assert_eq!(body["checks"][dependency]["status"], "ok");
        assert!(body["checks"][dependency]["latency"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(body["checks"]["memory"]["status"], "ok");
    let usage = body["checks"]["memory"]["details"]["usagePercent"]
        .as_f64()
        .unwrap();
    assert!(usage > 0.0 && usage < 100.0, "{usage}");
    let load = body["checks"]["cpu"]["details"]["loadAverage"]
        .as_array()
        .unwrap();
    assert_eq!(load.len(), 3);
    assert!(body["checks"]["cpu"]["details"]["normalizedLoad"]
        .as_f64()
        .is_some());
    assert!(body["uptime"].as_u64().is_some());
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["instance"], app.state.metrics.instance.as_str());
}

#[tokio::test]
async fn health_speaks_the_ietf_draft_when_asked() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let response = app
        .client
        .get(app.url("/health"))
        .header("Accept", "application/health+json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/health+json"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "pass");
    for key in [
        "postgres:responseTime",
        "redis:responseTime",
        "memory:utilization",
        "cpu:utilization",
    ] {
        let check = &body["checks"][key][0];
        assert!(check["observedValue"].is_number(), "{key}: {check}");
        assert!(check["observedUnit"].is_string(), "{key}: {check}");
        assert!(check["time"].is_string(), "{key}: {check}");
        assert_eq!(check["status"], "pass", "{key}: {check}");
    }
}

#[tokio::test]
async fn detailed_health_adds_system_facts_versions_and_pools() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let (status, body) = app.get_json("/health/detailed").await;
    assert_eq!(status, 200);
    assert_eq!(body["system"]["pid"], std::process::id());
    assert!(body["system"]["cpuCount"].as_u64().unwrap() >= 1);
    assert!(body["system"]["totalMemoryMB"].as_f64().unwrap() > 0.0);
    assert!(body["system"]["freeMemoryMB"].as_f64().is_some());
    // The seed's own names, which its troubleshooting guide reads.
    let total_gb = body["system"]["totalMemoryGB"].as_f64().unwrap();
    let total_mb = body["system"]["totalMemoryMB"].as_f64().unwrap();
    assert!(
        (total_gb - total_mb / 1024.0).abs() < 0.01,
        "{total_gb} GB, {total_mb} MB"
    );
    assert!(body["system"]["freeMemoryGB"].as_f64().is_some());
    assert!(body["system"]["hostname"].is_string());
    assert!(body["versions"]["postgres"]
        .as_str()
        .unwrap()
        .starts_with(char::is_numeric));
    assert!(body["pools"]["database"]["max"].as_u64().unwrap() >= 1);
    assert!(body["pools"]["redis"]["max"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_get_json_errors() {
    let app = spawn_app().await;
    let (status, body) = app.get_json("/no/such/route").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not found");
    assert!(body["details"].is_array());
    let response = app.client.post(app.url("/live")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "method not allowed");
}

#[tokio::test]
async fn request_ids_are_returned_or_generated_and_the_instance_is_named() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/live"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    assert_eq!(
        response.headers()["x-instance-id"],
        app.state.metrics.instance.as_str()
    );
    let response = app.get("/live").await;
    let generated = response.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");
    // An oversized, unprintable or repeated id is replaced, not echoed (nor logged).
    let oversized = "x".repeat(129);
    for sent in [vec![oversized.as_str()], vec!["two words"], vec!["a", "b"]] {
        let mut request = app.client.get(app.url("/live"));
        for id in &sent {
            request = request.header("x-request-id", *id);
        }
        let response = request.send().await.unwrap();
        let ids: Vec<_> = response.headers().get_all("x-request-id").iter().collect();
        assert_eq!(ids.len(), 1, "{sent:?}");
        let echoed = ids[0].to_str().unwrap();
        assert!(
            uuid::Uuid::parse_str(echoed).is_ok(),
            "{sent:?} -> {echoed}"
        );
    }
    let longest = "y".repeat(128);
    let response = app
        .client
        .get(app.url("/live"))
        .header("x-request-id", &longest)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], longest.as_str());
}

#[tokio::test]
async fn startup_stays_503_while_postgres_is_unreachable() {
    // Nothing listens on port 1: the migrations cannot run, so the replica stays starting.
    let app = spawn_app_with(AppOptions::default().env(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:1/none?sslmode=disable",
    ))
    .await;
    // Give it rounds of checks and migration attempts in which it could wrongly start.
    let rounds = app.round() + 3;
    let passed = cartae_harness::process::wait_until(Duration::from_secs(20), || {
        std::future::ready(app.round() >= rounds)
    })
    .await;
    assert!(
        passed,
        "the checks do not run while PostgreSQL is unreachable"
    );
    let (status, body) = app.get_json("/startup").await;
    assert_eq!((status, body["phase"].as_str()), (503, Some("starting")));
    let (status, body) = app.get_json("/ready").await;
    assert_eq!(status, 503);
    assert!(
        body["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "starting"),
        "{body}"
    );
    let (status, _) = app.get_json("/live").await;
    assert_eq!(status, 200, "liveness depends on nothing external");
}
