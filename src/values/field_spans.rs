//! Where each field of a head httparse has parsed lies in its buffer, so the header map can be
//! built from slices of the frozen head, with no copy of a name's or a value's bytes. The
//! request heads of weir's HTTP/1.1 server and the response heads of its worker client both
//! go through here.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The byte ranges of one field's name and value in its buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct FieldSpan {
    name: (usize, usize),
    value: (usize, usize),
}

/// The range `part` (a slice of the buffer starting at `base`) covers.
pub fn span_of(part: &[u8], base: usize) -> (usize, usize) {
    let start = part.as_ptr() as usize - base;
    (start, start + part.len())
}

/// Record where `fields` lie in the buffer starting at `base`, into the front of `spans`;
/// returns how many.
pub fn record(spans: &mut [FieldSpan], fields: &[httparse::Header<'_>], base: usize) -> usize {
    for (span, field) in spans.iter_mut().zip(fields) {
        *span = FieldSpan {
            name: span_of(field.name.as_bytes(), base),
            value: span_of(field.value, base),
        };
    }
    fields.len().min(spans.len())
}

/// The header map of `head` (the frozen buffer the spans were recorded in); `None` for a name
/// or value `http` refuses.
pub fn header_map(head: &Bytes, spans: &[FieldSpan]) -> Option<HeaderMap> {
    let mut headers = HeaderMap::with_capacity(spans.len());
    for span in spans {
        let name = HeaderName::from_bytes(head.get(span.name.0..span.name.1)?).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(span.value.0..span.value.1)).ok()?;
        headers.append(name, value);
    }
    Some(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn values_are_slices_of_the_head() {
        let mut buf = BytesMut::from("X-A: b\r\nX-A: c\r\nHost: h\r\n\r\nrest");
        let mut fields = [httparse::EMPTY_HEADER; 4];
        let Ok(httparse::Status::Complete((len, parsed))) =
            httparse::parse_headers(&buf, &mut fields)
        else {
            panic!("parses");
        };
        let mut spans = [FieldSpan::default(); 4];
        let count = record(&mut spans, parsed, buf.as_ptr() as usize);
        let head = buf.split_to(len).freeze();
        let headers = header_map(&head, &spans[..count]).unwrap();
        let values: Vec<_> = headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["b", "c"]);
        assert_eq!(headers["host"], "h");
        assert_eq!(&buf[..], b"rest");
    }
}
