//! What a fleet asks of Redis: 10 weir instances (in this process, each with its own
//! connection) heartbeating against a real redis-server on a loopback port for 10 s, one of
//! them leading, then what Redis processed, as `MONITOR` shows it: the commands the
//! instances sent (a script is one) and every operation (a script's inner calls included),
//! per second and per instance heartbeat.
//! Run: `cargo bench --bench fleet_redis` (needs redis-server).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::config::parse;
use weir::fleet::Fleet;
use weir::state::{Shared, Snapshot};

const INSTANCES: usize = 10;
const MEASURE: Duration = Duration::from_secs(10);

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis() -> Redis {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server installed (apt-get install redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis(child, port)
}

/// Watch what Redis runs (`MONITOR`) for `window`: (commands clients sent, operations run
/// from scripts).
fn monitor(port: u16, window: Duration) -> (u64, u64) {
    use std::io::BufRead;
    let mut child = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "MONITOR"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    let stdout = child.stdout.take().expect("piped");
    let counting = std::thread::spawn(move || {
        let (mut sent, mut scripted) = (0u64, 0u64);
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            // 1796668176.730994 [0 lua] "SET" ...   or   ... [0 127.0.0.1:55332] "EVALSHA" ...
            match line.split_once(" [").map(|(_, rest)| rest) {
                Some(rest) if rest.contains(" lua] ") => scripted += 1,
                Some(_) => sent += 1,
                None => {}
            }
        }
        (sent, scripted)
    });
    std::thread::sleep(window);
    let _ = child.kill();
    let _ = child.wait();
    counting.join().expect("counting thread")
}

fn main() {
    let redis = redis();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for i in 0..INSTANCES {
            let config = parse(
                &format!(
                    "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n\
                     [cluster]\nredis = \"redis://127.0.0.1:{port}/0\"\nname = \"i{i}\"\nprefix = \"bench\"\n\
                     [[routes]]\npool = \"app\"\n[pools.app]\nworker_concurrency = 8\n\
                     provider = {{ kind = \"static\", addresses = [\"127.0.0.1:9\", \"127.0.0.1:10\"] }}\n",
                    admin = 20_000 + i,
                    port = redis.1
                ),
                "bench",
            )
            .expect("config");
            let cluster = config.cluster.clone().expect("[cluster]");
            let snapshot = Snapshot::build(config, "bench").expect("snapshot");
            let shared = Shared::new(snapshot);
            let admin: SocketAddr = ([127, 0, 0, 1], 20_000 + i as u16).into();
            let fleet = Fleet::new(&cluster, admin);
            tasks.push(tokio::spawn(Arc::clone(&fleet).run(shared, stopped.clone())));
        }
        // Let the fleet form and settle, then measure.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let port = redis.1;
        let (sent, scripted) = tokio::task::spawn_blocking(move || monitor(port, MEASURE))
            .await
            .expect("monitor");
        let _ = stop.send(true);
        for task in tasks {
            let _ = task.await;
        }
        let seconds = MEASURE.as_secs_f64();
        let beats = INSTANCES as f64 * seconds / weir::fleet::HEARTBEAT.as_secs_f64();
        let clients = sent as f64;
        let all = (sent + scripted) as f64;
        println!(
            "fleet of {INSTANCES}, {seconds} s: {:.0} client commands/s ({:.2} per heartbeat), \
             {:.0} operations/s ({:.2} per heartbeat), at {:.0} heartbeats/s",
            clients / seconds,
            clients / beats,
            all / seconds,
            all / beats,
            beats / seconds,
        );
    });
}
