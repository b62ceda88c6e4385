//! `/api/items`: create, read, update with `If-Match`, delete, list with keyset pagination,
//! upsert by source and batch upsert.

pub mod cursor;

use std::future::Future;

use axum::extract::State;
use axum::http::header::ETAG;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::idempotency::{run_once, Keyed, Outcome, Reply, Scope};
use super::responses::{AuthErrors, BodyErrors, ParamErrors, ServerErrors};
use crate::auth::keys::CursorKeys;
use crate::cache;
use crate::db::items::{self, ListFilter, Position};
use crate::error::FieldError;
use crate::http::error::validated;
use crate::http::extract::AuthUser;
use crate::http::extract::{Id, IdempotencyKey, IfMatch, Json, Query};
use crate::http::{ApiError, ApiResult, ErrorBody};
use crate::model::item::{Batch, Item, ItemPatch, ItemType, NewItem, SourcedItem};
use crate::model::limits::TAG_MAX;
use crate::state::AppState;

pub const LIMIT_DEFAULT: i64 = 20;
pub const LIMIT_MAX: i64 = 100;
/// About the most JSON a list page holds: beyond, the page ends early with a cursor. At
/// 100 items of the largest size a page would take tens of megabytes, and several times
/// that in memory to build it.
pub const PAGE_BUDGET_BYTES: usize = 1024 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/items", get(list).post(create))
        .route("/items/upsert", post(upsert))
        .route("/items/batch", post(batch))
        .route("/items/{id}", get(read).patch(update).delete(remove))
}

fn with_etag(item: Item) -> impl IntoResponse {
    ([(ETAG, item.etag())], axum::Json(item))
}

/// A guarded write matched nothing: either the item is not the caller's (404) or its
/// version moved on (412).
async fn missing_or_stale(state: &AppState, user: Uuid, id: Uuid) -> ApiError {
    match items::exists(&state.db, &state.db.pool, user, id).await {
        Ok(true) => ApiError::PreconditionFailed(
            "the item changed since you read it: fetch it again for its current ETag".into(),
        ),
        Ok(false) => ApiError::NotFound,
        Err(e) => e.into(),
    }
}

/// Runs a write, with the cache invalidation that follows it, to the end in a task of its
/// own, and returns its answer. `write` is handed a token cancelled when the request is
/// dropped (the deadline cut it, or the client left).
///
/// The request deadline drops the handler, not PostgreSQL's work: a statement the handler
/// was waiting on still commits. Were the invalidation the handler's, that cut would leave
/// the cache serving the old state for the entry's TTL. Here the client gets its 503 at the
/// deadline (outcome unknown), and the task still invalidates once PostgreSQL has decided,
/// committed or cancelled by `statement_timeout`, which bounds how long it can outlive the
/// request. The lifecycle tracks it, so a stopping replica waits for it.
async fn to_completion<T, F>(
    state: &AppState,
    write: impl FnOnce(CancellationToken) -> F,
) -> ApiResult<T>
where
    T: Send + 'static,
    F: Future<Output = ApiResult<T>> + Send + 'static,
{
    let cut = CancellationToken::new();
    // Also cancels once the answer is in: the task has finished by then.
    let _cut_when_dropped = cut.clone().drop_guard();
    state
        .lifecycle
        .writes
        .spawn(write(cut).in_current_span())
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("write task failed: {e}")))?
}

/// A transaction's work, abandoned if the request is cut first: the transaction then rolls
/// back, so a cut POST is not applied unless the cut came during its COMMIT. Without this a
/// create without an Idempotency-Key would commit after its 503 and its retry duplicate it.
/// (PATCH and DELETE are single statements that commit on their own: nothing to abandon.)
async fn unless_cut(
    cut: &CancellationToken,
    work: impl Future<Output = ApiResult<Reply>>,
) -> ApiResult<Reply> {
    tokio::select! {
        biased;
        reply = work => reply,
        () = cut.cancelled() => Err(ApiError::DeadlineExceeded),
    }
}

