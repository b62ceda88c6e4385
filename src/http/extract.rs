//! Extractors whose every failure is an [`ApiError`], so bad input always answers the
//! JSON error format with a 4xx, never axum's plain-text rejections.
//!
//! - [`Json`]: 415 without a JSON content type, 413 over the body limit, 400 for
//!   malformed JSON, 422 for well-formed JSON of the wrong shape (with the field's path).
//! - [`Query`]: 400 naming the parameter.
//! - [`Id`]: a UUID path segment; 400 when it is not one.
//! - [`IfMatch`], [`IdempotencyKey`]: optional headers, 400 when present but malformed.
//! - [`AuthUser`], [`VerifiedToken`]: a valid bearer token; 401 otherwise.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::Required;
use uuid::Uuid;

use super::error::ApiError;
use crate::auth::jwt::Claims;
use crate::error::FieldError;
use crate::state::AppState;

/// A JSON body, deserialized with the path of the first offending field kept.
pub struct Json<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// Parses a JSON document into `T`, reporting syntax errors as 400 and shape errors as 422
/// with the JSON path of the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = match parsed {
        Ok(value) => value,
        Err(e) => {
            let path = json_path(e.path());
            let inner = e.into_inner();
            // Some shape errors surface as syntax errors (an array where a struct is
            // expected): well-formed JSON is never "malformed".
            let is_data = inner.classify() == serde_json::error::Category::Data;
            let well_formed =
                is_data || serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok();
            return Err(match (is_data, well_formed) {
                (true, _) => {
                    ApiError::Validation(vec![FieldError::new(path, strip_position(&inner))])
                }
                (false, true) => ApiError::Validation(vec![FieldError::new(
                    "$",
                    "not the expected shape: send an object with the documented fields",
                )]),
                (false, false) => ApiError::BadRequest {
                    message: "malformed JSON".to_owned(),
                    details: vec![FieldError::new(path, inner.to_string())],
                },
            });
        }
    };
    // Trailing garbage after a valid document is malformed too.
    de.end().map_err(|e| ApiError::BadRequest {
        message: "malformed JSON".to_owned(),
        details: vec![FieldError::new("$", e.to_string())],
    })?;
    Ok(value)
}

/// `$`, `$.title`, `$.items[3].tags[0]`.
fn json_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::from("$");
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key } => {
                out.push('.');
                out.push_str(key);
            }
            serde_path_to_error::Segment::Enum { variant } => {
                out.push('.');
                out.push_str(variant);
            }
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    out
}

/// serde_json appends " at line 1 column 42" to data errors; the path already says where.
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "expected Content-Type: application/json".to_owned(),
            ));
        }
        // `Bytes` honours `DefaultBodyLimit`: a larger body is refused with 413.
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::bad_request(rejection.body_text())
            }
        })?;
        parse_json(&bytes).map(Json)
    }
}

/// A query string. Handlers take their parameters as raw strings and parse each one
/// themselves, so that a bad value is reported under its own name.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(Query)
            .map_err(|e| ApiError::BadRequest {
                message: "invalid query string".to_owned(),
                details: vec![FieldError::new("query", e.to_string())],
            })
    }
}

/// The `{id}` path segment as a UUID.
pub struct Id(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad_request(e.body_text()))?;
        Uuid::parse_str(&raw)
            .map(Id)
            .map_err(|_| ApiError::BadRequest {
                message: "invalid id".to_owned(),
                details: vec![FieldError::new("id", "must be a UUID")],
            })
    }
}

/// Documents the segment as [`Id`] parses it.
impl utoipa::IntoParams for Id {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![ParameterBuilder::new()
            .name("id")
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))),
            ))
            .build()]
    }
}

/// `If-Match` as RFC 9110 defines it: `*` (absent means the same: any version), or a list
/// of entity tags, compared strongly. `Some(versions)`: the write goes ahead only if the
/// item's version is one of them. A weak tag (`W/"3"`) or a tag this API never makes
/// (`"abc"`) matches nothing, so the write answers 412; a header that is not a list of
/// entity tags (`3`, `"3`) answers 400.
pub struct IfMatch(pub Option<Vec<i32>>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let mut values = parts
            .headers
            .get_all(axum::http::header::IF_MATCH)
            .iter()
            .peekable();
        if values.peek().is_none() {
            return Ok(IfMatch(None));
        }
        let invalid = || ApiError::BadRequest {
            message: "invalid If-Match header".to_owned(),
            details: vec![FieldError::new(
                "If-Match",
                "must be * or a list of entity tags, such as \"3\" (an item's ETag)",
            )],
        };
        // Several header lines are one comma-separated list.
        let mut joined = Vec::new();
        for value in values {
            if !joined.is_empty() {
                joined.push(b',');
            }
            joined.extend_from_slice(value.as_bytes());
        }
        if joined.trim_ascii() == b"*" {
            return Ok(IfMatch(None));
        }
        let tags = entity_tags(&joined).ok_or_else(invalid)?;
        // Strong comparison: only strong tags can match, and only if character for character
        // one we make (a version in decimal, so `"+3"` and `"03"` match nothing).
        let versions = tags
            .into_iter()
            .filter(|(weak, _)| !weak)
            .filter_map(|(_, opaque)| {
                let version = std::str::from_utf8(opaque).ok()?.parse::<i32>().ok()?;
                (version.to_string().as_bytes() == opaque).then_some(version)
            })
            .collect();
        Ok(IfMatch(Some(versions)))
    }
}

