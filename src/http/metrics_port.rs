//! The metrics listener, on its own port so that it is never exposed through the load
//! balancer, and keeps answering while the API port drains.

use std::future::Future;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::state::AppState;

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    // Gauges that mirror state are set at scrape time, so they are never stale.
    state.db.record_pool_sizes(&state.metrics);
    let (_, verdict) = state.verdict();
    state.metrics.instance_health.set(verdict.status.gauge());
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.metrics.render(),
    )
}

/// Connections of the metrics port open at once: a few scrapers need one each.
const MAX_CONNECTIONS: usize = 64;

/// Serves `GET /metrics` until `shutdown` resolves, with the API port's header-read
/// timeout: it is reachable from inside the cluster, so a silent connection must not stay.
pub async fn serve_metrics(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let connections = super::server::Connections {
        header_read_timeout: state.settings.overload.header_read_timeout,
        max: MAX_CONNECTIONS,
    };
    let metrics = state.metrics.clone();
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(state);
    super::server::serve(listener, app, connections, &metrics, shutdown).await;
}
