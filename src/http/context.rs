//! Every request's identity, trace and last resort in one layer: the `x-request-id` (the
//! client's, or a generated UUID), the `x-instance-id` of the replica that answered, the
//! request's span and its log line, and a JSON 500 when a handler panics.
//!
//! One hand-written layer rather than tower-http's `SetRequestId`, `PropagateRequestId`,
//! `SetResponseHeader`, `TraceLayer` and `CatchPanic`: together those wrapped every
//! request in five futures, boxed every response body twice (`CatchPanic` boxes it, then
//! axum boxes that again), formatted each generated id through `Display` into a `String`,
//! and built a span for every probe only to discard it. That was most of `/live`'s cost
//! beyond the floor server (BENCHMARKS.md). Here a generated id is encoded into a stack
//! buffer, a probe whose debug span is disabled skips the span, the clock and the log line
//! altogether, and the body passes through untouched.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderName, HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Span;
use uuid::Uuid;

use super::error::RETRY_AFTER_SECONDS;
use super::ApiError;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Which replica answered: lets clients and tests see the load balancer's choices.
pub const INSTANCE_ID: HeaderName = HeaderName::from_static("x-instance-id");

/// Paths probed every few seconds by every load balancer and orchestrator: logged at debug
/// only, or they would drown everything else.
fn is_probe(path: &str) -> bool {
    matches!(path, "/live" | "/ready" | "/health" | "/startup")
}

/// Installs [`RequestContext`] around the app.
#[derive(Clone)]
pub struct RequestContextLayer {
    /// `None` when the instance id is not a valid header value: then it is not advertised.
    instance: Option<HeaderValue>,
}

impl RequestContextLayer {
    pub fn new(instance: &str) -> Self {
        Self {
            instance: HeaderValue::from_str(instance).ok(),
        }
    }
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContext {
            inner,
            instance: self.instance.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequestContext<S> {
    inner: S,
    instance: Option<HeaderValue>,
}

impl<S> Service<Request> for RequestContext<S>
where
    S: Service<Request, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // A client's id is kept only if short and printable (see `request_id`).
        let req = super::request_id::drop_unacceptable(&REQUEST_ID, req);
        let mut buffer = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let (request_id, id_text) = match req.headers().get(&REQUEST_ID) {
            // The client's id goes back as it came: a reference-counted clone.
            Some(id) => (Some(id.clone()), id.to_str().unwrap_or_default()),
            None => {
                let text = Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
                (HeaderValue::from_str(text).ok(), &*text)
            }
        };
        let span = request_span(&req, id_text);
        // A disabled span (a probe below debug) logs nothing, so needs no clock either.
        let started = (!span.is_disabled()).then(Instant::now);
        let inner = span.in_scope(|| catch_unwind(AssertUnwindSafe(|| self.inner.call(req))));
        ResponseFuture {
            // `None`: the handler panicked already.
            inner: inner.ok(),
            span,
            started,
            request_id,
            instance: self.instance.clone(),
        }
    }
}

fn request_span(req: &Request, request_id: &str) -> Span {
    let path = req.uri().path();
    if is_probe(path) {
        tracing::debug_span!("request", method = %req.method(), path, request_id)
    } else {
        tracing::info_span!("request", method = %req.method(), path, request_id)
    }
}

pin_project! {
    /// The inner response, given its headers and, when the span is enabled, logged.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        span: Span,
        started: Option<Instant>,
        request_id: Option<HeaderValue>,
        instance: Option<HeaderValue>,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let polled = match this.inner.as_mut().as_pin_mut() {
            Some(inner) => catch_unwind(AssertUnwindSafe(|| inner.poll(cx))).ok(),
            None => None,
        };
        let mut response = match polled {
            Some(polled) => ready!(polled)?,
            None => {
                // Never poll a future that panicked again.
                this.inner.set(None);
                panicked()
            }
        };
        let unavailable = response.status() == StatusCode::SERVICE_UNAVAILABLE;
        let headers = response.headers_mut();
        if let Some(id) = this.request_id.take() {
            // A handler that set its own id keeps it.
            headers.entry(REQUEST_ID).or_insert(id);
        }
        if let Some(instance) = this.instance.take() {
            headers.insert(INSTANCE_ID, instance);
        }
        // Every 503 of this port is temporary (starting, draining, a dependency down,
        // shedding). Here rather than a layer per router: the probes' own layer boxed
        // every probe's route and future once more.
        if unavailable {
            headers.entry(RETRY_AFTER).or_insert(RETRY_AFTER_SECONDS);
        }
        if let Some(started) = this.started {
            log_response(&response, started.elapsed(), this.span);
        }
        Poll::Ready(Ok(response))
    }
}

/// A panic is a bug: a 500 with the usual JSON body, logged like any other.
fn panicked() -> Response<Body> {
    tracing::error!("handler panicked");
    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

fn log_response<B>(response: &Response<B>, latency: Duration, span: &Span) {
    let status = response.status().as_u16();
    let ms = latency.as_secs_f64() * 1000.0;
    let is_info = span
        .metadata()
        .is_some_and(|m| *m.level() == tracing::Level::INFO);
    if !is_info {
        // A probe: its 503s (starting, draining, a dependency down) are answers, not
        // failures, and an outage must not turn every balancer's probe into an error line.
        tracing::debug!(status, latency_ms = ms, "request served");
    } else if status >= 500 && status != 503 {
        tracing::error!(status, latency_ms = ms, "request failed");
    } else {
        // 503 is retryable (shed, deadline, database away): an answer, logged as one.
        tracing::info!(status, latency_ms = ms, "request served");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn call(service: impl Fn() -> Response<Body> + Clone + Send + 'static) -> Response<Body> {
        let inner = tower::service_fn(move |_: Request| {
            let service = service.clone();
            async move { Ok::<_, std::convert::Infallible>(service()) }
        });
        let mut stack = RequestContextLayer::new("replica-1").layer(inner);
        let request = Request::builder()
            .uri("/api/x")
            .body(Body::empty())
            .unwrap();
        let Ok(response) = stack.call(request).await;
        response
    }

    #[tokio::test]
    async fn every_answer_names_its_request_and_replica() {
        let response = call(|| Response::new(Body::empty())).await;
        let id = response.headers()[&REQUEST_ID].to_str().unwrap();
        assert!(
            Uuid::parse_str(id).is_ok_and(|u| u.get_version_num() == 4),
            "{id}"
        );
        assert_eq!(response.headers()[&INSTANCE_ID], "replica-1");
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_a_json_500_with_the_request_id() {
        let response = call(|| panic!("a bug")).await;
        assert_eq!(response.status(), 500);
        assert!(response.headers().contains_key(&REQUEST_ID));
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
}
