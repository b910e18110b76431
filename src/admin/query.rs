//! The admin API's query strings: `key=value&...`, percent-decoded, nothing more.

/// The value of `key` in `query` (the part after `?`), percent-decoded; the first one wins.
/// `None` when absent or when its encoding is not valid UTF-8.
pub fn param(query: Option<&str>, key: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| decode(k).as_deref() == Some(key))
        .and_then(|(_, v)| decode(v))
}

/// `%XX` and `+` decoded; a malformed escape is kept as it is.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::param;

    #[test]
    fn finds_and_decodes() {
        let q = Some("pool=my%2Dapp&seconds=60&flag");
        assert_eq!(param(q, "pool").as_deref(), Some("my-app"));
        assert_eq!(param(q, "seconds").as_deref(), Some("60"));
        assert_eq!(param(q, "flag").as_deref(), Some(""));
        assert_eq!(param(q, "other"), None);
        assert_eq!(param(None, "pool"), None);
        assert_eq!(param(Some("a=1+2&a=3"), "a").as_deref(), Some("1 2"));
        assert_eq!(param(Some("a=%zz%4"), "a").as_deref(), Some("%zz%4"));
        assert_eq!(param(Some("a=%ff"), "a"), None, "not UTF-8");
    }
}
