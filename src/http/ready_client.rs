//! The client side of `/ready`, for `cartae-database-api healthcheck`: a Docker
//! HEALTHCHECK in an image that has no curl.

use std::time::Duration;

use anyhow::Context;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Whether `GET http://127.0.0.1:{port}/ready` answers 200 within `timeout`.
pub async fn is_ready(port: u16, timeout: Duration) -> anyhow::Result<bool> {
    tokio::time::timeout(timeout, get_ready(port))
        .await
        .with_context(|| format!("no answer from /ready within {} ms", timeout.as_millis()))?
}

async fn get_ready(port: u16) -> anyhow::Result<bool> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot connect to 127.0.0.1:{port}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::get("/ready")
        .header(hyper::header::HOST, format!("127.0.0.1:{port}"))
        .header("x-health-check", "docker")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    Ok(response.status() == hyper::StatusCode::OK)
}
