//! Request metrics, recorded once per request by an axum middleware.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use pin_project_lite::pin_project;
use prometheus::{Histogram, IntCounter};
use tower::{Layer, Service};

use super::Metrics;

/// Label for requests that matched no route: every unknown URL shares this one series.
const UNMATCHED_PATH: &str = "unmatched";

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

impl Metrics {
    /// Records a request answered outside the per-route layer (refused before routing):
    /// the same series and counters as one that went through it.
    pub fn record_request(&self, route: &str, method: &Method, status: StatusCode, seconds: f64) {
        self.request_series
            .record(self, route, method_label(method), status, seconds);
        self.request_distribution.inc();
    }
}

/// Records `lb_requests_total`, `request_distribution_total`, `request_duration_seconds`
/// and `active_connections`. The `path` label is the matched route template, never the raw
/// URL, so random URLs cannot create new series.
///
/// A plain tower layer rather than `axum::middleware::from_fn`: `from_fn` clones and
/// boxes the inner service into a `Next` and boxes its own future on every request,
/// which the profile showed costing more than recording the metrics themselves. Its own
/// future is not boxed either.
#[derive(Clone)]
pub struct TrackRequestsLayer {
    metrics: Arc<Metrics>,
}

impl TrackRequestsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for TrackRequestsLayer {
    type Service = TrackRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackRequests {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`TrackRequestsLayer`] wraps around each route.
#[derive(Clone)]
pub struct TrackRequests<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// What a request's metrics need once its response is known.
struct Pending {
    metrics: Arc<Metrics>,
    route: Option<MatchedPath>,
    method: &'static str,
    started: Instant,
}

impl Pending {
    fn finish(self, status: StatusCode) {
        let route = self
            .route
            .as_ref()
            .map_or(UNMATCHED_PATH, MatchedPath::as_str);
        self.metrics.request_series.record(
            &self.metrics,
            route,
            self.method,
            status,
            self.started.elapsed().as_secs_f64(),
        );
        self.metrics.request_distribution.inc();
    }
}

/// Counts a request in flight until dropped: dropping also happens when the client
/// aborts and the future is cancelled, which keeps `active_connections` honest.
struct Guard(Option<Pending>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(pending) = &self.0 {
            pending.metrics.active_connections.dec();
        }
    }
}

impl<S, B> Service<axum::http::Request<B>> for TrackRequests<S>
where
    S: Service<axum::http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let pending = Pending {
            metrics: self.metrics.clone(),
            // A reference count, not a copy of the template.
            route: req.extensions().get::<MatchedPath>().cloned(),
            method: method_label(req.method()),
            started: Instant::now(),
        };
        pending.metrics.active_connections.inc();
        let guard = Guard(Some(pending));
        TrackedFuture {
            inner: self.inner.call(req),
            guard,
        }
    }
}

pin_project! {
    /// The inner response, recorded when it is ready. Not boxed: this runs on every request.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Guard,
    }
}

impl<F, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        if let Some(pending) = this.guard.0.take() {
            pending.metrics.active_connections.dec();
            pending.finish(response.status());
        }
        Poll::Ready(Ok(response))
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
