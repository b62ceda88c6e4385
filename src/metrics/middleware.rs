//! Request metrics, recorded once per request by an axum middleware.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::Metrics;

/// Label for requests that matched no route: every unknown URL shares this one series.
const UNMATCHED_PATH: &str = "unmatched";

/// Counts a request in flight until dropped. Dropping also happens when the client aborts
/// and axum cancels the handler future, which is what keeps `active_connections` honest.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Records `lb_requests_total`, `request_distribution_total`, `request_duration_seconds`
/// and `active_connections`. The `path` label is the matched route template, never the raw
/// URL, so random URLs cannot create new series.
pub async fn track_requests(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = req.method().clone();
    let _in_flight = InFlight::enter(&metrics.active_connections);

    let response = next.run(req).await;

    let path = path.as_deref().unwrap_or(UNMATCHED_PATH);
    let status = response.status();
    let labels = [
        metrics.instance.as_str(),
        method.as_str(),
        status.as_str(),
        path,
    ];
    metrics.lb_requests.with_label_values(&labels).inc();
    metrics.request_distribution.inc();
    metrics
        .request_duration
        .with_label_values(&[
            metrics.instance.as_str(),
            method.as_str(),
            path,
            status.as_str(),
        ])
        .observe(started.elapsed().as_secs_f64());
    response
}
