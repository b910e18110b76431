//! Workers reached over HTTP/2 (h2c prior knowledge, h2 over TLS by ALPN) and HTTP/1.1 over
//! TLS, verified against the pool's CA, with a client certificate for mutual TLS; by clients
//! of either protocol.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::common::*;

/// What a test worker accepts: plain or TLS (with ALPN and maybe a required client CA), and
/// HTTP/1.1, HTTP/2 or both.
struct Spec {
    tls: bool,
    alpn: &'static [&'static [u8]],
    client_ca: Option<&'static str>,
    h1: bool,
    h2: bool,
}

/// A worker answering `version=HTTP/2.0 host=... path=...` (after `delay`), counting the
/// connections it accepted.
async fn worker(spec: Spec, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let acceptor = spec.tls.then(|| {
        let chain: Vec<_> = CertificateDer::pem_file_iter("certs-dev/cert.pem")
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file("certs-dev/key.pem").unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match spec.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca).unwrap() {
                    roots.add(cert.unwrap()).unwrap();
                }
                builder.with_client_cert_verifier(
                    rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider,
                    )
                    .build()
                    .unwrap(),
                )
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = spec.alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    let (h1, h2) = (spec.h1, spec.h2);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A TLS worker takes plain text too (the first byte tells), so a reload can
                // move a pool between them on one address.
                let mut first = [0u8; 1];
                let is_tls = acceptor.is_some()
                    && matches!(tcp.peek(&mut first).await, Ok(1) if first[0] == 0x16);
                let service =
                    hyper::service::service_fn(move |req: Request<Incoming>| async move {
                        tokio::time::sleep(delay).await;
                        let host = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .or_else(|| {
                                req.headers()
                                    .get("host")
                                    .map(|h| h.to_str().unwrap().to_string())
                            })
                            .unwrap_or_default();
                        let text = format!(
                            "version={:?} host={host} path={} te={:?} tls={is_tls}",
                            req.version(),
                            req.uri().path(),
                            req.headers().get("te")
                        );
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            text,
                        ))))
                    });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if !h1 {
                    builder = builder.http2_only();
                } else if !h2 {
                    builder = builder.http1_only();
                }
                match acceptor.filter(|_| is_tls) {
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// weir with a plain and a TLS listener before a pool of `worker` with `pool_keys`.
fn weir_for(pool_keys: &str, worker: SocketAddr) -> Weir {
    start_plain_and_tls("", &format!("worker_concurrency = 64\n{pool_keys}"), worker)
}

/// An HTTP/2 connection (TLS, ALPN h2) to weir's TLS listener.
async fn h2_client<B>(weir: &Weir) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls =
        crate::tls_h2::tls_connect(weir.addrs[1], "localhost", "certs-dev/cert.pem", &[b"h2"])
            .await;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// GET `path` over HTTP/2 (TLS, ALPN h2) to weir's TLS listener.
async fn h2_get(weir: &Weir, path: &str) -> (u16, String) {
    let mut sender = h2_client(weir).await;
    let req = Request::get(format!("https://localhost{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn h2c_workers_take_http1_and_http2_clients_on_few_connections() {
    let (addr, accepted) = worker(
        Spec {
            tls: false,
            alpn: &[],
            client_ca: None,
            h1: false,
            h2: true,
        },
        Duration::from_millis(50),
    )
    .await;
    let weir = weir_for("protocol = \"h2c\"", addr);
    let reply = get(weir.addr(), "/one").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply
            .text()
            .starts_with("version=HTTP/2.0 host=test.local path=/one"),
        "{}",
        reply.text()
    );
    let (status, text) = h2_get(&weir, "/two").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("version=HTTP/2.0") && text.contains("path=/two"),
        "{text}"
    );

    // An Upgrade cannot cross HTTP/2: refused, clearly.
    let upgrade = raw_exchange(
        weir.addr(),
        b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(upgrade.starts_with("HTTP/1.1 400"), "{upgrade}");
    assert!(upgrade.contains("which has no Upgrade"), "{upgrade}");

    // 40 requests at once, each held 50 ms by the worker: multiplexed, not a connection each.
    let before = accepted.load(Ordering::SeqCst);
    let mut calls = Vec::new();
    for i in 0..40 {
        let at = weir.addr();
        calls.push(tokio::spawn(
            async move { get(at, &format!("/many/{i}")).await },
        ));
    }
    for call in calls {
        assert_eq!(call.await.unwrap().status, 200);
    }
    let opened = accepted.load(Ordering::SeqCst) - before;
    // One per serving thread at most (two threads), plus one a race may open.
    assert!(opened <= 3, "{opened} connections for 40 requests");
}

#[tokio::test]
async fn h2_workers_over_tls_are_verified_against_the_pools_ca() {
    let (addr, _) = worker(
        Spec {
            tls: true,
            alpn: &[b"h2"],
            client_ca: None,
            h1: false,
            h2: true,
        },
        Duration::ZERO,
    )
    .await;
    let weir = weir_for(
        "protocol = \"h2\"\ntls = { ca = \"certs-dev/cert.pem\" }",
        addr,
    );
    let reply = get(weir.addr(), "/secure").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.text().contains("version=HTTP/2.0"),
        "{}",
        reply.text()
    );

    // The wrong CA: no request reaches the worker.
    let wrong = weir_for(
        "protocol = \"h2\"\ntls = { ca = \"certs-dev/client-ca.pem\" }",
        addr,
    );
    assert_eq!(get(wrong.addr(), "/").await.status, 502);
    // The wrong name: refused as well.
    let misnamed = weir_for(
        "protocol = \"h2\"\ntls = { ca = \"certs-dev/cert.pem\", server_name = \"app.internal\" }",
        addr,
    );
    assert_eq!(get(misnamed.addr(), "/").await.status, 502);
    // Verification off: it goes through, and /readyz says so.
    let insecure = weir_for(
        "protocol = \"h2\"\ntls = { insecure_skip_verify = true }",
        addr,
    );
    assert_eq!(get(insecure.addr(), "/").await.status, 200);
    let (status, body) = admin_call(insecure.admin(), "GET", "/readyz", None, "").await;
    assert_eq!(status, 200);
    assert!(body.contains("insecure_skip_verify"), "{body}");
}

#[tokio::test]
async fn http1_workers_over_mutual_tls() {
    let (addr, _) = worker(
        Spec {
            tls: true,
            alpn: &[b"http/1.1"],
            client_ca: Some("certs-dev/client-ca.pem"),
            h1: true,
            h2: false,
        },
        Duration::ZERO,
    )
    .await;
    let weir = weir_for(
        "tls = { ca = \"certs-dev/cert.pem\", cert = \"certs-dev/client-cert.pem\", key = \"certs-dev/client-key.pem\" }",
        addr,
    );
    // Twice on one client connection: the second reuses the pooled TLS connection.
    let mut client = Client::connect(weir.addr()).await;
    for path in ["/a", "/b"] {
        let reply = client.get(path).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(
            reply.text().starts_with("version=HTTP/1.1"),
            "{}",
            reply.text()
        );
    }
    let (status, text) = h2_get(&weir, "/c").await;
    assert_eq!(
        (status, text.starts_with("version=HTTP/1.1")),
        (200, true),
        "{text}"
    );
    // Without the client certificate the worker refuses the handshake.
    let anonymous = weir_for("tls = { ca = \"certs-dev/cert.pem\" }", addr);
    assert_eq!(get(anonymous.addr(), "/").await.status, 502);
}

#[tokio::test]
async fn a_reload_moves_a_pool_to_tls_and_http2_without_reusing_old_connections() {
    let (addr, _) = worker(
        Spec {
            tls: true,
            alpn: &[b"h2", b"http/1.1"],
            client_ca: None,
            h1: true,
            h2: true,
        },
        Duration::ZERO,
    )
    .await;
    let path = temp_path("worker-transport-reload.toml");
    let config = |pool_keys: &str| {
        format!("[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n[pools.app]\n{pool_keys}\nprovider = {{ kind = \"static\", addresses = [\"{addr}\"] }}\n")
    };
    let weir = start_weir_at("", &config(""), Some(&path));
    let started = std::fs::read_to_string(&path).unwrap();
    let mut client = Client::connect(weir.addr()).await;
    let seen = client.get("/").await.text();
    assert!(
        seen.starts_with("version=HTTP/1.1") && seen.ends_with("tls=false"),
        "{seen}"
    );
    for (keys, expect) in [
        (
            "tls = { ca = \"certs-dev/cert.pem\" }",
            ("version=HTTP/1.1", "tls=true"),
        ),
        (
            "protocol = \"h2\"\ntls = { ca = \"certs-dev/cert.pem\" }",
            ("version=HTTP/2.0", "tls=true"),
        ),
        ("protocol = \"h2c\"", ("version=HTTP/2.0", "tls=false")),
        ("", ("version=HTTP/1.1", "tls=false")),
    ] {
        let text = started.replace("[pools.app]\n", &format!("[pools.app]\n{keys}\n"));
        std::fs::write(&path, text).unwrap();
        let (status, body) = admin_call(weir.admin(), "POST", "/api/v1/reload", None, "").await;
        assert_eq!(status, 200, "{body}");
        // The next request on the same client connection: the pooled connection made with
        // the old transport is not reused.
        let seen = client.get("/").await.text();
        assert!(
            seen.starts_with(expect.0) && seen.ends_with(expect.1),
            "{keys}: {seen}"
        );
    }
}

#[test]
fn bad_worker_tls_fails_naming_the_key() {
    let base = "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n[pools.app]\n{}\nprovider = { kind = \"static\", addresses = [\"127.0.0.1:1\"] }\n";
    let err = |extra: &str| {
        let config = weir::config::parse(&base.replace("{}", extra), "t.toml");
        match config {
            Err(e) => e.to_string(),
            Ok(config) => match weir::state::Snapshot::build(config, "t.toml") {
                Err(e) => e.to_string(),
                Ok(_) => "built".into(),
            },
        }
    };
    assert!(
        err("protocol = \"h3\"").contains("pools.app.protocol"),
        "{}",
        err("protocol = \"h3\"")
    );
    assert!(err("tls = { ca = \"nowhere.pem\" }").contains("pools.app.tls.ca"));
    assert!(err("tls = { cert = \"certs-dev/client-cert.pem\" }").contains("pools.app.tls.cert"));
    assert!(err("protocol = \"h2c\"\ntls = {}").contains("pools.app.tls"));
    assert!(err("tls = { server_name = \"bad name\" }").contains("pools.app.tls.server_name"));
}

/// An h2c worker that echoes each request frame as it arrives, then ends with trailers
/// `grpc-status: 0` and the frame count: a bidirectional gRPC-like stream.
async fn echo_h2c_worker() -> SocketAddr {
    use http_body_util::StreamBody;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let (tx, rx) = tokio::sync::mpsc::channel::<
                        Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
                    >(4);
                    let te = req.headers().get("te").cloned();
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        let mut frames = 0;
                        while let Some(Ok(frame)) = body.frame().await {
                            // (An empty frame may carry the end of the stream.)
                            if let Some(data) = frame.into_data().ok().filter(|d| !d.is_empty()) {
                                frames += 1;
                                let _ = tx.send(Ok(hyper::body::Frame::data(data))).await;
                            }
                        }
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        trailers.insert("x-frames", frames.to_string().parse().unwrap());
                        let _ = tx.send(Ok(hyper::body::Frame::trailers(trailers))).await;
                    });
                    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                        rx.recv().await.map(|f| (f, rx))
                    });
                    let mut response = Response::new(StreamBody::new(Box::pin(stream)));
                    response
                        .headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    if let Some(te) = te {
                        response.headers_mut().insert("x-te-seen", te);
                    }
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_bidirectional_stream_flows_both_ways_with_trailers() {
    use http_body_util::StreamBody;
    let worker = echo_h2c_worker().await;
    // buffer_requests stays on: a gRPC call's body is never read ahead regardless.
    let weir = start_plain_and_tls("", "protocol = \"h2c\"", worker);
    let mut sender = h2_client(&weir).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
    >(1);
    let body = StreamBody::new(Box::pin(futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
    )));
    let request = Request::post("https://localhost/echo.Echo/Chat")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-te-seen"], "trailers");
    let mut answers = response.into_body();
    // Each message comes back before the next is sent: the stream flows both ways at once.
    for i in 0..5 {
        let message = Bytes::from(format!("message {i}"));
        tx.send(Ok(hyper::body::Frame::data(message.clone())))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), answers.frame())
            .await
            .expect("the echo comes while the request is still open")
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_data().unwrap(), message);
    }
    drop(tx);
    let last = answers.frame().await.unwrap().unwrap();
    let trailers = last
        .into_trailers()
        .expect("the worker's trailers come through");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-frames"], "5");
}
