//! The rules of [`super::check_text`] and of the item checks, stated as JSON Schema for the
//! OpenAPI document, so that what the document allows is what the validators accept.
//!
//! Patterns are ECMA-262 (what OpenAPI specifies), written with only the syntax that Rust's
//! `regex` reads alike (`\uXXXX`, classes, `(?:...)`), so the contract test can check them.

use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::schema::{
    AdditionalProperties, AnyOfBuilder, ArrayBuilder, Object, ObjectBuilder, Ref, Schema,
    SchemaType, Type,
};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use super::limits::{
    CONTENT_MAX, EMAIL_MAX, SOURCE_FIELD_MAX, TAGS_MAX, TAG_MAX, TITLE_MAX, URL_MAX,
};

/// The characters `char::is_whitespace` (and so `str::trim`) takes for white space: Unicode's
/// White_Space. Not ECMA's `\s`, which differs (U+FEFF in, U+0085 out).
const WHITE: &str =
    r"\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// No NUL: PostgreSQL stores none, in `text` or `jsonb`.
pub const NO_NUL: &str = r"^[^\u0000]*$";

/// No NUL, and something besides white space (`check_text` without `allow_empty`).
pub fn not_blank() -> String {
    format!(r"^[^\u0000]*[^\u0000{WHITE}][^\u0000]*$")
}

/// A string as `check_text` accepts it: at most `max` characters, no NUL, and unless
/// `blank_ok`, not only white space.
pub fn text(max: usize, blank_ok: bool) -> Object {
    let builder = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(max));
    if blank_ok {
        builder.pattern(Some(NO_NUL)).build()
    } else {
        builder
            .min_length(Some(1))
            .pattern(Some(not_blank()))
            .build()
    }
}

/// An email as `Credentials::check` accepts it once trimmed: no white space or NUL, a
/// non-empty part before the first `@`, and a dot after it.
pub fn email() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(EMAIL_MAX))
        .pattern(Some(format!(
            r"^[{WHITE}]*[^@\u0000{WHITE}]+@[^\u0000{WHITE}]*\.[^\u0000{WHITE}]*[{WHITE}]*$"
        )))
        .build()
}

pub fn boolean() -> Object {
    ObjectBuilder::new().schema_type(Type::Boolean).build()
}

pub fn title() -> Object {
    text(TITLE_MAX, false)
}

pub fn content() -> Object {
    text(CONTENT_MAX, true)
}

pub fn tag() -> Object {
    text(TAG_MAX, false)
}

pub fn tags() -> ArrayBuilder {
    ArrayBuilder::new().items(tag()).max_items(Some(TAGS_MAX))
}

pub fn tag_list() -> utoipa::openapi::schema::Array {
    tags().build()
}

/// A comma-separated list of tags, as `GET /api/search` reads it. Stricter than the
/// service, which trims each tag and ignores blank ones: 50 segments of 64 characters.
pub fn tag_filter() -> Object {
    let segment = format!(r"[^,\u0000]{{0,{TAG_MAX}}}");
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(format!(
            "^{segment}(?:,{segment}){{0,{}}}$",
            TAGS_MAX - 1
        )))
        .build()
}

pub fn source_field() -> Object {
    text(SOURCE_FIELD_MAX, false)
}

pub fn url() -> Object {
    text(URL_MAX, true)
}

/// `url` may also be `null` (the same as absent).
pub fn nullable_url() -> Object {
    let mut url = url();
    url.schema_type = SchemaType::from_iter([Type::String, Type::Null]);
    url
}

/// Any JSON object without NUL in its keys or strings, at any depth.
pub fn metadata() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(no_nul_string()))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::Ref(
            Ref::from_schema_name(JsonValue::name()),
        ))))
        .description(Some(
            "Any JSON object of at most 16,384 bytes as compact JSON (`x-max-bytes`; 422 \
             beyond, naming the limit); no NUL character in its keys or strings, at any depth",
        ))
        // No JSON Schema keyword bounds a value's size in bytes: an extension states it
        // for machines (the contract test validates with it).
        .extensions(Some(
            ExtensionsBuilder::new()
                .add("x-max-bytes", super::limits::METADATA_MAX_BYTES)
                .build(),
        ))
        .build()
}

fn no_nul_string() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(NO_NUL))
        .build()
}

/// A JSON value without NUL in any key or string: what `metadata` may hold.
pub struct JsonValue;

impl PartialSchema for JsonValue {
    fn schema() -> RefOr<Schema> {
        let this = || RefOr::Ref(Ref::from_schema_name(JsonValue::name()));
        let scalar = ObjectBuilder::new().schema_type(SchemaType::from_iter([
            Type::Number,
            Type::Boolean,
            Type::Null,
        ]));
        let array = ArrayBuilder::new().items(this());
        let object = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(no_nul_string()))
            .additional_properties(Some(AdditionalProperties::RefOr(this())));
        AnyOfBuilder::new()
            .item(no_nul_string())
            .item(scalar)
            .item(array)
            .item(object)
            .description(Some("Any JSON value without a NUL character"))
            .into()
    }
}

impl ToSchema for JsonValue {}
