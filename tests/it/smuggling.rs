//! A differential test over a corpus of request-smuggling shapes. For each one a client sends
//! the shape followed, on the same connection, by an innocent `GET /end` with
//! `Connection: close`; a raw worker records every message weir forwards and parses it with a
//! strict reading of RFC 9112 (one framing only: a plain Content-Length, or a final-and-only
//! `chunked`). For each shape weir must either reject it (a 4xx/5xx, nothing complete reaches
//! the worker) or forward exactly the message it parsed: one unambiguous message with the
//! body an RFC 9112 recipient reads, nothing after it, and never a request the worker could
//! frame differently (the `/smuggled` request hidden in several shapes must never arrive, and
//! `/end` must arrive as itself or not at all).

use crate::common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a shape must lead to.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Refused with a 4xx or 5xx; no complete message reaches the worker.
    Reject,
    /// Forwarded with exactly this body.
    Forward(&'static [u8]),
    /// Either, but when forwarded, with exactly this body.
    Either(&'static [u8]),
}

struct Shape {
    name: &'static str,
    /// The raw request; `{p}` stands for the shape's own path.
    raw: &'static str,
    expect: Expect,
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

fn corpus() -> Vec<Shape> {
    use Expect::*;
    let shapes = [
        // Baselines.
        ("content-length body", "POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", Forward(b"hello")),
        ("chunked body", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forward(b"hello")),
        // CL.TE and TE.CL: Transfer-Encoding frames the message, and the connection closes after.
        ("CL.TE", "POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", Either(b"")),
        ("CL.TE hiding a request", "POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", Either(b"")),
        ("TE.CL", "POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n23\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n", Either(SMUGGLED.as_bytes())),
        ("TE before CL", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Either(b"hello")),
        // Obfuscated and repeated Transfer-Encoding.
        ("TE xchunked", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject),
        ("TE chunked then identity", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject),
        ("TE identity", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello", Reject),
        ("TE gzip then chunked", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject),
        ("two TE fields, last not chunked", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject),
        ("two TE fields chunked", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject),
        ("TE upper case", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Either(b"hello")),
        ("TE with a tab", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Either(b"hello")),
        ("TE with a space before the colon", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello", Reject),
        ("TE with a vertical tab", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \x0bchunked\r\nContent-Length: 5\r\n\r\nhello", Reject),
        ("TE folded onto the next line", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\nhello", Reject),
        ("TE in HTTP/1.0", "POST {p} HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Either(b"hello")),
        // Content-Length shapes.
        ("duplicate equal CL", "POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", Either(b"hello")),
        ("duplicate differing CL", "POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", Reject),
        ("CL list", "POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!", Reject),
        ("signed CL +", "POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", Reject),
        ("signed CL -", "POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\nhello", Reject),
        ("hex CL", "POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\nhello", Reject),
        ("overflowing CL", "POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\nhello", Reject),
        ("CL with a space before the colon", "POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello", Reject),
        // Chunk sizes and extensions.
        ("chunk extension", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\n\r\n", Forward(b"hello")),
        ("overflowing chunk size", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n", Reject),
        ("negative chunk size", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", Reject),
        ("hex-prefixed chunk size", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", Reject),
        ("chunk data longer than its size", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n", Reject),
        ("chunk without its CRLF", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello0\r\n\r\n", Reject),
        ("chunk lines with bare LF", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n", Reject),
        ("chunk size ending with a bare LF", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", Reject),
        ("chunk size ending with a bare CR", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\rhello\r\n0\r\n\r\n", Reject),
        ("LF inside a chunk extension", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\nb\r\nhello\r\n0\r\n\r\n", Reject),
        ("CR inside a chunk extension", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\rb\r\nhello\r\n0\r\n\r\n", Reject),
        ("NUL inside a chunk extension", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\0b\r\nhello\r\n0\r\n\r\n", Reject),
        ("chunk data ending with a bare LF", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n", Reject),
        // The desync: a trailer section ended by a bare LF, which httparse-like readers take as
        // its end while a CRLF CRLF search reads on into the next request.
        ("empty trailer section ending with a bare LF", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", Reject),
        ("trailer field ending with a bare LF", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: 1\n\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", Reject),
        ("trailer section ending with CRLF LF", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: 1\r\n\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", Reject),
        ("folded trailer field", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: 1\r\n 2\r\n\r\n", Reject),
        ("well-formed trailers", "POST {p} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n", Forward(b"hello")),
        // Line endings, folding and bytes that have no place in a field.
        ("bare LF head", "GET {p} HTTP/1.1\nHost: x\n\n", Reject),
        ("bare LF ending one field", "GET {p} HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", Reject),
        ("head ending with CRLF LF", "GET {p} HTTP/1.1\r\nHost: x\r\n\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", Reject),
        ("bare CR ending the request line", "GET {p} HTTP/1.1\rHost: x\r\n\r\n", Reject),
        ("vertical tab in a field", "GET {p} HTTP/1.1\r\nHost: x\r\nX-A: b\x0bc\r\n\r\n", Reject),
        ("bare CR in a field", "GET {p} HTTP/1.1\r\nHost: x\r\nX-A: b\rc\r\n\r\n", Reject),
        ("NUL in a field", "GET {p} HTTP/1.1\r\nHost: x\r\nX-A: b\0c\r\n\r\n", Reject),
        ("obs-fold", "GET {p} HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n", Reject),
        // Targets and Host.
        ("absolute-form target", "GET http://x{p} HTTP/1.1\r\nHost: x\r\n\r\n", Either(b"")),
        ("dot-segments in the path", "GET /a/..{p} HTTP/1.1\r\nHost: x\r\n\r\n", Either(b"")),
        ("path climbing above the root", "GET {p}/../../x HTTP/1.1\r\nHost: x\r\n\r\n", Reject),
        ("two Host fields", "GET {p} HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", Reject),
        ("no Host in HTTP/1.1", "GET {p} HTTP/1.1\r\n\r\n", Reject),
        // Pipelining: two honest requests in one write are answered in order.
        ("pipelined", "POST {p} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET {p}/second HTTP/1.1\r\nHost: x\r\n\r\n", Forward(b"hello")),
    ];
    shapes
        .into_iter()
        .map(|(name, raw, expect)| Shape { name, raw, expect })
        .collect()
}

/// One message as the worker read it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    /// The body, or why the message could not be read as exactly one message.
    body: Result<Vec<u8>, String>,
    /// Bytes on the connection after the message (the worker answers with `Connection: close`,
    /// so there must be none).
    after: Vec<u8>,
}

/// What the worker has read: every message, and how many connections it is still reading.
#[derive(Default)]
struct Record {
    seen: Mutex<Vec<Seen>>,
    open: std::sync::atomic::AtomicUsize,
}

/// A worker that reads each connection's one message strictly, answers `200 ok` with
/// `Connection: close`, reads on until the proxy closes (it must send nothing more), and then
/// records the message.
async fn strict_worker(record: Arc<Record>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            record
                .open
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if let Some(mut message) = read_one(&mut stream, &mut buf).await {
                    if message.body.is_ok() {
                        let _ = stream
                            .write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                            )
                            .await;
                        let mut rest = Vec::new();
                        let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest)).await;
                        message.after.extend(rest);
                    }
                    record.seen.lock().unwrap().push(message);
                }
                record
                    .open
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    addr
}

/// Read one message; `None` if the connection closed before a head.
async fn read_one(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let mut chunk = [0u8; 8192];
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 100];
        let mut request = httparse::Request::new(&mut fields);
        if let Ok(httparse::Status::Complete(head_len)) = request.parse(buf) {
            let method = request.method.unwrap_or("").to_string();
            let path = request.path.unwrap_or("").to_string();
            let framing = strict_framing(request.headers);
            let head_len_copy = head_len;
            let mut message = Seen {
                method,
                path,
                body: Err("incomplete".into()),
                after: Vec::new(),
            };
            loop {
                match &framing {
                    Err(e) => {
                        message.body = Err(e.clone());
                        return Some(message);
                    }
                    Ok(f) => {
                        if let Some((body, used)) = f.body(&buf[head_len_copy..]) {
                            message.body = body;
                            message.after = buf[head_len_copy + used..].to_vec();
                            return Some(message);
                        }
                    }
                }
                match tokio::time::timeout(DEADLINE, stream.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return Some(message),
                }
            }
        }
        match tokio::time::timeout(DEADLINE, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// The framing of RFC 9112 §6 read strictly: at most one of the two fields, one plain
/// Content-Length, and `chunked` as the only transfer coding.
enum StrictFraming {
    Length(usize),
    Chunked,
}

fn strict_framing(fields: &[httparse::Header<'_>]) -> Result<StrictFraming, String> {
    let lengths: Vec<&[u8]> = fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("content-length"))
        .map(|f| f.value)
        .collect();
    let codings: Vec<&[u8]> = fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("transfer-encoding"))
        .map(|f| f.value)
        .collect();
    match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => Ok(StrictFraming::Length(0)),
        ([length], []) => {
            let text = std::str::from_utf8(length).map_err(|_| "content-length not text")?;
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("content-length {text:?}"));
            }
            text.parse()
                .map(StrictFraming::Length)
                .map_err(|e| e.to_string())
        }
        ([], [coding]) if *coding == b"chunked" => Ok(StrictFraming::Chunked),
        (l, c) => Err(format!(
            "ambiguous framing: content-length {l:?}, transfer-encoding {c:?}"
        )),
    }
}

impl StrictFraming {
    /// The body and the bytes it took, once complete (`None`: more bytes needed).
    #[allow(clippy::type_complexity)]
    fn body(&self, bytes: &[u8]) -> Option<(Result<Vec<u8>, String>, usize)> {
        match self {
            StrictFraming::Length(n) => (bytes.len() >= *n).then(|| (Ok(bytes[..*n].to_vec()), *n)),
            StrictFraming::Chunked => {
                let mut body = Vec::new();
                let mut at = 0;
                loop {
                    let line_end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
                    let line = &bytes[at..line_end];
                    let Some(size) = std::str::from_utf8(line)
                        .ok()
                        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
                        .and_then(|s| usize::from_str_radix(s, 16).ok())
                    else {
                        return Some((Err(format!("chunk size line {line:?}")), line_end));
                    };
                    at = line_end + 2;
                    if size == 0 {
                        // Trailer fields, each a CRLF line with no bare CR or LF, then the
                        // closing empty line.
                        loop {
                            let end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
                            let line = &bytes[at..end];
                            if line.contains(&b'\n') || line.contains(&b'\r') {
                                return Some((Err(format!("trailer line {line:?}")), at));
                            }
                            at = end + 2;
                            if line.is_empty() {
                                return Some((Ok(body), at));
                            }
                        }
                    }
                    if bytes.len() < at + size + 2 {
                        return None;
                    }
                    body.extend_from_slice(&bytes[at..at + size]);
                    if &bytes[at + size..at + size + 2] != b"\r\n" {
                        return Some((Err("chunk end".into()), at + size));
                    }
                    at += size + 2;
                }
            }
        }
    }
}

/// The status codes of the responses in `bytes`, in order.
fn statuses(bytes: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("HTTP/1.1 ")
        .filter(|(i, _)| *i == 0 || text[..*i].ends_with('\n') || text[..*i].ends_with("ok"))
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_smuggling_shape_is_rejected_or_forwarded_as_exactly_the_message_weir_parsed() {
    let record = Arc::new(Record::default());
    let worker = strict_worker(Arc::clone(&record)).await;
    let weir = start_simple("", "", &[worker]);
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (i, shape) in corpus().iter().enumerate() {
        let path = format!("/c{i}");
        let raw = shape.raw.replace("{p}", &path);
        let end = format!("GET /end{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut stream = TcpStream::connect(weir.addr()).await.unwrap();
        stream.write_all(raw.as_bytes()).await.unwrap();
        stream.write_all(end.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out)).await;
        let codes = statuses(&out);
        let first = codes.first().copied().unwrap_or(0);

        // Every message of this shape that reached the worker, once the worker has finished
        // reading every connection weir opened for it.
        wait_until("the worker to finish its connections", || {
            record.open.load(std::sync::atomic::Ordering::SeqCst) == 0
        })
        .await;
        let mine = |s: &Seen| s.path.starts_with(&path) || s.path == format!("/end{i}");
        let messages: Vec<Seen> = record
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| mine(s))
            .cloned()
            .collect();
        let complete: Vec<&Seen> = messages.iter().filter(|s| s.body.is_ok()).collect();
        let forwarded = complete.iter().find(|s| s.path == path);
        let mut problems = Vec::new();
        for s in &messages {
            if let Err(e) = &s.body {
                if first < 400 || s.method != "POST" {
                    problems.push(format!(
                        "the worker got a message it cannot frame: {e} ({s:?})"
                    ));
                }
            }
            if !s.after.is_empty() {
                problems.push(format!(
                    "bytes after the message: {:?}",
                    String::from_utf8_lossy(&s.after)
                ));
            }
            if s.path.starts_with("/end") && s.method != "GET" {
                problems.push(format!("/end arrived as {:?}", s.method));
            }
        }
        let body_ok = |want: &[u8]| match forwarded {
            Some(s) => s.body.as_deref() == Ok(want),
            None => false,
        };
        let verdict = match shape.expect {
            Expect::Reject => {
                if !(400..600).contains(&first) || forwarded.is_some() {
                    problems.push(format!(
                        "not rejected: status {first}, forwarded {forwarded:?}"
                    ));
                }
                "rejected"
            }
            Expect::Forward(want) => {
                if first != 200 || !body_ok(want) {
                    problems.push(format!(
                        "not forwarded as parsed: status {first}, {forwarded:?}"
                    ));
                }
                "forwarded"
            }
            Expect::Either(want) => {
                if first == 200 {
                    if !body_ok(want) {
                        problems.push(format!("forwarded differently: {forwarded:?}"));
                    }
                    "forwarded"
                } else if (400..600).contains(&first) && forwarded.is_none() {
                    "rejected"
                } else {
                    problems.push(format!("status {first}, forwarded {forwarded:?}"));
                    "?"
                }
            }
        };
        let end_answered = complete.iter().any(|s| s.path == format!("/end{i}"));
        report.push(format!(
            "{:<36} {verdict:<9} statuses {codes:?}{}",
            shape.name,
            if end_answered {
                ""
            } else {
                ", connection closed after it"
            }
        ));
        if !problems.is_empty() {
            failures.push(format!("{}: {}", shape.name, problems.join("; ")));
        }
    }
    let smuggled: Vec<Seen> = record
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| !s.path.starts_with("/c") && !s.path.starts_with("/end"))
        .cloned()
        .collect();
    eprintln!("smuggling corpus:\n{}", report.join("\n"));
    assert!(smuggled.is_empty(), "smuggled to the worker: {smuggled:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
