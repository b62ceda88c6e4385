//! Which client-sent `X-Request-Id` is kept: it is echoed in the response and written to
//! every log line of the request, so only a short, printable one is. Anything else is
//! dropped, and a fresh id generated in its place, as when none is sent.

use axum::http::{HeaderName, HeaderValue, Request};

/// Longest id kept: a UUID is 36, a W3C trace id 32.
pub const MAX_LEN: usize = 128;

/// 1 to [`MAX_LEN`] visible ASCII characters.
pub fn is_acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(u8::is_ascii_graphic)
}

/// Removes every `name` header unless there is exactly one, and it is acceptable.
pub fn drop_unacceptable<B>(name: &HeaderName, mut req: Request<B>) -> Request<B> {
    let mut values = req.headers().get_all(name).iter();
    let keep = matches!((values.next(), values.next()), (Some(v), None) if is_acceptable(v));
    if !keep {
        req.headers_mut().remove(name);
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_printable_ids_only() {
        for good in [
            "a",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            &"x".repeat(MAX_LEN),
        ] {
            assert!(
                is_acceptable(&HeaderValue::from_str(good).unwrap()),
                "{good}"
            );
        }
        for bad in ["", "has space", &"x".repeat(MAX_LEN + 1), "tab\there"] {
            assert!(
                !is_acceptable(&HeaderValue::from_str(bad).unwrap()),
                "{bad:?}"
            );
        }
        assert!(!is_acceptable(
            &HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()
        ));
    }
}
