//! A static pool's names followed in DNS: new addresses join, vanished ones leave, a failed
//! lookup keeps the last set and says so on /readyz, all with clients sending throughout.
//! The test runs its own DNS server (below: A records from a table it can change, TTL 1 s).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};

use crate::common::*;

/// What the test DNS server answers.
#[derive(Default)]
struct Zone {
    a: HashMap<String, Vec<Ipv4Addr>>,
    /// Answer SERVFAIL to everything (a broken DNS server).
    failing: bool,
    queries: usize,
}

/// A DNS server on 127.0.0.1 answering A queries from its zone with TTL 1 (AAAA: no records).
struct TestDns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
}

impl TestDns {
    async fn start() -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone: Arc<Mutex<Zone>> = Arc::default();
        let answering = Arc::clone(&zone);
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if let Some(reply) = answer(&buf[..n], &answering) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        TestDns { addr, zone }
    }

    fn set(&self, name: &str, ips: &[&str]) {
        let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        self.zone.lock().unwrap().a.insert(name.to_string(), ips);
    }

    fn fail(&self, failing: bool) {
        self.zone.lock().unwrap().failing = failing;
    }
}

/// The reply to one query: the question echoed, then A records (pointing at the question's
/// name) with TTL 1.
fn answer(query: &[u8], zone: &Mutex<Zone>) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question = &query[12..at + 4];
    let name = labels.join(".");
    let mut zone = zone.lock().unwrap();
    zone.queries += 1;
    let ips = match (zone.failing, qtype) {
        (true, _) => None,
        (false, 1) => Some(zone.a.get(&name).cloned().unwrap_or_default()),
        (false, _) => Some(Vec::new()),
    };
    let mut reply = Vec::with_capacity(512);
    reply.extend_from_slice(&query[..2]);
    // QR, opcode 0, AA, RD as asked; RA; rcode SERVFAIL (2), NXDOMAIN (3) or none.
    let rcode = match &ips {
        None => 2,
        Some(list) if list.is_empty() && qtype == 1 && !zone.a.contains_key(&name) => 3,
        Some(_) => 0,
    };
    reply.push(0x84 | (query[2] & 0x01));
    reply.push(0x80 | rcode);
    let ips = ips.unwrap_or_default();
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&(ips.len() as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(question);
    for ip in ips {
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}

/// Demo workers on 127.0.0.2 and 127.0.0.3 at one port (found free on both).
async fn workers_on_one_port() -> u16 {
    for _ in 0..20 {
        let first = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = first.local_addr().unwrap().port();
        let Ok(second) = TcpListener::bind(("127.0.0.3", port)).await else {
            continue;
        };
        tokio::spawn(weir::demo::serve(
            first,
            weir::demo::DemoOptions::new("dns-a", Duration::ZERO),
        ));
        tokio::spawn(weir::demo::serve(
            second,
            weir::demo::DemoOptions::new("dns-b", Duration::ZERO),
        ));
        return port;
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

fn ready_addrs(weir: &Weir) -> Vec<String> {
    let mut addrs: Vec<String> = weir
        .workers("app")
        .iter()
        .filter(|w| w.state() == weir::pool::WorkerState::Ready)
        .map(|w| w.addr.ip().to_string())
        .collect();
    addrs.sort();
    addrs
}

async fn readyz(weir: &Weir) -> String {
    admin_call(weir.admin(), "GET", "/readyz", None, "").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_pool_follows_its_records_and_keeps_them_through_a_failed_lookup() {
    let port = workers_on_one_port().await;
    let dns = TestDns::start().await;
    dns.set("app.test", &["127.0.0.2"]);
    let weir = start_weir(
        "",
        &format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n[pools.app]\nprovider = {{ kind = \"static\", addresses = [\"app.test:{port}\"], dns_servers = [\"{}\"] }}\n",
            dns.addr
        ),
    );
    wait_until("the name's one address serves", || {
        ready_addrs(&weir) == ["127.0.0.2"]
    })
    .await;

    // Clients send throughout; none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (stop, sent, failed, at) = (stop.clone(), sent.clone(), failed.clone(), weir.addr());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if get(at, "/").await.status != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // The records' TTL (1 s) brings the next lookup, well before dns_refresh's 30 s.
    dns.set("app.test", &["127.0.0.2", "127.0.0.3"]);
    wait_until("a second address joins", || {
        ready_addrs(&weir) == ["127.0.0.2", "127.0.0.3"]
    })
    .await;
    dns.set("app.test", &["127.0.0.3"]);
    wait_until("the first leaves", || {
        weir.workers("app").len() == 1 && ready_addrs(&weir) == ["127.0.0.3"]
    })
    .await;

    // The DNS server breaks: the last set stays and /readyz names the failure.
    dns.fail(true);
    let mut said = String::new();
    for _ in 0..100 {
        said = readyz(&weir).await;
        if said.contains("dns lookup failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        said.contains("pool app: dns lookup failed: app.test"),
        "{said}"
    );
    assert!(said.contains("keeping 1 address"), "{said}");
    assert_eq!(get(weir.addr(), "/").await.served_by(), "dns-b");
    dns.fail(false);
    // The next lookup clears it.
    for _ in 0..100 {
        if !readyz(&weir).await.contains("dns") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!readyz(&weir).await.contains("dns"));

    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    eprintln!(
        "dns: {} requests while the name went 1 -> 2 -> 1 address and its server failed, {} failed; {} queries",
        sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        dns.zone.lock().unwrap().queries
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
}

#[test]
fn names_are_checked_when_the_config_is_read() {
    let base = "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n[pools.app]\nprovider = { kind = \"static\", addresses = [ADDRS] EXTRA }\n";
    let err = |addrs: &str, extra: &str| {
        weir::config::parse(
            &base.replace("ADDRS", addrs).replace("EXTRA", extra),
            "t.toml",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
    };
    assert!(err("\"app.internal\"", "").contains("addresses[0]"));
    assert!(err("\"a b:80\"", "").contains("addresses[0]"));
    assert!(err("\"app.internal:80\", \"APP.internal:80\"", "").contains("listed twice"));
    assert!(err("\"app.internal:80\"", ", dns_refresh = \"10ms\"").contains("dns_refresh"));
    assert!(err("\"app.internal:80\"", ", dns_servers = [\"ns.example\"]").contains("dns_servers"));
    assert_eq!(
        err(
            "\"app.internal:80\", \"10.0.0.1:80\"",
            ", dns_refresh = \"5s\""
        ),
        ""
    );
}
