//! Receiving a data-API request's body before it is admitted.
//!
//! Admission control bounds the requests being *served*; a client that sends its body one
//! byte a second is not being served, it is being waited for. Were the admission permit
//! taken first (as it was), a few dozen such clients, with no account, held every slot and
//! the replica answered 503 to everyone else while its probes stayed green. So
//! [`ReceiveBodyLayer`] wraps admission: it reads the whole body, at most
//! [`BODY_LIMIT`](super::BODY_LIMIT) bytes, within `BODY_TIMEOUT_MS`, and only then hands
//! the request on to be admitted. A body not in by then is answered 408 and the
//! connection closed.
//!
//! Bodies being received hold memory before admission bounds anything, so all of them
//! together may take at most `RECEIVING_BODIES_MAX_BYTES` (counted in KiB as they arrive): a
//! request whose body would go past it is refused at once with 503 and `Retry-After`, as a
//! shed request is. Slow senders hold few bytes, so they do not use this budget up; fast
//! floods of large bodies do, and are refused.
//!
//! A body over the limit is not read further: the request goes on with what was read,
//! one byte over the limit, and the JSON extractor answers 413 under its route as before.
//! Requests without a body, and paths outside `/api`, pass straight through, unboxed.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use prometheus::IntCounter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service, ServiceExt};

use super::context::{INSTANCE_ID, REQUEST_ID};
use super::ApiError;
use crate::metrics::Metrics;

/// The `path` label of requests answered 408 here, before routing: one fixed value, as
/// for shed requests.
pub const BODY_TIMEOUT_ROUTE: &str = "body_timeout";

/// The budget of bodies being received is counted in these units.
const KIB: usize = 1024;

/// Reads `/api` bodies before admission; see the module's docs.
#[derive(Clone)]
pub struct ReceiveBodyLayer {
    timeout: Duration,
    limit: usize,
    /// KiB of the bodies being received, all requests together.
    budget: Arc<Semaphore>,
    over_budget: IntCounter,
    metrics: Arc<Metrics>,
}

impl ReceiveBodyLayer {
    pub fn new(timeout: Duration, limit: usize, max_bytes: usize, metrics: Arc<Metrics>) -> Self {
        let kib = (max_bytes / KIB).min(Semaphore::MAX_PERMITS);
        Self {
            timeout,
            limit,
            budget: Arc::new(Semaphore::new(kib)),
            over_budget: metrics.overload_rejections.with_label_values(&[
                metrics.instance.as_str(),
                "request_bodies",
                "budget",
            ]),
            metrics,
        }
    }
}

impl<S> Layer<S> for ReceiveBodyLayer {
    type Service = ReceiveBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReceiveBody {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ReceiveBody<S> {
    inner: S,
    layer: ReceiveBodyLayer,
}

type Received = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S> Service<Request> for ReceiveBody<S>
where
    S: Service<Request, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ReceiveBodyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let hint = req.body().size_hint();
        // A declared length over the limit is refused by the extractor without reading.
        let nothing_to_wait_for = hint.exact() == Some(0) || hint.lower() > self.layer.limit as u64;
        if nothing_to_wait_for || !super::admission::is_api(req.uri().path()) {
            return ReceiveBodyFuture::Passed {
                inner: self.inner.call(req),
            };
        }
        // The service that was readied serves the request (tower's clone rule).
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let layer = self.layer.clone();
        ReceiveBodyFuture::Receiving {
            future: Box::pin(receive_then_serve(inner, layer, req)),
        }
    }
}

