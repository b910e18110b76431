//! The demo worker: a small hyper server that weir's shipped config, tests and benchmarks put
//! behind the proxy, so weir serves out of the box with nothing else installed.
//!
//! Endpoints (any method):
//! - `/hello`: health check, "ok".
//! - `/echo`: streams the request body back.
//! - `/headers`: the request head as text, one `name: value` per line.
//! - `/status/NNN`: answers with that status.
//! - `/bytes/N`: N bytes of a repeating pattern, streamed.
//! - `/control/sick`, `/control/well`: make `/hello` answer 503, or 200 again.
//! - anything else: "hello from NAME".
//!
//! `?delay=250ms` on any path (or `--delay`) waits before answering; every response carries
//! `x-served-by: NAME`, `x-concurrent` (requests this worker was answering, itself included,
//! health probes of `/hello` aside) and `x-hostname` (the host it runs on: in a container the
//! Docker provider launched, the container's name, so a test can tell which worker answered). Any `Upgrade` request is accepted and its bytes echoed back raw.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tracing::debug;

/// Chunk size of `/bytes/N` responses.
const BYTES_CHUNK: usize = 64 * 1024;

/// How a demo worker behaves.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Reported in bodies and `x-served-by`.
    pub name: String,
    /// Wait before every answer (a stand-in for real work).
    pub delay: Duration,
    /// While false, `/hello` answers 503 (tests turn a worker sick and well again; so do
    /// `/control/sick` and `/control/well`).
    pub healthy: Arc<AtomicBool>,
    /// Requests being answered now (reported as `x-concurrent`).
    pub busy: Arc<AtomicUsize>,
    /// Answer every this many requests 500 (0: never).
    pub fail_every: u64,
    /// Requests answered so far (probes aside), for `fail_every`.
    pub answered: Arc<std::sync::atomic::AtomicU64>,
}

impl DemoOptions {
    /// A healthy worker named `name` answering after `delay`.
    pub fn new(name: &str, delay: Duration) -> Self {
        DemoOptions {
            name: name.to_string(),
            delay,
            healthy: Arc::new(AtomicBool::new(true)),
            busy: Arc::new(AtomicUsize::new(0)),
            fail_every: 0,
            answered: Arc::default(),
        }
    }

    /// Answer every `n`th request 500 (0: never).
    pub fn failing_every(mut self, n: u64) -> Self {
        self.fail_every = n;
        self
    }
}

type DemoBody = BoxBody<Bytes, hyper::Error>;

/// One answer in progress, counted in `busy` until dropped.
struct Answering<'a>(&'a AtomicUsize, usize);

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::SeqCst);
    }
}

/// Serve on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, options: DemoOptions) {
    let options = Arc::new(options);
    let name = HeaderValue::from_str(&options.name).unwrap_or(HeaderValue::from_static("demo"));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .and_then(|h| HeaderValue::from_str(h.trim()).ok())
        .unwrap_or(HeaderValue::from_static("unknown"));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, "demo worker accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let options = Arc::clone(&options);
        let name = name.clone();
        let hostname = hostname.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let options = Arc::clone(&options);
                let name = name.clone();
                let hostname = hostname.clone();
                async move {
                    // Requests this worker is answering right now, this one included; health
                    // probes of `/hello` are not counted (they are not under any cap).
                    let probe = req.uri().path() == "/hello";
                    let step = usize::from(!probe);
                    let concurrent = options.busy.fetch_add(step, Ordering::SeqCst) + step;
                    // Counted off when the answer is done or dropped: a client that goes away
                    // mid-answer (a proxy killed) must not stay counted for ever.
                    let _answering = Answering(&options.busy, step);
                    let mut response = respond(req, &options).await;
                    let headers = response.headers_mut();
                    headers.insert("x-served-by", name);
                    headers.insert("x-hostname", hostname);
                    headers.insert("x-concurrent", HeaderValue::from(concurrent));
                    Ok::<_, Infallible>(response)
                }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "demo worker connection error");
            }
        });
    }
}

