//! weir instances as hosts of their own: containers with their own addresses on Docker
//! networks the test creates, a Redis in a container, worker containers that the leader
//! launches through the Docker provider (the engine's socket mounted into each weir), cut
//! apart with `docker network disconnect` and killed with `docker kill`. Images are built on
//! this machine from binaries it has (`.ci/rootfs-image`; no registry is reachable): weir from
//! the binary under test (`weir-demo:dev`, which also serves as the worker image), Redis from
//! Debian's `redis-server`.
//!
//! Everything a test creates carries its tag in its name and is removed when dropped, worker
//! containers included (found by the pool's label).

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::{self, containers_labelled, IMAGE, WEIR};

/// The Redis image, built from this machine's `redis-server`.
pub const REDIS_IMAGE: &str = "weir-redis:dev";
/// weir's proxy port and admin port inside every weir container.
pub const PROXY_PORT: u16 = 8080;
pub const ADMIN_PORT: u16 = 9901;
/// The admin token of every weir container (a non-loopback admin listener needs one).
pub const TOKEN: &str = "hosts-test-token";

/// `docker ARGS`, its stdout on success, else a panic naming the command and its stderr.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker {args:?}: {e}"));
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `docker ARGS`, ignoring failure (clean-up).
fn docker_quiet(args: &[&str]) {
    let _ = Command::new("docker").args(args).output();
}

/// Whether this test can run: an engine, the weir image (built when missing) and
/// `redis-server` to build the Redis image from. Otherwise the test fails, or with
/// `WEIR_ALLOW_SKIP=1` is listed as skipped.
pub fn ready(test: &str) -> bool {
    if !common::engine_ready(test) {
        return false;
    }
    static BUILT: Mutex<Option<Result<(), String>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if built.is_none() {
        *built = Some(build_redis_image());
    }
    match built.as_ref() {
        Some(Err(why)) => {
            if std::env::var("WEIR_REQUIRE_REDIS").as_deref() == Ok("1") {
                panic!("{test}: {why}");
            }
            common::skipped(test, why);
            false
        }
        _ => true,
    }
}

fn build_redis_image() -> Result<(), String> {
    let which = Command::new("sh")
        .args(["-c", "command -v redis-server"])
        .output()
        .map_err(|e| e.to_string())?;
    let redis = String::from_utf8_lossy(&which.stdout).trim().to_string();
    if redis.is_empty() {
        return Err("redis-server is not installed (apt-get install redis-server)".into());
    }
    common::build_image(
        "rootfs-image",
        &[REDIS_IMAGE, &redis, "[\"/bin/redis-server\"]"],
        REDIS_IMAGE,
    )
}

/// A short tag unique to this test run and test, for names.
pub fn tag(test: &str) -> String {
    let short: String = test
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    // The whole name's hash too: two tests may begin alike.
    let hash = test
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    format!("{short}{:x}{}", hash % 0x1000, std::process::id() % 100_000)
}

/// A user-defined bridge network, removed on drop.
pub struct Net {
    pub name: String,
}

impl Net {
    pub fn create(name: String) -> Net {
        docker_quiet(&["network", "rm", &name]);
        docker(&["network", "create", &name]);
        Net { name }
    }

    /// A network with a /24 of its own under 10.0.0.0/8, so containers can be given fixed
    /// addresses (known before they start, to put in their configs); returns it and the
    /// first three bytes of its addresses. The subnet is picked from the name, and the next
    /// one tried while the engine has it in use.
    pub fn with_subnet(name: String) -> (Net, [u8; 3]) {
        docker_quiet(&["network", "rm", &name]);
        let seed = name
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        for attempt in 0..64u32 {
            let n = seed.wrapping_add(attempt.wrapping_mul(7919));
            let prefix = [10, 100 + (n % 100) as u8, ((n / 100) % 250) as u8];
            let subnet = format!("{}.{}.{}.0/24", prefix[0], prefix[1], prefix[2]);
            let created = Command::new("docker")
                .args(["network", "create", "--subnet", &subnet, &name])
                .output()
                .expect("docker runs");
            if created.status.success() {
                return (Net { name }, prefix);
            }
        }
        panic!("no free /24 under 10.0.0.0/8 for network {name}");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        docker_quiet(&["network", "rm", &self.name]);
    }
}

/// A container, removed (with force) on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    /// Its IP on `net`.
    pub fn ip_on(&self, net: &Net) -> IpAddr {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            net.name
        );
        let ip = docker(&["inspect", "--format", &format, &self.name]);
        ip.parse()
            .unwrap_or_else(|_| panic!("{} has no address on {}: {ip:?}", self.name, net.name))
    }

    pub fn disconnect(&self, net: &Net) {
        docker(&["network", "disconnect", &net.name, &self.name]);
    }

    pub fn connect(&self, net: &Net) {
        docker(&["network", "connect", &net.name, &self.name]);
    }

    /// SIGKILL: a crash.
    pub fn kill(&self) {
        docker(&["kill", &self.name]);
    }

    /// SIGTERM, then wait until it has exited (weir's graceful stop).
    pub fn stop(&self, grace: Duration) {
        docker(&["stop", "--time", &grace.as_secs().to_string(), &self.name]);
    }

    pub fn start(&self) {
        docker(&["start", &self.name]);
    }

    /// Stop (SIGTERM, then SIGKILL after a second) and start again: a process restart. A
    /// Redis from [`redis`] comes back empty.
    pub fn restart(&self) {
        docker(&["restart", "--time", "1", &self.name]);
    }

    /// Its output so far (weir logs to stderr).
    pub fn logs(&self) -> String {
        let out = Command::new("docker")
            .args(["logs", &self.name])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default();
        out
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        docker_quiet(&["rm", "-f", "-v", &self.name]);
    }
}