/// Creates an item.
#[utoipa::path(
    post, path = "/api/items", tag = "items",
    security(("bearer" = [])),
    request_body = NewItem,
    params(IdempotencyKey),
    responses(
        (status = 201, description = "Created", body = Item, headers(("ETag" = String, description = "The item's version, quoted: what If-Match compares"), ("Idempotent-Replayed" = String, description = "`true` when this is the stored answer to an earlier request with the same Idempotency-Key"))),
        BodyErrors, AuthErrors, ServerErrors,
        (status = 409, description = "The caller already has an item with this source: upsert it instead", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user = %user.id))]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    IdempotencyKey(key): IdempotencyKey,
    Json(new): Json<NewItem>,
) -> ApiResult<Outcome> {
    let mut errors = Vec::new();
    new.check("$", &mut errors);
    validated(errors)?;
    let _slot = state.user_writes.enter(user.id).await;
    let keyed = Keyed::new(key, Scope::User(user.id), "POST /api/items", &new)?;
    let (db, owner) = (state.db.clone(), user.id);
    let task = state.clone();
    to_completion(&state, |cut| async move {
        let outcome = run_once(&task, keyed, move |tx| {
            Box::pin(async move {
                unless_cut(&cut, async {
                    let item = items::insert(&db, tx, owner, &new).await?;
                    Ok(Reply::json(StatusCode::CREATED, &item)?.with_etag(item.etag()))
                })
                .await
            })
        })
        .await;
        // An error may hide a commit (the connection lost during COMMIT): only a replay is
        // known to have written nothing.
        if !matches!(outcome, Ok(Outcome::Replayed(_))) {
            cache::items::invalidate(&task.cache, owner, &[]).await;
        }
        outcome
    })
    .await
}

/// Reads one item (cache-aside in Redis).
#[utoipa::path(
    get, path = "/api/items/{id}", tag = "items",
    security(("bearer" = [])),
    params(Id),
    responses(
        (status = 200, description = "The item", body = Item, headers(("ETag" = String, description = "The item's version, quoted: what If-Match compares"))),
        ParamErrors, AuthErrors, ServerErrors,
        (status = 404, description = "No such item for this user", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user = %user.id, item = %id))]
pub async fn read(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
) -> ApiResult<impl IntoResponse> {
    cache::items::get_item(&state.cache, &state.db, user.id, id)
        .await?
        .map(with_etag)
        .ok_or(ApiError::NotFound)
}

/// Changes the fields present in the body. With `If-Match: "<version>"`, only if the item
/// is still at that version (else 412).
#[utoipa::path(
    patch, path = "/api/items/{id}", tag = "items",
    security(("bearer" = [])),
    request_body = ItemPatch,
    params(Id, IfMatch),
    responses(
        (status = 200, description = "Updated", body = Item, headers(("ETag" = String, description = "The item's version, quoted: what If-Match compares"))),
        BodyErrors, AuthErrors, ServerErrors,
        (status = 404, description = "No such item for this user", body = ErrorBody),
        (status = 409, description = "The caller already has another item with this source", body = ErrorBody),
        (status = 412, description = "If-Match lists none of the item's current ETag: nothing changed", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user = %user.id, item = %id))]
pub async fn update(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
    IfMatch(expected): IfMatch,
    Json(patch): Json<ItemPatch>,
) -> ApiResult<impl IntoResponse> {
    let mut errors = Vec::new();
    patch.check(&mut errors);
    validated(errors)?;
    let _slot = state.user_writes.enter(user.id).await;
    let (task, owner) = (state.clone(), user.id);
    let item = to_completion(&state, |_| async move {
        let db = &task.db;
        let updated = items::update(db, &db.pool, owner, id, expected.as_deref(), &patch).await;
        // Applied, refused (404, 412: proof the cache may disagree) or unknown (an error):
        // whatever PostgreSQL did, the item's entry follows it.
        cache::items::invalidate(&task.cache, owner, &[id]).await;
        match updated? {
            Some(item) => Ok(item),
            None => Err(missing_or_stale(&task, owner, id).await),
        }
    })
    .await?;
    Ok(with_etag(item))
}

