//! The dashboard: one page, its script and its style sheet, compiled into the binary so it
//! works with no internet and no build step. The page holds no data: it reads the JSON API like
//! any client, with the admin token (when one is set) from the operator, kept in the tab's
//! sessionStorage and sent as `Authorization: Bearer`. No cookie, so another site cannot make
//! the browser act for the operator.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

/// Same-origin everything, no framing: the page runs only its own script, talks only to the
/// admin listener, and cannot be put in another site's frame to trick a click.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The asset at `path` (`/`, `/ui/app.js`, `/ui/app.css`), if it is one.
pub fn asset(path: &str) -> Option<Response<Full<Bytes>>> {
    let (body, content_type) = match path {
        "" | "/" => (PAGE, "text/html; charset=utf-8"),
        "/ui/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/ui/app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    let mut set = |name, value| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(header::CONTENT_TYPE, content_type);
    set(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::REFERRER_POLICY, "no-referrer");
    // Revalidate every time, so the page always matches the binary that serves the API.
    set(header::CACHE_CONTROL, "no-cache");
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_three_assets_with_a_strict_policy() {
        for path in ["/", "/ui/app.js", "/ui/app.css"] {
            let response = asset(path).unwrap();
            let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap();
            assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
            assert_eq!(response.headers()[header::X_FRAME_OPTIONS], "DENY");
        }
        assert!(asset("/ui/other.js").is_none());
        assert!(asset("/api/v1/pools").is_none());
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for text in [PAGE, SCRIPT, STYLE] {
            // The SVG namespace is a name, not a fetch.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(
                !text.contains("innerHTML"),
                "build DOM nodes, never markup from data"
            );
        }
        assert!(
            !PAGE.contains("<script>"),
            "no inline script (the policy forbids it)"
        );
        assert!(
            !PAGE.contains("style="),
            "no inline style (the policy forbids it)"
        );
    }
}
