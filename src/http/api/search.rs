//! `/api/search` (ranked full-text search) and `/api/stats`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::items::{parse_limit, parse_tag};
use super::responses::{AuthErrors, ParamErrors, ServerErrors};
use crate::cache;
use crate::db::items;
use crate::error::FieldError;
use crate::http::extract::AuthUser;
use crate::http::extract::{param, Query};
use crate::http::{ApiError, ApiResult};
use crate::model::check_text;
use crate::model::item::{Item, ItemType};
use crate::model::limits::TAGS_MAX;
use crate::model::schema;
use crate::state::AppState;
use utoipa::openapi::path::{Parameter, ParameterIn};

pub const QUERY_MAX: usize = 500;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/search", get(search))
        .route("/stats", get(stats))
}

/// Query parameters of `GET /api/search`, as sent: each is parsed and reported on its own.
#[derive(Debug, Default, Deserialize)]
pub struct SearchParams {
    q: Option<String>,
    tags: Option<String>,
    limit: Option<String>,
}

impl IntoParams for SearchParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            param(
                "q",
                ParameterIn::Query,
                true,
                "Words to find; quotes, `or` and `-word` work as in a web search engine",
                schema::text(QUERY_MAX, false),
            ),
            param(
                "tags",
                ParameterIn::Query,
                false,
                "Comma-separated tags every result must carry: at most 50, each at most 64 \
                 characters (blank ones are ignored)",
                schema::tag_filter(),
            ),
            param(
                "limit",
                ParameterIn::Query,
                false,
                "1 to 100, default 20; fewer results, the best ones, when they would take more \
                 than about 1 MiB of JSON (at least one)",
                super::items::limit_schema(),
            ),
        ]
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchHit {
    pub item: Item,
    /// Relevance (`ts_rank_cd`); higher is better.
    pub score: f32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchResults {
    pub query: String,
    pub count: usize,
    pub results: Vec<SearchHit>,
}

#[derive(Debug, Serialize)]
struct SearchQuery {
    q: String,
    tags: Vec<String>,
    limit: i64,
}

fn parse_search(params: SearchParams) -> ApiResult<SearchQuery> {
    let mut errors = Vec::new();
    let q = params.q.unwrap_or_default();
    check_text(&mut errors, "q", &q, QUERY_MAX, false);
    let tags: Vec<String> = params
        .tags
        .as_deref()
        .map(|raw| {
            raw.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .enumerate()
                .filter_map(|(i, t)| parse_tag(&format!("tags[{i}]"), t, &mut errors))
                .collect()
        })
        .unwrap_or_default();
    if tags.len() > TAGS_MAX {
        errors.push(FieldError::new("tags", format!("at most {TAGS_MAX} tags")));
    }
    let limit = parse_limit(params.limit.as_deref(), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::BadRequest {
            message: "invalid query parameters".into(),
            details: errors,
        });
    }
    Ok(SearchQuery { q, tags, limit })
}

/// Full-text search over title (weighted most), tags and content, best matches first.
#[utoipa::path(
    get, path = "/api/search", tag = "search",
    security(("bearer" = [])),
    params(SearchParams),
    responses(
        (status = 200, body = SearchResults),
        ParamErrors, AuthErrors, ServerErrors,
    )
)]
#[tracing::instrument(skip_all, fields(user = %user.id))]
pub async fn search(
    State(state): State<AppState>,
    user: AuthUser,
    Query(params): Query<SearchParams>,
) -> ApiResult<axum::Json<SearchResults>> {
    let query = parse_search(params)?;
    let results = cache::items::query(&state.cache, user.id, "search", &query, async {
        let hits = items::search(
            &state.db,
            user.id,
            &query.q,
            &query.tags,
            query.limit,
            super::items::PAGE_BUDGET_BYTES,
        )
        .await?;
        Ok::<_, sqlx::Error>(SearchResults {
            query: query.q.clone(),
            count: hits.len(),
            results: hits
                .into_iter()
                .map(|(item, score)| SearchHit { item, score })
                .collect(),
        })
    })
    .await?;
    Ok(axum::Json(results))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub total: i64,
    /// Every type, zero included.
    pub by_type: BTreeMap<String, i64>,
}

/// How many items the caller has, in all and per type.
#[utoipa::path(
    get, path = "/api/stats", tag = "search",
    security(("bearer" = [])),
    responses((status = 200, body = Stats), AuthErrors, ServerErrors)
)]
#[tracing::instrument(skip_all, fields(user = %user.id))]
pub async fn stats(State(state): State<AppState>, user: AuthUser) -> ApiResult<axum::Json<Stats>> {
    let stats = cache::items::query(&state.cache, user.id, "stats", &(), async {
        let mut by_type: BTreeMap<String, i64> = ItemType::ALL
            .iter()
            .map(|t| (t.as_str().to_owned(), 0))
            .collect();
        for (kind, count) in items::count_by_type(&state.db, user.id).await? {
            by_type.insert(kind, count);
        }
        Ok::<_, sqlx::Error>(Stats {
            total: by_type.values().sum(),
            by_type,
        })
    })
    .await?;
    Ok(axum::Json(stats))
}
