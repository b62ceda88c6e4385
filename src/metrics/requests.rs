//! The per-request series (`lb_requests_total`, `request_duration_seconds`), which the
//! HTTP layer's request tracking (`http::track_requests`) records into once per request.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use http::{Method, StatusCode};
use prometheus::{Histogram, IntCounter};

use super::Metrics;

/// The `method` label. HTTP lets clients invent methods (`FOO1`, `FOO2`, …) and hyper
/// passes them through, so the raw method would let any client create series at will;
/// everything outside the standard set shares `OTHER`.
pub fn method_label(method: &Method) -> &'static str {
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

impl Metrics {
    /// Records a request answered outside the per-route layer (refused before routing):
    /// the same series and counters as one that went through it.
    pub fn record_request(&self, route: &str, method: &Method, status: StatusCode, seconds: f64) {
        self.record_labelled(route, method_label(method), status, seconds);
    }

    /// Records a request whose method label is already known (`method_label`).
    pub fn record_labelled(
        &self,
        route: &str,
        method: &'static str,
        status: StatusCode,
        seconds: f64,
    ) {
        self.request_series
            .record(self, route, method, status, seconds);
        self.request_distribution.inc();
    }
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
