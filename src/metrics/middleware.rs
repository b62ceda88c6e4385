//! Request metrics, recorded once per request by an axum middleware.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{Histogram, IntCounter};

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

/// The `method` label. HTTP lets clients invent methods (`FOO1`, `FOO2`, …) and hyper
/// passes them through, so the raw method would let any client create series at will;
/// everything outside the standard set shares `OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// One (route, method, status)'s children of `lb_requests_total` and
/// `request_duration_seconds`.
struct Series {
    method: &'static str,
    status: u16,
    requests: IntCounter,
    duration: Histogram,
}

/// The per-request series, resolved once and then reused.
///
/// `with_label_values` hashes every label value and takes the vector's lock on each call,
/// twice per request (counter and histogram), and the route template was copied into a
/// new `String` first. Here a request costs one read lock and one hash of the route; the
/// write lock is taken only the first time a (route, method, status) is seen. The set is
/// bounded like the labels themselves: route templates, the standard methods and status
/// codes.
#[derive(Default)]
pub struct RequestSeries {
    by_route: RwLock<HashMap<Box<str>, Vec<Series>>>,
}

impl RequestSeries {
    fn record(
        &self,
        metrics: &Metrics,
        route: &str,
        method: &'static str,
        status: StatusCode,
        seconds: f64,
    ) {
        let code = status.as_u16();
        {
            let by_route = self.by_route.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(series) = by_route
                .get(route)
                .and_then(|all| all.iter().find(|s| s.status == code && s.method == method))
            {
                series.requests.inc();
                series.duration.observe(seconds);
                return;
            }
        }
        let instance = metrics.instance.as_str();
        let series = Series {
            method,
            status: code,
            requests: metrics.lb_requests.with_label_values(&[
                instance,
                method,
                status.as_str(),
                route,
            ]),
            duration: metrics.request_duration.with_label_values(&[
                instance,
                method,
                route,
                status.as_str(),
            ]),
        };
        series.requests.inc();
        series.duration.observe(seconds);
        let mut by_route = self
            .by_route
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let all = by_route.entry(route.into()).or_default();
        if !all.iter().any(|s| s.status == code && s.method == method) {
            all.push(series);
        }
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
    // A reference count, not a copy of the template.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = method_label(req.method());
    let _in_flight = InFlight::enter(&metrics.active_connections);

    let response = next.run(req).await;

    let route = route.as_ref().map_or(UNMATCHED_PATH, MatchedPath::as_str);
    metrics.request_series.record(
        &metrics,
        route,
        method,
        response.status(),
        started.elapsed().as_secs_f64(),
    );
    metrics.request_distribution.inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        for raw in ["FOO1", "FOO2", "PROPFIND"] {
            let method = Method::from_bytes(raw.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "OTHER");
        }
    }

    #[test]
    fn cached_series_count_into_the_registry() {
        let metrics = Metrics::new("api-test");
        for _ in 0..3 {
            metrics
                .request_series
                .record(&metrics, "/live", "GET", StatusCode::OK, 0.002);
        }
        metrics.request_series.record(
            &metrics,
            "/live",
            "GET",
            StatusCode::SERVICE_UNAVAILABLE,
            0.2,
        );
        let ok = metrics
            .lb_requests
            .with_label_values(&["api-test", "GET", "200", "/live"]);
        let unavailable = metrics
            .lb_requests
            .with_label_values(&["api-test", "GET", "503", "/live"]);
        assert_eq!((ok.get(), unavailable.get()), (3, 1));
        let histogram = metrics
            .request_duration
            .with_label_values(&["api-test", "GET", "/live", "200"]);
        assert_eq!(histogram.get_sample_count(), 3);
        let rendered = metrics.render();
        assert!(rendered.contains(
            r#"lb_requests_total{instance="api-test",method="GET",path="/live",status="200"} 3"#
        ));
    }
}