/// Deletes an item; `If-Match` is honoured as for PATCH.
#[utoipa::path(
    delete, path = "/api/items/{id}", tag = "items",
    security(("bearer" = [])),
    params(Id, IfMatch),
    responses(
        (status = 204, description = "Deleted"),
        ParamErrors, AuthErrors, ServerErrors,
        (status = 404, description = "No such item for this user", body = ErrorBody),
        (status = 412, description = "If-Match lists none of the item's current ETag: nothing deleted", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user = %user.id, item = %id))]
pub async fn remove(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
    IfMatch(expected): IfMatch,
) -> ApiResult<StatusCode> {
    let _slot = state.user_writes.enter(user.id).await;
    let (task, owner) = (state.clone(), user.id);
    to_completion(&state, |_| async move {
        let db = &task.db;
        let deleted = items::delete(db, &db.pool, owner, id, expected.as_deref()).await;
        // As for PATCH: whatever PostgreSQL did, the item's entry follows it.
        cache::items::invalidate(&task.cache, owner, &[id]).await;
        match deleted? {
            true => Ok(StatusCode::NO_CONTENT),
            false => Err(missing_or_stale(&task, owner, id).await),
        }
    })
    .await
}

/// Query parameters of `GET /api/items`, as sent: each is parsed and reported on its own.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<ItemType>)]
    kind: Option<String>,
    #[param(schema_with = tag_param)]
    tag: Option<String>,
    /// `1` and `0` are taken for `true` and `false` too.
    #[param(value_type = Option<bool>)]
    archived: Option<String>,
    /// `1` and `0` are taken for `true` and `false` too.
    #[param(value_type = Option<bool>)]
    favorite: Option<String>,
    /// 1 to 100, default 20. A page ends earlier, with `nextCursor`, once it holds about
    /// 1 MiB of JSON (at least one item).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `nextCursor` of the previous page, as given: any other value is a 400.
    #[param(max_length = 128, pattern = "^[A-Za-z0-9_-]+$")]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemPage {
    pub items: Vec<Item>,
    /// `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `schema_with` drops the field's description: it goes in the schema.
fn tag_param() -> utoipa::openapi::schema::Object {
    let mut tag = crate::model::schema::tag();
    tag.description = Some("Items carrying this tag".into());
    tag
}

/// The `limit` of list and search.
pub fn limit_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .minimum(Some(1))
        .maximum(Some(LIMIT_MAX as f64))
        .build()
}

pub fn parse_limit(raw: Option<&str>, errors: &mut Vec<FieldError>) -> i64 {
    let Some(raw) = raw else {
        return LIMIT_DEFAULT;
    };
    match raw.trim().parse::<i64>() {
        Ok(limit) if (1..=LIMIT_MAX).contains(&limit) => limit,
        _ => {
            errors.push(FieldError::new(
                "limit",
                format!("must be an integer from 1 to {LIMIT_MAX}"),
            ));
            LIMIT_DEFAULT
        }
    }
}

fn parse_bool(name: &str, raw: Option<&str>, errors: &mut Vec<FieldError>) -> Option<bool> {
    match raw? {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => {
            errors.push(FieldError::new(name, "must be true or false"));
            None
        }
    }
}

pub fn parse_tag(name: &str, raw: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    let before = errors.len();
    crate::model::check_text(errors, name, raw, TAG_MAX, false);
    (errors.len() == before).then(|| raw.to_owned())
}

/// What a list request asks for, once parsed. Also the cache key of its page.
#[derive(Debug, Serialize)]
struct ListQuery {
    kind: Option<ItemType>,
    tag: Option<String>,
    archived: Option<bool>,
    favorite: Option<bool>,
    limit: i64,
    #[serde(skip)]
    after: Option<Position>,
    cursor: Option<String>,
}

