//! Idle connections give way: with more idle keep-alive connections than weir may hold (its
//! descriptor limit, or `server.max_connections`), the longest idle are closed to let new
//! clients in, and a good client sending one GET every 20 ms on a new connection gets at
//! least 99 % of its requests answered. weir runs as its own process here, so its descriptor
//! limit can be set without touching the test's.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Open `n` keep-alive connections that each make one request and then idle. Those weir
/// cannot take yet wait in its backlog; none of them is waited for.
async fn idle_clients(addr: SocketAddr, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(tokio::spawn(async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return;
            };
            if stream
                .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            // Idle until closed.
            let _ = stream.read(&mut buf).await;
        }));
    }
    held
}

fn config(worker: SocketAddr, server_keys: &str, name: &str) -> std::path::PathBuf {
    let path = temp_path(name);
    std::fs::write(
        &path,
        format!(
            "[server]\nthreads = 2\n{server_keys}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n\
             [pools.app]\nprovider = {{ kind = \"static\", addresses = [\"{worker}\"] }}\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_give_way_at_the_descriptor_limit() {
    let worker = demo("w").await;
    let running = run_weir_with_nofile(&config(worker, "", "give-way-nofile.toml"), 1024);
    assert_eq!(get(running.addr, "/hello").await.status, 200);
    let held = idle_clients(running.addr, 1100).await;
    let (ok, tried) = good_client_every_20ms(running.addr, Duration::from_secs(3)).await;
    eprintln!(
        "good client beside 1,100 idle keep-alive connections, 1,024 descriptors: {ok} of {tried}"
    );
    assert!(ok * 100 >= tried * 99, "{ok} of {tried} answered");
    for task in held {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_give_way_at_max_connections() {
    let worker = demo("w").await;
    let running = run_weir_with_nofile(
        &config(worker, "max_connections = 300\n", "give-way-cap.toml"),
        20_000,
    );
    assert_eq!(get(running.addr, "/hello").await.status, 200);
    let held = idle_clients(running.addr, 400).await;
    let (ok, tried) = good_client_every_20ms(running.addr, Duration::from_secs(3)).await;
    eprintln!(
        "good client beside 400 idle keep-alive connections, max_connections 300: {ok} of {tried}"
    );
    assert!(ok * 100 >= tried * 99, "{ok} of {tried} answered");
    for task in held {
        task.abort();
    }
}
