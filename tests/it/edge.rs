//! What a listener answers itself: a plain listener sends clients to HTTPS (ACME challenges
//! aside), and a TLS listener adds `Strict-Transport-Security` to every response.

use crate::common;
use crate::tls_h2::tls_connect;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// A TLS listener with HSTS, then a plain one sending clients to HTTPS on 8443.
fn edge_weir(worker: std::net::SocketAddr) -> Weir {
    start_weir(
        "",
        &format!(
            r#"
[[listeners]]
listen = "127.0.0.1:0"
tls = {{ cert = "certs-dev/cert.pem", key = "certs-dev/key.pem", hsts = "365d" }}
[[listeners]]
listen = "127.0.0.1:0"
redirect_to_https = 8443
[[routes]]
pool = "app"
[pools.app]
provider = {{ kind = "static", addresses = ["{worker}"] }}
"#
        ),
    )
}

#[tokio::test]
async fn a_plain_listener_sends_clients_to_https_but_not_acme_challenges() {
    let worker = demo("w1").await;
    let weir = edge_weir(worker);
    let plain = weir.addrs[1];
    let mut client = Client::connect(plain).await;
    let reply = client
        .send(get_req("/shop/cart?item=7", "app.example.com:8080"))
        .await;
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.headers["location"],
        "https://app.example.com:8443/shop/cart?item=7"
    );
    // A POST keeps its method through a 308; its body is read and dropped, and the
    // connection serves the next request.
    let post = Request::post("/form")
        .header("host", "app.example.com")
        .body(Full::new(Bytes::from(vec![b'x'; 100_000])))
        .unwrap();
    let reply = client.send(post).await;
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.headers["location"],
        "https://app.example.com:8443/form"
    );
    // ACME's HTTP-01 challenges are routed as usual (to the worker here; weir's own ACME
    // answers them once it orders certificates).
    let reply = client
        .send(get_req(
            "/.well-known/acme-challenge/abc",
            "app.example.com",
        ))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.served_by(), "w1");
    // No usable host: nothing to redirect to.
    let raw = raw_exchange(plain, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    // The TLS listener does not redirect and has no HSTS on plain answers' behalf.
    assert!(reply.headers.get("strict-transport-security").is_none());
}

#[tokio::test]
async fn a_tls_listener_sends_hsts_with_every_response() {
    let worker = demo("w1").await;
    let weir = edge_weir(worker);
    let tls = tls_connect(
        weir.addr(),
        "localhost",
        "certs-dev/cert.pem",
        &[b"http/1.1"],
    )
    .await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    for (path, status) in [("/", 200), ("/status/503", 503)] {
        let response = sender
            .send_request(get_req(path, "localhost"))
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(
            response.headers()["strict-transport-security"],
            "max-age=31536000",
            "{path}"
        );
        let _ = response.into_body().collect().await;
    }
}
