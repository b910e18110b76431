//! Header rewriting between client and worker: hop-by-hop removal (RFC 9110 §7.6.1) and the
//! X-Forwarded-* family, trusted only from configured proxies.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::values::HostPort;

/// Hop-by-hop headers that never cross a proxy, besides those listed in `Connection`.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// `X-Forwarded-For`: the client chain.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: "http" or "https" as the client spoke it.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the host the client asked for.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Whether a `TE` field lists `trailers` (RFC 9110 §10.1.4): the client takes a response's
/// trailers, which gRPC's status travels in.
pub fn asks_for_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().split(';').next() == Some("trailers"))
        })
    })
}

/// Remove hop-by-hop headers, including any named in `Connection` (but never `Host`, which
/// is end to end: a client listing it must not make the worker see a request without one).
///
/// One pass over the field names finds which are present: most messages carry none or one of
/// them, and removing an absent name still costs a hash and a probe (nine of them, twice per
/// request, were measurable).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present: [Option<HeaderName>; 9] = [const { None }; 9];
    let mut count = 0;
    for name in headers.keys() {
        if count < present.len() && is_hop_by_hop(name) {
            present[count] = Some(name.clone());
            count += 1;
        }
    }
    if count == 0 {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        // Names listed in Connection are hop-by-hop too. The usual tokens ("keep-alive",
        // "close", "upgrade") need no lookup: they are removed below or are not field names.
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|token| !is_connection_option(token))
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .filter(|name| name != header::HOST)
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for name in present.iter().flatten() {
        headers.remove(name);
    }
}

/// Connection tokens that are options or names already removed as hop-by-hop.
fn is_connection_option(token: &str) -> bool {
    [
        "keep-alive",
        "close",
        "upgrade",
        "te",
        "trailer",
        "transfer-encoding",
    ]
    .iter()
    .any(|known| token.eq_ignore_ascii_case(known))
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == KEEP_ALIVE || name == PROXY_CONNECTION
}

/// Remove every field whose name has an `_`; true when one was. CGI, WSGI and PHP map `_`
/// and `-` to the same variable, so `X_Forwarded_For` from a client would pass for weir's own
/// `X-Forwarded-For` (nginx drops them too, unless `underscores_in_headers`). One scan of the
/// names; the removal list is built only when one is found.
pub fn drop_underscored(headers: &mut HeaderMap) -> bool {
    if !headers.keys().any(|name| name.as_str().contains('_')) {
        return false;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().contains('_'))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
    true
}

/// True when `headers` ask to switch protocols (WebSocket and other `Upgrade` requests):
/// `Connection` lists "upgrade" and `Upgrade` is present.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && crate::values::connection::lists(headers, b"upgrade")
}

/// What the client side of a request looks like to the worker.
pub struct ClientFacts<'a> {
    /// The peer's address, pre-rendered once per connection.
    pub peer_ip: &'a HeaderValue,
    /// Whether the peer is a trusted proxy whose X-Forwarded-* may be kept.
    pub trusted: bool,
    /// "https" or "http".
    pub proto: &'static str,
}

/// Set X-Forwarded-For/-Proto/-Host; `host` is the request's Host, already validated. From a
/// trusted proxy, the chain is extended and its proto/host kept (the host only when valid); from anyone else, whatever the client sent is replaced, and `Forwarded` and
/// `X-Real-IP` (which backends may also trust) are dropped.
pub fn set_forwarded(headers: &mut HeaderMap, facts: &ClientFacts<'_>, host: Option<&HeaderValue>) {
    if facts.trusted {
        let chain = join_chain(headers, facts.peer_ip);
        headers.insert(X_FORWARDED_FOR.clone(), chain);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(
                X_FORWARDED_PROTO.clone(),
                HeaderValue::from_static(facts.proto),
            );
        }
        // The proxy's host is kept only when it is one valid `host[:port]`: a worker must
        // never get a path, userinfo or a second value in it, trusted hop or not.
        if !single_valid_host(headers.get_all(&X_FORWARDED_HOST)) {
            match host {
                Some(host) => {
                    headers.insert(X_FORWARDED_HOST.clone(), host.clone());
                }
                None => {
                    headers.remove(&X_FORWARDED_HOST);
                }
            }
        }
    } else {
        headers.remove(header::FORWARDED);
        headers.remove(&X_REAL_IP);
        headers.insert(X_FORWARDED_FOR.clone(), facts.peer_ip.clone());
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(facts.proto),
        );
        match host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST.clone(), host.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// Exactly one field, and it is a valid `host[:port]`.
fn single_valid_host(values: header::GetAll<'_, HeaderValue>) -> bool {
    let mut values = values.iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().ok().and_then(HostPort::parse).is_some(),
        _ => false,
    }
}

fn join_chain(headers: &HeaderMap, peer_ip: &HeaderValue) -> HeaderValue {
    let mut chain = Vec::with_capacity(64);
    for value in headers.get_all(&X_FORWARDED_FOR) {
        if !chain.is_empty() {
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(value.as_bytes());
    }
    if !chain.is_empty() {
        chain.extend_from_slice(b", ");
    }
    chain.extend_from_slice(peer_ip.as_bytes());
    HeaderValue::from_bytes(&chain).unwrap_or_else(|_| peer_ip.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_listed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn host_is_never_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("host, x-a"));
        h.insert(header::HOST, HeaderValue::from_static("a.example"));
        h.insert("x-a", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h[header::HOST], "a.example");
    }

    #[test]
    fn upgrade_detection() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!wants_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(wants_upgrade(&h));
    }

    #[test]
    fn untrusted_client_cannot_spoof() {
        let peer = HeaderValue::from_static("192.0.2.7");
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=1.2.3.4"));
        let facts = ClientFacts {
            peer_ip: &peer,
            trusted: false,
            proto: "http",
        };
        set_forwarded(
            &mut h,
            &facts,
            Some(&HeaderValue::from_static("example.com")),
        );
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "example.com");
        assert!(!h.contains_key(header::FORWARDED));
    }

    #[test]
    fn trusted_proxy_extends_chain() {
        let peer = HeaderValue::from_static("10.0.0.2");
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("5.6.7.8"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let facts = ClientFacts {
            peer_ip: &peer,
            trusted: true,
            proto: "http",
        };
        set_forwarded(&mut h, &facts, None);
        assert_eq!(h[&X_FORWARDED_FOR], "1.2.3.4, 5.6.7.8, 10.0.0.2");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
    }
}
