//! Clients that send slowly or not at all, with no account: they must not hold what
//! everyone else needs (admission slots, connections).

use std::time::{Duration, Instant};

use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{metric_value, spawn_app_with, AppOptions, TestApp};

/// A login whose head is complete and whose body stops after its first bytes.
async fn slow_login(app: &TestApp) -> TcpStream {
    let port = app.address.rsplit(':').next().unwrap();
    let mut stream = TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let head = "POST /api/auth/login HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: slow-1\r\n\
                Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\":";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Everything the server sends until it closes the connection, within `within`.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "still open after {within:?}");
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn slow_bodies_hold_no_admission_slot_and_get_a_408() {
    let app = spawn_app_with(
        AppOptions::default()
            .env("MAX_IN_FLIGHT_REQUESTS", "2")
            .env("MAX_QUEUED_REQUESTS", "0")
            .env("BODY_TIMEOUT_MS", "1500"),
    )
    .await;
    let token = app.new_user().await;
    let mut slow = Vec::new();
    for _ in 0..6 {
        slow.push(slow_login(&app).await);
    }
    // Give the server the time to take each one in.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..4 {
        let me = app
            .call(Method::GET, "/api/auth/me", Some(&token), None)
            .await;
        assert_eq!(me.status, 200, "{}", me.body);
    }

    let started = Instant::now();
    let answer = read_to_close(&mut slow[0], Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("content-type: application/json"), "{answer}");
    assert!(lower.contains("x-request-id: slow-1"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body: serde_json::Value = serde_json::from_str(body).expect("a JSON error body");
    assert_eq!(body["error"], "request body not received within 1500 ms");
    let metrics = app.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "lb_requests_total",
            &[("path", "body_timeout"), ("status", "408")]
        ) >= 1.0,
        "{metrics}"
    );
}
