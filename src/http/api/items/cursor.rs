//! The opaque page cursor of `GET /api/items`: the position of the last item served.
//!
//! Clients must not build or edit cursors, so the format is free to change; a cursor
//! that does not decode is a 400, never a database error.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::DateTime;
use uuid::Uuid;

use crate::db::items::Position;

const VERSION: &str = "v1";
/// Far longer than any cursor this module makes; longer input is not decoded at all.
const MAX_LEN: usize = 128;

pub fn encode(position: Position) -> String {
    let raw = format!(
        "{VERSION}:{}:{}",
        position.created_at.timestamp_micros(),
        position.id
    );
    URL_SAFE_NO_PAD.encode(raw)
}

pub fn decode(cursor: &str) -> Option<Position> {
    if cursor.len() > MAX_LEN {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let mut parts = raw.splitn(3, ':');
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

    #[test]
    fn a_cursor_round_trips_and_garbage_does_not_decode() {
        let position = Position {
            created_at: DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(decode(&encode(position)), Some(position));
        for bad in [
            "",
            "x",
            "!!!",
            "djE6MTox",
            &"A".repeat(500),
            "djI6MTIzOmFiYw",
        ] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