fn parse_list(params: ListParams, keys: &CursorKeys) -> ApiResult<ListQuery> {
    let mut errors = Vec::new();
    let kind = params.kind.as_deref().and_then(|raw| {
        let kind = ItemType::parse(raw);
        if kind.is_none() {
            errors.push(FieldError::new(
                "type",
                "must be one of email, task, document, message, event, note, contact, file",
            ));
        }
        kind
    });
    let tag = params
        .tag
        .as_deref()
        .and_then(|t| parse_tag("tag", t, &mut errors));
    let archived = parse_bool("archived", params.archived.as_deref(), &mut errors);
    let favorite = parse_bool("favorite", params.favorite.as_deref(), &mut errors);
    let limit = parse_limit(params.limit.as_deref(), &mut errors);
    let after = params.cursor.as_deref().and_then(|c| {
        let position = cursor::decode_any(keys, c);
        if position.is_none() {
            errors.push(FieldError::new(
                "cursor",
                "not a cursor returned by this API (use nextCursor as given)",
            ));
        }
        position
    });
    if !errors.is_empty() {
        return Err(ApiError::BadRequest {
            message: "invalid query parameters".into(),
            details: errors,
        });
    }
    Ok(ListQuery {
        kind,
        tag,
        archived,
        favorite,
        limit,
        after,
        cursor: params.cursor,
    })
}

/// Lists the caller's items, newest first, one page at a time.
#[utoipa::path(
    get, path = "/api/items", tag = "items",
    security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, body = ItemPage),
        ParamErrors, AuthErrors, ServerErrors,
    )
)]
#[tracing::instrument(skip_all, fields(user = %user.id))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(params): Query<ListParams>,
) -> ApiResult<axum::Json<ItemPage>> {
    let query = parse_list(params, &state.cursor_keys)?;
    let filter = ListFilter {
        kind: query.kind,
        tag: query.tag.clone(),
        archived: query.archived,
        favorite: query.favorite,
    };
    let page = cache::items::query(&state.cache, user.id, "list", &query, async {
        // One more than asked tells whether another page exists.
        let (mut rows, cut_short) = items::list(
            &state.db,
            user.id,
            &filter,
            query.after,
            query.limit + 1,
            PAGE_BUDGET_BYTES,
        )
        .await?;
        let more = cut_short || rows.len() as i64 > query.limit;
        rows.truncate(query.limit as usize);
        let next_cursor = more.then(|| rows.last()).flatten().map(|last| {
            cursor::encode(
                &state.cursor_keys.current,
                Position {
                    created_at: last.created_at,
                    id: last.id,
                },
            )
        });
        Ok::<_, sqlx::Error>(ItemPage {
            items: rows,
            next_cursor,
        })
    })
    .await?;
    Ok(axum::Json(page))
}

