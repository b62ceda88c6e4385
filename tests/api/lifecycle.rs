//! Draining and stopping: in-process through the same signal channel as SIGTERM, and with
//! the real binary and real signals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartae_database_api::startup::Stopped;

use crate::helpers::{base_env, pg_url, spawn_app_with, AppOptions, TestDatabase, PG_ADDR};
use crate::support::process::{run_to_end, Replica};

#[tokio::test]
async fn a_stop_signal_drains_probes_at_once_while_routes_keep_serving() {
    let app = spawn_app_with(AppOptions::default().env("DRAIN_DELAY_MS", "1500")).await;
    app.wait_ready().await;
    let signalled = Instant::now();
    app.signal();
    let body = app
        .wait_for("/ready", Duration::from_millis(500), |s, _| s == 503)
        .await;
    assert!(signalled.elapsed() < Duration::from_millis(500));
    assert_eq!(body["reasons"], serde_json::json!(["draining"]));
    let (status, body) = app.get_json("/health").await;
    assert_eq!(status, 503);
    assert_eq!(body["reasons"], serde_json::json!(["draining"]));
    // Still serving everything else during the drain delay.
    for _ in 0..10 {
        let (status, _) = app.get_json("/live").await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = app.metrics().await;
    assert_eq!(
        crate::helpers::metric_value(&metrics, "lifecycle_phase", &[("phase", "draining")]),
        1.0
    );
    assert_eq!(
        crate::helpers::metric_value(&metrics, "instance_health", &[]),
        0.0
    );
    let outcome = tokio::time::timeout(Duration::from_secs(10), app.run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Stopped::Gracefully);
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "stopped before the drain delay"
    );
}

async fn process_env(db: &TestDatabase, drain_ms: u64) -> HashMap<String, String> {
    let mut env = base_env(&pg_url(PG_ADDR, &db.name), "redis://127.0.0.1:6379");
    env.insert("DRAIN_DELAY_MS".into(), drain_ms.to_string());
    env.insert("INSTANCE_ID".into(), "proc-1".into());
    env.insert("LOG_LEVEL".into(), "info".into());
    env
}

#[tokio::test]
async fn sigterm_under_steady_load_fails_no_request_and_exits_zero() {
    let db = TestDatabase::create().await.unwrap();
    let mut replica = Replica::start(process_env(&db, 1500).await).await;
    let client = reqwest::Client::new();
    replica.wait_ready(&client, Duration::from_secs(20)).await;

    // Load, as a load balancer would send it: until its next probe sees 503, and a little
    // longer, since its checks are periodic.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let (client, stop, sent, failed) =
                (client.clone(), stop.clone(), sent.clone(), failed.clone());
            let url = replica.url(if i % 2 == 0 {
                "/live"
            } else {
                "/health/detailed"
            });
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    sent.fetch_add(1, Ordering::SeqCst);
                    match client.get(&url).send().await {
                        Ok(r) if r.status().is_success() || r.status() == 503 => {}
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    replica.signal("TERM");
    let signalled = Instant::now();
    loop {
        let r = client.get(replica.url("/ready")).send().await.unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_millis(500),
            "/ready did not turn 503 at once"
        );
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert!(sent.load(Ordering::SeqCst) > 50, "the load was real");
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during the drain"
    );

    let status = replica.wait_exit(Duration::from_secs(10)).expect("exited");
    assert_eq!(status.code(), Some(0), "logs:\n{}", replica.logs());
    assert!(signalled.elapsed() >= Duration::from_millis(1500));
    assert!(replica.logs().contains("draining"));
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let db = TestDatabase::create().await.unwrap();
    let mut replica = Replica::start(process_env(&db, 30_000).await).await;
    let client = reqwest::Client::new();
    replica.wait_ready(&client, Duration::from_secs(20)).await;
    replica.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        replica.wait_exit(Duration::from_millis(100)).is_none(),
        "first signal only drains"
    );
    let second = Instant::now();
    replica.signal("INT");
    let status = replica
        .wait_exit(Duration::from_secs(3))
        .expect("exited after the second signal");
    assert!(second.elapsed() < Duration::from_secs(2));
    assert_eq!(status.code(), Some(130));
}

#[tokio::test]
async fn a_sigterm_during_start_up_drains_instead_of_killing() {
    let db = TestDatabase::create().await.unwrap();
    // `start` returns as soon as the replica logs the ports it bound, long before its
    // migrations finish: a SIGTERM then must start a drain, not kill the process.
    let mut replica = Replica::start(process_env(&db, 0).await).await;
    replica.signal("TERM");
    let status = replica.wait_exit(Duration::from_secs(10)).expect("exited");
    assert_eq!(
        status.code(),
        Some(0),
        "killed by the signal instead of draining; logs:\n{}",
        replica.logs()
    );
}

#[tokio::test]
async fn healthcheck_subcommand_follows_ready() {
    let db = TestDatabase::create().await.unwrap();
    let replica = Replica::start(process_env(&db, 0).await).await;
    let client = reqwest::Client::new();
    replica.wait_ready(&client, Duration::from_secs(20)).await;
    let port = |p: u16| HashMap::from([("PORT".to_owned(), p.to_string())]);
    let (status, output) = run_to_end(&["healthcheck"], &port(replica.port));
    assert!(status.success(), "{output}");
    // Nothing listens on port 1.
    let (status, output) = run_to_end(&["healthcheck"], &port(1));
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("not ready"), "{output}");
}

#[tokio::test]
async fn probes_are_logged_at_debug_only_and_requests_carry_their_id() {
    let db = TestDatabase::create().await.unwrap();
    let replica = Replica::start(process_env(&db, 0).await).await;
    let client = reqwest::Client::new();
    replica.wait_ready(&client, Duration::from_secs(20)).await;
    for path in ["/live", "/ready", "/health", "/startup"] {
        client.get(replica.url(path)).send().await.unwrap();
    }
    client
        .get(replica.url("/not-a-probe"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    // The log line is written after the response: give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = replica.logs();
    let request_lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "request served")
        .collect();
    assert_eq!(
        request_lines.len(),
        1,
        "only the non-probe request is logged at info:\n{logs}"
    );
    assert_eq!(request_lines[0]["span"]["path"], "/not-a-probe", "{logs}");
    assert_eq!(
        request_lines[0]["span"]["request_id"], "trace-me-42",
        "{logs}"
    );
    assert_eq!(request_lines[0]["status"], 404);
}

#[tokio::test]
async fn a_post_whose_body_is_still_arriving_when_the_drain_starts_completes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = spawn_app_with(AppOptions::default().env("DRAIN_DELAY_MS", "600")).await;
    app.wait_ready().await;
    let token = app.new_user().await;
    let body = serde_json::json!({"type": "note", "title": "written during the drain"}).to_string();
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    let mut stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let head = format!(
        "POST /api/items HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = body.as_bytes().split_at(10);
    stream.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let signalled = Instant::now();
    app.signal();
    // Trickle the rest across the drain delay and into the stop phase.
    for chunk in rest.chunks(4) {
        stream.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(
        signalled.elapsed() > Duration::from_millis(600),
        "the body should still be arriving after the drain delay"
    );
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("answered before the shutdown timeout")
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert!(response.contains("written during the drain"));
    let outcome = tokio::time::timeout(Duration::from_secs(10), app.run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Stopped::Gracefully);
}
