//! The dashboard in a real headless Chromium against a running weir with demo workers under
//! load: the rendered page shows the pool and every live worker with its state, the chart
//! draws the history, its actions (scale, protect, reload) reach the API, it fits a phone's
//! width, and with an admin token it shows only the prompt until the token is given.
//! Screenshots land in target/tmp/ (dashboard.png, dashboard-phone.png).

use crate::browser;
use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use browser::Browser;
use common::*;
use serde_json::Value;

/// A pool the autoscaler runs, of real demo worker processes.
fn scaled_weir(path: &std::path::Path) -> Weir {
    start_weir_at(
        "",
        &format!(
            r#"
[[listeners]]
listen = "127.0.0.1:0"
[[routes]]
pool = "app"
queue = {{ timeout = "20s" }}
[pools.app]
worker_concurrency = 2
provider = {{ kind = "process", command = ["{WEIR}", "demo-worker", "--listen", "127.0.0.1:{{port}}"] }}
health = {{ path = "/hello", interval = "200ms", timeout = "500ms" }}
[pools.app.autoscale]
min_workers = 1
max_workers = 4
max_idle_time = "5m"
"#
        ),
        Some(path),
    )
}

async fn api_json(admin: std::net::SocketAddr, path: &str, token: Option<&str>) -> Value {
    let (status, body) = admin_call(admin, "GET", path, token, "").await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// `id=state` of every worker the API lists, sorted.
async fn api_workers(admin: std::net::SocketAddr) -> Vec<String> {
    let workers = api_json(admin, "/api/v1/workers", None).await;
    let mut out: Vec<String> = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            format!(
                "{}={}",
                w["id"].as_str().unwrap(),
                w["state"].as_str().unwrap()
            )
        })
        .collect();
    out.sort();
    out
}

const PAGE_WORKERS: &str = "[...document.querySelectorAll('#workers tbody tr')]\
     .map(r => r.dataset.key + '=' + r.dataset.state).sort()";

