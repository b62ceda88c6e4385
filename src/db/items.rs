//! Items. Every query is scoped by `user_id`: another user's item is simply not found.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::types::Json;
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use super::Database;
use crate::model::item::{Item, ItemPatch, ItemType, NewItem, Source};

macro_rules! item_columns {
    () => {
        "id, type, title, content, tags, metadata, source_connector, source_id, source_url, \
         archived, favorite, created_at, updated_at, version"
    };
}

#[derive(FromRow)]
pub struct ItemRow {
    id: Uuid,
    #[sqlx(rename = "type", try_from = "String")]
    kind: ItemType,
    title: String,
    content: String,
    tags: Vec<String>,
    metadata: Json<Map<String, Value>>,
    source_connector: Option<String>,
    source_id: Option<String>,
    source_url: Option<String>,
    archived: bool,
    favorite: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i32,
}

impl From<ItemRow> for Item {
    fn from(row: ItemRow) -> Self {
        let source = match (row.source_connector, row.source_id) {
            (Some(connector), Some(source_id)) => Some(Source {
                connector,
                source_id,
                url: row.source_url,
            }),
            _ => None,
        };
        Item {
            id: row.id,
            kind: row.kind,
            title: row.title,
            content: row.content,
            tags: row.tags,
            metadata: row.metadata.0,
            source,
            archived: row.archived,
            favorite: row.favorite,
            created_at: row.created_at,
            updated_at: row.updated_at,
            version: row.version,
        }
    }
}

/// Binds `$1..$12` of an insert of `item`: a new id, the owner, then the item's columns in
/// the order `INSERT INTO items (id, user_id, type, title, content, tags, metadata,
/// source_connector, source_id, source_url, archived, favorite)` lists them.
fn bind_new_item<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    user: Uuid,
    item: &'q NewItem,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    let source = item.source.as_ref();
    query
        .bind(Uuid::now_v7())
        .bind(user)
        .bind(item.kind.as_str())
        .bind(&item.title)
        .bind(&item.content)
        .bind(&item.tags)
        .bind(Json(&item.metadata))
        .bind(source.map(|s| &s.connector))
        .bind(source.map(|s| &s.source_id))
        .bind(source.and_then(|s| s.url.as_ref()))
        .bind(item.archived)
        .bind(item.favorite)
}

pub async fn insert<'c>(
    db: &Database,
    conn: impl PgExecutor<'c>,
    user: Uuid,
    item: &NewItem,
) -> Result<Item, sqlx::Error> {
    let query = bind_new_item(
        sqlx::query_as::<_, ItemRow>(concat!(
            "INSERT INTO items (id, user_id, type, title, content, tags, metadata,
             source_connector, source_id, source_url, archived, favorite)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         RETURNING ",
            item_columns!()
        )),
        user,
        item,
    )
    .fetch_one(conn);
    db.timed("item_insert", query).await.map(Item::from)
}

pub async fn get(db: &Database, user: Uuid, id: Uuid) -> Result<Option<Item>, sqlx::Error> {
    let query = sqlx::query_as::<_, ItemRow>(concat!(
        "SELECT ",
        item_columns!(),
        " FROM items WHERE id = $1 AND user_id = $2"
    ))
    .bind(id)
    .bind(user)
    .fetch_optional(&db.pool);
    Ok(db.timed("item_get", query).await?.map(Item::from))
}

/// Tells "no such item" (404) from "not the expected version" (412) after a guarded
/// write matched nothing.
pub async fn exists<'c>(
    db: &Database,
    conn: impl PgExecutor<'c>,
    user: Uuid,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    let query = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM items WHERE id = $1 AND user_id = $2)",
    )
    .bind(id)
    .bind(user)
    .fetch_one(conn);
    db.timed("item_exists", query).await
}

