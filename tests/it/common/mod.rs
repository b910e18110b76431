//! Test helpers: start a real weir on ephemeral 127.0.0.1 ports, real demo workers, and talk to
//! them over real sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use weir::app::App;
use weir::state::Snapshot;

/// Upper bound for anything a test waits on; a hang fails instead of stalling CI.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A running weir that shuts down when dropped.
pub struct Weir {
    server: Option<App>,
    /// Bound listener addresses, in config order.
    pub addrs: Vec<SocketAddr>,
}

impl Weir {
    /// The first listener.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The admin listener.
    pub fn admin(&self) -> SocketAddr {
        self.server.as_ref().unwrap().admin_addr
    }

    /// The admin listener's connection cap, with its count of open connections.
    pub fn admin_connections(&self) -> &Arc<weir::server::ConnectionLimit> {
        self.server.as_ref().unwrap().control.admin_connections()
    }

    /// The proxy listeners' connection cap, with its count of open connections.
    pub fn connections(&self) -> &Arc<weir::server::ConnectionLimit> {
        &self.server.as_ref().unwrap().shared.connections
    }

    /// Stop gracefully now (as SIGTERM does).
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }

    /// The scaling history.
    pub fn activity(&self) -> Vec<weir::scale::ActivityEvent> {
        self.server.as_ref().unwrap().control.activity.events()
    }

    /// Requests waiting in `pool`'s queue.
    pub fn waiting(&self, pool: &str) -> usize {
        self.server.as_ref().unwrap().shared.snapshot().pools[pool].waiting()
    }

    /// How many of `pool`'s workers are ready.
    pub fn ready(&self, pool: &str) -> usize {
        self.workers(pool)
            .iter()
            .filter(|w| w.state() == weir::pool::WorkerState::Ready)
            .count()
    }

    /// The pools' workers, for checking live counters.
    pub fn workers(&self, pool: &str) -> Vec<Arc<weir::pool::Worker>> {
        self.server.as_ref().unwrap().shared.snapshot().pools[pool]
            .workers()
            .as_ref()
            .clone()
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

/// Start weir from config text. `server_keys` go into `[server]` (threads and a short shutdown
/// grace are set unless given); `rest` holds listeners, routes and pools.
pub fn start_weir(server_keys: &str, rest: &str) -> Weir {
    start_weir_at(server_keys, rest, None)
}

/// Like [`start_weir`], also writing the config to `path` so reloads can read it.
pub fn start_weir_at(server_keys: &str, rest: &str, path: Option<&std::path::Path>) -> Weir {
    let mut server = String::from("[server]\n");
    if !server_keys.contains("threads") {
        server.push_str("threads = 2\n");
    }
    if !server_keys.contains("shutdown_grace") {
        server.push_str("shutdown_grace = \"200ms\"\n");
    }
    server.push_str(server_keys);
    let admin = if rest.contains("[admin]") {
        ""
    } else {
        "[admin]\nlisten = \"127.0.0.1:0\"\n"
    };
    let text = format!("{server}\n{admin}{rest}");
    if let Some(path) = path {
        std::fs::write(path, &text).unwrap();
    }
    let config = weir::config::parse(&text, "test.toml").expect("test config is valid");
    let snapshot = Snapshot::build(config, "test.toml").expect("snapshot builds");
    let server = App::start(snapshot, path.map(|p| p.to_path_buf())).expect("weir starts");
    Weir {
        addrs: server.local_addrs.clone(),
        server: Some(server),
    }
}

/// One plain listener, one catch-all route to pool "app" with `workers`.
pub fn start_simple(server_keys: &str, pool_keys: &str, workers: &[SocketAddr]) -> Weir {
    start_routed(server_keys, "", pool_keys, workers)
}

/// Like [`start_simple`], with `route_keys` in the route's table.
pub fn start_routed(
    server_keys: &str,
    route_keys: &str,
    pool_keys: &str,
    workers: &[SocketAddr],
) -> Weir {
    start_weir(
        server_keys,
        &format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n{route_keys}\n[pools.app]\n{pool_keys}\nprovider = {{ kind = \"static\", addresses = {} }}\n",
            addr_list(workers)
        ),
    )
}

/// A plain listener (`addrs[0]`) and a TLS one with the dev certificate (`addrs[1]`, ALPN h2
/// and http/1.1), one route (`route_keys`) to pool "app" (`pool_keys`) with `worker`.
pub fn start_plain_and_tls(route_keys: &str, pool_keys: &str, worker: SocketAddr) -> Weir {
    start_weir(
        "",
        &format!(
            r#"[[listeners]]
listen = "127.0.0.1:0"
[[listeners]]
listen = "127.0.0.1:0"
tls = {{ cert = "certs-dev/cert.pem", key = "certs-dev/key.pem" }}
[[routes]]
pool = "app"
{route_keys}
[pools.app]
{pool_keys}
provider = {{ kind = "static", addresses = ["{worker}"] }}
"#
        ),
    )
}

/// `["a", "b"]` for a TOML array.
pub fn addr_list(addrs: &[SocketAddr]) -> String {
    let quoted: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Start an in-process demo worker on an ephemeral port.
pub async fn demo(name: &str) -> SocketAddr {
    demo_with_delay(name, Duration::ZERO).await
}

/// A demo worker that waits `delay` before each answer.
pub async fn demo_with_delay(name: &str, delay: Duration) -> SocketAddr {
    demo_with(weir::demo::DemoOptions::new(name, delay)).await.0
}

/// A demo worker with given options; the handle stops it when dropped or aborted.
pub async fn demo_with(
    options: weir::demo::DemoOptions,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, tokio::spawn(weir::demo::serve(listener, options)))
}

/// An address where nothing listens (bound, then closed).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn served_by(&self) -> String {
        self.headers
            .get("x-served-by")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::over(TcpStream::connect(addr).await.unwrap()).await
    }

    /// A client connecting from `source` (another loopback address: 127.0.0.2, ...).
    pub async fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        Client::over(socket.connect(addr).await.unwrap()).await
    }

    /// A client over an open connection.
    pub async fn over(
        stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    ) -> Client {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { sender }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        tokio::time::timeout(DEADLINE, async {
            self.sender.ready().await.unwrap();
            let response = self.sender.send_request(req).await.unwrap();
            let (parts, body) = response.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            }
        })
        .await
        .expect("response within the deadline")
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.send(get_req(path, "test.local")).await
    }
}

