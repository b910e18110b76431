//! The admin listener cannot starve the proxy: admin connections that never send a request are
//! closed at `server.header_read_timeout` (or `server.idle_timeout`, whichever comes first), and
//! at most `admin.max_connections` are open at once, so even a weir with few file descriptors
//! keeps accepting and serving proxy clients while such connections keep coming.

use crate::common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Descriptors the weir under attack may open (soft and hard), so the attack reaches the limit.
const FD_LIMIT: u32 = 128;
/// More idle admin connections than weir has descriptors.
const ATTACKERS: usize = 150;
/// `admin.max_connections` of the weir under attack.
const ADMIN_CAP: usize = 16;
/// `server.header_read_timeout` of the weir under attack.
const HEADER_TIMEOUT: Duration = Duration::from_millis(500);
/// Descriptors weir may open beyond its idle count and the admin cap: the good client's
/// connection and weir's connections to the worker.
const FD_SLACK: usize = 8;
/// How long a good request may take before it counts as failed.
const GOOD_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The `addr=` field of a log line.
fn addr_in(line: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {line:?}"))
        .parse()
        .unwrap()
}

/// What the idle admin connections saw: each connection's life from connect to weir's close.
#[derive(Default)]
struct AttackLog {
    lifetimes: Mutex<Vec<Duration>>,
    closed: AtomicUsize,
    /// Connections weir still had not closed `DEADLINE` after they were opened.
    never_closed: AtomicUsize,
}

