//! Host patterns of routes: an exact name, a one-label wildcard, or any host.

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

#[cfg(test)]
mod tests {
    use super::*;

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
