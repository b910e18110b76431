//! Rewrites per route: the path, Host and fields a worker gets, and the fields a client gets
//! back, against a worker that records every head it reads.

use crate::common::*;

#[tokio::test]
async fn a_route_strips_and_adds_prefixes_sets_host_and_rewrites_fields() {
    let (worker, seen) = recording_worker().await;
    let weir = start_weir(
        "",
        &format!(
            r#"[[listeners]]
listen = "127.0.0.1:0"
[[routes]]
path_prefix = "/api"
pool = "app"
strip_prefix = true
add_prefix = "/v1"
rewrite_host = "app.internal:8080"
request_headers = {{ set = {{ x-env = "prod" }}, remove = ["x-debug"] }}
response_headers = {{ set = {{ x-frame-options = "DENY" }}, remove = ["content-length"] }}
[[routes]]
path_prefix = "/plain"
pool = "app"
[pools.app]
provider = {{ kind = "static", addresses = ["{worker}"] }}
"#
        ),
    );
    let last_head = || {
        let heads = seen.lock().unwrap();
        heads
            .last()
            .cloned()
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    let mut client = Client::connect(weir.addr()).await;
    let reply = client
        .send(
            hyper::Request::get("/api/users?id=7")
                .header("host", "shop.example")
                .header("x-debug", "1")
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "ok");
    assert_eq!(reply.headers["x-frame-options"], "DENY");
    let head = last_head();
    assert!(
        head.starts_with("get /v1/users?id=7 http/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nhost: app.internal:8080\r\n"), "{head}");
    assert!(
        head.contains("\r\nx-forwarded-host: shop.example\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nx-env: prod\r\n"), "{head}");
    assert!(!head.contains("x-debug"), "{head}");

    // The bare prefix becomes the added one's root.
    client.get("/api").await;
    let head = last_head();
    assert!(head.starts_with("get /v1/ http/1.1\r\n"), "{head}");

    // Another route is untouched, on the same connection.
    let reply = client.get("/plain/x").await;
    assert!(reply.headers.get("x-frame-options").is_none());
    let head = last_head();
    assert!(head.starts_with("get /plain/x http/1.1\r\n"), "{head}");
    assert!(!head.contains("x-env"), "{head}");
}

#[tokio::test]
async fn a_rewritten_request_waits_in_and_is_retried_on_its_own_route() {
    // The first worker is dead: the retry looks the route up again, by what the client sent
    // (the rewritten path would match no route here).
    let (worker, seen) = recording_worker().await;
    let weir = start_routed(
        "",
        "path_prefix = \"/api\"\nstrip_prefix = true",
        "balance = \"round_robin\"",
        &[dead_addr(), worker],
    );
    for _ in 0..4 {
        let reply = get(weir.addr(), "/api/x").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let heads = seen.lock().unwrap().clone();
    assert!(heads.iter().all(|h| h.starts_with("GET /x ")), "{heads:?}");
}

#[test]
fn bad_rewrites_fail_naming_the_key() {
    let base = "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n{}\n[pools.app]\nprovider = { kind = \"static\", addresses = [\"127.0.0.1:1\"] }\n";
    let err = |extra: &str| {
        weir::config::parse(&base.replace("{}", extra), "t.toml")
            .unwrap_err()
            .to_string()
    };
    assert!(err("add_prefix = \"v1\"").contains("routes[0].add_prefix"));
    assert!(err("add_prefix = \"/v1?x=1\"").contains("routes[0].add_prefix"));
    assert!(err("rewrite_host = \"a b\"").contains("routes[0].rewrite_host"));
    assert!(err("request_headers = { set = { connection = \"x\" } }")
        .contains("routes[0].request_headers"));
    assert!(err("response_headers = { remove = [\"a b\"] }").contains("routes[0].response_headers"));
}
