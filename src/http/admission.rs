//! Admission control of the data API: a bounded number of requests in flight, a short
//! bounded queue, then an immediate 503 with `Retry-After`; and a deadline on every
//! admitted request.
//!
//! Only `/api` passes through here. Probes and `/metrics` are never shed: a replica that
//! is busy must still say it is alive and ready, or the balancer pulls it out and pushes
//! its load onto the others, which then fail in turn.
//!
//! Shedding ([`AdmissionLayer`]) wraps the whole router, outside routing, the request
//! context, tracing and per-route metrics: a refusal exists to save the CPU an overloaded
//! replica lacks, so it does none of that work. Its answer is built once at start (body,
//! headers) and cloned; it is counted in `overload_rejections_total` and in
//! `lb_requests_total` (path [`SHED_ROUTE`]), and logged at WARN at most once per
//! [`WARN_EVERY`]. It carries `x-instance-id`, and the client's `x-request-id` when it sent
//! an acceptable one; no id is generated, since nothing was logged under it.
//!
//! The deadline ([`DeadlineLayer`]) sits on the API routes, inside the request context,
//! so a request that ran out of time is logged and counted under its route like any other.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use pin_project_lite::pin_project;
use prometheus::IntCounter;
use tokio::sync::OwnedSemaphorePermit;
use tower::{Layer, Service, ServiceExt};

use super::context::{INSTANCE_ID, REQUEST_ID};
use super::error::RETRY_AFTER_SECONDS;
use super::ApiError;
use crate::bulkhead::{Bulkhead, Rejected};
use crate::metrics::Metrics;

/// The `path` label of refused requests in `lb_requests_total`: they are refused before
/// routing, so they have no route template, and one fixed value keeps the series bounded.
pub const SHED_ROUTE: &str = "shed";

