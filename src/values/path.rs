//! The request path as routing and the worker both see it: dot-segments resolved (RFC 3986
//! §5.2.4, with `%2e` read as the dot it encodes) and repeated slashes merged. Without it,
//! `/public/../admin` is routed by the `/public` prefix and reaches a worker that resolves it
//! to `/admin`. A path that climbs above the root is refused.

/// A request path (and query) weir sends itself, such as a health probe's: it starts with '/'
/// and is a valid request target. Read from the config as text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct RequestPath(http::uri::PathAndQuery);

impl RequestPath {
    /// `text` if it is a path starting with '/'.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.parse::<http::uri::PathAndQuery>() {
            Ok(path) if text.starts_with('/') => Ok(RequestPath(path)),
            _ => Err(format!("{text:?} must be a path starting with '/'")),
        }
    }

    /// The path as a request target.
    pub fn get(&self) -> &http::uri::PathAndQuery {
        &self.0
    }
}

impl TryFrom<String> for RequestPath {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        RequestPath::parse(&text)
    }
}

/// Why a path cannot be normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClimbsAboveRoot;

/// The normalised form of `path` (an origin-form path, starting with `/`), or `None` when it
/// is already normal: the usual case, found by one scan without allocating.
pub fn normalize(path: &str) -> Result<Option<String>, ClimbsAboveRoot> {
    if !path.starts_with('/') || !needs_work(path.as_bytes()) {
        return Ok(None);
    }
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path[1..].split('/') {
        trailing_slash = true;
        match dots(segment) {
            Some(1) => {}
            Some(2) => {
                if kept.pop().is_none() {
                    return Err(ClimbsAboveRoot);
                }
            }
            _ if segment.is_empty() => {}
            _ => {
                kept.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut normal = String::with_capacity(path.len());
    for segment in &kept {
        normal.push('/');
        normal.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        normal.push('/');
    }
    Ok((normal != path).then_some(normal))
}

/// Whether `path` has a repeated slash or a segment that may be dots (`.`, `%2e`).
fn needs_work(path: &[u8]) -> bool {
    path.windows(2)
        .any(|pair| pair[0] == b'/' && (pair[1] == b'/' || pair[1] == b'.' || pair[1] == b'%'))
}

/// How many dots `segment` is made of (`.` or `%2e`, in any case), if only dots, up to two.
fn dots(segment: &str) -> Option<usize> {
    let mut rest = segment.as_bytes();
    let mut count = 0;
    while !rest.is_empty() && count < 3 {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && rest[2] | 0x20 == b'e' {
            rest = &rest[3..];
        } else {
            return None;
        }
        count += 1;
    }
    (rest.is_empty() && (1..=2).contains(&count)).then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, ClimbsAboveRoot> {
        normalize(path).map(|n| n.unwrap_or_else(|| path.to_string()))
    }

    #[test]
    fn normal_paths_are_left_alone() {
        for path in ["/", "/a", "/a/b/", "/a.b/c..d/.e", "/%41", "/a%2fb", "/..a"] {
            assert_eq!(normalize(path), Ok(None), "{path}");
        }
    }

    #[test]
    fn dot_segments_resolve_and_slashes_merge() {
        assert_eq!(norm("/public/../admin").unwrap(), "/admin");
        assert_eq!(norm("/a/./b").unwrap(), "/a/b");
        assert_eq!(norm("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(norm("//a").unwrap(), "/a");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("/a/%2e%2E/b").unwrap(), "/b");
        assert_eq!(norm("/a/%2e/b").unwrap(), "/a/b");
        assert_eq!(norm("/a/..").unwrap(), "/");
        assert_eq!(norm("/.").unwrap(), "/");
        assert_eq!(norm("/a/b//").unwrap(), "/a/b/");
        assert_eq!(norm("/a/.../b").unwrap(), "/a/.../b");
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for path in ["/..", "/../a", "/a/../../b", "/%2e%2e/etc/passwd", "//.."] {
            assert_eq!(normalize(path), Err(ClimbsAboveRoot), "{path}");
        }
    }
}
