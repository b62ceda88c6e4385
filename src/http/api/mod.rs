//! The data API under `/api`: one module per resource, each exporting `router()`, merged
//! here behind the start-up gate.

pub mod auth;
pub mod idempotency;
pub mod items;
pub mod openapi;
pub mod responses;
pub mod search;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Response;
use axum::middleware::{from_fn_with_state, Next};
use axum::Router;

use super::ApiError;
use crate::lifecycle::Lifecycle;
use crate::state::AppState;

/// Until migrations are applied the tables may not exist: answer a retryable 503 rather
/// than let queries fail with 500s. (Load balancers send nothing before `/ready` anyway.)
async fn refuse_while_starting(
    State(lifecycle): State<Arc<Lifecycle>>,
    req: Request,
    next: Next,
) -> Response<axum::body::Body> {
    if lifecycle.is_started() {
        next.run(req).await
    } else {
        axum::response::IntoResponse::into_response(ApiError::Starting)
    }
}

/// Every resource of the data API, refused with 503 while the replica is starting, and
/// ended at the server's deadline once it has started. (Shedding wraps the whole router:
/// `http::app`.)
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .merge(auth::router())
        .merge(items::router())
        .merge(search::router())
        .merge(openapi::router())
        .route_layer(super::admission::DeadlineLayer::new(
            state.settings.overload.request_timeout,
            &state.metrics,
        ))
        .route_layer(from_fn_with_state(
            state.lifecycle.clone(),
            refuse_while_starting,
        ))
}
