//! The HTTP layer, the top of the crate: every router (the data API, the probes, the
//! metrics port), the middleware stack, the extractors, and the one mapping of domain
//! errors to status codes. Nothing below this module knows HTTP exists.
//!
//! Each resource module of [`api`] exports `router()`; add a new one to [`api::router`]
//! and it inherits request ids, tracing, metrics, the body limit and JSON errors.

mod admission;
pub mod api;
pub mod error;
pub mod extract;
pub mod metrics_port;
pub mod probes;
pub mod request_id;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

pub use error::{ApiError, ApiResult, ErrorBody};
pub use metrics_port::serve_metrics;

use crate::metrics::TrackRequestsLayer;
use crate::state::AppState;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 1024 * 1024;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Which replica answered: lets clients and tests see the load balancer's choices.
const INSTANCE_ID: HeaderName = HeaderName::from_static("x-instance-id");

/// Paths probed every few seconds by every load balancer and orchestrator: logged at debug
/// only, or they would drown everything else.
fn is_probe(path: &str) -> bool {
    matches!(path, "/live" | "/ready" | "/health" | "/startup")
}

/// Every route of the API port, before middleware.
fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .merge(probes::router())
        .nest("/api", api::router(state))
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn request_span(req: &Request) -> Span {
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let path = req.uri().path();
    if is_probe(path) {
        tracing::debug_span!("request", method = %req.method(), path, request_id)
    } else {
        tracing::info_span!("request", method = %req.method(), path, request_id)
    }
}

fn log_response<B>(response: &Response<B>, latency: Duration, span: &Span) {
    let status = response.status().as_u16();
    let ms = latency.as_secs_f64() * 1000.0;
    let is_info = span
        .metadata()
        .is_some_and(|m| *m.level() == tracing::Level::INFO);
    if !is_info {
        // A probe: its 503s (starting, draining, a dependency down) are answers, not
        // failures, and an outage must not turn every balancer's probe into an error line.
        tracing::debug!(status, latency_ms = ms, "request served");
    } else if status >= 500 && status != 503 {
        tracing::error!(status, latency_ms = ms, "request failed");
    } else {
        // 503 is retryable (shed, deadline, database away): an answer, logged as one.
        tracing::info!(status, latency_ms = ms, "request served");
    }
}

/// The API port's full application: routes, JSON fallbacks and the middleware stack.
pub fn app(state: AppState) -> Router {
    // An instance id that is not a valid header value is simply not advertised.
    let instance = HeaderValue::from_str(&state.metrics.instance).ok();
    let middleware = ServiceBuilder::new()
        // A client's id is kept only if short and printable (see `request_id`).
        .map_request(|req| request_id::drop_unacceptable(&REQUEST_ID, req))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(SetResponseHeaderLayer::overriding(
            INSTANCE_ID,
            move |_: &Response<_>| instance.clone(),
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(log_response)
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("handler panicked");
            axum::response::IntoResponse::into_response(ApiError::Internal(anyhow::anyhow!(
                "handler panicked"
            )))
        }))
        .layer(TrackRequestsLayer::new(state.metrics.clone()))
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    routes(&state)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware)
        .with_state(state)
}
