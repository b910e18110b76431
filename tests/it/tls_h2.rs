//! TLS termination (ALPN, SNI) and HTTP/2, over TLS and as h2c prior knowledge.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

fn tls_weir(worker: SocketAddr) -> Weir {
    start_weir(
        "",
        &format!(
            r#"
[[listeners]]
listen = "127.0.0.1:0"
tls = {{ cert = "certs-dev/cert.pem", key = "certs-dev/key.pem", certs = [{{ cert = "certs-dev/alt-cert.pem", key = "certs-dev/alt-key.pem" }}] }}
[[listeners]]
listen = "127.0.0.1:0"
[[routes]]
pool = "app"
[pools.app]
provider = {{ kind = "static", addresses = ["{worker}"] }}
"#
        ),
    )
}

pub fn client_config(root: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(root).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    root: &str,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(client_config(root, alpn));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// One HTTP/1.1 GET / over an established TLS stream; asserts 200 and returns the body.
async fn get_over_tls(tls: TlsStream<TcpStream>, host: &str) -> bytes::Bytes {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(get_req("/", host)).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn http2_over_tls_negotiated_by_alpn() {
    let worker = demo("w1").await;
    let weir = tls_weir(worker);
    let tls = tls_connect(
        weir.addrs[0],
        "localhost",
        "certs-dev/cert.pem",
        &[b"h2", b"http/1.1"],
    )
    .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    // Several concurrent streams on one connection.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let req = Request::post(format!("https://localhost/echo?i={i}"))
            .body(Full::new(Bytes::from(format!("stream {i}"))))
            .unwrap();
        let fut = sender.send_request(req);
        tasks.push(tokio::spawn(async move {
            let resp = fut.await.unwrap();
            assert_eq!(resp.version(), Version::HTTP_2);
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap().to_bytes()
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), Bytes::from(format!("stream {i}")));
    }
    // The worker sees HTTP/1.1 with a Host header and https in X-Forwarded-Proto.
    let req = Request::get("https://localhost/headers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let body = sender
        .send_request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let seen = String::from_utf8_lossy(&body);
    assert!(seen.starts_with("GET /headers HTTP/1.1"), "{seen}");
    assert!(seen.contains("host: localhost"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: https"), "{seen}");
}

#[tokio::test]
async fn http1_over_tls() {
    let worker = demo("w1").await;
    let weir = tls_weir(worker);
    let tls = tls_connect(
        weir.addrs[0],
        "localhost",
        "certs-dev/cert.pem",
        &[b"http/1.1"],
    )
    .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let body = get_over_tls(tls, "localhost").await;
    assert_eq!(&body[..], b"hello from w1\n");
}

#[tokio::test]
async fn sni_chooses_the_matching_certificate() {
    let worker = demo("w1").await;
    let weir = tls_weir(worker);
    // The alt cert is the only one valid for these names: the handshake succeeds only if weir
    // served it.
    for name in ["alt.weir.test", "x.alt.weir.test"] {
        let tls = tls_connect(
            weir.addrs[0],
            name,
            "certs-dev/alt-cert.pem",
            &[b"http/1.1"],
        )
        .await;
        get_over_tls(tls, name).await;
    }
    // An unknown name gets the default certificate, which the alt root does not trust.
    let connector = tokio_rustls::TlsConnector::from(client_config("certs-dev/alt-cert.pem", &[]));
    let tcp = TcpStream::connect(weir.addrs[0]).await.unwrap();
    let refused = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn h2c_prior_knowledge_on_plain_listener() {
    let worker = demo("w1").await;
    let weir = tls_weir(worker);
    let tcp = TcpStream::connect(weir.addrs[1]).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://h2c.test/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello from w1\n");
}

#[tokio::test]
async fn garbage_instead_of_a_tls_handshake_is_dropped_and_weir_keeps_serving() {
    let worker = demo("w1").await;
    let weir = tls_weir(worker);
    let out = raw_exchange(weir.addrs[0], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(!out.contains("hello"), "{out}");
    let tls = tls_connect(
        weir.addrs[0],
        "localhost",
        "certs-dev/cert.pem",
        &[b"http/1.1"],
    )
    .await;
    get_over_tls(tls, "localhost").await;
}
