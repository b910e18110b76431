//! Client certificates (mutual TLS): the handshake verifies the client's chain against
//! `client_ca`; a verified certificate reaches the worker as `x-forwarded-client-cert` (hash
//! and subject, as Envoy writes it), a client's own header of that name is always removed,
//! and a reload swaps the CA like a certificate.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

fn config(ca: &str, auth: &str, worker: SocketAddr) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
listen = "127.0.0.1:0"
tls = {{ cert = "certs-dev/cert.pem", key = "certs-dev/key.pem", client_ca = "certs-dev/{ca}", client_auth = "{auth}" }}
[[routes]]
pool = "app"
[pools.app]
provider = {{ kind = "static", addresses = ["{worker}"] }}
"#
    )
}

/// A client config trusting weir's development certificate, presenting `client` (a
/// certs-dev name: "client", "stranger") or nothing.
fn client(client: Option<&str>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter("certs-dev/cert.pem").unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(name) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(format!("certs-dev/{name}-cert.pem"))
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect();
            let key = PrivateKeyDer::from_pem_file(format!("certs-dev/{name}-key.pem")).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// `GET /headers` with a forged `x-forwarded-client-cert`, as `presenting`: the worker's
/// view of that header ("" for none), or the error that stopped the request.
async fn seen_by_worker(addr: SocketAddr, presenting: Option<&str>) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(client(presenting))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get("/headers")
        .header("host", "localhost")
        .header(
            "x-forwarded-client-cert",
            "Hash=forged;Subject=\"CN=admin\"",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("x-forwarded-client-cert: "))
        .unwrap_or_default()
        .to_string())
}

const SUBJECT: &str = "Subject=\"CN=client one,OU=ops\\\\, staff,O=weir dev\"";

#[tokio::test]
async fn a_required_client_certificate_is_verified_and_forwarded_as_envoy_writes_it() {
    let worker = demo("w1").await;
    let weir = start_weir("", &config("client-ca.pem", "required", worker));
    let seen = seen_by_worker(weir.addr(), Some("client")).await.unwrap();
    let hash = seen
        .strip_prefix("Hash=")
        .and_then(|t| t.split(';').next())
        .unwrap_or_default();
    assert_eq!(hash.len(), 64, "{seen}");
    assert!(seen.ends_with(SUBJECT), "{seen}");
    // No certificate, or one from a CA weir does not trust: no request gets through.
    for presenting in [None, Some("stranger")] {
        let refused = seen_by_worker(weir.addr(), presenting).await;
        assert!(refused.is_err(), "{presenting:?}: {refused:?}");
    }
}

#[tokio::test]
async fn an_optional_client_certificate_is_forwarded_when_given_and_a_forged_header_never() {
    let worker = demo("w1").await;
    let weir = start_weir("", &config("client-ca.pem", "optional", worker));
    assert_eq!(seen_by_worker(weir.addr(), None).await.unwrap(), "");
    assert!(seen_by_worker(weir.addr(), Some("client"))
        .await
        .unwrap()
        .ends_with(SUBJECT));
    assert!(seen_by_worker(weir.addr(), Some("stranger")).await.is_err());
}

#[tokio::test]
async fn a_reload_swaps_the_client_ca() {
    let worker = demo("w1").await;
    let path = temp_path("client-ca-reload.toml");
    let weir = start_weir_at(
        "",
        &config("stranger-ca.pem", "required", worker),
        Some(&path),
    );
    assert!(seen_by_worker(weir.addr(), Some("stranger")).await.is_ok());
    assert!(seen_by_worker(weir.addr(), Some("client")).await.is_err());
    std::fs::write(&path, config("client-ca.pem", "required", worker)).unwrap();
    let (status, body) = admin_call(weir.admin(), "POST", "/api/v1/reload", None, "").await;
    assert_eq!(status, 200, "{body}");
    assert!(seen_by_worker(weir.addr(), Some("client")).await.is_ok());
    assert!(seen_by_worker(weir.addr(), Some("stranger")).await.is_err());
    let _ = std::fs::remove_file(&path);
}