/// A GET request with a Host header.
pub fn get_req(path: &str, host: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    Client::connect(addr).await.get(path).await
}

/// Write raw bytes and read everything until the peer closes (or `DEADLINE`).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Poll `check` until it holds or `DEADLINE` passes.
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The weir binary under test.
pub const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// Kills the child if the test fails midway.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines a child writes to a pipe, delivered through a channel so reads can have a deadline.
pub fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

pub fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => continue,
            Err(e) => panic!("no line containing {needle:?}: {e}"),
        }
    }
}

/// A demo worker as its own process on an ephemeral port; killed when the handle drops.
pub fn demo_process(name: &str) -> (Reaped, SocketAddr) {
    let mut child = Reaped(
        Command::new(WEIR)
            .args(["demo-worker", "--listen", "127.0.0.1:0", "--name", name])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = lines(child.0.stdout.take().unwrap());
    let line = wait_for_line(&out, "listening on");
    let addr = line.rsplit(' ').next().unwrap().parse().unwrap();
    (child, addr)
}

/// A GET or POST to the admin API: (status, body).
pub async fn admin_call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let reply = Client::connect(admin)
        .await
        .send(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await;
    (reply.status, reply.text())
}

/// A temp file path unique to this test process.
pub fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("weir-test-{}-{name}", std::process::id()))
}

