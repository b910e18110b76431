//! A route's rewrites of what the worker gets (`strip_prefix`, `add_prefix`, `rewrite_host`,
//! `request_headers`) and of what the client gets back (`response_headers`), compiled once per
//! config. A route without any has none compiled, so its requests pay nothing.

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::Uri;

use crate::config::RouteConfig;
use crate::values::HeaderRules;

/// The rewrites of one route.
#[derive(Debug)]
pub struct Rewrite {
    /// The prefix taken off the path (the route's, without a trailing slash).
    strip: Option<String>,
    /// The prefix put before the path, without a trailing slash.
    add: Option<String>,
    host: Option<HeaderValue>,
    request: HeaderRules,
    response: HeaderRules,
}

impl Rewrite {
    /// The rewrites `config` asks for, its `path_prefix` being `prefix` (trailing slash
    /// trimmed); `None` when it asks for none.
    pub fn compile(config: &RouteConfig, prefix: &str) -> Option<Rewrite> {
        let strip = (config.strip_prefix && !prefix.is_empty()).then(|| prefix.to_string());
        let add = config
            .add_prefix
            .as_ref()
            .map(|p| p.get().path().trim_end_matches('/').to_string())
            .filter(|p| !p.is_empty());
        let rewrite = Rewrite {
            strip,
            add,
            host: config.rewrite_host.as_ref().map(|h| h.value().clone()),
            request: config.request_headers.clone(),
            response: config.response_headers.clone(),
        };
        let none = rewrite.strip.is_none()
            && rewrite.add.is_none()
            && rewrite.host.is_none()
            && rewrite.request.is_empty()
            && rewrite.response.is_empty();
        (!none).then_some(rewrite)
    }

    /// Rewrite the head the worker gets (after routing, which saw the client's).
    pub fn request(&self, head: &mut Parts) {
        if let Some(target) = self.path(head.uri.path(), head.uri.query()) {
            // Built from a valid path and a checked prefix; should it somehow not parse, the
            // path stays as the client sent it.
            if let Ok(path) = target.parse::<http::uri::PathAndQuery>() {
                head.uri = Uri::from(path);
            }
        }
        if let Some(host) = &self.host {
            head.headers.insert(header::HOST, host.clone());
        }
        self.request.apply(&mut head.headers);
    }

    /// Rewrite the response head the client gets.
    pub fn response(&self, headers: &mut HeaderMap) {
        self.response.apply(headers);
    }

    /// Whether responses are rewritten.
    pub fn rewrites_responses(&self) -> bool {
        !self.response.is_empty()
    }

    /// The worker's request target for the client's `path` and `query`, when it changes.
    fn path(&self, path: &str, query: Option<&str>) -> Option<String> {
        if self.strip.is_none() && self.add.is_none() {
            return None;
        }
        let mut rest = path;
        if let Some(prefix) = &self.strip {
            // The route matched on whole segments, so what is left is "" or starts with '/'.
            rest = path.strip_prefix(prefix.as_str()).unwrap_or(path);
        }
        let add = self.add.as_deref().unwrap_or("");
        let mut target =
            String::with_capacity(add.len() + rest.len() + 2 + query.map_or(0, str::len));
        target.push_str(add);
        target.push_str(if rest.is_empty() { "/" } else { rest });
        if let Some(query) = query {
            target.push('?');
            target.push_str(query);
        }
        Some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(extra: &str, prefix: &str) -> Option<Rewrite> {
        let config: RouteConfig = toml::from_str(&format!("pool = \"app\"\n{extra}")).unwrap();
        Rewrite::compile(&config, prefix)
    }

    fn target(r: &Rewrite, uri: &str) -> String {
        let (head, ()) = http::Request::get(uri).body(()).unwrap().into_parts();
        let mut head = head;
        r.request(&mut head);
        head.uri.to_string()
    }

    #[test]
    fn nothing_asked_compiles_to_nothing() {
        assert!(rewrite("", "/api").is_none());
        // Stripping the root prefix changes nothing either.
        assert!(rewrite("strip_prefix = true", "").is_none());
    }

    #[test]
    fn strips_and_adds_prefixes_keeping_the_query() {
        let strip = rewrite("strip_prefix = true", "/api").unwrap();
        assert_eq!(target(&strip, "/api/users?id=1"), "/users?id=1");
        assert_eq!(target(&strip, "/api"), "/");
        assert_eq!(target(&strip, "/api/"), "/");
        let add = rewrite("add_prefix = \"/v1/\"", "/api").unwrap();
        assert_eq!(target(&add, "/api/users"), "/v1/api/users");
        let both = rewrite("strip_prefix = true\nadd_prefix = \"/v1\"", "/api").unwrap();
        assert_eq!(target(&both, "/api/users?x"), "/v1/users?x");
        assert_eq!(target(&both, "/api"), "/v1/");
    }

    #[test]
    fn sets_host_and_header_rules() {
        let r = rewrite(
            "rewrite_host = \"app.internal:8080\"\nrequest_headers = { set = { x-env = \"prod\" }, remove = [\"cookie\"] }\nresponse_headers = { remove = [\"server\"] }",
            "",
        )
        .unwrap();
        let (mut head, ()) = http::Request::get("/x")
            .header("host", "example.com")
            .header("cookie", "a=b")
            .body(())
            .unwrap()
            .into_parts();
        r.request(&mut head);
        assert_eq!(head.headers["host"], "app.internal:8080");
        assert_eq!(head.headers["x-env"], "prod");
        assert!(head.headers.get("cookie").is_none());
        assert_eq!(head.uri, "/x");
        let mut response = HeaderMap::new();
        response.insert("server", HeaderValue::from_static("gunicorn"));
        assert!(r.rewrites_responses());
        r.response(&mut response);
        assert!(response.is_empty());
    }
}