/// Wait until the page's workers table is the API's list (ids and states).
async fn page_shows_every_worker(page: &mut Browser, admin: std::net::SocketAddr, least: usize) {
    let deadline = tokio::time::Instant::now() + browser::PAGE_DEADLINE;
    loop {
        let api = api_workers(admin).await;
        let shown: Vec<String> = serde_json::from_value(page.eval(PAGE_WORKERS).await).unwrap();
        if api.len() >= least && api == shown {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page's workers {shown:?} never matched the API's {api:?} (at least {least})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn artifact(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_pool_its_workers_and_history_and_its_actions_reach_the_api() {
    if !browser::available("dashboard") {
        return;
    }
    let path = temp_path("dashboard.toml");
    let weir = scaled_weir(&path);
    wait_until("a first ready worker", || {
        weir.workers("app")
            .iter()
            .any(|w| w.state() == weir::pool::WorkerState::Ready)
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = looping_clients(weir.addr(), 3, "/?delay=20ms", &stop);

    let admin = weir.admin();
    let mut page = Browser::open(&format!("http://{admin}/"), 1280, 1400).await;
    page.wait_for(
        "the pool's card with a ready worker",
        "Number(document.querySelector('[data-pool=\"app\"] [data-field=\"ready\"]')?.textContent) >= 1",
        "document.body.innerText",
    )
    .await;
    page_shows_every_worker(&mut page, admin, 1).await;
    page.wait_for(
        "a chart with points and a request rate",
        "['ready', 'in_flight', 'queued', 'rps'].every(s => \
           Number(document.querySelector(`[data-pool=\"app\"] polyline[data-series=\"${s}\"]`)?.dataset.points) >= 3) \
         && state.history.get('app').some(s => s.rps > 0)",
        "[...document.querySelectorAll('polyline')].map(p => p.dataset.series + ':' + p.dataset.points)",
    )
    .await;

    // Scale to 4 through the page's form: the pool changes in the API, and the page shows
    // the result and the new workers.
    page.eval(
        "(() => { const f = document.querySelector('[data-pool=\"app\"] form.scale'); \
           f.querySelector('input').value = '4'; f.requestSubmit(); return true; })()",
    )
    .await;
    page.wait_for(
        "the scale result",
        "document.getElementById('result').textContent.includes('asked for 4')",
        "document.getElementById('result').textContent",
    )
    .await;
    // The scaler takes the count at once (and carries on from there: under this load its
    // own wish is lower, which it acts on only after max_idle_time).
    let activity = api_json(admin, "/api/v1/activity", None).await;
    assert!(
        activity
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "manual" && e["to"] == 4),
        "{activity}"
    );
    wait_ready_ids(admin, 4).await;
    page_shows_every_worker(&mut page, admin, 4).await;
    // Each worker's row shows the revision it was launched with.
    let workers = api_json(admin, "/api/v1/workers", None).await;
    let revision = workers[0]["revision"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(revision.len(), 8, "a launched worker's revision: {workers}");
    page.wait_for(
        "every worker's revision",
        &format!(
            "(() => {{ const cells = [...document.querySelectorAll('#workers tbody td.revision')]; \
               return cells.length >= 4 && cells.every(c => c.textContent === '{revision}'); }})()"
        ),
        "document.getElementById('workers').innerText",
    )
    .await;
    page.wait_for(
        "the manual scaling in the activity log and on the chart",
        "[...document.querySelectorAll('#activity tbody tr')].some(r => r.innerText.includes('manual')) \
         && document.querySelector('[data-pool=\"app\"] line[data-action=\"manual\"]') !== null",
        "document.getElementById('activity').innerText",
    )
    .await;

    // Protect a worker with its row's button.
    let id: String = serde_json::from_value(
        page.eval(
            "(() => { const r = document.querySelector('#workers tbody tr'); \
               r.querySelector('button.protect').click(); return r.dataset.key; })()",
        )
        .await,
    )
    .unwrap();
    let protected = || async {
        let workers = api_json(admin, "/api/v1/workers", None).await;
        workers
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == id.as_str() && w["protected"] == true)
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !protected().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never protected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    page.wait_for(
        "the row showing the protection",
        &format!(
            "document.querySelector('#workers tbody tr[data-key=\"{id}\"] button.protect').textContent === 'Unprotect'"
        ),
        "document.getElementById('workers').innerText",
    )
    .await;

    // Reload the config from the header button.
    page.eval("document.getElementById('reload').click(), true")
        .await;
    page.wait_for(
        "the reload result",
        "document.getElementById('result').textContent.startsWith('Config reloaded')",
        "document.getElementById('result').textContent",
    )
    .await;
    page.screenshot(&artifact("dashboard.png")).await;

    // A phone's width: nothing wider than the screen but the tables, which scroll in place.
    page.resize(390, 844, true).await;
    page.wait_for(
        "the page to fit 390 px",
        "document.documentElement.scrollWidth <= window.innerWidth",
        "[document.documentElement.scrollWidth, window.innerWidth]",
    )
    .await;
    page.screenshot(&artifact("dashboard-phone.png")).await;

    stop.store(true, Ordering::Relaxed);
    let failures = failures_of(clients).await;
    assert!(failures.is_empty(), "requests failed: {failures:?}");
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_page_shows_only_the_prompt_until_the_token_is_given() {
    if !browser::available("dashboard token") {
        return;
    }
    let worker = demo("hidden-worker").await;
    let weir = start_weir(
        "",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret-token\"\n\
             [[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"hidden-pool\"\n\
             [pools.hidden-pool]\nprovider = {{ kind = \"static\", addresses = [\"{worker}\"] }}\n"
        ),
    );
    let admin = weir.admin();
    let mut page = Browser::open(&format!("http://{admin}/"), 1000, 800).await;
    let prompt_only = "!document.getElementById('login').hidden \
        && document.getElementById('main').hidden \
        && document.getElementById('pools').children.length === 0 \
        && !document.body.innerText.includes('hidden-pool')";
    let explain = "document.body.innerText";
    page.wait_for("the token prompt", prompt_only, explain)
        .await;
    let address = worker.to_string();
    let html: String =
        serde_json::from_value(page.eval("document.documentElement.outerHTML").await).unwrap();
    assert!(
        !html.contains("hidden-pool") && !html.contains(&address),
        "data in the page before the token: {html}"
    );

    // A wrong token is refused and shows nothing more.
    page.eval(
        "document.getElementById('token').value = 'wrong'; \
         document.getElementById('login-form').requestSubmit(); true",
    )
    .await;
    page.wait_for(
        "the refusal",
        "document.getElementById('login-error').textContent.includes('refused')",
        explain,
    )
    .await;
    page.wait_for("still only the prompt", prompt_only, explain)
        .await;

    // The right one opens the dashboard, kept in this tab's sessionStorage, never a cookie.
    page.eval(
        "document.getElementById('token').value = 's3cret-token'; \
         document.getElementById('login-form').requestSubmit(); true",
    )
    .await;
    let shows_data = "document.querySelector('[data-pool=\"hidden-pool\"]') !== null \
        && document.getElementById('login').hidden && !document.getElementById('main').hidden";
    page.wait_for("the dashboard", shows_data, explain).await;
    assert_eq!(
        page.eval("[sessionStorage.getItem('weir.admin-token'), document.cookie]")
            .await,
        serde_json::json!(["s3cret-token", ""])
    );

    // A reload of the page keeps the token for the tab; forgetting it brings the prompt back.
    // A mark on the old document tells it from the reloaded one.
    page.eval("window.beforeReload = true; location.reload(), true")
        .await;
    page.wait_for(
        "the dashboard after a page reload",
        &format!("window.beforeReload === undefined && {shows_data}"),
        explain,
    )
    .await;
    page.eval("document.getElementById('forget').click(), true")
        .await;
    page.wait_for("the prompt after forgetting", prompt_only, explain)
        .await;
    assert_eq!(
        page.eval("sessionStorage.getItem('weir.admin-token')")
            .await,
        Value::Null
    );
}

/// A process pool of two demo workers whose command ends with `extra` (a new revision per
/// value), with one long canary step at half the requests.
fn canary_config(extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
listen = "127.0.0.1:0"
[[routes]]
pool = "app"
queue = {{ timeout = "20s" }}
[pools.app]
worker_concurrency = 2
provider = {{ kind = "process", command = ["{WEIR}", "demo-worker", "--listen", "127.0.0.1:{{port}}"{extra}] }}
health = {{ path = "/hello", interval = "200ms", timeout = "500ms" }}
[pools.app.autoscale]
min_workers = 2
max_workers = 4
max_idle_time = "5m"
[pools.app.rollout]
steps = [{{ weight = 50, hold = "10m" }}]
"#
    )
}

/// `rollout.state` of pool `app` in the API.
async fn rollout_state(admin: std::net::SocketAddr) -> Value {
    let pools = api_json(admin, "/api/v1/pools", None).await;
    pools[0]["rollout"]["state"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_rollout_in_progress_and_its_buttons_pause_and_abort_it() {
    if !browser::available("dashboard rollout") {
        return;
    }
    let path = temp_path("dashboard-rollout.toml");
    let weir = start_weir_at("", &canary_config(""), Some(&path));
    wait_ready_ids(weir.admin(), 2).await;
    let admin = weir.admin();
    let mut page = Browser::open(&format!("http://{admin}/"), 1280, 1000).await;
    page.wait_for(
        "the pool's card without a rollout",
        "document.querySelector('[data-pool=\"app\"] .rollout')?.hidden === true",
        "document.body.innerText",
    )
    .await;

    // A new command: the canary step holds for ten minutes, half the requests to one new
    // worker beside the two old ones.
    std::fs::write(&path, canary_config(", \"--delay\", \"1ms\"")).unwrap();
    let (status, body) = admin_call(admin, "POST", "/api/v1/reload", None, "").await;
    assert_eq!(status, 200, "{body}");
    let card = "document.querySelector('[data-pool=\"app\"] .rollout')";
    let explain = format!(
        "{card}.innerText + ' | ' + {card}.querySelector('.bar').getAttribute('aria-valuenow')"
    );
    page.wait_for(
        "the rollout's progress: one new of three ready",
        &format!(
            "!{card}.hidden && {card}.innerText.includes('canary step 1/1 at 50%') \
             && {card}.querySelector('.bar').getAttribute('aria-valuenow') === '33' \
             && !{card}.querySelector('button[data-action=\"pause\"]').hidden \
             && {card}.querySelector('button[data-action=\"resume\"]').hidden"
        ),
        &explain,
    )
    .await;
    page.screenshot(&artifact("dashboard-rollout.png")).await;

    // Pause, then abort, with the card's buttons.
    page.eval(&format!(
        "{card}.querySelector('button[data-action=\"pause\"]').click(), true"
    ))
    .await;
    wait_api(admin, "paused").await;
    page.wait_for(
        "the paused rollout with its resume button",
        &format!(
            "{card}.innerText.includes('paused') \
             && !{card}.querySelector('button[data-action=\"resume\"]').hidden \
             && {card}.querySelector('button[data-action=\"pause\"]').hidden"
        ),
        &explain,
    )
    .await;
    page.eval(&format!(
        "{card}.querySelector('button[data-action=\"abort\"]').click(), true"
    ))
    .await;
    wait_api(admin, "aborted").await;
    page.wait_for(
        "the aborted rollout, with no button left",
        &format!(
            "{card}.innerText.includes('aborted') \
             && [...{card}.querySelectorAll('button')].every(b => b.hidden) \
             && document.getElementById('result').textContent.includes('aborted')"
        ),
        &explain,
    )
    .await;
    let _ = std::fs::remove_file(&path);
}

/// Wait until the API shows the pool's rollout `state`.
async fn wait_api(admin: std::net::SocketAddr, state: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while rollout_state(admin).await != state {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rollout never {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
