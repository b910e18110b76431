//! Where a line of HTTP/1.1 framing ends: one rule for request heads, response heads,
//! chunk-size lines (with their extensions) and trailer sections, on the client side and the
//! worker side alike. A line ends at CRLF and nowhere else; a bare LF, a bare CR, or any other
//! control character but HTAB refuses the message. RFC 9112 §2.2 lets a recipient take a bare
//! LF as a line end, but two readers that differ on it frame the same bytes differently, which
//! is how requests are smuggled: weir takes the stricter reading, as the section's only one.

/// Why bytes cannot be read as framing lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// An LF not preceded by CR.
    BareLf,
    /// A CR not followed by LF.
    BareCr,
    /// A control character other than HTAB (NUL, VT, DEL, ...).
    Control,
    /// No line end within the limit.
    TooLong,
}

/// Bytes that need a second look: every control character (CR, LF and HTAB among them) and
/// DEL. Everything else, obs-text included, is left to the field grammar.
#[inline]
fn is_special(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Finds, from `from`, the next CRLF in `buf`: `Ok(Some(at))` is the CR's position,
/// `Ok(None)` means more bytes are needed (a CR at the very end may yet be followed by its LF).
/// Refuses a bare LF, a bare CR or a control character on the way, and a line that has not
/// ended `limit` bytes after `from`.
pub fn find_line_end(buf: &[u8], from: usize, limit: usize) -> Result<Option<usize>, LineError> {
    let mut at = from;
    loop {
        let Some(offset) = buf
            .get(at..)
            .and_then(|rest| rest.iter().position(|b| is_special(*b)))
        else {
            return if buf.len().saturating_sub(from) > limit {
                Err(LineError::TooLong)
            } else {
                Ok(None)
            };
        };
        at += offset;
        if at - from > limit {
            return Err(LineError::TooLong);
        }
        match buf[at] {
            b'\t' => at += 1,
            b'\r' => {
                return match buf.get(at + 1) {
                    Some(b'\n') => Ok(Some(at)),
                    Some(_) => Err(LineError::BareCr),
                    None => Ok(None),
                }
            }
            b'\n' => return Err(LineError::BareLf),
            _ => return Err(LineError::Control),
        }
    }
}

/// An incremental search for the empty line that ends a section of lines (a head, a trailer
/// section). Each byte is looked at once however the section arrives, so a head sent a byte
/// per write costs time linear in its size; the search goes on from where it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SectionScan {
    /// Where the search goes on: the start of a line not yet ended.
    line_start: usize,
}

impl SectionScan {
    /// A search from the start of the buffer.
    pub const fn new() -> Self {
        SectionScan { line_start: 0 }
    }

    /// Look at what `buf` holds beyond what was searched: `Ok(Some(len))` once the section is
    /// whole (its length with the empty line's CRLF), `Ok(None)` when more is needed. The
    /// section may not exceed `limit` bytes. `buf` must hold the same section from its start
    /// on every call.
    pub fn advance(&mut self, buf: &[u8], limit: usize) -> Result<Option<usize>, LineError> {
        loop {
            let room = limit.saturating_sub(self.line_start);
            match find_line_end(buf, self.line_start, room)? {
                None => return Ok(None),
                Some(at) if at == self.line_start => {
                    let end = at + 2;
                    self.line_start = 0;
                    return if end > limit {
                        Err(LineError::TooLong)
                    } else {
                        Ok(Some(end))
                    };
                }
                Some(at) => self.line_start = at + 2,
            }
        }
    }

    /// Whether nothing has been searched yet.
    pub fn is_fresh(&self) -> bool {
        self.line_start == 0
    }
}

/// One `name: value` field line (without its CRLF), as RFC 9112 §5 reads it: a token, a colon
/// with no space before it, and a value with its surrounding spaces and tabs trimmed.
pub fn split_field_line(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|b| *b == b':')?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|b| is_token_byte(*b)) {
        return None;
    }
    Some((name, value.trim_ascii()))
}

/// RFC 9110 §5.6.2 token characters.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_ends_at_crlf_only() {
        assert_eq!(find_line_end(b"abc\r\ndef", 0, 100), Ok(Some(3)));
        assert_eq!(find_line_end(b"a\tb\r\n", 0, 100), Ok(Some(3)));
        assert_eq!(find_line_end(b"abc\r", 0, 100), Ok(None));
        assert_eq!(find_line_end(b"abc", 0, 100), Ok(None));
        assert_eq!(find_line_end(b"abc\ndef", 0, 100), Err(LineError::BareLf));
        assert_eq!(find_line_end(b"abc\rdef", 0, 100), Err(LineError::BareCr));
        assert_eq!(find_line_end(b"a\0c\r\n", 0, 100), Err(LineError::Control));
        assert_eq!(
            find_line_end(b"a\x0bc\r\n", 0, 100),
            Err(LineError::Control)
        );
        assert_eq!(
            find_line_end(b"a\x7fc\r\n", 0, 100),
            Err(LineError::Control)
        );
        assert_eq!(find_line_end(b"a\r\nb\r\n", 3, 100), Ok(Some(4)));
        assert_eq!(find_line_end(b"abcdef", 0, 4), Err(LineError::TooLong));
        assert_eq!(find_line_end(b"abcdef\r\n", 0, 4), Err(LineError::TooLong));
        assert_eq!(find_line_end("é\r\n".as_bytes(), 0, 100), Ok(Some(2)));
    }

    #[test]
    fn a_section_ends_at_its_empty_line_however_it_arrives() {
        let wire = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody";
        let mut whole = SectionScan::new();
        assert_eq!(whole.advance(wire, 1000), Ok(Some(27)));
        let mut bytewise = SectionScan::new();
        for end in 1..27 {
            assert_eq!(bytewise.advance(&wire[..end], 1000), Ok(None), "{end}");
        }
        assert_eq!(bytewise.advance(&wire[..27], 1000), Ok(Some(27)));
        assert_eq!(SectionScan::new().advance(b"\r\n", 10), Ok(Some(2)));
        assert_eq!(
            SectionScan::new().advance(b"a: b\r\n\n", 100),
            Err(LineError::BareLf)
        );
        assert_eq!(
            SectionScan::new().advance(b"a: b\r\nc: d\r\n", 8),
            Err(LineError::TooLong)
        );
    }

    #[test]
    fn field_lines_split_at_the_first_colon() {
        assert_eq!(
            split_field_line(b"X-A:  b c \t"),
            Some((&b"X-A"[..], &b"b c"[..]))
        );
        assert_eq!(split_field_line(b"X-A : b"), None);
        assert_eq!(split_field_line(b": b"), None);
        assert_eq!(split_field_line(b"no colon"), None);
        assert_eq!(split_field_line(b"a:"), Some((&b"a"[..], &b""[..])));
    }
}