/// At most one WARN line per this span while shedding: a line per refusal would cost the
/// overloaded replica the very CPU it is saving, and flood the logs exactly then.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Whether a path is the data API's, the only part ever shed.
pub(super) fn is_api(path: &str) -> bool {
    path.strip_prefix("/api")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Sheds the data API's excess around the whole router; see the module's docs.
#[derive(Clone)]
pub struct AdmissionLayer {
    shared: Arc<Shared>,
}

impl AdmissionLayer {
    pub fn new(bulkhead: Arc<Bulkhead>, metrics: Arc<Metrics>) -> Self {
        let rejected = |reason: &str| {
            metrics.overload_rejections.with_label_values(&[
                metrics.instance.as_str(),
                "requests",
                reason,
            ])
        };
        Self {
            shared: Arc::new(Shared {
                refusal: Refusal::new(&metrics.instance),
                queue_full: rejected(Rejected::QueueFull.as_str()),
                queue_timeout: rejected(Rejected::Timeout.as_str()),
                warn: WarnEvery::new(WARN_EVERY),
                bulkhead,
                metrics,
            }),
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// What every request of one replica's admission shares, resolved once at start.
struct Shared {
    bulkhead: Arc<Bulkhead>,
    metrics: Arc<Metrics>,
    refusal: Refusal,
    /// `overload_rejections_total`'s two children for requests, resolved once: a label
    /// lookup hashes every value and takes the vector's lock.
    queue_full: IntCounter,
    queue_timeout: IntCounter,
    warn: WarnEvery,
}

impl Shared {
    /// The refusal of `req` after `waited` in the queue, counted and (at most once per
    /// [`WARN_EVERY`]) logged.
    fn refuse(&self, req: &Request, why: Rejected, waited: Duration) -> Response<Body> {
        match why {
            Rejected::QueueFull => self.queue_full.inc(),
            Rejected::Timeout => self.queue_timeout.inc(),
        }
        self.metrics.record_request(
            SHED_ROUTE,
            req.method(),
            StatusCode::SERVICE_UNAVAILABLE,
            waited.as_secs_f64(),
        );
        if let Some(refused) = self.warn.due() {
            tracing::warn!(
                refused,
                in_flight = self.bulkhead.in_use(),
                queued = self.bulkhead.queued(),
                "shedding load: data API requests refused with 503"
            );
        }
        self.refusal.response(req)
    }
}

/// The 503 of a shed request, built once.
struct Refusal {
    body: Bytes,
    headers: HeaderMap,
}

impl Refusal {
    fn new(instance: &str) -> Self {
        let mut headers = HeaderMap::with_capacity(4);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::RETRY_AFTER, RETRY_AFTER_SECONDS);
        if let Ok(instance) = HeaderValue::from_str(instance) {
            headers.insert(INSTANCE_ID, instance);
        }
        Self {
            body: ApiError::Overloaded("this replica").body_json().into(),
            headers,
        }
    }

    fn response(&self, req: &Request) -> Response<Body> {
        let mut response = Response::new(Body::from(self.body.clone()));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        *response.headers_mut() = self.headers.clone();
        let mut ids = req.headers().get_all(REQUEST_ID).iter();
        if let (Some(id), None) = (ids.next(), ids.next()) {
            if super::request_id::is_acceptable(id) {
                response.headers_mut().insert(REQUEST_ID, id.clone());
            }
        }
        response
    }
}

/// Says when a WARN line is due, at most once per span, and how many refusals it covers.
struct WarnEvery {
    origin: Instant,
    every_ms: u64,
    /// Milliseconds since `origin` before which no line is due.
    next_ms: AtomicU64,
    refused: AtomicU64,
}

impl WarnEvery {
    fn new(every: Duration) -> Self {
        Self {
            origin: Instant::now(),
            every_ms: every.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Counts one refusal; `Some(refusals since the last line)` when a line is due.
    fn due(&self) -> Option<u64> {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let now = self.origin.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        // One winner per span, even when every worker refuses at the same moment.
        (now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.every_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok())
        .then(|| self.refused.swap(0, Ordering::Relaxed))
    }
}

/// The service [`AdmissionLayer`] wraps around the router.
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request> for Admission<S>
where
    S: Service<Request, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = AdmissionFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if !is_api(req.uri().path()) {
            return AdmissionFuture::Admitted {
                inner: self.inner.call(req),
                permit: None,
            };
        }
        let bulkhead = &self.shared.bulkhead;
        if let Some(permit) = bulkhead.try_enter() {
            return AdmissionFuture::Admitted {
                inner: self.inner.call(req),
                permit: Some(permit),
            };
        }
        if bulkhead.queue_is_full() {
            // Refused without waiting: no clock is read, the duration is zero.
            let response = self
                .shared
                .refuse(&req, Rejected::QueueFull, Duration::ZERO);
            return AdmissionFuture::Refused {
                response: Some(response),
            };
        }
        // Waiting is the rare path, and a slow one by nature: boxing it costs nothing
        // that matters. The service that was readied serves it (tower's clone rule).
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let shared = self.shared.clone();
        AdmissionFuture::Queued {
            future: Box::pin(async move {
                let queued_at = Instant::now();
                match shared.bulkhead.enter().await {
                    Ok(permit) => {
                        let response = inner.oneshot(req).await;
                        drop(permit);
                        response
                    }
                    Err(why) => Ok(shared.refuse(&req, why, queued_at.elapsed())),
                }
            }),
        }
    }
}

type Queued = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

pin_project! {
    /// Not boxed on the paths every request takes: admitted at once, or refused.
    #[project = AdmissionProj]
    pub enum AdmissionFuture<F> {
        Admitted {
            #[pin]
            inner: F,
            // Held until the response is ready; `None` for paths that are never shed.
            permit: Option<OwnedSemaphorePermit>,
        },
        Refused { response: Option<Response<Body>> },
        Queued { future: Queued },
    }
}

impl<F> Future for AdmissionFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AdmissionProj::Admitted { inner, permit } => {
                let response = ready!(inner.poll(cx));
                drop(permit.take());
                Poll::Ready(response)
            }
            AdmissionProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled again after completion: a caller's bug, answered rather than panicked on.
                None => Poll::Ready(Ok(ApiError::Overloaded("this replica").into_response())),
            },
            AdmissionProj::Queued { future } => future.as_mut().poll(cx),
        }
    }
}

/// Ends every admitted API request at `timeout` with a 503: dropping the handler cancels
/// its work here, and PostgreSQL's own statement_timeout (250 ms later) cancels the query
/// on the server side.
#[derive(Clone)]
pub struct DeadlineLayer {
    timeout: Duration,
    expired: IntCounter,
}

