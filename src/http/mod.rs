//! The HTTP layer, the top of the crate: every router (the data API, the probes, the
//! metrics port), the middleware stack, the extractors, and the one mapping of domain
//! errors to status codes. Nothing below this module knows HTTP exists.
//!
//! Each resource module of [`api`] exports `router()`; add a new one to [`api::router`]
//! and it inherits request ids, tracing, metrics, the body limit and JSON errors.

mod admission;
pub mod api;
mod context;
pub mod error;
pub mod extract;
pub mod metrics_port;
pub mod probes;
pub mod ready_client;
mod receive;
pub mod request_id;
mod server;
mod track_requests;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use tower::{Layer, ServiceBuilder};

pub use error::{ApiError, ApiResult, ErrorBody};
pub use metrics_port::serve_metrics;

use crate::state::AppState;
pub use admission::Admission;
use admission::AdmissionLayer;
use context::RequestContextLayer;
pub use receive::ReceiveBody;
use receive::ReceiveBodyLayer;
pub use server::serve_api;
use track_requests::TrackRequestsLayer;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 1024 * 1024;

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

/// The API port's whole service, as [`app`] builds it.
pub type App = ReceiveBody<Admission<Router>>;

/// The API port's full application: the body received first (`receive`), then admission
/// control around the routes, JSON fallbacks and the middleware stack. Admission wraps
/// the router itself, so that a refusal costs no routing and none of the per-route
/// middleware (`admission`); receiving wraps admission, so that a slow body holds no slot.
pub fn app(state: AppState) -> App {
    let receive = ReceiveBodyLayer::new(
        state.settings.overload.body_timeout,
        BODY_LIMIT,
        state.settings.overload.receiving_max_bytes,
        state.metrics.clone(),
    );
    let admission = AdmissionLayer::new(state.admission.clone(), state.metrics.clone());
    let middleware = ServiceBuilder::new()
        .layer(RequestContextLayer::new(&state.metrics.instance))
        .layer(TrackRequestsLayer::new(state.metrics.clone()))
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    let router = routes(&state)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware)
        .with_state(state);
    receive.layer(admission.layer(router))
}
