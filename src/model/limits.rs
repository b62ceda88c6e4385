//! How large input may be: each field's limit, checked by the validators of [`super::item`]
//! and [`super::auth`] and stated by the OpenAPI document ([`super::schema`]) alike.

pub const EMAIL_MAX: usize = 254;
pub const PASSWORD_MIN: usize = 8;
/// Argon2 takes any length, but hashing megabytes per login attempt is a cheap attack.
pub const PASSWORD_MAX: usize = 128;

pub const TITLE_MAX: usize = 500;
/// The body limit (1 MiB) bounds content anyway; this keeps one item well under it so a
/// batch can still carry several.
pub const CONTENT_MAX: usize = 100_000;
pub const TAGS_MAX: usize = 50;
pub const TAG_MAX: usize = 64;
pub const SOURCE_FIELD_MAX: usize = 256;
pub const URL_MAX: usize = 2048;
pub const BATCH_MAX: usize = 1000;
/// `metadata` as compact JSON, in bytes. Bounded by the body limit alone, one user's items
/// made list pages of tens of megabytes, and several times that in memory to build them.
pub const METADATA_MAX_BYTES: usize = 16 * 1024;
