//! Certificates from a real ACME CA: Debian's `pebble`, validating for real (HTTP-01 against
//! weir's plain listener, names resolved by `pebble-challtestsrv` to 127.0.0.1). weir issues
//! the certificate, serves it (the chain verifies against Pebble's root from its management
//! port), and a restarted weir serves it again from storage without a new order.

use crate::common;
use crate::tls_h2::client_config;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::net::TcpStream;

/// Pebble and its DNS, torn down on drop.
struct Pebble {
    _pebble: Reaped,
    dns: Option<Reaped>,
    /// The DNS server's ports (answers, management), to start it again.
    dns_ports: (u16, u16),
    /// While the DNS server is stopped, its port, held (queries go unanswered) so no other
    /// test's DNS server takes it and answers for it.
    dns_held: Option<std::net::UdpSocket>,
    directory: String,
    management: SocketAddr,
    /// Where Pebble validates HTTP-01 challenges: weir's plain listener must be here.
    http_port: u16,
    /// Where Pebble validates TLS-ALPN-01 challenges: weir's TLS listener must be here.
    tls_port: u16,
}

impl Pebble {
    /// `None` (the test said why) when pebble is not installed.
    async fn start(test: &str) -> Option<Pebble> {
        Pebble::start_with(test, None).await
    }

    /// Pebble issuing certificates valid for `validity` (its default: 5 years).
    async fn start_with(test: &str, validity: Option<Duration>) -> Option<Pebble> {
        if !Path::new("/usr/bin/pebble").exists() {
            if std::env::var("WEIR_REQUIRE_PEBBLE").as_deref() == Ok("1") {
                panic!("{test}: no pebble installed (apt-get install pebble)");
            }
            skipped(test, "no pebble installed (apt-get install pebble)");
            return None;
        }
        let (listen, management, http, tls, dns, dns_management) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": "certs-dev/cert.pem",
            "privateKey": "certs-dev/key.pem",
            "httpPort": http,
            "tlsPort": tls,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity.map_or(157_766_400, |v| v.as_secs()),
        }});
        let path = temp_path(&format!("pebble-{test}.json"));
        std::fs::write(&path, config.to_string()).unwrap();
        let dns_child = dns_server(dns, dns_management);
        let pebble_child = std::process::Command::new("/usr/bin/pebble")
            .arg("-config")
            .arg(&path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Every order validates (Pebble reuses half of the valid authorizations by
            // default, and a renewal meant to fail would then need no validation).
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("pebble starts");
        let pebble = Pebble {
            _pebble: Reaped(pebble_child),
            dns: Some(dns_child),
            dns_ports: (dns, dns_management),
            dns_held: None,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management: ([127, 0, 0, 1], management).into(),
            http_port: http,
            tls_port: tls,
        };
        let deadline = Instant::now() + DEADLINE;
        for port in [listen, management] {
            while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                assert!(Instant::now() < deadline, "pebble listening on {port}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Some(pebble)
    }

    /// Stop Pebble's DNS: no name resolves, no challenge validates.
    fn stop_dns(&mut self) {
        self.dns = None;
        let deadline = Instant::now() + DEADLINE;
        self.dns_held = loop {
            match std::net::UdpSocket::bind(("127.0.0.1", self.dns_ports.0)) {
                Ok(held) => break Some(held),
                Err(e) => assert!(Instant::now() < deadline, "cannot hold the DNS port: {e}"),
            }
            std::thread::sleep(Duration::from_millis(10));
        };
    }

    fn start_dns(&mut self) {
        self.dns_held = None;
        self.dns = Some(dns_server(self.dns_ports.0, self.dns_ports.1));
    }

    /// Pebble's issuing root, from its management port (a new one each run).
    async fn root(&self) -> CertificateDer<'static> {
        let tcp = TcpStream::connect(self.management).await.unwrap();
        let tls =
            tokio_rustls::TlsConnector::from(client_config("certs-dev/cert.pem", &[b"http/1.1"]))
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
                .expect("pebble's management port");
        let reply = Client::over(tls)
            .await
            .send(get_req("/roots/0", "127.0.0.1"))
            .await;
        assert_eq!(reply.status, 200);
        CertificateDer::from_pem_slice(&reply.body).expect("a PEM root")
    }
}

/// pebble-challtestsrv answering every A query with 127.0.0.1 (and no AAAA).
fn dns_server(port: u16, management: u16) -> Reaped {
    let child = std::process::Command::new("/usr/bin/pebble-challtestsrv")
        .args(["-dns01", &format!("127.0.0.1:{port}")])
        .args(["-management", &format!("127.0.0.1:{management}")])
        .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("pebble-challtestsrv starts");
    Reaped(child)
}

fn acme_config(pebble: &Pebble, storage: &Path, worker: SocketAddr) -> String {
    format!(
        r#"
[acme]
directory = "{directory}"
directory_ca = "certs-dev/cert.pem"
storage = "{storage}"
email = "ops@weir.test"
[[listeners]]
listen = "127.0.0.1:0"
tls = {{ acme = ["app.weir.test", "www.weir.test"] }}
[[listeners]]
listen = "127.0.0.1:{http}"
[[routes]]
pool = "app"
[pools.app]
provider = {{ kind = "static", addresses = ["{worker}"] }}
"#,
        directory = pebble.directory,
        storage = storage.display(),
        http = pebble.http_port,
    )
}

/// The leaf weir serves for `name`, once a handshake verifying against `root` succeeds.
async fn served_leaf(
    addr: SocketAddr,
    name: &str,
    root: &CertificateDer<'static>,
) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).ok()?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.ok()?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_string()).ok()?, tcp)
        .await
        .ok()?;
    let leaf = tls.get_ref().1.peer_certificates()?.first()?.to_vec();
    let reply = Client::over(tls).await.send(get_req("/", name)).await;
    (reply.status == 200).then_some(leaf)
}

