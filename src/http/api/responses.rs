//! The error answers the OpenAPI document lists, shared by the operations: each type is a
//! set of statuses that one piece of the request path can answer (admission and the
//! database, the bearer token, a parsed body, parsed parameters). An operation names the
//! sets it passes through, then its own statuses (404, 409, 412, 429). Every one carries
//! the [`ErrorBody`](crate::http::ErrorBody) schema.

use std::collections::BTreeMap;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{IntoResponses, ToSchema};

use crate::http::ErrorBody;

/// An error answer with the error body and the given headers.
fn error(description: &str, headers: &[(&str, &str, Type)]) -> RefOr<Response> {
    let body = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(ErrorBody::name())))
        .build();
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/json", body);
    for (name, description, kind) in headers {
        let header = HeaderBuilder::new()
            .schema(Some(ObjectBuilder::new().schema_type(kind.clone())))
            .description(Some(*description))
            .build();
        response = response.header(*name, header);
    }
    response.into()
}

fn responses<const N: usize>(
    entries: [(u16, RefOr<Response>); N],
) -> BTreeMap<String, RefOr<Response>> {
    entries
        .into_iter()
        .map(|(status, response)| (status.to_string(), response))
        .collect()
}

/// What every `/api` operation can answer whatever it is sent: 503 from admission control,
/// the deadline, start-up and a retryable database error; 500 for a bug.
pub struct ServerErrors;

impl IntoResponses for ServerErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses([
            (
                503,
                error(
                    "Temporarily unable to serve: starting, at capacity (requests, password \
                     hashing, request bodies being received), past the request deadline, or \
                     the database unreachable or failing over. Retry after Retry-After \
                     seconds. Past the deadline or on a database failure a write may have \
                     been applied: a POST is safe to retry with the same Idempotency-Key; \
                     read the item before retrying a PATCH or DELETE",
                    &[(
                        "Retry-After",
                        "Seconds to wait before retrying",
                        Type::Integer,
                    )],
                ),
            ),
            (
                500,
                error("A bug; the details are logged, never returned", &[]),
            ),
        ])
    }
}

/// Operations behind a bearer token.
pub struct AuthErrors;

impl IntoResponses for AuthErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses([(
            401,
            error(
                "Missing, malformed, expired, tampered or revoked token",
                &[("WWW-Authenticate", "`Bearer`", Type::String)],
            ),
        )])
    }
}

/// Operations with a path id, query parameters or checked headers, and no JSON body.
pub struct ParamErrors;

impl IntoResponses for ParamErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses([(400, bad_request())])
    }
}

fn bad_request() -> RefOr<Response> {
    error(
        "A parameter or header breaks its schema (an id that is not a UUID, a bad query \
         parameter or cursor, a malformed If-Match or Idempotency-Key), or malformed JSON; \
         `details` names it",
        &[],
    )
}

/// Operations that read a JSON body (and may have parameters too).
pub struct BodyErrors;

impl IntoResponses for BodyErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses([
            (400, bad_request()),
            (
                408,
                error(
                    "The body did not arrive within the server's `BODY_TIMEOUT_MS` (5 s by \
                     default); the connection is closed",
                    &[],
                ),
            ),
            (413, error("The body is over 1 MiB", &[])),
            (
                415,
                error(
                    "The body is not sent as `Content-Type: application/json`",
                    &[],
                ),
            ),
            (
                422,
                error(
                    "Well-formed JSON that breaks the body's schema; `details` lists every \
                     problem with its JSON path",
                    &[],
                ),
            ),
        ])
    }
}