/// Keep one idle admin connection open at all times (connect, send nothing, wait for weir to
/// close it, connect again) until `attacking` is cleared; the last connection is still waited
/// out, so when this returns every connection it opened has been closed by weir.
async fn idle_attacker(admin: SocketAddr, attacking: Arc<AtomicBool>, log: Arc<AttackLog>) {
    while attacking.load(Ordering::Relaxed) {
        // A full accept queue drops the SYN: try again, as an attacker would.
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(admin)).await
        else {
            continue;
        };
        let connected = Instant::now();
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(DEADLINE, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        if closed.is_err() {
            log.never_closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        log.lifetimes.lock().unwrap().push(connected.elapsed());
        log.closed.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_admin_connections_are_closed_and_capped_while_the_proxy_serves() {
    let worker = demo("good").await;
    let config = format!(
        r#"
[server]
threads = 1
max_connections = 32
header_read_timeout = "{}ms"
idle_timeout = "30s"
shutdown_grace = "200ms"
[admin]
listen = "127.0.0.1:0"
max_connections = {ADMIN_CAP}
[[listeners]]
listen = "127.0.0.1:0"
[[routes]]
pool = "app"
[pools.app]
provider = {{ kind = "static", addresses = ["{worker}"] }}
"#,
        HEADER_TIMEOUT.as_millis()
    );
    let path = temp_path("admin-guard.toml");
    std::fs::write(&path, config).unwrap();
    // A hard limit too: weir raises its soft limit to the hard one at start.
    let mut weir = Reaped(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n {FD_LIMIT} && exec \"$0\" run --config \"$1\""
            ))
            .arg(WEIR)
            .arg(&path)
            .env("WEIR_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = weir.0.id();
    let log_lines = lines(weir.0.stderr.take().unwrap());
    let proxy = addr_in(&wait_for_line(&log_lines, "kind="));
    let admin = addr_in(&wait_for_line(&log_lines, "admin API listening"));
    assert_eq!(get(proxy, "/").await.status, 200);
    let idle_fds = open_fds(pid);

    let attacking = Arc::new(AtomicBool::new(true));
    let attack = Arc::new(AttackLog::default());
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|_| {
            tokio::spawn(idle_attacker(
                admin,
                Arc::clone(&attacking),
                Arc::clone(&attack),
            ))
        })
        .collect();

    // A good client, one new connection per request, for as long as it takes the attack to go
    // through three rounds of the admin cap (and at least 200 requests).
    let started = Instant::now();
    let (mut ok, mut total, mut peak_fds) = (0usize, 0usize, 0usize);
    while (attack.closed.load(Ordering::Relaxed) < 3 * ADMIN_CAP || total < 200)
        && started.elapsed() < DEADLINE
    {
        let served = tokio::time::timeout(GOOD_REQUEST_TIMEOUT, async {
            let stream = TcpStream::connect(proxy).await.ok()?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .ok()?;
            tokio::spawn(conn);
            let response = sender.send_request(get_req("/", "good.test")).await.ok()?;
            Some(response.status())
        })
        .await;
        total += 1;
        if matches!(served, Ok(Some(s)) if s == 200) {
            ok += 1;
        }
        peak_fds = peak_fds.max(open_fds(pid));
    }
    let rate = ok as f64 / total as f64;
    eprintln!(
        "good client: {ok}/{total} ({:.1} %) in {:?}; admin connections closed by weir: {}; weir fds idle {idle_fds}, peak {peak_fds}",
        rate * 100.0,
        started.elapsed(),
        attack.closed.load(Ordering::Relaxed),
    );
    assert!(rate >= 0.99, "good client {ok}/{total} during the attack");
    assert!(
        peak_fds <= idle_fds + ADMIN_CAP + FD_SLACK,
        "weir held {peak_fds} descriptors (idle: {idle_fds}, admin cap {ADMIN_CAP})"
    );

    // Every idle connection is closed by weir: none before the header timeout, the first
    // ones at it (not at the 30 s idle timeout).
    attacking.store(false, Ordering::Relaxed);
    for attacker in attackers {
        tokio::time::timeout(DEADLINE, attacker)
            .await
            .expect("every idle admin connection is closed")
            .unwrap();
    }
    assert_eq!(attack.never_closed.load(Ordering::Relaxed), 0);
    let lifetimes = attack.lifetimes.lock().unwrap().clone();
    let shortest = lifetimes.iter().min().copied().unwrap();
    assert!(
        shortest >= HEADER_TIMEOUT.mul_f32(0.9) && shortest < HEADER_TIMEOUT * 4,
        "shortest idle admin connection lived {shortest:?}"
    );
    // The admin API still answers once the attack is over.
    let (status, _) = admin_call(admin, "GET", "/healthz", None, "").await;
    assert_eq!(status, 200);
    let _ = std::fs::remove_file(&path);
}

/// Admin connections that stay open (`idle_timeout` shorter than `header_read_timeout`), some
/// after a request, some before any: at most the cap are open at once, each closes at
/// `idle_timeout`, and then the ones waiting behind them get their turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_close_at_idle_timeout_and_wait_at_the_cap() {
    const CAP: usize = 3;
    const IDLE: Duration = Duration::from_millis(400);
    let worker = demo("w").await;
    let weir = start_weir(
        &format!("header_read_timeout = \"10s\"\nidle_timeout = \"{}ms\"", IDLE.as_millis()),
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\nmax_connections = {CAP}\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n[pools.app]\nprovider = {{ kind = \"static\", addresses = [\"{worker}\"] }}\n"
        ),
    );
    let admin = weir.admin();
    let limit = std::sync::Arc::clone(weir.admin_connections());
    // One client that made a request and then idles on its keep-alive connection.
    let mut keep_alive = Client::connect(admin).await;
    assert_eq!(keep_alive.get("/healthz").await.status, 200);
    // And twice the cap that never send anything.
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..2 * CAP {
        silent.push(TcpStream::connect(admin).await.unwrap());
    }
    wait_until("the admin cap is full", || limit.open() == CAP).await;
    let waits: Vec<_> = silent
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut buf = [0u8; 16];
                let closed = tokio::time::timeout(DEADLINE, s.read(&mut buf)).await;
                assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
                opened.elapsed()
            })
        })
        .collect();
    let mut peak = 0;
    while !waits.iter().all(|w| w.is_finished()) {
        peak = peak.max(limit.open());
        assert!(
            opened.elapsed() < DEADLINE,
            "idle admin connections stay open"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(peak <= CAP, "{peak} admin connections open at once");
    let mut closed_after = Vec::new();
    for w in waits {
        closed_after.push(w.await.unwrap());
    }
    closed_after.sort();
    // The first ones were closed at the idle timeout (between 1x and 1.25x, plus a margin),
    // never before it; the later ones only after waiting for a slot.
    assert!(closed_after[0] >= IDLE, "{closed_after:?}");
    assert!(closed_after[0] < IDLE * 3, "{closed_after:?}");
    assert!(closed_after[2 * CAP - 1] >= IDLE * 2, "{closed_after:?}");
    eprintln!("silent admin connections closed after {closed_after:?}");
    // The accept loop takes the slot of the next connection before accepting it.
    wait_until("every admin slot is free again", || limit.open() <= 1).await;
    // The keep-alive client's connection was closed too; a new one is served.
    assert_eq!(admin_call(admin, "GET", "/healthz", None, "").await.0, 200);
    drop(keep_alive);
}