impl DeadlineLayer {
    pub fn new(timeout: Duration, metrics: &Metrics) -> Self {
        Self {
            timeout,
            expired: metrics.overload_rejections.with_label_values(&[
                metrics.instance.as_str(),
                "requests",
                "deadline",
            ]),
        }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    layer: DeadlineLayer,
}

impl<S> Service<Request> for Deadline<S>
where
    S: Service<Request, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        DeadlineFuture {
            inner: tokio::time::timeout(self.layer.timeout, self.inner.call(req)),
            expired: self.layer.expired.clone(),
        }
    }
}

pin_project! {
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
        expired: IntCounter,
    }
}

impl<F, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match ready!(this.inner.poll(cx)) {
            Ok(response) => Poll::Ready(response),
            Err(_) => {
                this.expired.inc();
                Poll::Ready(Ok(ApiError::DeadlineExceeded.into_response()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_data_api_is_shed() {
        for api in ["/api", "/api/", "/api/items", "/api/items/1"] {
            assert!(is_api(api), "{api}");
        }
        for other in [
            "/live", "/ready", "/health", "/metrics", "/apix", "/", "/x/api",
        ] {
            assert!(!is_api(other), "{other}");
        }
    }

    #[test]
    fn one_warning_per_span_counts_the_refusals_it_covers() {
        let warn = WarnEvery::new(Duration::from_secs(3600));
        assert_eq!(warn.due(), Some(1), "the first refusal is logged at once");
        assert_eq!(warn.due(), None);
        assert_eq!(warn.due(), None);
        warn.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(
            warn.due(),
            Some(3),
            "the next line covers every refusal since"
        );
    }

    fn request(uri: &str, id: Option<&str>) -> Request {
        let mut builder = Request::builder().uri(uri);
        if let Some(id) = id {
            builder = builder.header(REQUEST_ID, id);
        }
        builder.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn beyond_the_queue_the_api_is_refused_and_probes_are_not() {
        let metrics = Arc::new(Metrics::new("shed-test"));
        // No permit, no queue: every API request is refused at once.
        let bulkhead = Arc::new(Bulkhead::new(0, 0, Duration::from_millis(10)));
        let inner = tower::service_fn(|_: Request| async {
            Ok::<_, Infallible>(Response::new(Body::from("served")))
        });
        let mut service = AdmissionLayer::new(bulkhead, metrics.clone()).layer(inner);

        let Ok(live) = service.call(request("/live", None)).await;
        assert_eq!(live.status(), StatusCode::OK);

        let Ok(refused) = service.call(request("/api/items", Some("abc-1"))).await;
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        let headers = refused.headers();
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert_eq!(headers[&INSTANCE_ID], "shed-test");
        assert_eq!(headers[&REQUEST_ID], "abc-1");
        let body = axum::body::to_bytes(refused.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "this replica at capacity, retry later");

        let Ok(again) = service.call(request("/api/items", Some("bad id"))).await;
        assert!(
            !again.headers().contains_key(&REQUEST_ID),
            "unacceptable ids are not echoed"
        );

        let rendered = metrics.render();
        assert!(rendered.contains(
            r#"overload_rejections_total{instance="shed-test",reason="queue_full",resource="requests"} 2"#
        ), "{rendered}");
        assert!(
            rendered.contains(
                r#"lb_requests_total{instance="shed-test",method="GET",path="shed",status="503"} 2"#
            ),
            "{rendered}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_is_served_when_a_permit_frees_or_refused_when_it_waited_too_long() {
        let metrics = Arc::new(Metrics::new("queue-test"));
        let bulkhead = Arc::new(Bulkhead::new(1, 1, Duration::from_millis(100)));
        let inner = tower::service_fn(|_: Request| async {
            Ok::<_, Infallible>(Response::new(Body::from("served")))
        });
        let mut service = AdmissionLayer::new(bulkhead.clone(), metrics).layer(inner);

        let held = bulkhead.try_enter().expect("the only permit");
        let Ok(timed_out) = service.call(request("/api/items", None)).await;
        assert_eq!(timed_out.status(), StatusCode::SERVICE_UNAVAILABLE);

        let queued = service.call(request("/api/items", None));
        let release = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(held);
        };
        let (Ok(served), ()) = tokio::join!(queued, release);
        assert_eq!(served.status(), StatusCode::OK);
        assert_eq!(
            bulkhead.in_use(),
            0,
            "the permit went back with the response"
        );
    }
}