/// Applies the fields present in `patch`, if the version is still `expected` (when given).
/// The row lock makes concurrent guarded updates queue: the second re-checks the version
/// after the first commits, and matches nothing.
pub async fn update<'c>(
    db: &Database,
    conn: impl PgExecutor<'c>,
    user: Uuid,
    id: Uuid,
    expected: Option<&[i32]>,
    patch: &ItemPatch,
) -> Result<Option<Item>, sqlx::Error> {
    let source = patch.source.as_ref();
    let query = sqlx::query_as::<_, ItemRow>(concat!(
        "UPDATE items SET
             type = coalesce($4, type),
             title = coalesce($5, title),
             content = coalesce($6, content),
             tags = coalesce($7, tags),
             metadata = coalesce($8, metadata),
             source_connector = coalesce($9, source_connector),
             source_id = coalesce($10, source_id),
             source_url = CASE WHEN $9::text IS NULL THEN source_url ELSE $11 END,
             archived = coalesce($12, archived),
             favorite = coalesce($13, favorite),
             version = version + 1
         WHERE id = $1 AND user_id = $2 AND ($3::integer[] IS NULL OR version = ANY($3))
         RETURNING ",
        item_columns!()
    ))
    .bind(id)
    .bind(user)
    .bind(expected)
    .bind(patch.kind.map(ItemType::as_str))
    .bind(patch.title.as_ref())
    .bind(patch.content.as_ref())
    .bind(patch.tags.as_ref())
    .bind(patch.metadata.as_ref().map(Json))
    .bind(source.map(|s| &s.connector))
    .bind(source.map(|s| &s.source_id))
    .bind(source.and_then(|s| s.url.as_ref()))
    .bind(patch.archived)
    .bind(patch.favorite)
    .fetch_optional(conn);
    Ok(db.timed("item_update", query).await?.map(Item::from))
}

/// Deletes if the version is still `expected` (when given); true when a row went.
pub async fn delete<'c>(
    db: &Database,
    conn: impl PgExecutor<'c>,
    user: Uuid,
    id: Uuid,
    expected: Option<&[i32]>,
) -> Result<bool, sqlx::Error> {
    let query = sqlx::query(
        "DELETE FROM items WHERE id = $1 AND user_id = $2 AND ($3::integer[] IS NULL OR version = ANY($3))",
    )
    .bind(id)
    .bind(user)
    .bind(expected)
    .execute(conn);
    Ok(db.timed("item_delete", query).await?.rows_affected() == 1)
}

#[derive(FromRow)]
struct UpsertRow {
    #[sqlx(flatten)]
    item: ItemRow,
    created: bool,
}

/// Inserts, or updates the caller's item with the same `(connector, sourceId)`. Returns
/// the item and whether it was created. `item.source` must be set (validated earlier).
pub async fn upsert<'c>(
    db: &Database,
    conn: impl PgExecutor<'c>,
    user: Uuid,
    item: &NewItem,
) -> Result<(Item, bool), sqlx::Error> {
    // `xmax = 0` holds only for a freshly inserted row version: it tells insert from update.
    let query = bind_new_item(
        sqlx::query_as::<_, UpsertRow>(concat!(
            "INSERT INTO items (id, user_id, type, title, content, tags, metadata,
             source_connector, source_id, source_url, archived, favorite)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (user_id, source_connector, source_id) DO UPDATE SET
             type = EXCLUDED.type,
             title = EXCLUDED.title,
             content = EXCLUDED.content,
             tags = EXCLUDED.tags,
             metadata = EXCLUDED.metadata,
             source_url = EXCLUDED.source_url,
             archived = EXCLUDED.archived,
             favorite = EXCLUDED.favorite,
             version = items.version + 1
         RETURNING (xmax = 0) AS created, ",
            item_columns!()
        )),
        user,
        item,
    )
    .fetch_one(conn);
    let row = db.timed("item_upsert", query).await?;
    Ok((Item::from(row.item), row.created))
}

/// Filters of `GET /api/items`; `None` means "any".
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub kind: Option<ItemType>,
    pub tag: Option<String>,
    pub archived: Option<bool>,
    pub favorite: Option<bool>,
}

