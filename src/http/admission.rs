//! Admission control of the data API: a bounded number of requests in flight, a short
//! bounded queue, then an immediate 503 with `Retry-After`; and a deadline on every
//! admitted request.
//!
//! Only `/api` passes through here. Probes and `/metrics` are never shed: a replica that
//! is busy must still say it is alive and ready, or the balancer pulls it out and pushes
//! its load onto the others, which then fail in turn.

use axum::extract::{Request, State};
use axum::http::Response;
use axum::middleware::Next;
use axum::response::IntoResponse;

use super::ApiError;
use crate::state::AppState;

pub async fn admit(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response<axum::body::Body> {
    let _permit = match state.admission.enter().await {
        Ok(permit) => permit,
        Err(rejected) => {
            state
                .metrics
                .record_rejection("requests", rejected.as_str());
            return ApiError::Overloaded("this replica").into_response();
        }
    };
    // Dropping the handler at the deadline cancels its work here; PostgreSQL's own
    // statement_timeout (250 ms later) cancels the query on the server side.
    match tokio::time::timeout(state.settings.overload.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            state.metrics.record_rejection("requests", "deadline");
            ApiError::DeadlineExceeded.into_response()
        }
    }
}