/// Inserts or updates the caller's item with the same `source.connector` and
/// `source.sourceId`: 201 when created, 200 when updated.
#[utoipa::path(
    post, path = "/api/items/upsert", tag = "items",
    security(("bearer" = [])),
    request_body = SourcedItem,
    params(IdempotencyKey),
    responses(
        (status = 201, description = "Created", body = Item, headers(("ETag" = String, description = "The item's version, quoted: what If-Match compares"), ("Idempotent-Replayed" = String, description = "`true` when this is the stored answer to an earlier request with the same Idempotency-Key"))),
        (status = 200, description = "Updated", body = Item, headers(("ETag" = String, description = "The item's version, quoted: what If-Match compares"), ("Idempotent-Replayed" = String, description = "`true` when this is the stored answer to an earlier request with the same Idempotency-Key"))),
        BodyErrors, AuthErrors, ServerErrors,
    )
)]
#[tracing::instrument(skip_all, fields(user = %user.id))]
pub async fn upsert(
    State(state): State<AppState>,
    user: AuthUser,
    IdempotencyKey(key): IdempotencyKey,
    Json(new): Json<NewItem>,
) -> ApiResult<Outcome> {
    let mut errors = Vec::new();
    new.check_upsert("$", &mut errors);
    validated(errors)?;
    let _slot = state.user_writes.enter(user.id).await;
    let keyed = Keyed::new(key, Scope::User(user.id), "POST /api/items/upsert", &new)?;
    let (db, owner) = (state.db.clone(), user.id);
    let task = state.clone();
    to_completion(&state, |cut| async move {
        let outcome = run_once(&task, keyed, move |tx| {
            Box::pin(async move {
                unless_cut(&cut, async {
                    let (item, created) = items::upsert(&db, tx, owner, &new).await?;
                    let status = if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    Ok(Reply::json(status, &item)?.with_etag(item.etag()))
                })
                .await
            })
        })
        .await;
        // After an error the item is unknown; the user's pages go stale all the same.
        let ids: Vec<Uuid> = match &outcome {
            Ok(Outcome::Replayed(_)) => return outcome,
            Ok(Outcome::Fresh(reply)) => reply
                .body
                .get("id")
                .and_then(|v| v.as_str())
                .and_then(|i| Uuid::parse_str(i).ok())
                .into_iter()
                .collect(),
            Err(_) => Vec::new(),
        };
        cache::items::invalidate(&task.cache, owner, &ids).await;
        outcome
    })
    .await
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    pub created: u32,
    pub updated: u32,
}

/// Up to 1,000 upserts in one transaction: all are written, or none.
#[utoipa::path(
    post, path = "/api/items/batch", tag = "items",
    security(("bearer" = [])),
    request_body = Batch,
    params(IdempotencyKey),
    responses(
        (status = 200, description = "Counts created and updated", body = BatchResult, headers(("Idempotent-Replayed" = String, description = "`true` when this is the stored answer to an earlier request with the same Idempotency-Key"))),
        BodyErrors, AuthErrors, ServerErrors,
        (status = 422, description = "Nothing written; `details` names each bad item by its JSON path", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(user = %user.id, items = batch.items.len()))]
pub async fn batch(
    State(state): State<AppState>,
    user: AuthUser,
    IdempotencyKey(key): IdempotencyKey,
    Json(batch): Json<Batch>,
) -> ApiResult<Outcome> {
    let mut errors = Vec::new();
    batch.check(&mut errors);
    validated(errors)?;
    let _slot = state.user_writes.enter(user.id).await;
    let keyed = Keyed::new(key, Scope::User(user.id), "POST /api/items/batch", &batch)?;
    let (db, owner) = (state.db.clone(), user.id);
    let task = state.clone();
    to_completion(&state, |cut| async move {
        // The updated items' cache entries must go stale; the transaction reports their ids.
        let updated_ids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let updated = updated_ids.clone();
        let outcome = run_once(&task, keyed, move |tx| {
            Box::pin(async move {
                unless_cut(&cut, async {
                    let mut result = BatchResult {
                        created: 0,
                        updated: 0,
                    };
                    let mut ids = Vec::new();
                    for item in batch.in_canonical_order() {
                        match items::upsert(&db, &mut *tx, owner, item).await? {
                            (_, true) => result.created += 1,
                            (row, false) => {
                                result.updated += 1;
                                ids.push(row.id);
                            }
                        }
                    }
                    *updated.lock().unwrap_or_else(|e| e.into_inner()) = ids;
                    Reply::json(StatusCode::OK, &result)
                })
                .await
            })
        })
        .await;
        // After an error, the ids the transaction reported (if it got that far) and the
        // user's pages go stale: the commit may have happened.
        if !matches!(outcome, Ok(Outcome::Replayed(_))) {
            let ids = updated_ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            cache::items::invalidate(&task.cache, owner, &ids).await;
        }
        outcome
    })
    .await
}
