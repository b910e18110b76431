//! The `weir` binary: `check`, start-up failures, and `run` serving real demo-worker processes
//! until SIGTERM.

use crate::common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{lines, wait_for_line, Reaped, WEIR};

fn temp_config(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("weir-test-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_accepts_the_shipped_config() {
    let out = Command::new(WEIR)
        .args(["check", "--config", "config/weir.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_rejects_bad_config_with_one_line_naming_the_key() {
    let path = temp_config(
        "bad",
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"missing\"\n[pools.app]\nprovider = { kind = \"static\", addresses = [\"127.0.0.1:1\"] }\n",
    );
    let out = Command::new(WEIR)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("routes[0].pool"), "{stderr}");
    let out = Command::new(WEIR)
        .args(["check", "--config", "/nonexistent/weir.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/weir.toml"));
}

#[test]
fn check_refuses_values_that_would_break_serving() {
    let base = "[[listeners]]\nlisten = \"127.0.0.1:8080\"\n[[routes]]\npool = \"app\"\n[pools.app]\nprovider = { kind = \"static\", addresses = [\"127.0.0.1:1\"] }\n";
    for (name, text, key) in [
        (
            "huge-duration",
            format!("[server]\nidle_timeout = \"18446744073709551615s\"\n{base}"),
            "weir.toml:2: server.idle_timeout: duration \"18446744073709551615s\" is longer than the 1 year",
        ),
        (
            "no-h2-streams",
            format!("[server]\nmax_h2_streams = 0\n{base}"),
            "weir.toml: server.max_h2_streams: must be at least 1",
        ),
        (
            "admin-on-listener",
            format!("[admin]\nlisten = \"127.0.0.1:8080\"\n{base}"),
            "weir.toml: admin.listen: 127.0.0.1:8080 overlaps listeners[0].listen",
        ),
    ] {
        let path = temp_config(name, &text);
        let out = Command::new(WEIR)
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "weir.toml");
        assert!(!out.status.success(), "{name}: accepted");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.starts_with(key), "{name}: {stderr}");
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn address_in_use_fails_fast_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let path = temp_config(
        "taken",
        &format!("[[listeners]]\nlisten = \"{addr}\"\n[[routes]]\npool = \"app\"\n[pools.app]\nprovider = {{ kind = \"static\", addresses = [\"127.0.0.1:1\"] }}\n"),
    );
    let started = Instant::now();
    let out = Command::new(WEIR)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&addr.to_string()), "{stderr}");
}

#[test]
fn run_serves_demo_worker_processes_and_stops_on_sigterm() {
    let mut worker = Reaped(
        Command::new(WEIR)
            .args([
                "demo-worker",
                "--listen",
                "127.0.0.1:0",
                "--name",
                "proc-worker",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let worker_out = lines(worker.0.stdout.take().unwrap());
    let line = wait_for_line(&worker_out, "listening on");
    let worker_addr: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();

    let path = temp_config(
        "run",
        &format!("[server]\nthreads = 2\nshutdown_grace = \"2s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n[pools.app]\nprovider = {{ kind = \"static\", addresses = [\"{worker_addr}\"] }}\n"),
    );
    let mut weir = Reaped(
        Command::new(WEIR)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let weir_err = lines(weir.0.stderr.take().unwrap());
    let line = wait_for_line(&weir_err, "listening");
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .parse()
        .unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let reply = common::get(addr, "/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "hello from proc-worker\n");
    });

    // SIGHUP reloads the config file in place.
    let status = Command::new("kill")
        .args(["-HUP", &weir.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_line(&weir_err, "SIGHUP: config reloaded");

    let status = Command::new("kill")
        .args(["-TERM", &weir.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + common::DEADLINE;
    let exit = loop {
        if let Some(exit) = weir.0.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "weir did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(exit.success(), "{exit:?}");
}

/// The soft and hard `Max open files` of process `pid` ("self" for this one).
fn nofile_limits(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].parse().unwrap(), fields[4].parse().unwrap())
}

#[test]
fn run_raises_the_soft_descriptor_limit_and_warns_when_the_caps_still_do_not_fit() {
    let (_, hard) = nofile_limits("self");
    let soft = (hard / 2).min(256);
    // As many client connections as the hard limit: the admin cap and the reserve cannot fit.
    let path = temp_config(
        "nofile",
        &format!("[server]\nthreads = 1\nmax_connections = {hard}\nshutdown_grace = \"100ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n[pools.app]\nprovider = {{ kind = \"static\", addresses = [\"127.0.0.1:1\"] }}\n"),
    );
    let mut weir = Reaped(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -Sn {soft} && exec \"$0\" run --config \"$1\""
            ))
            .arg(WEIR)
            .arg(&path)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let err = lines(weir.0.stderr.take().unwrap());
    let raised = wait_for_line(&err, "raised the soft RLIMIT_NOFILE");
    assert!(
        raised.contains(&format!("from={soft}")) && raised.contains(&format!("to={hard}")),
        "{raised}"
    );
    let warning = wait_for_line(&err, "below server.max_connections");
    assert!(warning.contains(" WARN "), "{warning}");
    assert!(
        warning.contains(&format!(
            "RLIMIT_NOFILE is {hard} (hard limit {hard}), below server.max_connections ({hard}) + admin.max_connections (256) + 64 in reserve = {}",
            hard + 256 + 64
        )),
        "{warning}"
    );
    wait_for_line(&err, "admin API listening");
    assert_eq!(nofile_limits(&weir.0.id().to_string()), (hard, hard));
    let status = Command::new("kill")
        .args(["-TERM", &weir.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + common::DEADLINE;
    while weir.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "weir did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_file(&path);
}
