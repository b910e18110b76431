//! The PROXY protocol (HAProxy's, v1 text and v2 binary): an L4 balancer in front of weir
//! opens each connection with a header naming the client it carries. On a listener with
//! `proxy_protocol = [CIDRs]`, a connection from those sources must start with one; weir reads
//! it (and nothing past it) before TLS and HTTP, and the client it names is the connection's
//! peer for X-Forwarded-For, the access log, and trusted-proxy decisions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// v1's longest header, CRLF included (the spec's 107 bytes).
const V1_MAX: usize = 107;
/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v2's fixed part: signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// Most v2 address-and-TLV bytes taken (balancers' TLVs are a few hundred bytes at most).
const V2_MAX_BODY: usize = 2048;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client it carries; `None` for a header with none (v1 `UNKNOWN`, v2 `LOCAL` or a
    /// family without addresses): the connection's own peer stays.
    pub client: Option<SocketAddr>,
    /// Its length: what follows is the client's own bytes.
    pub len: usize,
}

/// A parse of the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Incomplete,
    Done(ProxyHeader),
    Bad(&'static str),
}

/// Parse `buf`, the first bytes of a connection.
pub fn parse(buf: &[u8]) -> Parsed {
    const V1_START: &[u8] = b"PROXY ";
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    let n = buf.len().min(V1_START.len());
    if buf[..n] == V1_START[..n] {
        return if n < V1_START.len() {
            Parsed::Incomplete
        } else {
            parse_v1(buf)
        };
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if buf.len() < V2_FIXED {
            Parsed::Incomplete
        } else {
            parse_v2(buf)
        };
    }
    Parsed::Bad("no PROXY header (wrong signature)")
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Parsed::Bad("v1 header longer than 107 bytes")
        } else {
            Parsed::Incomplete
        };
    };
    let len = end + 2;
    if len > V1_MAX {
        return Parsed::Bad("v1 header longer than 107 bytes");
    }
    let Ok(line) = std::str::from_utf8(&buf[..end]) else {
        return Parsed::Bad("v1 header is not text");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let client = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v6 = *family == "TCP6";
            let ip = |text: &str| -> Option<IpAddr> {
                if v6 {
                    text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
                } else {
                    text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
                }
            };
            // Ports as the spec writes them: 1-5 digits, no sign, no leading zero.
            let port = |text: &str| -> Option<u16> {
                let plain = !text.is_empty()
                    && text.len() <= 5
                    && text.bytes().all(|b| b.is_ascii_digit())
                    && (text == "0" || !text.starts_with('0'));
                plain.then(|| text.parse().ok()).flatten()
            };
            match (ip(src), ip(dst), port(sport), port(dport)) {
                (Some(src), Some(_), Some(sport), Some(_)) => Some(SocketAddr::new(src, sport)),
                _ => return Parsed::Bad("v1 header with a bad address or port"),
            }
        }
        _ => return Parsed::Bad("v1 header with a bad protocol or field count"),
    };
    Parsed::Done(ProxyHeader { client, len })
}

fn parse_v2(buf: &[u8]) -> Parsed {
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Parsed::Bad("v2 header with a version other than 2");
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Parsed::Bad("v2 header with an unknown command"),
    };
    let family = buf[13];
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if body > V2_MAX_BODY {
        return Parsed::Bad("v2 header length over 2048 bytes");
    }
    let needed = match family {
        0x11 | 0x12 => 12,
        0x21 | 0x22 => 36,
        0x31 | 0x32 => 216,
        0x00 => 0,
        _ => return Parsed::Bad("v2 header with an unknown address family"),
    };
    if body < needed {
        return Parsed::Bad("v2 header length too short for its addresses");
    }
    let len = V2_FIXED + body;
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    let a = &buf[V2_FIXED..len];
    let client = match family {
        _ if local => None,
        0x11 | 0x12 => {
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
        }
        0x21 | 0x22 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        _ => None,
    };
    Parsed::Done(ProxyHeader { client, len })
}

