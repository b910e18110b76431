//! The PROXY protocol: HAProxy, a real sender (`send-proxy`, `send-proxy-v2`), in front of a
//! plain and a TLS listener. The client it carries is the one weir sees: X-Forwarded-For,
//! the access log, trusted-proxy decisions. Malformed headers, sent by hand, are refused
//! without harm to the clients beside them, and a connection from a source not listed as a
//! sender is refused.

use crate::common;
use crate::tls_h2::client_config;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// HAProxy on three ports: plain weir with v1, plain weir with v2, TLS weir with v2.
struct Haproxy {
    _child: Reaped,
    v1: SocketAddr,
    v2: SocketAddr,
    tls: SocketAddr,
}

impl Haproxy {
    /// `None` (the test said why) when haproxy is not installed.
    async fn start(test: &str, plain: SocketAddr, tls: SocketAddr) -> Option<Haproxy> {
        let binary = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(binary) = binary else {
            if std::env::var("WEIR_REQUIRE_HAPROXY").as_deref() == Ok("1") {
                panic!("{test}: no haproxy installed (apt-get install haproxy)");
            }
            skipped(test, "no haproxy installed (apt-get install haproxy)");
            return None;
        };
        let (v1, v2, tls_port) = (free_port(), free_port(), free_port());
        let config = format!(
            "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             listen v1\n  bind 127.0.0.1:{v1}\n  server weir {plain} send-proxy\n\
             listen v2\n  bind 127.0.0.1:{v2}\n  server weir {plain} send-proxy-v2\n\
             listen tls\n  bind 127.0.0.1:{tls_port}\n  server weir {tls} send-proxy-v2\n"
        );
        let path = temp_path(&format!("haproxy-{test}.cfg"));
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(config.as_bytes()))
            .unwrap();
        let child = std::process::Command::new(binary)
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("haproxy starts");
        let haproxy = Haproxy {
            _child: Reaped(child),
            v1: ([127, 0, 0, 1], v1).into(),
            v2: ([127, 0, 0, 1], v2).into(),
            tls: ([127, 0, 0, 1], tls_port).into(),
        };
        let deadline = Instant::now() + DEADLINE;
        for addr in [haproxy.v1, haproxy.v2, haproxy.tls] {
            while TcpStream::connect(addr).await.is_err() {
                assert!(Instant::now() < deadline, "haproxy listening on {addr}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Some(haproxy)
    }
}

/// A plain and a TLS listener taking PROXY headers from 127.0.0.1 only; 127.0.0.2 is a
/// trusted proxy; the access log goes to `log`.
fn proxied_weir(worker: SocketAddr, log: &std::path::Path) -> Weir {
    start_weir(
        "trusted_proxies = [\"127.0.0.2/32\"]",
        &format!(
            r#"
[access_log]
enabled = true
path = "{log}"
[[listeners]]
listen = "127.0.0.1:0"
proxy_protocol = ["127.0.0.1/32"]
[[listeners]]
listen = "127.0.0.1:0"
proxy_protocol = ["127.0.0.1/32"]
tls = {{ cert = "certs-dev/cert.pem", key = "certs-dev/key.pem" }}
[[routes]]
pool = "app"
[pools.app]
provider = {{ kind = "static", addresses = ["{worker}"] }}
"#,
            log = log.display()
        ),
    )
}

/// The `x-forwarded-for` line the demo worker's `/headers` shows.
fn forwarded_for(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("x-forwarded-for: "))
        .unwrap_or_default()
        .to_string()
}

fn headers_req(xff: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = Request::get("/headers").header("host", "app.test");
    if let Some(xff) = xff {
        req = req.header("x-forwarded-for", xff);
    }
    req.body(Full::new(Bytes::new())).unwrap()
}

const FROM_2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const FROM_3: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_v1_and_v2_carry_the_client_to_plain_and_tls_listeners() {
    let worker = demo("w1").await;
    let log = temp_path("proxy-protocol-access.log");
    let _ = std::fs::remove_file(&log);
    let weir = proxied_weir(worker, &log);
    let Some(haproxy) = Haproxy::start("haproxy_v1_and_v2", weir.addrs[0], weir.addrs[1]).await
    else {
        return;
    };
    for (sender, version) in [(haproxy.v1, "v1"), (haproxy.v2, "v2")] {
        // From 127.0.0.3, untrusted: its own X-Forwarded-For is replaced by its address.
        let text = Client::connect_from(sender, FROM_3)
            .await
            .send(headers_req(Some("203.0.113.9")))
            .await
            .text();
        assert_eq!(forwarded_for(&text), "127.0.0.3", "{version}: {text}");
        // From 127.0.0.2, a trusted proxy: its chain is kept and extended.
        let text = Client::connect_from(sender, FROM_2)
            .await
            .send(headers_req(Some("203.0.113.9")))
            .await
            .text();
        assert_eq!(forwarded_for(&text), "203.0.113.9, 127.0.0.2", "{version}");
    }
    // TLS through HAProxy in TCP mode, the header before the handshake.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(FROM_3, 0)).unwrap();
    let tcp = socket.connect(haproxy.tls).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_config("certs-dev/cert.pem", &[b"http/1.1"]))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake through haproxy");
    let text = Client::over(tls).await.send(headers_req(None)).await.text();
    assert_eq!(forwarded_for(&text), "127.0.0.3", "tls: {text}");
    // The access log names the carried clients, never HAProxy's 127.0.0.1.
    let deadline = Instant::now() + DEADLINE;
    let clients = loop {
        let clients: Vec<String> = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|e| e["client"].as_str().map(str::to_string))
            .collect();
        if clients.len() >= 5 || Instant::now() > deadline {
            break clients;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        clients,
        [
            "127.0.0.3",
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.2",
            "127.0.0.3"
        ]
    );
}

