//! A route's header rules (`request_headers`, `response_headers`): fields to set and fields to
//! remove, checked as HTTP field names and values when the config is read.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};

/// Fields that describe one connection, not the message (RFC 9110 §7.6.1), and the ones weir
/// frames itself: a rule may not set them, or the worker and weir would disagree on where a
/// message ends.
const NOT_SETTABLE: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

/// `{ set = { "x-env" = "prod" }, remove = ["server"] }`: removals first, then the sets, each
/// replacing every field of its name.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "RawRules")]
pub struct HeaderRules {
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

impl TryFrom<RawRules> for HeaderRules {
    type Error = String;
    fn try_from(raw: RawRules) -> Result<Self, String> {
        let name = |text: &str| {
            HeaderName::from_bytes(text.as_bytes())
                .map_err(|_| format!("{text:?} is not a header field name"))
        };
        let mut set = Vec::with_capacity(raw.set.len());
        for (key, value) in &raw.set {
            let field = name(key)?;
            if NOT_SETTABLE.contains(&field.as_str()) {
                return Err(format!(
                    "set: {key:?} frames the message or the connection; weir sets it itself"
                ));
            }
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("set: the value of {key:?} is not a valid field value"))?;
            set.push((field, value));
        }
        let remove = raw
            .remove
            .iter()
            .map(|text| name(text))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("remove: {e}"))?;
        Ok(HeaderRules { set, remove })
    }
}

impl HeaderRules {
    /// Whether the rules change nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// Apply the rules to `headers`: removals, then sets.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str) -> Result<HeaderRules, String> {
        #[derive(serde::Deserialize)]
        struct Holder {
            rules: HeaderRules,
        }
        toml::from_str::<Holder>(toml_text)
            .map(|h| h.rules)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn removes_then_sets() {
        let r = rules(r#"rules = { set = { "X-Env" = "prod" }, remove = ["server", "x-env"] }"#)
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("server", HeaderValue::from_static("app"));
        headers.append("x-env", HeaderValue::from_static("a"));
        headers.append("x-env", HeaderValue::from_static("b"));
        r.apply(&mut headers);
        assert!(headers.get("server").is_none());
        let envs: Vec<_> = headers.get_all("x-env").iter().collect();
        assert_eq!(envs, vec![&HeaderValue::from_static("prod")]);
    }

    #[test]
    fn refuses_bad_names_values_and_framing_fields() {
        assert!(rules(r#"rules = { set = { "bad name" = "x" } }"#)
            .unwrap_err()
            .contains("not a header field name"));
        assert!(rules("rules = { set = { \"x\" = \"a\\nb\" } }")
            .unwrap_err()
            .contains("not a valid field value"));
        assert!(
            rules(r#"rules = { set = { "Transfer-Encoding" = "gzip" } }"#)
                .unwrap_err()
                .contains("frames the message")
        );
        assert!(rules(r#"rules = { remove = ["a:b"] }"#)
            .unwrap_err()
            .contains("remove"));
        assert!(rules(r#"rules = { add = {} }"#).is_err());
        assert!(rules("rules = {}").unwrap().is_empty());
    }
}