/// A position in the newest-first order: the last item of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// Up to `limit` items strictly after `after`, newest first. `(created_at, id)` is unique,
/// so a page boundary never duplicates or skips a row, whatever is inserted meanwhile.
///
/// Rows are read one at a time, and reading stops before the item that would take the
/// page past `byte_budget` of JSON (the first item is always taken): a page of large items
/// never sits in memory whole. The flag says the page was cut short that way.
pub async fn list(
    db: &Database,
    user: Uuid,
    filter: &ListFilter,
    after: Option<Position>,
    limit: i64,
    byte_budget: usize,
) -> Result<(Vec<Item>, bool), sqlx::Error> {
    use futures_util::TryStreamExt;
    let query = sqlx::query_as::<_, ItemRow>(concat!(
        "SELECT ",
        item_columns!(),
        " FROM items
         WHERE user_id = $1
           AND ($2::text IS NULL OR type = $2)
           AND ($3::text IS NULL OR tags @> ARRAY[$3::text])
           AND ($4::boolean IS NULL OR archived = $4)
           AND ($5::boolean IS NULL OR favorite = $5)
           AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7::uuid))
         ORDER BY created_at DESC, id DESC
         LIMIT $8"
    ))
    .bind(user)
    .bind(filter.kind.map(ItemType::as_str))
    .bind(filter.tag.as_ref())
    .bind(filter.archived)
    .bind(filter.favorite)
    .bind(after.map(|p| p.created_at))
    .bind(after.map(|p| p.id))
    .bind(limit);
    let read = async {
        let mut rows = query.fetch(&db.pool);
        let (mut items, mut bytes) = (Vec::new(), 0);
        while let Some(row) = rows.try_next().await? {
            let item = Item::from(row);
            bytes += item.approx_json_len();
            if bytes > byte_budget && !items.is_empty() {
                return Ok((items, true));
            }
            items.push(item);
        }
        Ok((items, false))
    };
    db.timed("item_list", read).await
}

#[derive(FromRow)]
struct SearchRow {
    #[sqlx(flatten)]
    item: ItemRow,
    score: f32,
}

/// Ranked full-text search. `websearch_to_tsquery` accepts any text (quotes, `or`, `-`)
/// without ever raising a syntax error.
pub async fn search(
    db: &Database,
    user: Uuid,
    text: &str,
    tags: &[String],
    limit: i64,
    byte_budget: usize,
) -> Result<Vec<(Item, f32)>, sqlx::Error> {
    use futures_util::TryStreamExt;
    // No tags must skip `tags @>` altogether: under the generic plan PostgreSQL switches
    // to after five runs of a prepared statement, `tags @> '{}'` is read from the tags
    // GIN index, which matches every row (BENCHMARKS.md: 67 ms instead of 6 ms at 1M).
    let query = sqlx::query_as::<_, SearchRow>(concat!(
        "SELECT ts_rank_cd(search, q) AS score, ",
        item_columns!(),
        " FROM items, websearch_to_tsquery('english', $2) AS q
         WHERE user_id = $1 AND search @@ q
           AND (cardinality($3::text[]) = 0 OR tags @> $3::text[])
         ORDER BY score DESC, created_at DESC, id DESC
         LIMIT $4"
    ))
    .bind(user)
    .bind(text)
    .bind(tags)
    .bind(limit);
    // As for list pages: one row at a time, the best matches that fit the budget.
    let read = async {
        let mut rows = query.fetch(&db.pool);
        let (mut hits, mut bytes) = (Vec::new(), 0);
        while let Some(row) = rows.try_next().await? {
            let item = Item::from(row.item);
            bytes += item.approx_json_len();
            if bytes > byte_budget && !hits.is_empty() {
                break;
            }
            hits.push((item, row.score));
        }
        Ok(hits)
    };
    db.timed("item_search", read).await
}

/// Item counts per type for one user.
pub async fn count_by_type(db: &Database, user: Uuid) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let query = sqlx::query_as::<_, (String, i64)>(
        "SELECT type, count(*) FROM items WHERE user_id = $1 GROUP BY type",
    )
    .bind(user)
    .fetch_all(&db.pool);
    db.timed("item_stats", query).await
}
