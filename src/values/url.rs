//! Webhook URLs: http:// or https:// with a host, as alert rules post to.

use std::fmt;

use http::Uri;

/// An http:// or https:// URL with a host; read from the config as text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct WebUrl(Uri);

impl WebUrl {
    /// `text` if it is an http:// or https:// URL with a host.
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: Uri = text.parse().map_err(|_| format!("{text:?} is not a URL"))?;
        if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
            return Err(format!(
                "{text:?}: needs an http:// or https:// URL with a host"
            ));
        }
        Ok(WebUrl(uri))
    }

    /// Whether it is https://.
    pub fn is_https(&self) -> bool {
        self.0.scheme_str() == Some("https")
    }

    /// The host (a name or an IP; IPv6 without brackets).
    pub fn host(&self) -> &str {
        let host = self.0.host().unwrap_or_default();
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The port, the scheme's when none is written.
    pub fn port(&self) -> u16 {
        self.0
            .port_u16()
            .unwrap_or(if self.is_https() { 443 } else { 80 })
    }

    /// `host[:port]` as written, for the `Host` field.
    pub fn authority(&self) -> &str {
        self.0.authority().map_or("", |a| a.as_str())
    }

    /// The request target: path and query, "/" when empty.
    pub fn target(&self) -> &str {
        self.0.path_and_query().map_or("/", |p| p.as_str())
    }
}

impl TryFrom<String> for WebUrl {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        WebUrl::parse(&text)
    }
}

impl fmt::Display for WebUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_and_https_with_a_host_only() {
        let url = WebUrl::parse("https://hooks.example.com/services/x?a=1").unwrap();
        assert!(url.is_https());
        assert_eq!(
            (url.host(), url.port(), url.target()),
            ("hooks.example.com", 443, "/services/x?a=1")
        );
        let url = WebUrl::parse("http://[::1]:9000").unwrap();
        assert_eq!((url.host(), url.port(), url.target()), ("::1", 9000, "/"));
        assert!(WebUrl::parse("ftp://x/").unwrap_err().contains("http://"));
        assert!(WebUrl::parse("/relative").is_err());
        assert!(WebUrl::parse("not a url")
            .unwrap_err()
            .contains("is not a URL"));
    }
}
