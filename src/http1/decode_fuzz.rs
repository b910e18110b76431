//! A property-testing harness for the worker-response decoder, standing in for a
//! coverage-guided fuzzer on the stable toolchain: byte streams generated from valid
//! responses, then mutated (flipped, inserted, deleted and repeated bytes, truncation, HTTP
//! tokens spliced in), are decoded whole, in random pieces and a byte at a time. Properties:
//! nothing panics or stops making progress; every split of a stream decodes to the same head,
//! body, trailers and error; and a valid response decodes to exactly what was encoded, leaving
//! the next pipelined response intact.
//! The budget and the mutations are `crate::fuzz`'s.

use bytes::BytesMut;
use http::Method;

use super::decode::{parse_head, BodyDecoder, DecodeError, Decoded, Framing};
use crate::fuzz::{field_value, mutate, run, token, Rng};

/// A valid response and what decoding it must give.
struct Valid {
    wire: Vec<u8>,
    method: Method,
    status: u16,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
    framing: &'static str,
}

fn valid_response(rng: &mut Rng) -> Valid {
    let method = if rng.chance(8) {
        Method::HEAD
    } else {
        Method::GET
    };
    let status = *rng.pick(&[200u16, 200, 201, 204, 206, 301, 304, 404, 500, 503]);
    let largest = if rng.chance(4) { 5000 } else { 64 };
    let body: Vec<u8> = (0..rng.below(largest)).map(|_| rng.next() as u8).collect();
    let mut head = format!(
        "HTTP/1.{} {status} {}\r\n",
        if rng.chance(6) { 0 } else { 1 },
        token(rng)
    );
    // 1xx responses before the real one are skipped by the decoder.
    if rng.chance(6) {
        head = format!("HTTP/1.1 100 Continue\r\n\r\n{head}");
    }
    for _ in 0..rng.below(6) {
        head.push_str(&format!("x-{}: {}\r\n", token(rng), field_value(rng)));
    }
    let bodiless = method == Method::HEAD || status == 204 || status == 304;
    let kind = *rng.pick(&["length", "chunked", "close"]);
    let mut wire_body = Vec::new();
    let mut trailers = Vec::new();
    match kind {
        "length" => head.push_str(&format!("content-length: {}\r\n", body.len())),
        "chunked" => {
            head.push_str("transfer-encoding: chunked\r\n");
            let mut at = 0;
            while at < body.len() {
                let n = (1 + rng.below(700)).min(body.len() - at);
                let ext = if rng.chance(5) { ";ext=1" } else { "" };
                let hex = if rng.chance(2) {
                    format!("{n:x}")
                } else {
                    format!("{n:X}")
                };
                wire_body.extend_from_slice(format!("{hex}{ext}\r\n").as_bytes());
                wire_body.extend_from_slice(&body[at..at + n]);
                wire_body.extend_from_slice(b"\r\n");
                at += n;
            }
            wire_body.extend_from_slice(b"0\r\n");
            for _ in 0..if rng.chance(4) { 1 + rng.below(3) } else { 0 } {
                let name = format!("t-{}", token(rng));
                let value = token(rng);
                wire_body.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                trailers.push((name, value));
            }
            wire_body.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    if kind != "chunked" {
        wire_body = body.clone();
    }
    head.push_str("\r\n");
    let mut wire = head.into_bytes();
    let framing = if bodiless { "empty" } else { kind };
    let body = if bodiless {
        // The bytes after a bodiless head are the next response's, not its body.
        Vec::new()
    } else {
        wire.extend_from_slice(&wire_body);
        body
    };
    if bodiless {
        trailers.clear();
    }
    Valid {
        wire,
        method,
        status,
        body,
        trailers,
        framing,
    }
}

/// Everything decoding a stream produced, in a form two runs can be compared by.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    status: Option<u16>,
    framing: Option<Framing>,
    keep_alive: Option<bool>,
    headers: Vec<(String, Vec<u8>)>,
    /// Where the body starts in the stream.
    head_len: usize,
    body: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
    /// How it ended: "head incomplete", "done", "eof", "incomplete" or the error.
    end: String,
    /// What was left in the buffer after a finished body (the next response's bytes).
    rest: Vec<u8>,
}

/// Decode `wire`, fed in pieces of the sizes `piece` returns (each at least 1), ending with
/// the connection's close.
fn decode(wire: &[u8], method: &Method, mut piece: impl FnMut() -> usize) -> Outcome {
    let mut out = Outcome {
        status: None,
        framing: None,
        keep_alive: None,
        headers: Vec::new(),
        head_len: 0,
        body: Vec::new(),
        trailers: Vec::new(),
        end: String::new(),
        rest: Vec::new(),
    };
    let mut buf = BytesMut::new();
    let fed = std::cell::Cell::new(0);
    let mut feed = |buf: &mut BytesMut| -> bool {
        let from = fed.get();
        if from == wire.len() {
            return false;
        }
        let n = piece().clamp(1, wire.len() - from);
        buf.extend_from_slice(&wire[from..from + n]);
        fed.set(from + n);
        true
    };
    let mut scan = crate::values::lines::SectionScan::new();
    let head = loop {
        match parse_head(&mut buf, method, &mut scan) {
            Ok(Some(head)) => break head,
            Ok(None) => {
                if !feed(&mut buf) {
                    out.end = "head incomplete".into();
                    return out;
                }
            }
            Err(e) => {
                out.end = format!("{e:?}");
                return out;
            }
        }
    };
    out.head_len = fed.get() - buf.len();
    out.status = Some(head.parts.status.as_u16());
    out.framing = Some(head.framing);
    out.keep_alive = Some(head.keep_alive);
    out.headers = head
        .parts
        .headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
    let mut decoder = BodyDecoder::new(head.framing);
    // Each step consumes input, yields data or asks for more: a bound on steps catches a
    // decoder that stops making progress.
    let mut steps = 0usize;
    let limit = 4 * wire.len() + 64;
    loop {
        steps += 1;
        assert!(steps <= limit, "no progress after {steps} steps");
        match decoder.decode(&mut buf) {
            Ok(Decoded::Data(data)) => {
                assert!(!data.is_empty(), "an empty data piece");
                out.body.extend_from_slice(&data);
            }
            Ok(Decoded::Trailers(t)) => {
                out.trailers = t
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                    .collect()
            }
            Ok(Decoded::Done) => {
                out.end = "done".into();
                break;
            }
            Ok(Decoded::NeedMore) => {
                if !feed(&mut buf) {
                    out.end = if decoder.eof() { "eof" } else { "incomplete" }.into();
                    if out.end == "eof" {
                        // A read-until-close body ends here; drain what the decoder holds.
                        while let Ok(Decoded::Data(data)) = decoder.decode(&mut buf) {
                            out.body.extend_from_slice(&data);
                        }
                    }
                    break;
                }
            }
            Err(e) => {
                out.end = format!("{e:?}");
                break;
            }
        }
    }
    // What the decoder left, then everything not yet fed: the next response's bytes.
    out.rest = buf.to_vec();
    out.rest.extend_from_slice(&wire[fed.get()..]);
    out
}

#[test]
fn valid_responses_decode_to_what_was_encoded_and_leave_the_next_one_intact() {
    run("decode round trip", |rng, _| {
        let valid = valid_response(rng);
        let next = b"HTTP/1.1 204 No Content\r\n\r\n";
        let mut wire = valid.wire.clone();
        let pipelined = valid.framing != "close";
        if pipelined {
            wire.extend_from_slice(next);
        }
        let pieces = 1 + rng.below(64);
        let out = decode(&wire, &valid.method, || pieces);
        assert_eq!(out.status, Some(valid.status), "{out:?}");
        assert_eq!(out.body, valid.body, "body of a {} response", valid.framing);
        // A header map groups a repeated name's values (in their order): compare so.
        let mut trailers: Vec<(String, Vec<u8>)> = valid
            .trailers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone().into_bytes()))
            .collect();
        trailers.sort_by(|a, b| a.0.cmp(&b.0));
        let mut got = out.trailers.clone();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, trailers);
        if pipelined {
            assert_eq!(out.end, "done");
            assert_eq!(out.rest, next, "the next response is left as it came");
        } else {
            assert_eq!(out.end, "eof");
        }
    });
}

