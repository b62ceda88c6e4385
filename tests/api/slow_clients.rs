//! Clients that send slowly or not at all, with no account: they must not hold what
//! everyone else needs (admission slots, connections).

use std::time::{Duration, Instant};

use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{metric_value, spawn_app_with, AppOptions, TestApp};
use crate::support::api_client::{unique_email, PASSWORD};

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

async fn connect(app: &TestApp) -> TcpStream {
    let port = app.address.rsplit(':').next().unwrap();
    TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap()
}

#[tokio::test]
async fn silent_half_sent_and_idle_connections_are_closed_at_the_header_timeout() {
    let app = spawn_app_with(AppOptions::default().env("HEADER_READ_TIMEOUT_MS", "500")).await;
    app.wait_ready().await;
    let mut silent = connect(&app).await;
    let metrics_port = app.metrics_address.rsplit(':').next().unwrap();
    let mut silent_on_metrics = TcpStream::connect(format!("127.0.0.1:{metrics_port}"))
        .await
        .unwrap();
    let mut half_sent = connect(&app).await;
    half_sent
        .write_all(b"GET /live HTTP/1.1\r\nHost: local")
        .await
        .unwrap();
    let mut idle = connect(&app).await;
    idle.write_all(b"GET /live HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    let within = Duration::from_secs(5);
    read_to_close(&mut silent, within).await;
    read_to_close(&mut silent_on_metrics, within).await;
    let answer = read_to_close(&mut half_sent, within).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // The rest of the first answer, then the close.
    read_to_close(&mut idle, within).await;
}

#[tokio::test]
async fn beyond_max_connections_a_new_connection_is_closed_at_once() {
    let app = spawn_app_with(AppOptions::default().env("MAX_CONNECTIONS", "4")).await;
    // Leaves the test client's one pooled connection open: the fourth.
    app.wait_ready().await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&app).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = connect(&app).await;
    let answer = read_to_close(&mut over, Duration::from_secs(2)).await;
    assert!(answer.is_empty(), "{answer}");

    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut room = connect(&app).await;
    room.write_all(b"GET /live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut room, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = app.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "overload_rejections_total",
            &[("resource", "connections"), ("reason", "limit")]
        ) >= 1.0,
        "{metrics}"
    );
}

/// A large body of which all but the last bytes are sent.
async fn nearly_sent_body(app: &TestApp, bytes: usize) -> TcpStream {
    let mut stream = connect(app).await;
    let head = format!(
        "POST /api/items HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        bytes + 100
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b' '; bytes]).await.unwrap();
    stream
}

#[tokio::test]
async fn bodies_being_received_share_one_byte_budget() {
    let app = spawn_app_with(
        AppOptions::default()
            .env("RECEIVING_BODIES_MAX_BYTES", &(2 * 1024 * 1024).to_string())
            .env("BODY_TIMEOUT_MS", "10000"),
    )
    .await;
    app.wait_ready().await;
    // Two bodies of 879 KiB held, of 2,048: the third does not fit.
    let _held = [
        nearly_sent_body(&app, 900_000).await,
        nearly_sent_body(&app, 900_000).await,
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = nearly_sent_body(&app, 900_000).await;
    let answer = read_to_close(&mut third, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    // A small body still fits.
    assert_eq!(app.register(&unique_email(), PASSWORD).await.status, 201);
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "overload_rejections_total",
            &[("resource", "request_bodies"), ("reason", "budget")]
        ),
        1.0
    );
}