/// Parses `#entity-tag` (RFC 9110 section 8.8.3): `(weak, opaque)` for each, or `None` if
/// the text is not such a list. Empty elements are allowed, as in every `#` list.
fn entity_tags(mut text: &[u8]) -> Option<Vec<(bool, &[u8])>> {
    let mut tags = Vec::new();
    loop {
        text = text.trim_ascii_start();
        match text.first() {
            None => break,
            Some(b',') => {
                text = &text[1..];
                continue;
            }
            Some(_) => {}
        }
        let weak = text.starts_with(b"W/");
        if weak {
            text = &text[2..];
        }
        let rest = text.strip_prefix(b"\"")?;
        let end = rest.iter().position(|&b| b == b'"')?;
        let opaque = &rest[..end];
        // etagc: %x21 / %x23-7E / obs-text
        if !opaque
            .iter()
            .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
        {
            return None;
        }
        tags.push((weak, opaque));
        text = rest[end + 1..].trim_ascii_start();
        if !(text.is_empty() || text.starts_with(b",")) {
            return None;
        }
    }
    (!tags.is_empty()).then_some(tags)
}

/// One `#entity-tag` list element as [`entity_tags`] reads it (ECMA-262 and `regex` alike).
const ENTITY_TAG: &str = r#"(?:W/)?"[!#-~\u0080-\u00FF]*""#;

/// A parameter of the OpenAPI document, for the `IntoParams` written by hand: where
/// utoipa's derive takes a computed schema (`schema_with`), it drops `required` and the
/// description.
pub fn param(
    name: &str,
    at: ParameterIn,
    required: bool,
    description: &str,
    schema: impl Into<utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>>,
) -> Parameter {
    let required = if required {
        Required::True
    } else {
        Required::False
    };
    ParameterBuilder::new()
        .name(name)
        .parameter_in(at)
        .required(required)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

/// An optional header with a string schema.
fn header_param(name: &str, description: &str, schema: ObjectBuilder) -> Parameter {
    param(
        name,
        ParameterIn::Header,
        false,
        description,
        schema.schema_type(Type::String),
    )
}

/// Documents the header exactly as [`entity_tags`] parses it.
impl utoipa::IntoParams for IfMatch {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let pattern = format!(
            r"^(?:[ \t]*\*[ \t]*|[ \t,]*{ENTITY_TAG}(?:[ \t]*,[ \t,]*{ENTITY_TAG})*[ \t,]*)$"
        );
        vec![header_param(
            "If-Match",
            "`*`, or a list of ETags read earlier (`\"3\"`), compared strongly (RFC 9110): \
             the write goes ahead only if the item's ETag is listed, else 412. A weak tag \
             matches nothing. A header that is not such a list is a 400",
            ObjectBuilder::new().pattern(Some(pattern)),
        )]
    }
}

/// Longest accepted `Idempotency-Key`.
pub const IDEMPOTENCY_KEY_MAX: usize = 255;

/// The optional `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let key = value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_MAX)
            .filter(|k| k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| ApiError::BadRequest {
                message: "invalid Idempotency-Key header".to_owned(),
                details: vec![FieldError::new(
                    "Idempotency-Key",
                    "must be 1 to 255 visible ASCII characters (a UUID is a good choice)",
                )],
            })?;
        Ok(IdempotencyKey(Some(key.to_owned())))
    }
}

/// Documents the header exactly as the extractor checks it.
impl utoipa::IntoParams for IdempotencyKey {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![header_param(
            "Idempotency-Key",
            "Recommended on every write. A write whose answer is lost (a 503 past the \
             deadline or on a database failure, a timeout, a dropped connection) may have \
             been applied: retried with the same key, it is applied exactly once. The \
             retry replays the first response (with `Idempotent-Replayed: true`); reusing \
             a key for another request is a 422. A UUID is a good choice",
            ObjectBuilder::new()
                .min_length(Some(1))
                .max_length(Some(IDEMPOTENCY_KEY_MAX))
                .pattern(Some("^[!-~]+$")),
        )]
    }
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy
/// (`TRUSTED_PROXIES`), the nearest address in `X-Forwarded-For` that is not one.
pub struct ClientIp(pub std::net::IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip())
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        let trusted = &state.settings.auth.trusted_proxies;
        let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
        if !is_trusted(&peer) {
            return Ok(ClientIp(peer));
        }
        // Each proxy appends the address it got the request from: read from the right,
        // past our own proxies; what is left of them is the client's to write, unbelieved.
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let client = forwarded
            .iter()
            .rev()
            .map_while(|s| s.parse::<std::net::IpAddr>().ok())
            .find(|ip| !is_trusted(ip))
            .unwrap_or(peer);
        Ok(ClientIp(client))
    }
}

/// The caller, from a valid, unrevoked bearer token. A handler that takes one answers 401
/// JSON to a missing, malformed, expired, tampered or revoked token.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub claims: Claims,
}

/// A token whose signature and expiry are valid, revoked or not: what logout needs, so that
/// logging out twice (a retry) succeeds instead of answering 401.
#[derive(Debug, Clone)]
pub struct VerifiedToken(pub Claims);

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::Unauthorized("expected Authorization: Bearer <token>".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthorized(
            "expected Authorization: Bearer <token>".into(),
        ));
    }
    Ok(token.trim())
}

fn verified(parts: &Parts, state: &AppState) -> Result<Claims, ApiError> {
    let token = bearer(parts)?;
    state.tokens.verify(token).map_err(|e| {
        let why = match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired",
            _ => "invalid token",
        };
        ApiError::Unauthorized(why.into())
    })
}

impl FromRequestParts<AppState> for VerifiedToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        verified(parts, state).map(VerifiedToken)
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let claims = verified(parts, state)?;
        if state.denylist.is_revoked(&state.db, claims.jti).await? {
            return Err(ApiError::Unauthorized("token revoked".into()));
        }
        Ok(AuthUser {
            id: claims.sub,
            claims,
        })
    }
}