/// Why a connection was refused before its header was read whole.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Bad(&'static str),
    Closed,
    TimedOut,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Bad(why) => f.write_str(why),
            Refusal::Closed => f.write_str("closed before its PROXY header was whole"),
            Refusal::TimedOut => f.write_str("no whole PROXY header in time"),
        }
    }
}

/// Read a connection's PROXY header within `within`: the header, and the bytes read past it
/// (the client's own, to be read first).
pub async fn read<IO: AsyncRead + Unpin>(
    io: &mut IO,
    within: Duration,
) -> Result<(ProxyHeader, BytesMut), Refusal> {
    let read = async {
        let mut buf = BytesMut::with_capacity(256);
        loop {
            match parse(&buf) {
                Parsed::Done(header) => {
                    let rest = buf.split_off(header.len);
                    return Ok((header, rest));
                }
                Parsed::Bad(why) => return Err(Refusal::Bad(why)),
                Parsed::Incomplete => {}
            }
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Err(Refusal::Closed),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .unwrap_or(Err(Refusal::TimedOut))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn v4_body() -> Vec<u8> {
        let mut body = vec![192, 0, 2, 7, 10, 0, 0, 1];
        body.extend_from_slice(&51234u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body
    }

    fn client(parsed: Parsed) -> Option<SocketAddr> {
        match parsed {
            Parsed::Done(h) => h.client,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn v1_names_the_client() {
        let header = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        let Parsed::Done(h) = parse(header) else {
            panic!()
        };
        assert_eq!(h.client, "192.0.2.7:51234".parse().ok());
        assert_eq!(&header[h.len..h.len + 3], b"GET");
        assert_eq!(
            client(parse(b"PROXY TCP6 2001:db8::1 ::1 80 8443\r\n")),
            "[2001:db8::1]:80".parse().ok()
        );
        assert_eq!(client(parse(b"PROXY UNKNOWN\r\n")), None);
    }

    #[test]
    fn v2_names_the_client_and_skips_its_tlvs() {
        let mut body = v4_body();
        body.extend_from_slice(&[0x04, 0x00, 0x02, b'h', b'i']); // a TLV
        let header = v2(1, 0x11, &body);
        let Parsed::Done(h) = parse(&header) else {
            panic!()
        };
        assert_eq!(h.client, "192.0.2.7:51234".parse().ok());
        assert_eq!(h.len, header.len());
        let mut v6 = [0u8; 36];
        v6[15] = 1; // ::1
        v6[32..34].copy_from_slice(&8080u16.to_be_bytes());
        assert_eq!(client(parse(&v2(1, 0x21, &v6))), "[::1]:8080".parse().ok());
        // LOCAL (the balancer's own health check): no client carried.
        assert_eq!(client(parse(&v2(0, 0x11, &v4_body()))), None);
        assert_eq!(client(parse(&v2(1, 0x00, &[]))), None);
    }

    #[test]
    fn one_byte_at_a_time_is_incomplete_until_whole() {
        for header in [
            b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\n".to_vec(),
            v2(1, 0x11, &v4_body()),
        ] {
            for end in 0..header.len() {
                assert_eq!(parse(&header[..end]), Parsed::Incomplete, "{end}");
            }
            assert!(matches!(parse(&header), Parsed::Done(_)));
        }
    }

    #[test]
    fn malformed_headers_are_refused_with_a_reason() {
        let bad = |bytes: &[u8]| match parse(bytes) {
            Parsed::Bad(why) => why,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        };
        assert!(bad(b"GET / HTTP/1.1\r\n").contains("wrong signature"));
        assert!(bad(b"\r\n\r\n\0\r\nQUIX\n").contains("wrong signature"));
        assert!(bad(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n").contains("field count"));
        assert!(bad(b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n").contains("bad address"));
        assert!(bad(b"PROXY TCP4 ::1 ::1 1 2\r\n").contains("bad address"));
        assert!(bad(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n").contains("bad address"));
        assert!(bad(b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n").contains("bad address"));
        assert!(bad(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n").contains("protocol"));
        assert!(bad(&[b"PROXY ".as_slice(), &[b'x'; 120]].concat()).contains("107"));
        let mut bogus = v2(1, 0x11, &v4_body());
        bogus[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(bad(&bogus).contains("over 2048"));
        let mut short = v2(1, 0x11, &v4_body());
        short[14..16].copy_from_slice(&4u16.to_be_bytes());
        assert!(bad(&short).contains("too short"));
        let mut version = v2(1, 0x11, &v4_body());
        version[12] = 0x11;
        assert!(bad(&version).contains("version"));
        assert!(bad(&v2(1, 0x44, &v4_body())).contains("family"));
        assert!(bad(&v2(7, 0x11, &v4_body())).contains("command"));
    }

    /// A random valid header: v1 or v2, IPv4 or IPv6, and the client it names.
    fn random_header(rng: &mut crate::fuzz::Rng) -> (Vec<u8>, Option<SocketAddr>) {
        let v6 = rng.chance(2);
        let ip: IpAddr = if v6 {
            Ipv6Addr::from(u128::from(rng.next()) << 64 | u128::from(rng.next())).into()
        } else {
            Ipv4Addr::from(rng.next() as u32).into()
        };
        let port = rng.next() as u16;
        let client = SocketAddr::new(ip, port);
        if rng.chance(2) {
            let family = if v6 { "TCP6" } else { "TCP4" };
            let dst = if v6 { "::1" } else { "10.0.0.1" };
            let line = format!("PROXY {family} {ip} {dst} {port} 443\r\n");
            return (line.into_bytes(), Some(client));
        }
        let mut body = match ip {
            IpAddr::V4(v4) => [v4.octets().as_slice(), &[10, 0, 0, 1]].concat(),
            IpAddr::V6(v6) => [v6.octets().as_slice(), &Ipv6Addr::LOCALHOST.octets()].concat(),
        };
        body.extend_from_slice(&port.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        // TLVs a balancer may add.
        for _ in 0..rng.below(3) {
            let len = rng.below(40);
            body.push(0x20 + rng.below(8) as u8);
            body.extend_from_slice(&(len as u16).to_be_bytes());
            body.extend((0..len).map(|_| rng.next() as u8));
        }
        (v2(1, if v6 { 0x21 } else { 0x11 }, &body), Some(client))
    }

    #[test]
    fn random_headers_parse_whole_or_in_pieces_and_mutated_ones_never_panic() {
        crate::fuzz::run("proxy header", |rng, _| {
            let (header, client) = random_header(rng);
            let mut wire = header.clone();
            wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
            match parse(&wire) {
                Parsed::Done(h) => {
                    assert_eq!(h.client, client);
                    assert_eq!(h.len, header.len());
                }
                other => panic!("{other:?} for {header:?}"),
            }
            let cut = rng.below(header.len());
            assert_eq!(parse(&header[..cut]), Parsed::Incomplete);
            // Mutated: whatever the verdict, no panic, and a header that parses lies within
            // the bytes given.
            let mut mutated = wire.clone();
            crate::fuzz::mutate(rng, &mut mutated);
            if let Parsed::Done(h) = parse(&mutated) {
                assert!(h.len <= mutated.len());
            }
        });
    }

    #[tokio::test]
    async fn reading_keeps_the_bytes_past_the_header() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let sender = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for b in b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\nGET" {
                client.write_all(&[*b]).await.unwrap();
            }
            client
        });
        let (header, rest) = read(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(header.client, "192.0.2.7:51234".parse().ok());
        let _client = sender.await.unwrap();
        // Whatever of "GET" arrived with the header's last byte stays for the server.
        assert!(b"GET".starts_with(&rest));
        let (_open, mut silent) = tokio::io::duplex(64);
        assert_eq!(
            read(&mut silent, Duration::from_millis(50)).await.err(),
            Some(Refusal::TimedOut)
        );
    }
}
