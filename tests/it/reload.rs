//! Reload is all or nothing: a reload that fails at any step (a certificate that does not
//! parse, an access log that cannot be opened, a token variable that is not set) changes nothing
//! live, not even the parts that came before the failing step; and a route the reload leaves
//! unchanged keeps its queue, so a request waiting in it is served after the reload; and
//! `server.max_connections` changes how many connections are served at once.

use crate::common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A weir with a TLS listener and a launched pool whose policy a reload can change.
fn config(max_workers: u32, cert: &str, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
listen = "127.0.0.1:0"
[[listeners]]
listen = "127.0.0.1:0"
tls = {{ cert = "{cert}", key = "certs-dev/key.pem" }}
[[routes]]
pool = "app"
[pools.app]
worker_concurrency = 4
provider = {{ kind = "process", command = ["{WEIR}", "demo-worker", "--listen", "127.0.0.1:{{port}}"] }}
health = {{ path = "/hello", interval = "200ms" }}
[pools.app.autoscale]
min_workers = 1
max_workers = {max_workers}
{extra}
"#
    )
}

async fn pools(weir: &Weir) -> serde_json::Value {
    let (status, body) = admin_call(weir.admin(), "GET", "/api/v1/pools", None, "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn reload(weir: &Weir) -> (http::StatusCode, String) {
    admin_call(weir.admin(), "POST", "/api/v1/reload", None, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_changes_nothing() {
    let path = temp_path("reload-refused.toml");
    let bad_pem = temp_path("reload-bad.pem");
    std::fs::write(&bad_pem, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n").unwrap();
    let bad_pem = bad_pem.display().to_string();
    let weir = start_weir_at("", &config(2, "certs-dev/cert.pem", ""), Some(&path));
    let max_workers = |v: &serde_json::Value| v[0]["max_workers"].as_u64();
    assert_eq!(max_workers(&pools(&weir).await), Some(2));

    // Each of these raises max_workers and adds a route, and fails at a later step.
    let refusals = [
        ("a certificate that is not PEM", config(5, &bad_pem, "")),
        (
            "an access log that cannot be opened",
            format!(
                "{}\n[access_log]\nenabled = true\npath = \"/nonexistent-dir/weir/access.log\"\n",
                config(5, "certs-dev/cert.pem", "")
            ),
        ),
        (
            "a token variable that is not set",
            format!(
                "{}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"WEIR_TEST_NEVER_SET_{}\"\n",
                config(5, "certs-dev/cert.pem", ""),
                std::process::id()
            ),
        ),
    ];
    for (what, text) in refusals {
        // The admin listen address is part of every test config (start_weir_at adds it).
        let text = if text.contains("[admin]") {
            text
        } else {
            format!("[admin]\nlisten = \"127.0.0.1:0\"\n{text}")
        };
        let text = text.replace(
            "[[routes]]\npool = \"app\"\n",
            "[[routes]]\npool = \"app\"\n[[routes]]\npath_prefix = \"/new\"\npool = \"app\"\nname = \"new\"\n",
        );
        std::fs::write(&path, &text).unwrap();
        let (status, body) = reload(&weir).await;
        assert_eq!(status, 400, "{what}: {body}");
        let after = pools(&weir).await;
        assert_eq!(max_workers(&after), Some(2), "{what}: the policy stayed");
        let (_, metrics) = admin_call(weir.admin(), "GET", "/metrics", None, "").await;
        // Queue gauges are set at scrape time from the live routes only.
        assert!(
            !metrics.contains("weir_queue_depth{route=\"new\"}"),
            "{what}: the new route is not live"
        );
    }
    // The TLS listener still serves the old certificate, and a good reload still works.
    std::fs::write(
        &path,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
            config(3, "certs-dev/cert.pem", "")
        ),
    )
    .unwrap();
    let (status, body) = reload(&weir).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("pools.app.autoscale: changed"), "{body}");
    assert_eq!(max_workers(&pools(&weir).await), Some(3));
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_survives_a_reload_of_its_unchanged_route() {
    let worker = demo_with_delay("slow", Duration::from_millis(1500)).await;
    let path = temp_path("reload-queue.toml");
    let text = |extra: &str| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n{extra}[pools.app]\nworker_concurrency = 1\nprovider = {{ kind = \"static\", addresses = [\"{worker}\"] }}\n"
        )
    };
    let weir = start_weir_at("", &text(""), Some(&path));
    wait_until("the worker is ready", || {
        weir.workers("app")
            .iter()
            .any(|w| w.state() == weir::pool::WorkerState::Ready)
    })
    .await;
    let addr = weir.addr();
    let first = tokio::spawn(async move { get(addr, "/").await });
    wait_until("the first request holds the slot", || {
        weir.workers("app").iter().any(|w| w.in_flight() == 1)
    })
    .await;
    let second = tokio::spawn(async move { get(addr, "/").await });
    wait_until("the second request waits", || weir.waiting("app") == 1).await;

    // Reload with another route added: the waiting request's route is unchanged.
    std::fs::write(
        &path,
        text("[[routes]]\npath_prefix = \"/other\"\npool = \"app\"\n"),
    )
    .unwrap();
    let (status, body) = reload(&weir).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("routes: changed"), "{body}");
    // The queue's depth gauge still counts it: the route kept its queue object.
    let (_, queue) = admin_call(weir.admin(), "GET", "/metrics", None, "").await;
    assert!(
        queue
            .lines()
            .any(|l| l.starts_with("weir_queue_depth{route=\"*/\"}") && l.ends_with(" 1")),
        "{queue}"
    );
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(second.await.unwrap().status, 200, "the waiter was served");
    assert_eq!(weir.waiting("app"), 0);
    let _ = std::fs::remove_file(&path);
}

/// A connection that made one request and stays open and busy, with a slow second request in
/// flight (an idle one would give way at the cap): (its first answer's status, the stream).
async fn served_and_kept(addr: std::net::SocketAddr) -> (http::StatusCode, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !pending.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before its answer");
        pending.extend_from_slice(&buf[..n]);
    }
    let status = std::str::from_utf8(&pending[9..12])
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| http::StatusCode::from_u16(s).ok())
        .unwrap();
    stream
        .write_all(b"GET /?delay=60s HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    (status, stream)
}

/// How long a client at the cap is watched to show it is not being served (a served request
/// takes a millisecond here).
const NOT_SERVED_WINDOW: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_max_connections_changes_how_many_connections_are_served() {
    let worker = demo("w").await;
    let path = temp_path("reload-max-connections.toml");
    let rest = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n[pools.app]\nprovider = {{ kind = \"static\", addresses = [\"{worker}\"] }}\n"
    );
    // Open connections stay busy: only the cap decides who is served.
    let weir = start_weir_at(
        "threads = 1\nmax_connections = 2\nheader_read_timeout = \"1m\"\nidle_timeout = \"1m\"\n",
        &rest,
        Some(&path),
    );
    let addr = weir.addr();
    let open = || weir.connections().open();
    let set_max = |n: usize| {
        let text = std::fs::read_to_string(&path).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("max_connections"))
            .unwrap()
            .to_string();
        std::fs::write(
            &path,
            text.replace(&line, &format!("max_connections = {n}")),
        )
        .unwrap();
    };

    let (status, a) = served_and_kept(addr).await;
    assert_eq!(status, 200);
    let (status, b) = served_and_kept(addr).await;
    assert_eq!(status, 200);
    let mut c = tokio::spawn(served_and_kept(addr));
    assert!(
        tokio::time::timeout(NOT_SERVED_WINDOW, &mut c)
            .await
            .is_err(),
        "a third connection is served at max_connections = 2"
    );
    assert_eq!(open(), 2);

    // Raised to 3: the waiting connection is served at once.
    set_max(3);
    let (status, body) = reload(&weir).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("server.max_connections: 2 -> 3 (applied now"),
        "{body}"
    );
    let (status, c) = tokio::time::timeout(DEADLINE, c).await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(weir.connections().max(), 3);
    let mut d = tokio::spawn(served_and_kept(addr));
    assert!(
        tokio::time::timeout(NOT_SERVED_WINDOW, &mut d)
            .await
            .is_err(),
        "a fourth connection is served at max_connections = 3"
    );

    // Lowered to 1 with three open: they carry on, and the waiting one is served only once
    // all three have closed.
    set_max(1);
    let (status, body) = reload(&weir).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("server.max_connections: 3 -> 1 (applied now"),
        "{body}"
    );
    drop(a);
    wait_until("the first connection is gone", || open() == 2).await;
    drop(b);
    wait_until("the second connection is gone", || open() == 1).await;
    assert!(
        tokio::time::timeout(NOT_SERVED_WINDOW, &mut d)
            .await
            .is_err(),
        "a second connection is served at max_connections = 1"
    );
    drop(c);
    let (status, _d) = tokio::time::timeout(DEADLINE, d).await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(open(), 1);
    let _ = std::fs::remove_file(&path);
}
