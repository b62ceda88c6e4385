//! `GET /api/openapi.json`: the OpenAPI 3 document, generated from the handlers' own
//! annotations so it follows the code. A test checks that every documented operation is
//! routed and every `/api` route is documented.

use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cartae database API",
        description = "Users, items, search and stats. Errors are `{error, details: [{path, message}]}`. \
            Send an `Idempotency-Key` with every POST that writes: a write answered 503 past the \
            deadline or on a database failure may have been applied, and only the key makes \
            its retry safe. PATCH and DELETE are retried with `If-Match` after a read."
    ),
    paths(
        super::auth::register,
        super::auth::login,
        super::auth::logout,
        super::auth::me,
        super::items::create,
        super::items::read,
        super::items::update,
        super::items::remove,
        super::items::list,
        super::items::upsert,
        super::items::batch,
        super::search::search,
        super::search::stats,
        openapi_json,
    ),
    components(schemas(
        crate::http::ErrorBody,
        crate::error::FieldError,
        crate::model::schema::JsonValue,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Accounts and tokens"),
        (name = "items", description = "Items and their sources"),
        (name = "search", description = "Full-text search and statistics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

/// This document.
#[utoipa::path(
    get, path = "/api/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3 document"), super::responses::ServerErrors)
)]
pub async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