/// A Redis on `net`, with no persistence (a restart is a Redis restarted empty).
pub fn redis(name: String, net: &Net) -> Container {
    docker_quiet(&["rm", "-f", &name]);
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        &net.name,
        REDIS_IMAGE,
        "--port",
        "6379",
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    Container { name }
}

/// A weir instance from the binary under test, running `config` (mounted read-only at
/// /etc/weir/weir.toml), with the engine's socket mounted for the Docker provider, on the
/// first of `nets` and then connected to the others.
pub fn weir(name: String, config: &str, nets: &[&Net], ip: Option<IpAddr>) -> Container {
    let dir = common::temp_path(&format!("hosts-{name}"));
    std::fs::create_dir_all(&dir).expect("config dir");
    std::fs::write(config_path(&name), config).expect("config written");
    docker_quiet(&["rm", "-f", &name]);
    let mount = format!("{}:/etc/weir:ro", dir.display());
    let ip = ip.map(|ip| ip.to_string());
    let mut args = vec!["run", "-d", "--name", &name, "--hostname", &name];
    args.extend(["--network", &nets[0].name]);
    if let Some(ip) = &ip {
        args.extend(["--ip", ip]);
    }
    args.extend([
        "-e",
        "WEIR_LOG=info,weir::fleet=debug",
        "-v",
        &mount,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "--entrypoint",
        "/bin/weir",
        IMAGE,
        "run",
        "--config",
        "/etc/weir/weir.toml",
    ]);
    docker(&args);
    let container = Container { name };
    for net in &nets[1..] {
        container.connect(net);
    }
    container
}

/// Where weir container `name` reads its config from (this machine's side of the mount):
/// written anew, then reloaded through the admin API, it is a config change.
pub fn config_path(name: &str) -> std::path::PathBuf {
    common::temp_path(&format!("hosts-{name}")).join("weir.toml")
}

/// The `label` of container `name`.
pub fn label_of(name: &str, label: &str) -> String {
    docker(&[
        "inspect",
        "--format",
        &format!("{{{{index .Config.Labels \"{label}\"}}}}"),
        name,
    ])
}

/// The running worker containers of pool `pool`, sorted.
pub fn running_workers(pool: &str) -> Vec<String> {
    let label = format!("label=weir.pool={pool}");
    let out = docker(&[
        "ps",
        "--filter",
        &label,
        "--filter",
        "status=running",
        "--format",
        "{{.Names}}",
    ]);
    let mut names: Vec<String> = out.lines().map(str::to_string).collect();
    names.sort();
    names
}

/// Remove the worker containers of pool `pool` (a crashed weir leaves its workers).
pub fn remove_workers(pool: &str) {
    for name in containers_labelled("weir.pool", pool) {
        docker_quiet(&["rm", "-f", &name]);
    }
}

/// The binary the weir containers run (for messages).
pub fn weir_binary() -> &'static str {
    WEIR
}

/// One answer, as the load and the checks see it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The demo worker's `x-concurrent`: requests it was answering, this one included.
    pub concurrent: Option<u32>,
    /// The demo worker's `x-hostname`: the container that answered.
    pub hostname: Option<String>,
    pub body: String,
}

/// `GET path` at `addr` on a fresh connection, within `within`; an error says what failed
/// (a refused or cut connection, no answer in time). Never panics: a host may be cut off.
pub async fn fetch(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    within: Duration,
) -> Result<Answer, String> {
    send(addr, http::Method::GET, path, token, String::new(), within).await
}

/// `POST path` with a JSON `body` on a weir container's admin API; `None` unless it answers
/// 2xx with JSON.
pub async fn admin_post(admin: SocketAddr, path: &str, body: &str) -> Option<serde_json::Value> {
    let answer = send(
        admin,
        http::Method::POST,
        path,
        Some(TOKEN),
        body.to_string(),
        Duration::from_secs(5),
    )
    .await
    .ok()?;
    if !(200..300).contains(&answer.status) {
        return None;
    }
    serde_json::from_str(&answer.body).ok()
}

/// One request on a fresh connection; see [`fetch`].
async fn send(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: String,
    within: Duration,
) -> Result<Answer, String> {
    use http_body_util::{BodyExt, Full};
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "hosts.test");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let concurrent = response
            .headers()
            .get("x-concurrent")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let hostname = response
            .headers()
            .get("x-hostname")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            concurrent,
            hostname,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(within, exchange)
        .await
        .map_err(|_| format!("no answer within {within:?}"))?
}

/// `GET path` on a weir container's admin API, as JSON; `None` until it answers 2xx.
pub async fn admin_json(admin: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let answer = fetch(admin, path, Some(TOKEN), Duration::from_secs(2))
        .await
        .ok()?;
    if !(200..300).contains(&answer.status) {
        return None;
    }
    serde_json::from_str(&answer.body).ok()
}

/// Poll `check` until it returns `Some`, up to `within`; panics naming `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
