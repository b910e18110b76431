//! What weir does differently for gRPC requests (`content-type: application/grpc...`): its
//! own failures answered as gRPC statuses, and the call's `grpc-timeout` as a deadline.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use super::body::ProxyBody;
use crate::error::{ProxyError, Report};

static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Whether the request is a gRPC call: `application/grpc`, alone or with a `+format` or
/// parameters (not gRPC-Web, whose clients read HTTP statuses).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.as_bytes().strip_prefix(b"application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
}

/// The call's `grpc-timeout` ("1S", "250m", "100000u": at most 8 digits and a unit of H, M,
/// S, m, u or n); `None` when absent or malformed (a malformed one is ignored, as gRPC
/// servers do).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Set `grpc-timeout` to what is left until `deadline`, in milliseconds (at least 1, as a
/// call already late still gets its worker's own deadline error).
pub fn pass_on_timeout(headers: &mut HeaderMap, deadline: tokio::time::Instant) {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let millis = left.as_millis().clamp(1, 99_999_999);
    if let Ok(value) = HeaderValue::from_str(&format!("{millis}m")) {
        headers.insert(GRPC_TIMEOUT.clone(), value);
    }
}

/// A failure as a gRPC "trailers-only" answer: HTTP 200 whose head carries `grpc-status` and
/// a percent-encoded `grpc-message`, and no body.
pub fn error_response(error: &ProxyError, report: &Report) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        GRPC_STATUS.clone(),
        HeaderValue::from(u16::from(error.grpc_status())),
    );
    if let Ok(message) = HeaderValue::from_str(&percent_encode(report.body.trim_end())) {
        headers.insert(GRPC_MESSAGE.clone(), message);
    }
    response
}

/// The trailers that end a call cut short by its deadline.
pub fn deadline_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert(GRPC_STATUS.clone(), HeaderValue::from_static("4"));
    trailers.insert(
        GRPC_MESSAGE.clone(),
        HeaderValue::from_static("weir: deadline exceeded (grpc-timeout)"),
    );
    trailers
}

/// gRPC's percent-encoding of `grpc-message`: printable ASCII but '%' as is, the rest as
/// `%XX` of its UTF-8 bytes.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_grpc_from_lookalikes() {
        let with = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            is_grpc(&h)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("application/grpc;charset=utf-8"));
        assert!(!with("application/grpc-web"));
        assert!(!with("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn reads_grpc_timeouts() {
        let of = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_static(v));
            timeout(&h)
        };
        assert_eq!(of("1S"), Some(Duration::from_secs(1)));
        assert_eq!(of("250m"), Some(Duration::from_millis(250)));
        assert_eq!(of("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(of("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(of("123456789S"), None);
        assert_eq!(of("S"), None);
        assert_eq!(of("1s"), None);
        assert_eq!(of("-1S"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_worker_gets_what_is_left_of_the_timeout() {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", HeaderValue::from_static("2S"));
        let deadline = tokio::time::Instant::now() + timeout(&h).unwrap();
        tokio::time::advance(Duration::from_millis(1500)).await;
        pass_on_timeout(&mut h, deadline);
        assert_eq!(h["grpc-timeout"], "500m");
        tokio::time::advance(Duration::from_secs(1)).await;
        pass_on_timeout(&mut h, deadline);
        assert_eq!(h["grpc-timeout"], "1m");
    }

    #[test]
    fn failures_become_trailers_only_answers() {
        let error = ProxyError::queue_full(1);
        let response = error_response(&error, &error.report());
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["grpc-status"], "8");
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(percent_encode("a%b\né"), "a%25b%0A%C3%A9");
    }
}
