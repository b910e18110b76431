//! Property tests for the request-head parser (harness: `crate::fuzz`): generated requests,
//! valid and then mutated, parsed whole and fed in pieces. Properties: nothing panics; every
//! split gives the same head or the same refusal; a valid request gives back exactly its
//! method, target, fields, framing and persistence, leaving its body and the next pipelined
//! request intact; and whatever is accepted is framed one way only (chunked only with a final
//! `chunked` coding and never in HTTP/1.0, a length only when every Content-Length agrees, and
//! never kept alive after a message carrying both).

use bytes::BytesMut;
use http::header;

use super::head::{parse_request_head, HeadError, RequestFraming};
use crate::fuzz::{field_value, mutate, run, token, Rng};
use crate::values::lines::SectionScan;

const LIMIT: usize = 8 * 1024;

struct Valid {
    wire: Vec<u8>,
    method: &'static str,
    target: String,
    fields: Vec<(String, String)>,
    framing: RequestFraming,
    keep_alive: bool,
    body: Vec<u8>,
}

fn valid_request(rng: &mut Rng) -> Valid {
    let method = *rng.pick(&["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD"]);
    let mut target = String::from("/");
    for _ in 0..rng.below(4) {
        target.push_str(&token(rng));
        target.push('/');
    }
    if rng.chance(3) {
        target.push_str(&format!("?{}={}", token(rng), token(rng)));
    }
    let http10 = rng.chance(8);
    let mut fields = vec![("host".to_string(), format!("{}.example", token(rng)))];
    for _ in 0..rng.below(8) {
        fields.push((format!("x-{}", token(rng)), field_value(rng)));
    }
    let mut body: Vec<u8> = (0..rng.below(40)).map(|_| rng.next() as u8).collect();
    let framing = match rng.below(3) {
        0 if !http10 => {
            fields.push(("transfer-encoding".into(), "chunked".into()));
            RequestFraming::Chunked
        }
        1 if !body.is_empty() => {
            fields.push(("content-length".into(), body.len().to_string()));
            RequestFraming::Length(body.len() as u64)
        }
        _ => {
            body.clear();
            RequestFraming::Empty
        }
    };
    let keep_alive = match rng.below(3) {
        0 => {
            fields.push(("connection".into(), "close".into()));
            false
        }
        1 => {
            fields.push(("connection".into(), "keep-alive".into()));
            true
        }
        _ => !http10,
    };
    let mut wire = format!(
        "{method} {target} HTTP/1.{}\r\n",
        if http10 { 0 } else { 1 }
    );
    for (name, value) in &fields {
        let sep = *rng.pick(&[": ", ":", ":\t", ":  "]);
        wire.push_str(&format!("{name}{sep}{value}\r\n"));
    }
    wire.push_str("\r\n");
    let mut wire = wire.into_bytes();
    match framing {
        RequestFraming::Chunked => {
            if !body.is_empty() {
                wire.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                wire.extend_from_slice(&body);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
        }
        RequestFraming::Length(_) => wire.extend_from_slice(&body),
        RequestFraming::Empty => {}
    }
    Valid {
        wire,
        method,
        target,
        fields,
        framing,
        keep_alive,
        body,
    }
}

/// A parse, in a form two runs can be compared by.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Head {
        method: String,
        target: String,
        fields: Vec<(String, Vec<u8>)>,
        framing: RequestFraming,
        keep_alive: bool,
        expect_continue: bool,
        rest: Vec<u8>,
    },
    Incomplete,
    Refused(HeadError),
}

/// Parse `wire` fed in pieces of the sizes `piece` returns.
fn parse(wire: &[u8], mut piece: impl FnMut() -> usize) -> Parsed {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut scan = SectionScan::new();
    loop {
        match parse_request_head(&mut buf, LIMIT, &mut scan) {
            Ok(Some(head)) => {
                let mut rest = buf.to_vec();
                rest.extend_from_slice(&wire[fed..]);
                let fields = head
                    .parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                    .collect();
                check_single_framing(&head);
                return Parsed::Head {
                    method: head.parts.method.to_string(),
                    target: head.parts.uri.to_string(),
                    fields,
                    framing: head.framing,
                    keep_alive: head.keep_alive,
                    expect_continue: head.expect_continue,
                    rest,
                };
            }
            Ok(None) if fed == wire.len() => return Parsed::Incomplete,
            Ok(None) => {
                let n = piece().clamp(1, wire.len() - fed);
                buf.extend_from_slice(&wire[fed..fed + n]);
                fed += n;
            }
            Err(e) => return Parsed::Refused(e),
        }
    }
}

