//! Host patterns of routes (an exact name, a one-label wildcard, or any host), and the
//! `host[:port]` check every client's `Host` (and request-target authority) must pass.

use std::net::Ipv6Addr;

/// Longest host name accepted in a `Host` value (a DNS name has at most 253 characters, plus a
/// trailing dot).
const MAX_HOST_NAME: usize = 254;

/// Which hosts a route answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Any host (also requests with no host at all).
    Any,
    /// One exact, lowercase host name.
    Exact(String),
    /// `*.example.com`: stored as ".example.com"; matches exactly one more label.
    Wildcard(String),
}

/// A route's host pattern as the config wrote it (route names are made from the text) and as
/// parsed; read from the config as text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct HostRule {
    text: String,
    pattern: HostPattern,
}

impl HostRule {
    /// The rule for `text`: "*", "api.example.com" or "*.example.com".
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(HostRule {
            pattern: HostPattern::parse(text)?,
            text: text.to_string(),
        })
    }

    /// As written in the config.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// As parsed.
    pub fn pattern(&self) -> &HostPattern {
        &self.pattern
    }
}

impl TryFrom<String> for HostRule {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        HostRule::parse(&text)
    }
}

impl HostPattern {
    /// Parse "*", "api.example.com" or "*.example.com".
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().trim_end_matches('.').to_ascii_lowercase();
        if text == "*" {
            return Ok(HostPattern::Any);
        }
        let (wild, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(format!(
                "{text:?} is not a host name, \"*.domain\" or \"*\" (a '*' may only stand first, for one label)"
            ));
        }
        Ok(if wild {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }
}

/// A `Host` field value or URI authority that is exactly `host[:port]` (RFC 9112 §3.2, RFC
/// 3986 §3.2.2): a name of letters, digits, '-', '_' and dot-separated labels (which covers
/// IPv4), or a bracketed IPv6 literal, and an optional port 1-65535. A value with anything else
/// in it (a path, a query, userinfo, spaces, percent-escapes, an empty port) is refused: a
/// worker or an app that builds URLs from `Host` or `X-Forwarded-Host` must never see one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort<'a> {
    /// The name, IPv4 address, or IPv6 literal with its brackets, as written.
    pub host: &'a str,
    /// The port, when one was written.
    pub port: Option<u16>,
}

impl<'a> HostPort<'a> {
    /// Check `text`; `None` when it is not a valid `host[:port]`.
    pub fn parse(text: &'a str) -> Option<Self> {
        let (host, port) = if text.starts_with('[') {
            let close = text.find(']')?;
            text[1..close].parse::<Ipv6Addr>().ok()?;
            (&text[..=close], &text[close + 1..])
        } else {
            match text.find(':') {
                Some(colon) => (&text[..colon], &text[colon..]),
                None => (text, ""),
            }
        };
        let port = match port.strip_prefix(':') {
            None if port.is_empty() => None,
            None => return None,
            Some(digits) => Some(parse_port(digits)?),
        };
        if !host.starts_with('[') && !is_host_name(host) {
            return None;
        }
        Some(HostPort { host, port })
    }

    /// Whether `self` and `other` name the same host and port, a missing port standing for
    /// `default_port` (the scheme's: 80 for http, 443 for https). Names compare without case.
    pub fn same_as(&self, other: &HostPort<'_>, default_port: Option<u16>) -> bool {
        self.host.eq_ignore_ascii_case(other.host)
            && self.port.or(default_port) == other.port.or(default_port)
    }
}

/// A `host[:port]` to send as a worker's `Host` (a route's `rewrite_host`), checked as
/// [`HostPort`] when the config is read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct HostName(http::HeaderValue);

impl HostName {
    /// The field value.
    pub fn value(&self) -> &http::HeaderValue {
        &self.0
    }
}

impl TryFrom<String> for HostName {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        HostPort::parse(&text)
            .and_then(|_| http::HeaderValue::from_str(&text).ok())
            .map(HostName)
            .ok_or_else(|| format!("{text:?} is not a host[:port]"))
    }
}

/// 1-65535, digits only.
fn parse_port(digits: &str) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u16>().ok().filter(|&port| port != 0)
}

/// Dot-separated non-empty labels of letters, digits, '-' and '_' (a trailing dot allowed).
fn is_host_name(name: &str) -> bool {
    let labels = name.strip_suffix('.').unwrap_or(name);
    !labels.is_empty()
        && name.len() <= MAX_HOST_NAME
        && labels.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_accepts_names_addresses_and_ports() {
        for (text, host, port) in [
            ("a.example", "a.example", None),
            ("A-b_c.Example.", "A-b_c.Example.", None),
            ("localhost:8080", "localhost", Some(8080)),
            ("127.0.0.1:1", "127.0.0.1", Some(1)),
            ("[::1]", "[::1]", None),
            ("[2001:db8::7]:65535", "[2001:db8::7]", Some(65535)),
        ] {
            assert_eq!(
                HostPort::parse(text),
                Some(HostPort { host, port }),
                "{text}"
            );
        }
    }

    #[test]
    fn host_port_refuses_anything_else() {
        let long = format!("{}.example", "a".repeat(MAX_HOST_NAME));
        for text in [
            "",
            " ",
            "a example",
            "a.example/evil",
            "a@evil",
            "a.example?x",
            "a.example#x",
            "a%2eexample",
            "a..example",
            ".a.example",
            ".",
            "a.example:",
            "a.example:0",
            "a.example:65536",
            "a.example:080000",
            "a.example:8x",
            "a.example:+80",
            "a.example:80:80",
            "::1",
            "[::1",
            "[::g]",
            "[::1]x",
            "[::1]:",
            "[a.example]",
            long.as_str(),
        ] {
            assert_eq!(HostPort::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn host_port_compares_names_without_case_and_ports_with_the_default() {
        let a = |text| HostPort::parse(text).unwrap();
        assert!(a("A.example").same_as(&a("a.EXAMPLE"), Some(80)));
        assert!(a("a.example").same_as(&a("a.example:80"), Some(80)));
        assert!(!a("a.example").same_as(&a("a.example:443"), Some(80)));
        assert!(!a("a.example").same_as(&a("a.example:80"), None));
        assert!(!a("a.example").same_as(&a("b.example"), Some(80)));
    }

    #[test]
    fn host_pattern_parsing() {
        assert_eq!(HostPattern::parse("*").unwrap(), HostPattern::Any);
        assert_eq!(
            HostPattern::parse("*.A.com").unwrap(),
            HostPattern::Wildcard(".a.com".into())
        );
        assert!(HostPattern::parse("a.*.com").is_err());
        assert!(HostPattern::parse("").is_err());
        assert!(HostPattern::parse("a b").is_err());
    }
}