async fn respond(mut req: Request<Incoming>, options: &DemoOptions) -> Response<DemoBody> {
    let delay = query_delay(req.uri().query()).unwrap_or(options.delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if req.headers().contains_key(header::UPGRADE) {
        return upgrade_echo(&mut req);
    }
    let path = req.uri().path().to_string();
    if path == "/hello" {
        return if options.healthy.load(Ordering::Relaxed) {
            text(StatusCode::OK, "ok\n".to_string())
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "sick\n".to_string())
        };
    }
    if path == "/control/sick" || path == "/control/well" {
        options
            .healthy
            .store(path == "/control/well", Ordering::Relaxed);
        return text(StatusCode::OK, format!("{}\n", &path[9..]));
    }
    let answered = options.answered.fetch_add(1, Ordering::Relaxed) + 1;
    if options.fail_every > 0 && answered % options.fail_every == 0 {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "{} fails every {} requests\n",
                options.name, options.fail_every
            ),
        );
    }
    if path == "/echo" {
        let mut response = Response::new(req.into_body().boxed());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        return response;
    }
    if path == "/headers" {
        let mut out = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        for (name, value) in req.headers() {
            out.push_str(&format!(
                "{}: {}\n",
                name,
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        return text(StatusCode::OK, out);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => text(status, format!("status {}\n", status.as_u16())),
            None => text(StatusCode::BAD_REQUEST, "bad status\n".to_string()),
        };
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return match n.parse::<usize>() {
            Ok(n) => pattern_bytes(n),
            Err(_) => text(StatusCode::BAD_REQUEST, "bad length\n".to_string()),
        };
    }
    text(StatusCode::OK, format!("hello from {}\n", options.name))
}

fn text(status: StatusCode, body: String) -> Response<DemoBody> {
    let mut response = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The byte at offset `i` of every `/bytes/N` body, so clients can verify what they got.
pub fn pattern_byte(i: usize) -> u8 {
    (i % 251) as u8
}

fn pattern_bytes(n: usize) -> Response<DemoBody> {
    let mut response = Response::new(PatternBody { sent: 0, total: n }.boxed());
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    response
}

/// `/bytes/N`: the pattern produced chunk by chunk, never held whole in memory.
struct PatternBody {
    sent: usize,
    total: usize,
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let start = self.sent;
        let end = (start + BYTES_CHUNK).min(self.total);
        if start >= end {
            return std::task::Poll::Ready(None);
        }
        self.sent = end;
        let chunk: Vec<u8> = (start..end).map(pattern_byte).collect();
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.total
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact((self.total - self.sent) as u64)
    }
}

fn upgrade_echo(req: &mut Request<Incoming>) -> Response<DemoBody> {
    let protocol = req.headers().get(header::UPGRADE).cloned();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    if let Some(protocol) = protocol {
        response.headers_mut().insert(header::UPGRADE, protocol);
    }
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    response
}

fn query_delay(query: Option<&str>) -> Option<Duration> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("delay="))
        .and_then(|v| crate::config::parse_duration(v).ok())
}

/// Bind each address and serve on a runtime of `threads` threads until killed. Prints
/// "demo-worker listening on ADDR" per address once bound, so scripts can wait for it.
pub fn run(
    addrs: &[SocketAddr],
    name: Option<String>,
    delay: Duration,
    threads: usize,
    fail_every: u64,
) -> Result<(), String> {
    let runtime = if threads <= 1 {
        crate::server::current_thread_runtime()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("cannot start runtime: {e}"))?;
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for addr in addrs {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("demo-worker: cannot listen on {addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            println!("demo-worker listening on {local}");
            let name = name
                .clone()
                .unwrap_or_else(|| format!("demo@{}", local.port()));
            let options = DemoOptions::new(&name, delay).failing_every(fail_every);
            tasks.push(tokio::spawn(serve(listener, options)));
        }
        // Exit on SIGTERM: in a container the demo worker is PID 1, which the kernel gives no
        // default SIGTERM action, so without this every stop would wait out its grace period.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("demo-worker: cannot listen for SIGTERM: {e}"))?;
        let served = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        tokio::select! {
            _ = served => {}
            _ = term.recv() => println!("demo-worker: SIGTERM, exiting"),
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_from_query() {
        assert_eq!(
            query_delay(Some("a=1&delay=250ms")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(query_delay(Some("delay=oops")), None);
        assert_eq!(query_delay(None), None);
    }
}
