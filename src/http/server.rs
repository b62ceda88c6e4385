//! Serving the API and metrics ports: hyper's HTTP/1 with a timer, a connection cap, and
//! the graceful shutdown `axum::serve` had.
//!
//! `axum::serve` runs hyper without a timer, so hyper's header-read timeout never applied:
//! a connection that sent half a head, or nothing at all, stayed open for good, and a few
//! hundred of them ran the process out of descriptors, at which point `accept` failed for
//! the probes too. Here every connection must send each request's head within
//! `HEADER_READ_TIMEOUT_MS` of being ready for it (when it opens, or once the previous
//! response is sent: hyper's one timer is the idle keep-alive timeout as well), and at
//! most `MAX_CONNECTIONS` are open at once: one more is closed as soon as it is accepted,
//! counted in `overload_rejections_total{resource="connections"}`.
//!
//! Shutdown is what it was: once `stop` completes the listener is closed, every
//! connection finishes its request in flight and closes, and the function returns when
//! the last one has.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus::IntCounter;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::{Service, ServiceExt};

use crate::config::OverloadSettings;
use crate::metrics::Metrics;

/// Serves the API port's `app` on `listener` until `stop` completes, then shuts down
/// gracefully.
pub async fn serve_api(
    listener: TcpListener,
    app: super::App,
    limits: &OverloadSettings,
    metrics: &Metrics,
    stop: impl Future<Output = ()>,
) {
    let connections = Connections {
        header_read_timeout: limits.header_read_timeout,
        max: limits.max_connections,
    };
    serve(listener, app, connections, metrics, stop).await;
}

/// What a listener allows its connections.
pub struct Connections {
    pub header_read_timeout: Duration,
    pub max: usize,
}

/// Serves `app` on `listener` until `stop` completes, then shuts down gracefully.
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    limits: Connections,
    metrics: &Metrics,
    stop: impl Future<Output = ()>,
) where
    S: Service<Request, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connections = Arc::new(Semaphore::new(limits.max));
    let over_the_cap: IntCounter = metrics.overload_rejections.with_label_values(&[
        metrics.instance.as_str(),
        "connections",
        "limit",
    ]);
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    wait_after_accept_error(e).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Closed rather than left in the backlog: the client learns at once and can
            // go to another replica, and the kernel's queue stays free for the rest.
            over_the_cap.inc();
            drop(stream);
            continue;
        };
        // The peer's address: failed logins are throttled per account and client.
        let service = app.clone().map_request(move |req: Request<Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            req
        });
        let connection = graceful
            .watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // A client that timed out or went away: its own business, not an error here.
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// As `axum::serve` does: a connection that failed before it was accepted is the peer's
/// problem; anything else (out of descriptors) is logged and retried a second later.
async fn wait_after_accept_error(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
