//! Items: something gathered from a source (an email, a task, a file...).

use chrono::{DateTime, Utc};
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Ref, Schema};
use utoipa::openapi::RefOr;
use utoipa::PartialSchema;

use super::check_text;
use super::limits::{
    BATCH_MAX, CONTENT_MAX, METADATA_MAX_BYTES, SOURCE_FIELD_MAX, TAGS_MAX, TAG_MAX, TITLE_MAX,
    URL_MAX,
};
use super::schema;
use crate::error::FieldError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ItemType {
    Email,
    Task,
    Document,
    Message,
    Event,
    Note,
    Contact,
    File,
}

impl ItemType {
    pub const ALL: [ItemType; 8] = [
        ItemType::Email,
        ItemType::Task,
        ItemType::Document,
        ItemType::Message,
        ItemType::Event,
        ItemType::Note,
        ItemType::Contact,
        ItemType::File,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemType::Email => "email",
            ItemType::Task => "task",
            ItemType::Document => "document",
            ItemType::Message => "message",
            ItemType::Event => "event",
            ItemType::Note => "note",
            ItemType::Contact => "contact",
            ItemType::File => "file",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == raw)
    }
}

impl TryFrom<String> for ItemType {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw).ok_or_else(|| format!("unknown item type {raw:?}"))
    }
}

/// Where an item came from. `(connector, sourceId)` identifies it for upserts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[schema(example = "gmail", schema_with = schema::source_field)]
    pub connector: String,
    #[schema(example = "msg-18c2f", schema_with = schema::source_field)]
    pub source_id: String,
    #[serde(default)]
    #[schema(schema_with = schema::nullable_url)]
    pub url: Option<String>,
}

/// An item as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: ItemType,
    pub title: String,
    pub content: String,
    pub tags: Vec<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub source: Option<Source>,
    pub archived: bool,
    pub favorite: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Incremented by every write; the item's ETag, and what `If-Match` compares.
    pub version: i32,
}

impl Item {
    /// A strong ETag: the version, quoted.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }

    /// About the bytes of this item's JSON, without building it: the variable parts as
    /// they are, plus what the field names, ids and dates take. Escaped characters make it
    /// an underestimate, by at most six to one for control characters.
    pub fn approx_json_len(&self) -> usize {
        const FIXED: usize = 320;
        let source = self.source.as_ref().map_or(0, |s| {
            s.connector.len() + s.source_id.len() + s.url.as_ref().map_or(0, String::len)
        });
        let tags: usize = self.tags.iter().map(|t| t.len() + 3).sum();
        FIXED + self.title.len() + self.content.len() + tags + json_len(&self.metadata) + source
    }
}

/// The body of `POST /api/items`, and of each upsert.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewItem {
    #[serde(rename = "type")]
    pub kind: ItemType,
    #[schema(schema_with = schema::title)]
    pub title: String,
    #[serde(default)]
    #[schema(schema_with = schema::content)]
    pub content: String,
    #[serde(default)]
    #[schema(schema_with = schema::tag_list)]
    pub tags: Vec<String>,
    #[serde(default)]
    #[schema(schema_with = schema::metadata)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub source: Option<Source>,
    #[serde(default)]
    pub archived: bool,
    #[serde(default)]
    pub favorite: bool,
}

/// The body of `PATCH /api/items/{id}`: only the fields present change, at least one.
///
/// The document does not offer `null`: the service takes it as absent, so a body of nulls
/// alone is a 422 ("nothing to update"), a rule no schema of nullable fields could state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[schema(min_properties = 1)]
pub struct ItemPatch {
    #[serde(rename = "type")]
    #[schema(schema_with = item_type_ref)]
    pub kind: Option<ItemType>,
    #[schema(schema_with = schema::title)]
    pub title: Option<String>,
    #[schema(schema_with = schema::content)]
    pub content: Option<String>,
    #[schema(schema_with = schema::tag_list)]
    pub tags: Option<Vec<String>>,
    #[schema(schema_with = schema::metadata)]
    pub metadata: Option<Map<String, Value>>,
    #[schema(schema_with = source_ref)]
    pub source: Option<Source>,
    #[schema(schema_with = schema::boolean)]
    pub archived: Option<bool>,
    #[schema(schema_with = schema::boolean)]
    pub favorite: Option<bool>,
}

/// The body of `POST /api/items/batch`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Batch {
    /// 1 to 1,000 upserts; each needs a `source`, and no two may have the same
    /// `connector` and `sourceId` (422).
    #[schema(value_type = Vec<SourcedItem>, min_items = 1, max_items = 1000)]
    pub items: Vec<NewItem>,
}

fn check_tags(errors: &mut Vec<FieldError>, at: &str, tags: &[String]) {
    if tags.len() > TAGS_MAX {
        errors.push(FieldError::new(
            format!("{at}.tags"),
            format!("at most {TAGS_MAX} tags"),
        ));
        return;
    }
    for (i, tag) in tags.iter().enumerate() {
        check_text(errors, &format!("{at}.tags[{i}]"), tag, TAG_MAX, false);
    }
}

fn check_source(errors: &mut Vec<FieldError>, at: &str, source: &Source) {
    let at = format!("{at}.source");
    check_text(
        errors,
        &format!("{at}.connector"),
        &source.connector,
        SOURCE_FIELD_MAX,
        false,
    );
    check_text(
        errors,
        &format!("{at}.sourceId"),
        &source.source_id,
        SOURCE_FIELD_MAX,
        false,
    );
    if let Some(url) = &source.url {
        check_text(errors, &format!("{at}.url"), url, URL_MAX, true);
    }
}