/// What weir did with a connection that opened with `bytes` (then waited): the first bytes
/// it answered with, or how the connection ended, within `within`.
async fn sent_by_hand(addr: SocketAddr, bytes: &[u8], one_at_a_time: bool) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    if one_at_a_time {
        for b in bytes {
            stream.write_all(&[*b]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    } else {
        stream.write_all(bytes).await.unwrap();
    }
    let mut answer = vec![0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await {
        Ok(Ok(0)) => "closed".into(),
        Ok(Ok(n)) => String::from_utf8_lossy(&answer[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        Ok(Err(e)) => format!("reset ({})", e.kind()),
        Err(_) => "no answer in 5 s".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_proxy_headers_are_refused_without_harm_to_other_clients() {
    let worker = demo("w1").await;
    let log = temp_path("proxy-protocol-malformed.log");
    let weir = proxied_weir(worker, &log);
    let plain = weir.addr();
    let request = "GET /headers HTTP/1.1\r\nhost: app.test\r\nconnection: close\r\n\r\n";
    let v1 = format!("PROXY TCP4 198.51.100.4 10.0.0.1 40000 80\r\n{request}");
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 4, 10, 0, 0, 1, 0x9c, 0x40, 0, 80]);
    v2.extend_from_slice(request.as_bytes());
    let mut bogus_length = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff".to_vec();
    bogus_length.extend_from_slice(&[198, 51, 100, 4, 10, 0, 0, 1, 0x9c, 0x40, 0, 80]);
    // A client beside the bad ones, through a good v1 header, all along.
    let good = tokio::spawn(async move {
        let mut answers = Vec::new();
        for _ in 0..20 {
            answers.push(sent_by_hand(plain, v1_of(request).as_bytes(), false).await);
        }
        answers
    });
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("no header (plain HTTP)", request.as_bytes().to_vec(), false),
        (
            "truncated v1, then closed",
            b"PROXY TCP4 198.51.100.4 10.0".to_vec(),
            false,
        ),
        (
            "wrong v2 signature",
            b"\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x0c".to_vec(),
            false,
        ),
        ("v2 with a bogus length", bogus_length, false),
        (
            "v1 with a bad address",
            format!("PROXY TCP4 198.51.100.999 10.0.0.1 1 2\r\n{request}").into_bytes(),
            false,
        ),
        ("v1 one byte at a time", v1.clone().into_bytes(), true),
        ("v2 one byte at a time", v2.clone(), true),
    ];
    let mut got = Vec::new();
    for (name, bytes, slowly) in cases {
        let answer = if name.starts_with("truncated") {
            let mut stream = TcpStream::connect(plain).await.unwrap();
            stream.write_all(&bytes).await.unwrap();
            stream.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
            if rest.is_empty() {
                "closed".to_string()
            } else {
                String::from_utf8_lossy(&rest)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string()
            }
        } else {
            sent_by_hand(plain, &bytes, slowly).await
        };
        eprintln!("{name}: {answer}");
        got.push((name, answer));
    }
    // A source not listed as a sender is refused even with a valid header.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(FROM_2, 0)).unwrap();
    let mut stream = socket.connect(plain).await.unwrap();
    let _ = stream.write_all(v1.as_bytes()).await;
    let mut buf = [0u8; 16];
    let outsider = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => "refused",
        other => panic!("a connection from 127.0.0.2 was served: {other:?}"),
    };
    eprintln!("valid v1 from an unlisted source: {outsider}");
    for (name, answer) in &got {
        if name.contains("one byte at a time") {
            assert_eq!(answer, "HTTP/1.1 200 OK", "{name}");
        } else {
            assert!(
                answer == "closed" || answer.starts_with("reset"),
                "{name}: {answer}"
            );
        }
    }
    let good = good.await.unwrap();
    assert!(good.iter().all(|a| a == "HTTP/1.1 200 OK"), "{good:?}");
    // The bad connections did no harm: weir serves on.
    let reply = sent_by_hand(plain, v1.as_bytes(), false).await;
    assert_eq!(reply, "HTTP/1.1 200 OK");
}

fn v1_of(request: &str) -> String {
    format!("PROXY TCP4 198.51.100.5 10.0.0.1 40001 80\r\n{request}")
}
