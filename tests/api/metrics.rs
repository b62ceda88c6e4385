//! The metrics port: the seed's names, bounded label sets, honest gauges.

use std::time::Duration;

use futures::stream::{self, StreamExt};

use crate::helpers::{metric_value, spawn_app};

#[tokio::test]
async fn the_seed_metrics_are_exported_with_the_instance_label() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let _ = app.get("/live").await;
    let text = app.metrics().await;
    let instance = app.state.metrics.instance.as_str();
    for name in [
        "lb_requests_total",
        "request_distribution_total",
        "active_connections",
        "request_duration_seconds_bucket",
        "instance_health",
        "health_check_duration_seconds_bucket",
        "health_check_failures_total",
        "health_check_total",
        "database_latency_seconds_bucket",
        "db_pool_size",
        "db_query_errors_total",
        "redis_latency_seconds_bucket",
        "lifecycle_phase",
    ] {
        let present = text.lines().any(|l| {
            l.starts_with(&format!("{name}{{")) && l.contains(&format!("instance=\"{instance}\""))
        });
        assert!(present, "{name} missing:\n{text}");
    }
    assert!(text.contains("process_resident_memory_bytes"));
    assert_eq!(metric_value(&text, "instance_health", &[]), 1.0);
    assert_eq!(
        metric_value(&text, "lifecycle_phase", &[("phase", "ready")]),
        1.0
    );
    assert_eq!(
        metric_value(&text, "lifecycle_phase", &[("phase", "starting")]),
        0.0
    );
    assert!(
        text.contains(r#"le="0.01""#) && text.contains(r#"le="10""#),
        "seed buckets"
    );
    assert!(
        metric_value(
            &text,
            "lb_requests_total",
            &[("path", "/live"), ("method", "GET"), ("status", "200")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn ten_thousand_random_urls_create_no_new_series() {
    let app = spawn_app().await;
    app.wait_ready().await;
    // One unknown URL and one of each known route first: their series exist from then on.
    for path in ["/first-unknown", "/live", "/health"] {
        let _ = app.get(path).await;
    }
    // The purge runs once start-up completes; its query series must exist before counting.
    let purged = cartae_harness::process::wait_until(Duration::from_secs(10), || async {
        app.metrics()
            .await
            .contains("query_type=\"revocation_purge\"")
    })
    .await;
    assert!(purged, "the start-up purge never ran");
    let before = app.metrics().await;
    let statuses: Vec<u16> = stream::iter(0..10_000)
        .map(|i| {
            let url = app.url(&format!("/{}/{i}?q={}", uuid::Uuid::new_v4(), i * 7));
            let client = app.client.clone();
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 404));
    let after = app.metrics().await;
    let request_series = |t: &str| {
        t.lines()
            .filter(|l| {
                l.starts_with("lb_requests_total{") || l.starts_with("request_duration_seconds")
            })
            .count()
    };
    assert_eq!(
        request_series(&before),
        request_series(&after),
        "new request series appeared"
    );
    // Background work (health rounds, the revocation poll) may add a series of its own
    // while the test runs on a busy machine; what must never appear is a series labelled
    // from a request's path or query.
    let new_series: Vec<&str> = {
        let known: std::collections::HashSet<&str> = series_keys(&before).collect();
        series_keys(&after).filter(|k| !known.contains(k)).collect()
    };
    assert!(
        new_series
            .iter()
            .all(|k| !k.contains('/') && !k.contains("q=") && uuid_free(k)),
        "a request created series, e.g. {:?}",
        &new_series[..new_series.len().min(3)]
    );
    assert!(!after.contains("q="), "a raw URL leaked into a label");
    assert!(metric_value(&after, "lb_requests_total", &[("path", "unmatched")]) >= 10_000.0);
}

#[tokio::test]
async fn active_connections_returns_to_zero_when_clients_abort_mid_body() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;

    let app = spawn_app().await;
    app.wait_ready().await;
    let token = app.new_user().await;
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
            .await
            .unwrap();
        let head = format!(
            "POST /api/items HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 10000\r\n\r\n{{\"type\":\"note\",\"title\":"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        streams.push(stream);
    }
    let gauge = |text: &str| metric_value(text, "active_connections", &[]);
    // The requests are in flight, waiting for the rest of their bodies.
    let deadline = Instant::now() + Duration::from_secs(5);
    while gauge(&app.metrics().await) < 20.0 {
        assert!(
            Instant::now() < deadline,
            "the partial requests were never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(streams);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let value = gauge(&app.metrics().await);
        if value == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "active_connections stuck at {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing half-read was written.
    assert_eq!(
        app.list_items(&token, "").await.body["items"],
        serde_json::json!([])
    );
}

/// Each sample line's series (name and labels), without its value.
fn series_keys(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(key, _)| key))
}

fn uuid_free(text: &str) -> bool {
    !text
        .split(|c: char| !c.is_ascii_hexdigit() && c != '-')
        .any(|word| uuid::Uuid::parse_str(word).is_ok())
}