async fn wait_served(
    addr: SocketAddr,
    name: &str,
    root: &CertificateDer<'static>,
) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    loop {
        if let Some(leaf) = served_leaf(addr, name, root).await {
            return (leaf, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{name} never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn storage(test: &str) -> PathBuf {
    let dir = temp_path(&format!("acme-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_issued_over_http_01_served_and_reused_after_a_restart() {
    let Some(pebble) = Pebble::start("acme_issue").await else {
        return;
    };
    let root = pebble.root().await;
    let worker = demo("w1").await;
    let storage = storage("issue");
    let started = Instant::now();
    let weir = start_weir("", &acme_config(&pebble, &storage, worker));
    let (leaf, _) = wait_served(weir.addr(), "app.weir.test", &root).await;
    let first = started.elapsed();
    let (www, _) = wait_served(weir.addr(), "www.weir.test", &root).await;
    assert_eq!(leaf, www, "one certificate for the listener's names");
    let (status, body) = admin_call(weir.admin(), "GET", "/readyz", None, "").await;
    assert_eq!(status, 200, "{body}");
    // Kept 0600 beside the account.
    use std::os::unix::fs::PermissionsExt;
    for file in ["account.json", "app.weir.test.crt", "app.weir.test.key"] {
        let mode = std::fs::metadata(storage.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    drop(weir);

    // Restarted: served at once from storage, the same certificate (no new order).
    let restarted = Instant::now();
    let weir = start_weir("", &acme_config(&pebble, &storage, worker));
    let (again, _) = wait_served(weir.addr(), "app.weir.test", &root).await;
    let reused = restarted.elapsed();
    eprintln!("first certificate served {first:?} after start; after a restart {reused:?}");
    assert_eq!(again, leaf, "the stored certificate, not a new one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_whose_challenge_cannot_be_answered_is_not_ready_and_its_handshakes_fail() {
    let Some(pebble) = Pebble::start("acme_fails").await else {
        return;
    };
    let root = pebble.root().await;
    let worker = demo("w1").await;
    let storage = storage("fails");
    // The plain listener is not where Pebble looks: no challenge can be answered.
    let config = acme_config(&pebble, &storage, worker).replace(
        &format!("listen = \"127.0.0.1:{}\"", pebble.http_port),
        "listen = \"127.0.0.1:0\"",
    );
    let weir = start_weir("", &config);
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (status, body) = admin_call(weir.admin(), "GET", "/readyz", None, "").await;
        if status == 503 && body.contains("the last order failed") {
            break body;
        }
        assert!(Instant::now() < deadline, "never said why: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("readyz: {body}");
    assert!(
        body.contains("acme: no certificate yet for app.weir.test,www.weir.test"),
        "{body}"
    );
    // No certificate for the name: the handshake fails, and weir serves on.
    assert!(served_leaf(weir.addr(), "app.weir.test", &root)
        .await
        .is_none());
    let reply = get(weir.addrs[1], "/").await;
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_renewed_before_it_ends_and_served_without_a_gap() {
    // Certificates valid 40 s, renewed 30 s before their end: the first one is due 10 s in.
    let Some(pebble) = Pebble::start_with("acme_renew", Some(Duration::from_secs(40))).await else {
        return;
    };
    let root = pebble.root().await;
    let worker = demo("w1").await;
    let storage = storage("renew");
    // A certificate ending within the hour fires certificate_expiry: every one of these.
    let (hook, posted) = crate::alerts::receiver().await;
    let config = acme_config(&pebble, &storage, worker).replace(
        "email = \"ops@weir.test\"",
        "email = \"ops@weir.test\"\nrenew_before = \"30s\"",
    ) + &format!(
        "[[alerts]]\nkind = \"certificate_expiry\"\nwithin = \"1h\"\nwebhook = \"http://{hook}/cert\"\n"
    );
    let started = Instant::now();
    let weir = start_weir("", &config);
    let (first, _) = wait_served(weir.addr(), "app.weir.test", &root).await;
    let issued = started.elapsed();
    // Every handshake from then on gets a certificate, the first one until the renewed one.
    let mut handshakes = 0;
    let renewed = loop {
        let leaf = served_leaf(weir.addr(), "app.weir.test", &root)
            .await
            .expect("a certificate served at every moment");
        handshakes += 1;
        if leaf != first {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(40), "never renewed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("renewal trace: first certificate {issued:?} after start (valid 40 s, renew_before 30 s); renewed one served {renewed:?} after start; {handshakes} handshakes meanwhile, none without a certificate");
    let deadline = Instant::now() + DEADLINE;
    let fired = loop {
        let texts = posted.lock().unwrap().clone();
        if let Some(text) = texts.iter().find(|t| t.contains("certificate_expiry")) {
            break text.clone();
        }
        assert!(
            Instant::now() < deadline,
            "certificate_expiry never fired: {texts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        fired.contains("FIRING") && fired.contains("app.weir.test ends in"),
        "{fired}"
    );
    let stored = std::fs::read_to_string(storage.join("app.weir.test.crt")).unwrap();
    let stored_leaf = CertificateDer::pem_slice_iter(stored.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_ne!(
        stored_leaf.to_vec(),
        first,
        "the renewed certificate is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_issued_over_tls_alpn_01_on_the_tls_listener() {
    let Some(pebble) = Pebble::start("acme_alpn").await else {
        return;
    };
    let root = pebble.root().await;
    let worker = demo("w1").await;
    let storage = storage("alpn");
    // No plain listener where Pebble looks: only the TLS listener can answer.
    let config = acme_config(&pebble, &storage, worker)
        .replace(
            "email = \"ops@weir.test\"",
            "email = \"ops@weir.test\"\nchallenge = \"tls-alpn-01\"",
        )
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", pebble.http_port),
            "listen = \"127.0.0.1:0\"",
        )
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{}\"", pebble.tls_port),
            1,
        );
    let started = Instant::now();
    let weir = start_weir("", &config);
    assert_eq!(weir.addr().port(), pebble.tls_port);
    let (leaf, _) = wait_served(weir.addr(), "app.weir.test", &root).await;
    eprintln!(
        "tls-alpn-01: certificate served {:?} after start",
        started.elapsed()
    );
    assert!(!leaf.is_empty());
    // A client offering acme-tls/1 outside a challenge gets no certificate at all.
    let mut config = (*client_config("certs-dev/cert.pem", &[b"acme-tls/1"])).clone();
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let tcp = TcpStream::connect(weir.addr()).await.unwrap();
    let refused = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("app.weir.test").unwrap(), tcp)
        .await;
    assert!(refused.is_err(), "no challenge under way: no certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_weirs_sharing_one_redis_make_one_order_and_both_serve_it() {
    let Some(redis) = crate::fleet::Redis::start_for("acme_fleet") else {
        return;
    };
    let Some(pebble) = Pebble::start("acme_fleet").await else {
        return;
    };
    let root = pebble.root().await;
    let worker = demo("w1").await;
    let prefix = format!("acme-fleet-{}", std::process::id());
    let url = redis.url();
    let cluster = |name: &str| {
        format!(
            "[cluster]\nredis = \"{url}\"\nname = \"{name}\"\nprefix = \"{prefix}\"\nlease_ttl = \"2s\"\n"
        )
    };
    // Only `a` listens where Pebble looks, and `b` starts first and takes the order: the
    // challenge can only be answered by `a`, from the answers `b` shares.
    let (storage_a, storage_b) = (storage("fleet-a"), storage("fleet-b"));
    let b_config = acme_config(&pebble, &storage_b, worker).replace(
        &format!("listen = \"127.0.0.1:{}\"", pebble.http_port),
        "listen = \"127.0.0.1:0\"",
    );
    let b = start_weir("", &(cluster("b") + &b_config));
    wait_until("b opened an account to order", || {
        storage_b.join("account.json").exists()
    })
    .await;
    let a = start_weir(
        "",
        &(cluster("a") + &acme_config(&pebble, &storage_a, worker)),
    );
    let (leaf_a, _) = wait_served(a.addr(), "app.weir.test", &root).await;
    let (leaf_b, _) = wait_served(b.addr(), "app.weir.test", &root).await;
    assert_eq!(leaf_a, leaf_b, "one certificate for the fleet");
    // One instance ordered: `b`, which took the lock; `a` never opened an account.
    assert!(!storage_a.join("account.json").exists(), "a ordered too");
    for storage in [&storage_a, &storage_b] {
        assert!(storage.join("app.weir.test.crt").exists(), "kept by both");
    }

    // Restarted while the fleet's Redis is down: the stored certificate is served, and
    // nothing is ordered.
    drop((a, b));
    drop(redis);
    let a = start_weir(
        "",
        &(cluster("a") + &acme_config(&pebble, &storage_a, worker)),
    );
    let (again, _) = wait_served(a.addr(), "app.weir.test", &root).await;
    assert_eq!(again, leaf_a, "the stored certificate");
    assert!(
        !storage_a.join("account.json").exists(),
        "no order without redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_fails_keeps_the_served_certificate_and_is_retried() {
    let Some(mut pebble) = Pebble::start_with("acme_retry", Some(Duration::from_secs(40))).await
    else {
        return;
    };
    let root = pebble.root().await;
    let worker = demo("w1").await;
    let storage = storage("retry");
    let config = acme_config(&pebble, &storage, worker).replace(
        "email = \"ops@weir.test\"",
        "email = \"ops@weir.test\"\nrenew_before = \"30s\"",
    );
    let started = Instant::now();
    let weir = start_weir("", &config);
    let (first, _) = wait_served(weir.addr(), "app.weir.test", &root).await;
    // Before the renewal is due (10 s in), the CA's DNS goes: the renewal order fails.
    pebble.stop_dns();
    let until = started + Duration::from_secs(16);
    while Instant::now() < until {
        let leaf = served_leaf(weir.addr(), "app.weir.test", &root)
            .await
            .expect("the old certificate is served while its renewal fails");
        assert_eq!(leaf, first);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = admin_call(weir.admin(), "GET", "/readyz", None, "").await;
    assert_eq!(status, 200, "a name with a certificate is ready: {body}");
    // The DNS is back: a retry renews it.
    pebble.start_dns();
    let restored = Instant::now();
    let renewed = loop {
        let leaf = served_leaf(weir.addr(), "app.weir.test", &root)
            .await
            .expect("a certificate served at every moment");
        if leaf != first {
            break restored.elapsed();
        }
        assert!(
            restored.elapsed() < Duration::from_secs(30),
            "never retried"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("renewal failed while the CA's DNS was down (the first certificate served throughout); renewed {renewed:?} after it came back");
}
