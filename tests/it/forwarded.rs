//! X-Forwarded-* are believed only from `server.trusted_proxies`.

use crate::common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

fn spoofed() -> Request<Full<Bytes>> {
    Request::get("/headers")
        .header("host", "real.test")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.test")
        .header("forwarded", "for=203.0.113.9")
        .header("x-real-ip", "203.0.113.9")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn untrusted_client_cannot_spoof_its_address() {
    let worker = demo("w1").await;
    let weir = start_simple("", "", &[worker]);
    let seen = Client::connect(weir.addr())
        .await
        .send(spoofed())
        .await
        .text();
    assert!(seen.contains("\nx-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("\nx-forwarded-proto: http\n"), "{seen}");
    assert!(seen.contains("\nx-forwarded-host: real.test\n"), "{seen}");
    assert!(!seen.contains("203.0.113.9"), "{seen}");
    assert!(!seen.contains("evil.test"), "{seen}");
}

#[tokio::test]
async fn trusted_proxy_chain_is_extended() {
    let worker = demo("w1").await;
    let weir = start_simple("trusted_proxies = [\"127.0.0.0/8\"]", "", &[worker]);
    let seen = Client::connect(weir.addr())
        .await
        .send(spoofed())
        .await
        .text();
    assert!(
        seen.contains("\nx-forwarded-for: 203.0.113.9, 127.0.0.1\n"),
        "{seen}"
    );
    assert!(seen.contains("\nx-forwarded-proto: https\n"), "{seen}");
    assert!(seen.contains("\nx-forwarded-host: evil.test\n"), "{seen}");
}