/// NUL anywhere in a JSON document, keys included, is refused by `jsonb`.
fn json_has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(json_has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        _ => false,
    }
}

fn check_metadata(errors: &mut Vec<FieldError>, at: &str, metadata: &Map<String, Value>) {
    if metadata
        .iter()
        .any(|(k, v)| k.contains('\0') || json_has_nul(v))
    {
        errors.push(FieldError::new(
            format!("{at}.metadata"),
            "must not contain NUL characters",
        ));
    } else if json_len(metadata) > METADATA_MAX_BYTES {
        errors.push(FieldError::new(
            format!("{at}.metadata"),
            format!("must be at most {METADATA_MAX_BYTES} bytes as compact JSON"),
        ));
    }
}

/// The length of `value` as compact JSON, counted without building it.
fn json_len(value: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail, and a map of JSON values always serializes.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

impl NewItem {
    /// Every problem, each with its path under `at` (`$` for a single item).
    pub fn check(&self, at: &str, errors: &mut Vec<FieldError>) {
        check_text(
            errors,
            &format!("{at}.title"),
            &self.title,
            TITLE_MAX,
            false,
        );
        check_text(
            errors,
            &format!("{at}.content"),
            &self.content,
            CONTENT_MAX,
            true,
        );
        check_tags(errors, at, &self.tags);
        check_metadata(errors, at, &self.metadata);
        if let Some(source) = &self.source {
            check_source(errors, at, source);
        }
    }

    /// An upsert is keyed by its source, so it must have one.
    pub fn check_upsert(&self, at: &str, errors: &mut Vec<FieldError>) {
        self.check(at, errors);
        if self.source.is_none() {
            errors.push(FieldError::new(
                format!("{at}.source"),
                "required for an upsert: {connector, sourceId}",
            ));
        }
    }
}

impl ItemPatch {
    pub fn check(&self, errors: &mut Vec<FieldError>) {
        let at = "$";
        if let Some(title) = &self.title {
            check_text(errors, "$.title", title, TITLE_MAX, false);
        }
        if let Some(content) = &self.content {
            check_text(errors, "$.content", content, CONTENT_MAX, true);
        }
        if let Some(tags) = &self.tags {
            check_tags(errors, at, tags);
        }
        if let Some(metadata) = &self.metadata {
            check_metadata(errors, at, metadata);
        }
        if let Some(source) = &self.source {
            check_source(errors, at, source);
        }
        let empty = self.kind.is_none()
            && self.title.is_none()
            && self.content.is_none()
            && self.tags.is_none()
            && self.metadata.is_none()
            && self.source.is_none()
            && self.archived.is_none()
            && self.favorite.is_none();
        if empty {
            errors.push(FieldError::new("$", "nothing to update"));
        }
    }
}

impl Batch {
    pub fn check(&self, errors: &mut Vec<FieldError>) {
        if self.items.is_empty() || self.items.len() > BATCH_MAX {
            errors.push(FieldError::new(
                "$.items",
                format!("must hold 1 to {BATCH_MAX} items"),
            ));
            return;
        }
        let mut first_at: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, item) in self.items.iter().enumerate() {
            item.check_upsert(&format!("$.items[{i}]"), errors);
            let Some(source) = &item.source else { continue };
            let key = (source.connector.as_str(), source.source_id.as_str());
            if let Some(first) = first_at.insert(key, i) {
                errors.push(FieldError::new(
                    format!("$.items[{i}].source"),
                    format!(
                        "same connector and sourceId as $.items[{first}].source: \
                         send each source once per batch"
                    ),
                ));
            }
        }
    }

    /// The items sorted by (connector, source id). Every batch locks its rows in this one
    /// order, so two batches touching the same sources can never wait on each other in a
    /// cycle (a deadlock, which PostgreSQL would break by failing one of them).
    pub fn in_canonical_order(&self) -> Vec<&NewItem> {
        let mut items: Vec<&NewItem> = self.items.iter().collect();
        items.sort_by(|a, b| source_key(a).cmp(&source_key(b)));
        items
    }
}

fn source_key(item: &NewItem) -> Option<(&str, &str)> {
    item.source
        .as_ref()
        .map(|s| (s.connector.as_str(), s.source_id.as_str()))
}

/// For the fields of a PATCH, where `null` is not offered (see `ItemPatch`).
fn item_type_ref() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(ItemType::name()))
}

fn source_ref() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(Source::name()))
}

/// A [`NewItem`] with a `source` (not null): the body of an upsert, and each batch item.
pub struct SourcedItem;

impl PartialSchema for SourcedItem {
    fn schema() -> RefOr<Schema> {
        let with_source = ObjectBuilder::new()
            .property("source", source_ref())
            .required("source");
        AllOfBuilder::new()
            .item(RefOr::Ref(Ref::from_schema_name(NewItem::name())))
            .item(with_source)
            .description(Some(
                "An item with a source: upserts are keyed by (connector, sourceId)",
            ))
            .into()
    }
}

impl ToSchema for SourcedItem {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((NewItem::name().into(), NewItem::schema()));
        NewItem::schemas(schemas);
    }
}
