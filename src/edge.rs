//! What a listener answers itself, before any routing, and adds to every response it sends:
//! a plain listener's answers to the ACME CA's HTTP-01 challenges and its redirect to HTTPS,
//! a TLS listener's `Strict-Transport-Security`.

use http::header::{self, HeaderValue};
use std::sync::Arc;

use http::{Response, StatusCode, Uri};

use crate::certs::Certs;
use crate::config::ListenerConfig;
use crate::values::HostPort;

/// The path prefix of ACME HTTP-01 challenges: never redirected (a CA asks over plain HTTP).
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// One listener's edge settings, built with the config snapshot.
#[derive(Debug, Clone, Default)]
pub struct ListenerEdge {
    /// The HTTPS port plain requests are sent to.
    pub redirect_to_https: Option<u16>,
    /// The `Strict-Transport-Security` value to send.
    pub hsts: Option<HeaderValue>,
    /// On a plain listener of a weir with `[acme]`: the challenges of its orders.
    pub acme: Option<Arc<Certs>>,
}

impl ListenerEdge {
    /// The edge of `listener`; `None` when it has nothing to do (the common case, so a
    /// connection carries no edge at all).
    pub fn of(listener: &ListenerConfig, acme: Option<Arc<Certs>>) -> Option<Self> {
        let hsts = listener
            .tls
            .as_ref()
            .and_then(|tls| tls.hsts)
            .and_then(|max_age| {
                HeaderValue::from_str(&format!("max-age={}", max_age.get().as_secs())).ok()
            });
        let edge = ListenerEdge {
            redirect_to_https: listener.redirect_to_https,
            hsts,
            acme,
        };
        let any = edge.redirect_to_https.is_some() || edge.hsts.is_some() || edge.acme.is_some();
        any.then_some(edge)
    }

    /// What this listener answers itself: an ACME HTTP-01 challenge of an order under way
    /// (the key authorization; 404 for a token it does not know), or the redirect to HTTPS.
    pub fn answer(
        &self,
        uri: &Uri,
        host: Option<&HeaderValue>,
    ) -> Option<Response<std::borrow::Cow<'static, str>>> {
        if let Some(certs) = &self.acme {
            if let Some(token) = uri.path().strip_prefix(ACME_CHALLENGE_PREFIX) {
                return Some(match certs.challenge(token) {
                    Some(key_authorization) => {
                        let mut response = plain(StatusCode::OK, "");
                        *response.body_mut() = std::borrow::Cow::Owned(key_authorization);
                        response
                    }
                    None => plain(StatusCode::NOT_FOUND, "no such challenge\n"),
                });
            }
        }
        self.redirect(uri, host)
    }

    /// The redirect a plain request gets, if this listener sends requests to HTTPS: a 308
    /// (the method and body stay) to the same host and path, or a 400 without a usable host.
    /// ACME challenges pass.
    pub fn redirect(
        &self,
        uri: &Uri,
        host: Option<&HeaderValue>,
    ) -> Option<Response<std::borrow::Cow<'static, str>>> {
        let port = self.redirect_to_https?;
        if uri.path().starts_with(ACME_CHALLENGE_PREFIX) {
            return None;
        }
        let named = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| host.and_then(|h| h.to_str().ok()))
            .and_then(HostPort::parse);
        let Some(named) = named else {
            return Some(plain(
                StatusCode::BAD_REQUEST,
                "a redirect to HTTPS needs a valid Host\n",
            ));
        };
        let port = if port == 443 {
            String::new()
        } else {
            format!(":{port}")
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{}{port}{path}", named.host);
        let Ok(location) = HeaderValue::from_str(&location) else {
            return Some(plain(StatusCode::BAD_REQUEST, "bad request target\n"));
        };
        let mut response = plain(StatusCode::PERMANENT_REDIRECT, "to HTTPS\n");
        response.headers_mut().insert(header::LOCATION, location);
        Some(response)
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<std::borrow::Cow<'static, str>> {
    let mut response = Response::new(std::borrow::Cow::Borrowed(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(port: u16) -> ListenerEdge {
        ListenerEdge {
            redirect_to_https: Some(port),
            hsts: None,
            acme: None,
        }
    }

    fn location(edge: &ListenerEdge, uri: &str, host: Option<&str>) -> (u16, String) {
        let host = host.map(|h| HeaderValue::from_str(h).unwrap());
        let response = edge
            .redirect(&uri.parse().unwrap(), host.as_ref())
            .expect("an answer");
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap().to_string())
            .unwrap_or_default();
        (response.status().as_u16(), location)
    }

    #[test]
    fn plain_requests_go_to_the_same_host_and_path_on_https() {
        assert_eq!(
            location(&edge(8443), "/a/b?c=d", Some("app.example.com:8080")),
            (308, "https://app.example.com:8443/a/b?c=d".into())
        );
        assert_eq!(
            location(&edge(443), "/", Some("app.example.com")),
            (308, "https://app.example.com/".into())
        );
        assert_eq!(
            location(&edge(443), "http://[::1]:80/x", None),
            (308, "https://[::1]/x".into())
        );
        assert_eq!(location(&edge(443), "/", None).0, 400);
        assert_eq!(location(&edge(443), "/", Some("bad host")).0, 400);
        let challenge = "/.well-known/acme-challenge/token";
        assert!(edge(443)
            .redirect(&challenge.parse().unwrap(), None)
            .is_none());
        assert!(ListenerEdge::default()
            .redirect(&"/".parse().unwrap(), None)
            .is_none());
    }
}
