//! gRPC end to end through weir, with a gRPC implementation not written here: PyPI's grpcio
//! and grpcio-health-checking (its health service as the worker, its stub as the client).
//! Over weir's TLS listener (ALPN h2) and its plain one (h2c prior knowledge), to h2c and
//! TLS (h2) workers: unary calls, a server stream that sees a status change, a status the
//! worker gives passed through, a killed worker as UNAVAILABLE within a second, a full queue
//! as RESOURCE_EXHAUSTED, a call's grpc-timeout while it waits, and the gRPC health probe.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;

const WORKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/health_worker.py");
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/client.py");

/// Whether python3 with grpcio and grpcio-health-checking is here; else the test says why.
fn grpcio_ready(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import grpc, grpc_health.v1.health"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let why = "python3 with grpcio and grpcio-health-checking is missing (pip install grpcio grpcio-health-checking)";
        if std::env::var("WEIR_REQUIRE_GRPC").as_deref() == Ok("1") {
            panic!("{test}: {why}");
        }
        skipped(test, why);
    }
    ok
}

/// grpcio's health server as a worker process; `tls`: serve TLS with the dev certificate.
struct GrpcWorker {
    child: Reaped,
    addr: SocketAddr,
    out: mpsc::Receiver<String>,
}

impl GrpcWorker {
    fn start(tls: bool) -> GrpcWorker {
        let mut command = Command::new("python3");
        command.arg(WORKER);
        if tls {
            command.args(["--cert", "certs-dev/cert.pem", "--key", "certs-dev/key.pem"]);
        }
        let mut child = Reaped(
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 starts"),
        );
        let out = lines(child.0.stdout.take().unwrap());
        let line = wait_for_line(&out, "listening");
        let port: u16 = line.rsplit(' ').next().unwrap().parse().unwrap();
        GrpcWorker {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            out,
        }
    }

    fn set(&mut self, service: &str, status: &str) {
        let service = if service.is_empty() { "-" } else { service };
        let stdin = self.child.0.stdin.as_mut().unwrap();
        writeln!(stdin, "set {service} {status}").unwrap();
        stdin.flush().unwrap();
        wait_for_line(&self.out, &format!("set {service} {status}"));
    }
}

/// Run the client to its end; its output.
async fn client(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(CLIENT)
            .args(&args)
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !text.is_empty(),
        "client said nothing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A client process whose lines arrive as it prints them.
fn client_streaming(args: &[&str]) -> (Reaped, mpsc::Receiver<String>) {
    let mut child = Reaped(
        Command::new("python3")
            .arg(CLIENT)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs"),
    );
    let out = lines(child.0.stdout.take().unwrap());
    (child, out)
}

#[tokio::test]
async fn unary_and_streaming_calls_through_weir_over_tls_and_h2c() {
    if !grpcio_ready("grpc::unary_and_streaming_calls_through_weir_over_tls_and_h2c") {
        return;
    }
    let mut worker = GrpcWorker::start(false);
    let weir = start_plain_and_tls("", "protocol = \"h2c\"", worker.addr);
    let tls = weir.addrs[1].to_string();
    let plain = weir.addrs[0].to_string();
    let ca = ["--ca", "certs-dev/cert.pem"];

    // Unary, over TLS (ALPN h2) and h2c, to an h2c worker.
    assert_eq!(
        client(&[&["check", &tls, ""][..], &ca].concat()).await,
        "ok SERVING"
    );
    assert_eq!(client(&["check", &plain, "svc"]).await, "ok SERVING");
    // The worker's own status (an unknown service is NOT_FOUND) comes through as it is.
    let unknown = client(&[&["check", &tls, "nobody"][..], &ca].concat()).await;
    assert!(unknown.starts_with("error NOT_FOUND"), "{unknown}");

    // A server stream sees a status change as it happens.
    let (_watch, lines) = client_streaming(&[&["watch", &tls, "svc"][..], &ca].concat());
    assert_eq!(wait_for_line(&lines, "status"), "status SERVING");
    worker.set("svc", "NOT_SERVING");
    assert_eq!(wait_for_line(&lines, "status"), "status NOT_SERVING");
    worker.set("svc", "SERVING");
    assert_eq!(wait_for_line(&lines, "status"), "status SERVING");

    // A killed worker: UNAVAILABLE, within a second (the call itself, timed by the client).
    drop(worker);
    let dead = client(&[&["check", &tls, "", "--timed"][..], &ca].concat()).await;
    assert!(dead.starts_with("error UNAVAILABLE"), "{dead}");
    let ms: u64 = dead
        .rsplit(' ')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(ms < 1000, "{dead}");
    eprintln!("killed worker: {dead}");
}

#[tokio::test]
async fn tls_workers_full_queues_deadlines_and_grpc_health_probes() {
    if !grpcio_ready("grpc::tls_workers_full_queues_deadlines_and_grpc_health_probes") {
        return;
    }
    let mut worker = GrpcWorker::start(true);
    let weir = start_plain_and_tls(
        "queue = { max_size = 1, timeout = \"30s\" }",
        "protocol = \"h2\"\ntls = { ca = \"certs-dev/cert.pem\" }\nworker_concurrency = 1\nhealth = { grpc = \"\", interval = \"100ms\" }",
        worker.addr,
    );
    let tls = weir.addrs[1].to_string();
    let ca = ["--ca", "certs-dev/cert.pem"];
    wait_until("the gRPC probe makes the worker ready", || {
        weir.ready("app") > 0
    })
    .await;
    assert_eq!(
        client(&[&["check", &tls, ""][..], &ca].concat()).await,
        "ok SERVING"
    );

    // A stream holds the one slot; the next call waits with a 300 ms grpc-timeout and gets
    // DEADLINE_EXCEEDED from weir; with one waiting, the next finds the queue full.
    let (_watch, lines) = client_streaming(&[&["watch", &tls, "svc"][..], &ca].concat());
    assert_eq!(wait_for_line(&lines, "status"), "status SERVING");
    let (_waiting, waiting_lines) =
        client_streaming(&[&["check", &tls, "", "--timeout", "20"][..], &ca].concat());
    wait_until("a call waits in the queue", || weir.waiting("app") == 1).await;
    let full = client(&[&["check", &tls, ""][..], &ca].concat()).await;
    assert!(full.starts_with("error RESOURCE_EXHAUSTED"), "{full}");
    drop(_waiting);
    drop(waiting_lines);
    wait_until("the waiting call left", || weir.waiting("app") == 0).await;
    let started = Instant::now();
    let late = client(&[&["check", &tls, "", "--timeout", "0.3"][..], &ca].concat()).await;
    assert!(late.starts_with("error DEADLINE_EXCEEDED"), "{late}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The health probe follows the server's status.
    worker.set("", "NOT_SERVING");
    wait_until("the gRPC probe marks the worker unhealthy", || {
        weir.workers("app")
            .iter()
            .all(|w| w.state() == weir::pool::WorkerState::Unhealthy)
    })
    .await;
    worker.set("", "SERVING");
    wait_until("and ready again", || weir.ready("app") > 0).await;
}
