//! Alert rules reaching a local webhook receiver, firing and resolving; a dead webhook never
//! slows requests.

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use weir::pool::WorkerState;

/// A webhook receiver that keeps the "text" of every JSON body posted to it.
pub(crate) async fn receiver() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&got);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let store = Arc::clone(&store);
                    async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let value: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        store
                            .lock()
                            .unwrap()
                            .push(value["text"].as_str().unwrap_or("").to_string());
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                            b"ok",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_alert_fires_and_resolves_and_scale_events_are_posted() {
    let (hook, got) = receiver().await;
    let worker = demo("w").await;
    let weir = start_weir(
        "",
        &format!(
            r#"
[[listeners]]
listen = "127.0.0.1:0"
[[routes]]
pool = "web"
[[routes]]
path_prefix = "/scaled"
pool = "scaled"
[pools.web]
provider = {{ kind = "static", addresses = ["{worker}"] }}
[pools.scaled]
provider = {{ kind = "process", command = ["{WEIR}", "demo-worker", "--listen", "127.0.0.1:{{port}}"] }}
autoscale = {{ min_workers = 1, max_workers = 2 }}
[[alerts]]
name = "errors"
kind = "errors_5xx"
threshold = 3
window = "2s"
webhook = "http://{hook}/hook"
[[alerts]]
kind = "scale_events"
pool = "scaled"
webhook = "http://{hook}/scale"
"#
        ),
    );
    wait_until("ready", || {
        weir.workers("web")[0].state() == WorkerState::Ready
    })
    .await;
    let mut client = Client::connect(weir.addr()).await;
    for _ in 0..3 {
        assert_eq!(client.get("/status/500").await.status, 500);
    }
    let texts = || got.lock().unwrap().clone();
    wait_until("firing notification", || {
        texts()
            .iter()
            .any(|t| t.starts_with("FIRING weir alert errors"))
    })
    .await;
    wait_until("resolved notification", || {
        texts()
            .iter()
            .any(|t| t.starts_with("RESOLVED weir alert errors"))
    })
    .await;
    // Scale events of the chosen pool, one notification each.
    wait_until("scale event", || {
        texts().iter().any(|t| t.contains("scaled scale_up 0 -> 1"))
    })
    .await;
    let firing = texts().iter().filter(|t| t.starts_with("FIRING")).count();
    assert_eq!(
        firing,
        1,
        "rate-limited to one firing per min_interval: {:?}",
        texts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_webhook_never_slows_requests() {
    let dead = dead_addr();
    let worker = demo("w").await;
    let weir = start_weir(
        "",
        &format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"web\"\n[pools.web]\nprovider = {{ kind = \"static\", addresses = [\"{worker}\"] }}\n[[alerts]]\nkind = \"errors_5xx\"\nwindow = \"1s\"\nmin_interval = \"1s\"\nwebhook = \"http://{dead}/hook\"\n"
        ),
    );
    wait_until("ready", || {
        weir.workers("web")[0].state() == WorkerState::Ready
    })
    .await;
    let mut client = Client::connect(weir.addr()).await;
    let started = Instant::now();
    for _ in 0..200 {
        assert_eq!(client.get("/status/503").await.status, 503);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..200 {
        assert_eq!(client.get("/status/503").await.status, 503);
    }
    // 400 local requests take well under a second each way; the dead webhook is retried in the
    // background.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
