//! A request's affinity key under its pool's `sticky`: a header's value, a cookie's (given
//! to a client that has none with its response), or the client's address.

use http::header::{self, HeaderMap, HeaderValue};

use super::conn::ConnContext;
use crate::config::StickyConfig;
use crate::pool::sticky::key_of;

/// The key of a request, and the `Set-Cookie` its response carries when the pool keys by a
/// cookie the request lacks (a new key, so the next request comes back to the same worker).
pub fn key(
    sticky: &StickyConfig,
    headers: &HeaderMap,
    cx: &ConnContext,
) -> (Option<u64>, Option<HeaderValue>) {
    if let Some(name) = &sticky.header {
        // Without the header, the request is balanced like any other.
        return (
            headers.get(name.as_str()).map(|v| key_of(v.as_bytes())),
            None,
        );
    }
    let Some(name) = &sticky.cookie else {
        return (Some(key_of(cx.peer_ip.as_bytes())), None);
    };
    if let Some(value) = cookie(headers, name) {
        return (Some(key_of(value)), None);
    }
    let mut random = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut random).is_err() {
        return (None, None);
    }
    let value: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let mut text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if let Some(ttl) = sticky.ttl {
        text.push_str(&format!("; Max-Age={}", ttl.get().as_secs()));
    }
    if cx.proto == "https" {
        text.push_str("; Secure");
    }
    (
        Some(key_of(value.as_bytes())),
        HeaderValue::from_str(&text).ok(),
    )
}

/// The value of cookie `name` in the request's `Cookie` fields.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (k, v) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            (k == name.as_bytes())
                .then_some(&v[1..])
                .filter(|v| !v.is_empty())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_cookie_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; weir_sticky=ab12"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "weir_sticky"), Some(&b"ab12"[..]));
        assert_eq!(cookie(&h, "b"), Some(&b"2"[..]));
        assert_eq!(cookie(&h, "weir"), None);
        h.insert(header::COOKIE, HeaderValue::from_static("weir_sticky="));
        assert_eq!(cookie(&h, "weir_sticky"), None);
    }
}
