//! The opaque page cursor of `GET /api/items`: the position of the last item served,
//! signed so that a cursor the API did not make is a 400, however well-formed.
//!
//! Clients must not build or edit cursors, so the format is free to change; a cursor
//! that does not decode or verify is a 400, never a database error.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::DateTime;
use hmac::Mac;
use uuid::Uuid;

use crate::auth::keys::{CursorKey, CursorKeys};
use crate::db::items::Position;

const VERSION: &str = "v2";
/// A truncated tag: 128 bits is far beyond guessing online, and keeps cursors short.
const TAG_LEN: usize = 16;
/// Far longer than any cursor this module makes; longer input is not decoded at all.
const MAX_LEN: usize = 128;

/// A cursor made with either key: one made before a rotation still pages on.
pub fn decode_any(keys: &CursorKeys, cursor: &str) -> Option<Position> {
    keys.verify(|key| decode(key, cursor).ok_or(()), |_| true)
        .ok()
}

pub fn encode(key: &CursorKey, position: Position) -> String {
    let payload = format!(
        "{VERSION}:{}:{}",
        position.created_at.timestamp_micros(),
        position.id
    );
    let mut mac = key.clone();
    mac.update(payload.as_bytes());
    let mut raw = payload.into_bytes();
    raw.extend_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
    URL_SAFE_NO_PAD.encode(raw)
}

pub fn decode(key: &CursorKey, cursor: &str) -> Option<Position> {
    if cursor.len() > MAX_LEN {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let (payload, tag) = raw.split_at_checked(raw.len().checked_sub(TAG_LEN)?)?;
    let mut mac = key.clone();
    mac.update(payload);
    // Constant time: the comparison leaks nothing about how much of a forged tag matched.
    mac.verify_truncated_left(tag).ok()?;
    let payload = std::str::from_utf8(payload).ok()?;
    let mut parts = payload.splitn(3, ':');
    if parts.next()? != VERSION {
        return None;
    }
    let micros: i64 = parts.next()?.parse().ok()?;
    let id = Uuid::parse_str(parts.next()?).ok()?;
    Some(Position {
        created_at: DateTime::from_timestamp_micros(micros)?,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::cursor_key;

    fn position() -> Position {
        Position {
            created_at: DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        }
    }

    #[test]
    fn a_cursor_round_trips_and_garbage_does_not_decode() {
        let key = cursor_key(b"a-secret-a-secret-a-secret-a-secret").unwrap();
        let position = position();
        assert_eq!(decode(&key, &encode(&key, position)), Some(position));
        for bad in [
            "",
            "x",
            "!!!",
            "djE6MTox",
            &"A".repeat(500),
            "djI6MTIzOmFiYw",
        ] {
            assert_eq!(decode(&key, bad), None, "{bad}");
        }
    }

    #[test]
    fn a_well_formed_cursor_without_the_right_tag_does_not_decode() {
        let key = cursor_key(b"a-secret-a-secret-a-secret-a-secret").unwrap();
        let position = position();
        let payload = format!("{VERSION}:{}:{}", 1_764_000_000_123_456i64, position.id);
        // No tag, a zero tag, and the tag of another secret.
        let mut zero_tag = payload.clone().into_bytes();
        zero_tag.extend_from_slice(&[0; TAG_LEN]);
        let other = encode(
            &cursor_key(b"another-secret-another-secret-0000").unwrap(),
            position,
        );
        for forged in [
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(zero_tag),
            other,
        ] {
            assert_eq!(decode(&key, &forged), None, "{forged}");
        }
    }
}