/// A series' value on weir's `/metrics` (0 when absent). The recorder is per process, so a
/// test that counts gives its route a name of its own.
pub async fn metric(weir: &Weir, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = admin_call(weir.admin(), "GET", "/metrics", None, "").await;
    let prefix = format!("{name}{{");
    text.lines()
        .find(|l| {
            l.starts_with(&prefix)
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// weir with one plain listener and one route named `route` to pool "app" of `workers`, with
/// `pool_keys` in the pool's table and `upstream_keys` in `[upstream]`.
pub fn start_named(
    route: &str,
    upstream_keys: &str,
    pool_keys: &str,
    workers: &[SocketAddr],
) -> Weir {
    start_weir(
        "",
        &format!(
            "[upstream]\n{upstream_keys}\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nname = \"{route}\"\npool = \"app\"\n[pools.app]\n{pool_keys}\nprovider = {{ kind = \"static\", addresses = {} }}\n",
            addr_list(workers)
        ),
    )
}

/// One request's head and Content-Length body, as text, read by a scripted worker; `None`
/// once the peer closes (`pending` keeps what was read past it, for pipelined requests).
pub async fn read_request(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<String> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if pending.len() >= end + 4 + length {
                let request: Vec<u8> = pending.drain(..end + 4 + length).collect();
                return Some(String::from_utf8_lossy(&request).into_owned());
            }
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// A `weir run` child process, with its log and the addresses it printed.
pub struct Running {
    /// The process (killed if the test fails midway).
    pub child: Reaped,
    /// Its log lines.
    pub stderr: mpsc::Receiver<String>,
    /// The first proxy listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
}

/// The `addr=` field of a log line.
pub fn addr_in(line: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no addr= in {line}"))
}

/// Run the weir binary on `config` until its listeners are up.
pub fn run_weir(config: &std::path::Path) -> Running {
    let mut command = Command::new(WEIR);
    command.arg("run").arg("--config").arg(config);
    run_weir_command(command)
}

/// Like [`run_weir`], with the descriptor limit (soft and hard) set to `nofile`.
pub fn run_weir_with_nofile(config: &std::path::Path, nofile: u64) -> Running {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "ulimit -n {nofile} && exec \"$0\" run --config \"$1\""
        ))
        .arg(WEIR)
        .arg(config);
    run_weir_command(command)
}

fn run_weir_command(mut command: Command) -> Running {
    let mut child = Reaped(command.stderr(Stdio::piped()).spawn().unwrap());
    let stderr = lines(child.0.stderr.take().unwrap());
    let addr = addr_in(&wait_for_line(&stderr, "listening"));
    let admin = addr_in(&wait_for_line(&stderr, "admin API listening"));
    Running {
        child,
        stderr,
        addr,
        admin,
    }
}

/// Ready workers' ids, sorted, from the admin API.
pub async fn ready_ids(admin: SocketAddr) -> Vec<String> {
    let (_, body) = admin_call(admin, "GET", "/api/v1/workers", None, "").await;
    let workers: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let mut ids: Vec<String> = workers
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["state"] == "ready")
        .filter_map(|w| w["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

/// Ready workers' ids once there are `n` of them (sorted).
pub async fn wait_ready_ids(admin: SocketAddr, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let ids = ready_ids(admin).await;
        if ids.len() == n {
            return ids;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} ready workers: saw {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `clients` keep-alive clients, each sending GET `path` until `stop` flips; each task ends
/// with the statuses other than 200 it got (see [`failures_of`]).
pub fn looping_clients(
    addr: SocketAddr,
    clients: usize,
    path: &'static str,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<StatusCode>>> {
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    looping_clients_watching(addr, clients, path, stop, &peak)
}

/// [`looping_clients`] that also keep in `peak` the highest `x-concurrent` a demo worker
/// answered with: the most requests any worker had at once.
pub fn looping_clients_watching(
    addr: SocketAddr,
    clients: usize,
    path: &'static str,
    stop: &Arc<std::sync::atomic::AtomicBool>,
    peak: &Arc<std::sync::atomic::AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Vec<StatusCode>>> {
    (0..clients)
        .map(|_| {
            let stop = Arc::clone(stop);
            let peak = Arc::clone(peak);
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                let mut failures = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let reply = client.get(path).await;
                    if reply.status != 200 {
                        failures.push(reply.status);
                    }
                    let concurrent = reply
                        .headers
                        .get("x-concurrent")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .unwrap_or(0);
                    peak.fetch_max(concurrent, std::sync::atomic::Ordering::Relaxed);
                }
                failures
            })
        })
        .collect()
}

/// Every failed status of [`looping_clients`], once they have stopped.
pub async fn failures_of(
    clients: Vec<tokio::task::JoinHandle<Vec<StatusCode>>>,
) -> Vec<StatusCode> {
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    failures
}

/// Send the first request to a scale-from-zero pool whose launch must fail: it gets a 503
/// without a hang; returns the `launch_failed` activity's reason.
pub async fn first_request_meets_a_launch_failure(weir: &Weir) -> String {
    let reply = tokio::time::timeout(DEADLINE, get(weir.addr(), "/"))
        .await
        .expect("no hang");
    assert_eq!(reply.status, 503);
    weir.activity()
        .iter()
        .find(|e| e.action == weir::scale::Action::LaunchFailed)
        .map(|e| e.reason.clone())
        .expect("a launch_failed activity")
}

/// An exec provider (a `provider = {...}` line) whose commands start detached demo workers
/// and keep each one's pid and "ID IP:port" in `dir`, so any weir lists what another
/// launched; `dir/launches` and `dir/releases` get a line per call: the id, then `tag` if any
/// (which weir of a fleet made the call).
pub fn exec_provider(dir: &std::path::Path, tag: &str) -> String {
    let d = dir.display();
    let tag = if tag.is_empty() {
        String::new()
    } else {
        format!(" {tag}")
    };
    let launch = format!(
        "setsid {WEIR} demo-worker --listen 127.0.0.1:0 --name $WEIR_WORKER > {d}/$WEIR_WORKER.out 2>&1 < /dev/null & \
         echo $! > {d}/$WEIR_WORKER.pid; echo \"$WEIR_WORKER{tag}\" >> {d}/launches; \
         for i in $(seq 200); do a=$(sed -n 's/^demo-worker listening on //p' {d}/$WEIR_WORKER.out); [ -n \"$a\" ] && break; sleep 0.05; done; \
         [ -n \"$a\" ] || exit 1; echo \"$WEIR_WORKER $a\" > {d}/$WEIR_WORKER.addr; echo \"$WEIR_WORKER $a\""
    );
    let release = format!(
        "kill $(cat {d}/{{id}}.pid) 2>/dev/null; rm -f {d}/{{id}}.addr {d}/{{id}}.pid; echo \"{{id}}{tag}\" >> {d}/releases"
    );
    let list = format!("cat {d}/*.addr 2>/dev/null; true");
    format!(
        "provider = {{ kind = \"exec\", launch = {launch:?}, release = {release:?}, list = {list:?} }}"
    )
}

/// A file's lines (none when it does not exist).
pub fn file_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Whether a process runs (a zombie waiting for its reaper does not count).
pub fn pid_alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// Kills, on drop, every worker [`exec_provider`] left running in its directory (they are
/// detached, and a fleet leaves its workers running when its instances stop), then removes
/// the directory.
pub struct ExecWorkers(pub std::path::PathBuf);

impl ExecWorkers {
    /// A fresh, empty directory for [`exec_provider`], named after `label` and this run.
    pub fn fresh(label: &str) -> ExecWorkers {
        let dir = temp_path(&format!("{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ExecWorkers(dir)
    }
}

impl Drop for ExecWorkers {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pid") {
                if let Ok(pid) = std::fs::read_to_string(&path) {
                    let _ = Command::new("kill").arg(pid.trim()).status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The Docker tests' image, built from this repo by `.ci/test-image`.
pub const IMAGE: &str = "weir-demo:dev";

/// Whether the engine and the test image are there. An engine without the image gets it
/// built from this build's binary (`.ci/test-image`, once per run), so plain `cargo test` runs
/// the Docker tests for real too. Panics when the engine is required and missing.
pub fn engine_ready(test: &str) -> bool {
    static BUILT: std::sync::Mutex<Option<Result<(), String>>> = std::sync::Mutex::new(None);
    let has_image = || {
        Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let engine = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    let problem = if !engine {
        "no Docker engine reachable".to_string()
    } else {
        let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
        if built.is_none() && !has_image() {
            *built = Some(build_test_image());
        }
        match built.as_ref() {
            Some(Err(e)) => e.clone(),
            _ if has_image() => return true,
            _ => format!("the image {IMAGE} is missing"),
        }
    };
    if std::env::var("WEIR_REQUIRE_DOCKER").as_deref() == Ok("1") {
        panic!("{test}: {problem}");
    }
    skipped(test, &problem);
    false
}

/// `.ci/test-image` on the weir binary under test.
fn build_test_image() -> Result<(), String> {
    build_image("test-image", &[WEIR], IMAGE)
}

/// Run `.ci/SCRIPT ARGS`, which builds `image`; its stderr is the error.
pub fn build_image(script: &str, args: &[&str], image: &str) -> Result<(), String> {
    let script = format!("{}/.ci/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "building {image} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A loopback port free now, for a peer that must be told its port before it starts
/// (HAProxy, Pebble).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Where tests that could not run say so; `.ci/test` lists them after the run, so a skipped
/// test is never taken for a passed one.
pub const SKIPPED_LIST: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/skipped-tests.txt");

/// Report `test` as not run for `why`. Unless `WEIR_ALLOW_SKIP=1` (which `.ci/test` sets, and
/// then lists what was skipped after the run), that is a failure: a test that could not run
/// must never be counted as passed. Allowed, it goes on stderr and into [`SKIPPED_LIST`].
pub fn skipped(test: &str, why: &str) {
    if std::env::var("WEIR_ALLOW_SKIP").as_deref() != Ok("1") {
        panic!(
            "{test} could not run: {why}. Run .ci/test, which installs and builds what the tests \
             need, or set WEIR_ALLOW_SKIP=1 to have it listed as skipped instead"
        );
    }
    eprintln!("{test}: skipped: {why}");
    use std::io::Write;
    if let Ok(mut list) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(SKIPPED_LIST)
    {
        let _ = writeln!(list, "{test}: {why}");
    }
}

/// Containers carrying `label=value` (running or not), by name.
pub fn containers_labelled(label: &str, value: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label={label}={value}"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A worker that records every request head it reads and answers each with `ok`.
pub async fn recording_worker() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = pending.drain(..end + 4).collect();
                        record
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&head).into_owned());
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(n) if n > 0 => pending.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A scripted worker: it reads each request on a connection whole (head and Content-Length
/// body) before it writes `answer`, and closes once the answer says `connection: close`.
pub async fn answering_worker(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closes = String::from_utf8_lossy(answer)
        .to_ascii_lowercase()
        .contains("connection: close");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut pending = Vec::new();
                while read_request(&mut stream, &mut pending).await.is_some() {
                    if stream.write_all(answer).await.is_err() || closes {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A worker that reads a request's whole body before it answers `ok`.
pub async fn body_first_worker() -> SocketAddr {
    answering_worker(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await
}

/// The good client of the attack tests: a GET on a new connection every 20 ms for `for_`,
/// each given 2 s; returns (answered with 200, tried).
pub async fn good_client_every_20ms(addr: SocketAddr, for_: Duration) -> (usize, usize) {
    let until = tokio::time::Instant::now() + for_;
    let mut running = Vec::new();
    while tokio::time::Instant::now() < until {
        running.push(tokio::spawn(async move {
            let reply = tokio::time::timeout(Duration::from_secs(2), get(addr, "/hello")).await;
            matches!(reply, Ok(r) if r.status == 200)
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tried = running.len();
    let mut ok = 0;
    for r in running {
        if r.await.unwrap_or(false) {
            ok += 1;
        }
    }
    (ok, tried)
}

/// A connection that asks for `count` responses of `size` in one write and never reads, with
/// a receive buffer as small as the kernel allows.
pub async fn unread_pipeline(weir: SocketAddr, count: usize, size: usize) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let mut stream = socket.connect(weir).await.unwrap();
    let request = format!("GET /bytes/{size} HTTP/1.1\r\nhost: x\r\n\r\n");
    stream
        .write_all(request.repeat(count).as_bytes())
        .await
        .unwrap();
    stream
}