#[test]
fn every_split_of_any_stream_decodes_the_same_and_nothing_panics() {
    run("decode split invariance", |rng, _| {
        let mut wire = valid_response(rng).wire;
        mutate(rng, &mut wire);
        let method = if rng.chance(8) {
            Method::HEAD
        } else {
            Method::GET
        };
        let whole = decode(&wire, &method, || usize::MAX);
        let bytewise = decode(&wire, &method, || 1);
        assert_eq!(whole, bytewise, "whole vs a byte at a time: {wire:?}");
        let mut pieces = Rng(rng.next() | 1);
        let random = decode(&wire, &method, || 1 + pieces.below(40));
        assert_eq!(whole, random, "whole vs random pieces: {wire:?}");
        // The errors a stream can end in are the decoder's own, never a panic or a hang.
        let known = ["head incomplete", "done", "eof", "incomplete"];
        let errors = [
            DecodeError::Head,
            DecodeError::HeadTooLarge,
            DecodeError::ContentLength,
            DecodeError::Chunked,
            DecodeError::TransferCoding,
        ]
        .map(|e| format!("{e:?}"));
        assert!(
            known.contains(&whole.end.as_str()) || errors.contains(&whole.end),
            "{}",
            whole.end
        );
        if whole.framing == Some(Framing::Chunked) && whole.end == "done" {
            let consumed = wire.len() - whole.rest.len();
            let body = &wire[whole.head_len..consumed];
            assert_eq!(
                lenient_chunked(body),
                Some((whole.body.clone(), body.len())),
                "a reader that ends lines at a bare LF frames this body otherwise: {wire:?}"
            );
        }
    });
}

/// Chunked framing read as a lenient peer reads it: a line may also end at a bare LF.
/// The body and the bytes it took, or `None` where this reading fails. Where weir accepts a
/// body, this reading must agree with it; where the two would differ, weir must refuse.
fn lenient_chunked(wire: &[u8]) -> Option<(Vec<u8>, usize)> {
    let line = |at: usize| -> Option<(&[u8], usize)> {
        let lf = at + wire.get(at..)?.iter().position(|b| *b == b'\n')?;
        let end = if lf > at && wire[lf - 1] == b'\r' {
            lf - 1
        } else {
            lf
        };
        Some((&wire[at..end], lf + 1))
    };
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (size_line, next) = line(at)?;
        let digits = size_line.split(|b| *b == b';').next()?.trim_ascii();
        let size = usize::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()?;
        at = next;
        if size == 0 {
            break;
        }
        body.extend_from_slice(wire.get(at..at.checked_add(size)?)?);
        let (end, next) = line(at + size)?;
        if !end.is_empty() {
            return None;
        }
        at = next;
    }
    loop {
        let (trailer, next) = line(at)?;
        at = next;
        if trailer.is_empty() {
            return Some((body, at));
        }
    }
}