async fn receive_then_serve<S>(
    inner: S,
    layer: ReceiveBodyLayer,
    req: Request,
) -> Result<Response<Body>, Infallible>
where
    S: Service<Request, Response = Response<Body>, Error = Infallible>,
{
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let receiving = Receiving::new(&layer.metrics);
    let reading = read_up_to(body, layer.limit, &layer.budget);
    let received = tokio::time::timeout(layer.timeout, reading).await;
    // Counted again by the per-route layer once it is in: not twice.
    drop(receiving);
    match received {
        // Its share of the budget goes back here: from now on admission bounds it.
        Ok(Ok(bytes)) => {
            let req = Request::from_parts(parts, Body::from(bytes));
            inner.oneshot(req).await
        }
        // The client went away or broke the framing: nobody reads the answer.
        Ok(Err(Unreceived::Unreadable)) => {
            Ok(ApiError::bad_request("the request body could not be read").into_response())
        }
        Ok(Err(Unreceived::OverBudget)) => {
            layer.over_budget.inc();
            layer.metrics.record_request(
                super::admission::SHED_ROUTE,
                &parts.method,
                StatusCode::SERVICE_UNAVAILABLE,
                started.elapsed().as_secs_f64(),
            );
            let refusal = ApiError::Overloaded("request bodies being received");
            Ok(closing(&layer, &parts.headers, refusal))
        }
        Err(_) => {
            layer.metrics.record_request(
                BODY_TIMEOUT_ROUTE,
                &parts.method,
                StatusCode::REQUEST_TIMEOUT,
                started.elapsed().as_secs_f64(),
            );
            let timed_out = ApiError::BodyTimeout(layer.timeout);
            Ok(closing(&layer, &parts.headers, timed_out))
        }
    }
}

/// A request whose body is being received is in flight too (`active_connections`), so
/// that slow senders show on the dashboards; dropping also happens when the client aborts.
struct Receiving<'a>(&'a Metrics);

impl<'a> Receiving<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.active_connections.inc();
        Self(metrics)
    }
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        self.0.active_connections.dec();
    }
}

pin_project! {
    /// Not boxed for the requests that pass straight through.
    #[project = ReceiveBodyProj]
    pub enum ReceiveBodyFuture<F> {
        Passed {
            #[pin]
            inner: F,
        },
        Receiving { future: Received },
    }
}

impl<F> Future for ReceiveBodyFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ReceiveBodyProj::Passed { inner } => inner.poll(cx),
            ReceiveBodyProj::Receiving { future } => future.as_mut().poll(cx),
        }
    }
}

/// Why a body was not received.
enum Unreceived {
    Unreadable,
    OverBudget,
}

/// The body, or its first `limit + 1` bytes when it is longer, each KiB taken from
/// `budget` as it arrives and given back with the returned bytes.
async fn read_up_to(
    mut body: Body,
    limit: usize,
    budget: &Arc<Semaphore>,
) -> Result<Bytes, Unreceived> {
    let mut received = Vec::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Unreceived::Unreadable)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let kept = data.len().min(limit + 1 - received.len());
        let needed = (received.len() + kept).div_ceil(KIB);
        let holding = held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        if needed > holding {
            let more = u32::try_from(needed - holding).map_err(|_| Unreceived::OverBudget)?;
            let more = budget
                .clone()
                .try_acquire_many_owned(more)
                .map_err(|_| Unreceived::OverBudget)?;
            match &mut held {
                Some(permit) => permit.merge(more),
                None => held = Some(more),
            }
        }
        received.extend_from_slice(&data[..kept]);
        if received.len() > limit {
            break;
        }
    }
    Ok(received.into())
}

/// `refusal`, with the headers every answer carries, and the connection closed: what is
/// left of the body would otherwise be read as the next request.
fn closing(
    layer: &ReceiveBodyLayer,
    request_headers: &axum::http::HeaderMap,
    refusal: ApiError,
) -> Response<Body> {
    let mut response = refusal.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if let Ok(instance) = HeaderValue::from_str(&layer.metrics.instance) {
        headers.insert(INSTANCE_ID, instance);
    }
    let mut ids = request_headers.get_all(REQUEST_ID).iter();
    if let (Some(id), None) = (ids.next(), ids.next()) {
        if super::request_id::is_acceptable(id) {
            headers.insert(REQUEST_ID, id.clone());
        }
    }
    response
}
