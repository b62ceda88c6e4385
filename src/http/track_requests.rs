//! Request metrics, recorded once per request by a tower layer around each route.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::StatusCode;
use axum::response::Response;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::metrics::{method_label, Metrics};

/// Label for requests that matched no route: every unknown URL shares this one series.
const UNMATCHED_PATH: &str = "unmatched";

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
        self.metrics.record_labelled(
            route,
            self.method,
            status,
            self.started.elapsed().as_secs_f64(),
        );
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