/// What any accepted head must satisfy, whatever bytes it came from.
fn check_single_framing(head: &super::head::RequestHead) {
    let headers = &head.parts.headers;
    let has_te = headers.contains_key(header::TRANSFER_ENCODING);
    let has_cl = headers.contains_key(header::CONTENT_LENGTH);
    match head.framing {
        RequestFraming::Chunked => {
            assert!(has_te, "chunked without Transfer-Encoding");
            assert_ne!(head.parts.version, http::Version::HTTP_10);
            let codings: Vec<String> = headers
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .flat_map(|v| {
                    String::from_utf8_lossy(v.as_bytes())
                        .split(',')
                        .map(|c| c.trim().to_ascii_lowercase())
                        .filter(|c| !c.is_empty())
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(codings, vec!["chunked".to_string()], "{codings:?}");
            if has_cl {
                assert!(!head.keep_alive, "kept alive after TE and CL");
            }
        }
        RequestFraming::Length(n) => {
            assert!(!has_te);
            for value in headers.get_all(header::CONTENT_LENGTH) {
                for item in value.as_bytes().split(|b| *b == b',') {
                    let text = String::from_utf8_lossy(item.trim_ascii()).to_string();
                    assert_eq!(text.parse::<u64>().ok(), Some(n), "{text}");
                }
            }
        }
        RequestFraming::Empty => assert!(!has_te),
    }
}

#[test]
fn valid_requests_parse_to_what_was_sent_and_leave_the_rest_intact() {
    run("request head round trip", |rng, _| {
        let valid = valid_request(rng);
        let next = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut wire = valid.wire.clone();
        wire.extend_from_slice(next);
        let pieces = 1 + rng.below(48);
        let Parsed::Head {
            method,
            target,
            fields,
            framing,
            keep_alive,
            rest,
            ..
        } = parse(&wire, || pieces)
        else {
            panic!(
                "refused a valid request: {:?}",
                String::from_utf8_lossy(&valid.wire)
            );
        };
        assert_eq!(method, valid.method);
        assert_eq!(target, valid.target);
        let sent: Vec<(String, Vec<u8>)> = valid
            .fields
            .iter()
            .map(|(n, v)| (n.clone(), v.clone().into_bytes()))
            .collect();
        let mut got = fields;
        let mut sent_sorted = sent;
        got.sort();
        sent_sorted.sort();
        assert_eq!(got, sent_sorted);
        assert_eq!(framing, valid.framing);
        assert_eq!(keep_alive, valid.keep_alive);
        let body_end = rest.len() - next.len();
        assert_eq!(
            &rest[body_end..],
            next,
            "the next request is left as it came"
        );
        if valid.framing != RequestFraming::Chunked {
            assert_eq!(&rest[..body_end], &valid.body[..]);
        }
    });
}

#[test]
fn every_split_of_any_head_parses_the_same_and_accepted_ones_frame_one_way() {
    run("request head split invariance", |rng, _| {
        let mut wire = valid_request(rng).wire;
        mutate(rng, &mut wire);
        let whole = parse(&wire, || usize::MAX);
        let bytewise = parse(&wire, || 1);
        assert_eq!(whole, bytewise, "whole vs a byte at a time: {wire:?}");
        let mut pieces = Rng(rng.next() | 1);
        let random = parse(&wire, || 1 + pieces.below(32));
        assert_eq!(whole, random, "whole vs random pieces: {wire:?}");
        if let Parsed::Head { rest, .. } = &whole {
            check_readings_agree(&wire, wire.len() - rest.len());
        }
    });
}

/// An accepted head is one on which a reader that also ends lines at a bare LF (httparse,
/// like many servers behind a proxy) agrees: the same end, and no bare LF or CR in it. Where
/// the two readings would differ, weir must have refused.
fn check_readings_agree(wire: &[u8], consumed: usize) {
    let head = &wire[..consumed];
    for (i, b) in head.iter().enumerate() {
        match b {
            b'\n' => assert!(i > 0 && head[i - 1] == b'\r', "bare LF accepted: {wire:?}"),
            b'\r' => assert_eq!(head.get(i + 1), Some(&b'\n'), "bare CR accepted: {wire:?}"),
            _ => {}
        }
    }
    let mut fields = [httparse::EMPTY_HEADER; super::head::MAX_FIELDS];
    let lenient = httparse::Request::new(&mut fields).parse(wire);
    assert!(
        matches!(lenient, Ok(httparse::Status::Complete(n)) if n == consumed),
        "a lenient reader ends the head elsewhere ({lenient:?} vs {consumed}): {wire:?}"
    );
}
