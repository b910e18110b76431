//! A real headless Chromium driven over the DevTools protocol, for the dashboard's tests: start
//! it on a page, evaluate JavaScript in that page, wait for conditions with a deadline, take
//! screenshots. The browser runs in its own process group with a fresh profile, and the whole
//! group is killed when the handle is dropped, however the test ends.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::common::{get_req, Client};

/// How long a condition in the page may take (a browser on a busy 2-core machine is slow).
pub const PAGE_DEADLINE: Duration = Duration::from_secs(45);

/// The Chromium binary, when installed.
fn binary() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

/// Whether a browser can run here; panics when one is required (`WEIR_REQUIRE_CHROMIUM=1`).
pub fn available(test: &str) -> bool {
    if binary().is_some() {
        return true;
    }
    if std::env::var("WEIR_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
        panic!("{test}: no chromium installed (apt-get install chromium)");
    }
    crate::common::skipped(test, "no chromium installed (apt-get install chromium)");
    false
}

/// A running headless browser with one page open.
pub struct Browser {
    child: Child,
    profile: PathBuf,
    page: WebSocketStream<TcpStream>,
    next_id: u64,
}

impl Browser {
    /// Start Chromium on `url` and attach to its page.
    pub async fn open(url: &str, width: u32, height: u32) -> Browser {
        let binary = binary().expect("chromium installed");
        let profile = std::env::temp_dir().join(format!(
            "weir-test-chromium-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.display()),
                url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromium starts");
        let page = match attach(&profile, url).await {
            Ok(page) => page,
            Err(e) => {
                kill_group(child.id());
                panic!("cannot attach to chromium's page: {e}");
            }
        };
        let mut browser = Browser {
            child,
            page,
            profile,
            next_id: 0,
        };
        browser.call("Runtime.enable", json!({})).await;
        browser
    }

    /// Send one DevTools command and return its result (events in between are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// [`Browser::call`], with the protocol's error (e.g. no page context mid-navigation).
    pub async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        self.page.send(Message::text(message)).await.unwrap();
        let reply = tokio::time::timeout(PAGE_DEADLINE, async {
            while let Some(frame) = self.page.next().await {
                let Ok(Message::Text(text)) = frame else {
                    continue;
                };
                let value: Value = serde_json::from_str(&text).unwrap_or_default();
                if value["id"] == id {
                    return value;
                }
            }
            panic!("chromium closed the DevTools connection during {method}");
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} within {PAGE_DEADLINE:?}"));
        match reply.get("error") {
            Some(error) => Err(error.to_string()),
            None => Ok(reply["result"].clone()),
        }
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub async fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .await
            .unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    /// [`Browser::eval`], with the exception it threw, if it did.
    pub async fn try_eval(&mut self, expression: &str) -> Result<Value, String> {
        let result = self
            .try_call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        match result.get("exceptionDetails") {
            Some(exception) => Err(exception.to_string()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Evaluate `expression` until it is true (an exception, as while a page loads, counts
    /// as not yet); on the deadline, fail naming `what` and showing `explain` evaluated then
    /// (what the page had instead).
    pub async fn wait_for(&mut self, what: &str, expression: &str, explain: &str) {
        let deadline = tokio::time::Instant::now() + PAGE_DEADLINE;
        loop {
            let last = self.try_eval(expression).await;
            if last == Ok(Value::Bool(true)) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let seen = self.try_eval(explain).await;
                panic!("timed out waiting for {what} (last: {last:?}); the page had: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Emulate a device `width` CSS pixels wide (a phone: 390).
    pub async fn resize(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
    }

    /// Save a PNG of the whole page at `path`.
    pub async fn screenshot(&mut self, path: &std::path::Path) {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let data = shot["data"].as_str().expect("screenshot data");
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64 screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(self.child.id());
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Kill the browser's whole process group: it and its renderer, GPU and utility processes.
fn kill_group(leader: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{leader}")])
        .status();
}

static PROFILES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Wait for the browser to write its DevTools port into `profile`, then open a DevTools
/// connection to the page showing `url`.
async fn attach(
    profile: &std::path::Path,
    url: &str,
) -> Result<WebSocketStream<TcpStream>, String> {
    let until = tokio::time::Instant::now() + PAGE_DEADLINE;
    loop {
        if let Some(ws) = try_attach(profile, url).await {
            return Ok(ws);
        }
        if tokio::time::Instant::now() >= until {
            return Err(format!("no page showing {url} within {PAGE_DEADLINE:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn try_attach(profile: &std::path::Path, url: &str) -> Option<WebSocketStream<TcpStream>> {
    let text = std::fs::read_to_string(profile.join("DevToolsActivePort")).ok()?;
    let port: u16 = text.lines().next()?.trim().parse().ok()?;
    let devtools = SocketAddr::from(([127, 0, 0, 1], port));
    // Connectable first: the common client panics on a refused connection.
    drop(TcpStream::connect(devtools).await.ok()?);
    let reply = Client::connect(devtools)
        .await
        .send(get_req("/json/list", &devtools.to_string()))
        .await;
    let targets: Value = serde_json::from_slice(&reply.body).ok()?;
    let target = targets
        .as_array()?
        .iter()
        .find(|t| t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url)))?;
    let ws_url = target["webSocketDebuggerUrl"].as_str()?.to_string();
    let tcp = TcpStream::connect(devtools).await.ok()?;
    let (ws, _) = tokio_tungstenite::client_async(ws_url, tcp).await.ok()?;
    Some(ws)
}
