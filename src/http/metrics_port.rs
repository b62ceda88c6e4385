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

/// Serves `GET /metrics` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
