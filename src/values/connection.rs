//! The `Connection` field's options (RFC 9110 §7.6.1): comma-separated, case-insensitive
//! tokens, in any number of fields. One reading for every side that asks (a client's request,
//! a worker's response, weir's own answer), so no two of them can disagree on what a message
//! said about its connection.

use http::header::{self, HeaderMap, HeaderValue};
use http::Version;

/// Whether one `Connection` value lists `option`.
pub fn value_lists(value: &HeaderValue, option: &[u8]) -> bool {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(option))
}

/// Whether any `Connection` field of `headers` lists `option`.
pub fn lists(headers: &HeaderMap, option: &[u8]) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|value| value_lists(value, option))
}

/// Whether a message of `version` with `headers` leaves its connection open: HTTP/1.1 unless
/// it lists `close`, HTTP/1.0 only if it lists `keep-alive`.
pub fn persists(version: Version, headers: &HeaderMap) -> bool {
    if version == Version::HTTP_10 {
        lists(headers, b"keep-alive")
    } else {
        !lists(headers, b"close")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::CONNECTION, HeaderValue::from_static(v));
        }
        headers
    }

    #[test]
    fn options_are_tokens_in_any_field_in_any_case() {
        assert!(lists(&fields(&["keep-alive", " Upgrade "]), b"upgrade"));
        assert!(lists(&fields(&["foo, CLOSE"]), b"close"));
        assert!(!lists(&fields(&["closed, x-close"]), b"close"));
        assert!(!lists(&fields(&[]), b"close"));
    }

    #[test]
    fn persistence_follows_the_version_default() {
        assert!(persists(Version::HTTP_11, &fields(&[])));
        assert!(!persists(Version::HTTP_11, &fields(&["close"])));
        assert!(!persists(Version::HTTP_10, &fields(&[])));
        assert!(persists(Version::HTTP_10, &fields(&["Keep-Alive"])));
    }
}
