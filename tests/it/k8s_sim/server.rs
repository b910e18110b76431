//! The HTTP API: one hyper HTTP/1 connection task per client; each request is logged, its
//! token checked, routed by path, checked against the denial rules (authorization before
//! existence, as in a real apiserver), then answered. A watch answers with a chunked body of
//! newline-delimited events fed by its channel in the state. Lists honour `limit` trivially:
//! there is one slice, so no list is ever cut and no `continue` token is ever issued.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::{autoscaling::v1::Scale, core::v1::Pod};
use k8s_openapi::{List, ListableResource};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::objects::{line, status, typed, SERVICE_LABEL};
use super::state::{Sim, State};
use super::{TOKEN, USER};

type Body = UnsyncBoxBody<Bytes, Infallible>;
/// A body, or the error response to send instead.
type Answer = Result<Bytes, Box<Response<Body>>>;
type Query = [(String, String)];
/// An object a Status names: (name, group, plural).
type Of<'a> = Option<(&'a str, &'a str, &'a str)>;

/// How long a watch stays open when the client names no timeoutSeconds (an apiserver picks
/// 30 to 60 minutes).
const DEFAULT_WATCH_TIMEOUT: u64 = 1800;

pub async fn serve(listener: TcpListener, sim: Arc<Sim>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let sim = sim.clone();
        let service = hyper::service::service_fn(move |req| {
            let sim = sim.clone();
            async move { Ok::<_, Infallible>(handle(&sim, req).await) }
        });
        let http = hyper::server::conn::http1::Builder::new();
        tokio::spawn(http.serve_connection(TokioIo::new(stream), service));
    }
}

async fn handle(sim: &Arc<Sim>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parse_query(parts.uri.query().unwrap_or(""));
    let watch = matches!(param(&query, "watch"), Some("true" | "1"));
    let shown: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let shown = format!("{} {path}?{}", parts.method, shown.join("&"));
    sim.lock().log.push(shown.trim_end_matches('?').to_string());
    sim.lock().watch_requests += usize::from(watch);
    let auth = parts.headers.get(header::AUTHORIZATION);
    if auth.and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {TOKEN}")) {
        return fail(401, "Unauthorized", "Unauthorized", None);
    }
    let Some((ns, resource, name)) = route(&path) else {
        let message = "the server could not find the requested resource";
        return fail(404, "NotFound", message, None);
    };
    let verb = match (&parts.method, name, watch) {
        (&Method::GET, None, true) => "watch",
        (&Method::GET, None, false) => "list",
        (&Method::GET, Some(_), _) => "get",
        (&Method::PATCH, Some(_), _) => "patch",
        _ => return not_allowed(),
    };
    let rule = (verb.to_string(), resource.to_string());
    if sim.lock().denied.contains(&rule) {
        return forbidden(verb, resource, name, ns);
    }
    let kind = parts.headers.get(header::CONTENT_TYPE);
    let kind = kind.and_then(|v| v.to_str().ok()).unwrap_or("");
    let kind = kind.split(';').next().unwrap_or("").trim();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let name = name.unwrap_or("");
    let answer = match (resource, verb) {
        ("endpointslices", "watch") => return watch_slices(sim, ns, &query),
        ("endpointslices", _) => {
            let st = sim.lock();
            let slices = selects(&st, &query).then(|| st.slice()).into_iter();
            Ok(list(&st, ns, slices.collect()))
        }
        ("horizontalpodautoscalers", "list") => {
            let st = sim.lock();
            Ok(list(&st, ns, st.hpa_objects()))
        }
        ("deployments", "get") => {
            deployment(&sim.lock(), ns, name, |st| line(&st.deployment_object()))
        }
        ("deployments/scale", "get") => {
            deployment(&sim.lock(), ns, name, |st| line(&st.scale_object()))
        }
        ("deployments/scale", _) => patch_scale(sim, ns, name, kind, &body),
        ("pods", _) => pod(sim, ns, name, (verb == "patch").then_some((kind, &body))),
        _ => return not_allowed(),
    };
    answer.map_or_else(|response| *response, |body| respond(200, body))
}

/// The namespace, RBAC resource and object name a path names.
fn route(path: &str) -> Option<(&str, &'static str, Option<&str>)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (ns, rest) = match segments[..] {
        ["api", "v1", "namespaces", ns, ref rest @ ..] => (ns, rest),
        ["apis", _, _, "namespaces", ns, ref rest @ ..] => (ns, rest),
        _ => return None,
    };
    let group_version = &path[..path.find("/namespaces/")?];
    Some(match (group_version, rest) {
        ("/apis/apps/v1", ["deployments", name]) => (ns, "deployments", Some(*name)),
        ("/apis/apps/v1", ["deployments", name, "scale"]) => (ns, "deployments/scale", Some(*name)),
        ("/api/v1", ["pods", name]) => (ns, "pods", Some(*name)),
        ("/apis/discovery.k8s.io/v1", ["endpointslices"]) => (ns, "endpointslices", None),
        ("/apis/autoscaling/v2", ["horizontalpodautoscalers"]) => {
            (ns, "horizontalpodautoscalers", None)
        }
        _ => return None,
    })
}

fn respond(code: u16, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).boxed_unsync());
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    let json = HeaderValue::from_static("application/json");
    response.headers_mut().insert(header::CONTENT_TYPE, json);
    response
}

/// An error response with its Status, about the object `of` (name, group, plural).
fn fail(code: u16, reason: &str, message: &str, of: Of) -> Response<Body> {
    respond(code, line(&status(code, reason, message, of)))
}

fn not_allowed() -> Response<Body> {
    let message = "the server does not allow this method on the requested resource";
    fail(405, "MethodNotAllowed", message, None)
}

fn not_found(name: &str, group: &str, plural: &str) -> Response<Body> {
    let qualified = if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    };
    let message = format!("{qualified} \"{name}\" not found");
    fail(404, "NotFound", &message, Some((name, group, plural)))
}

fn forbidden(verb: &str, resource: &str, name: Option<&str>, ns: &str) -> Response<Body> {
    let plural = resource.split('/').next().unwrap_or(resource);
    let group = match plural {
        "deployments" => "apps",
        "pods" => "",
        "endpointslices" => "discovery.k8s.io",
        _ => "autoscaling",
    };
    let mut subject = if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    };
    if let Some(name) = name {
        subject = format!("{subject} \"{name}\"");
    }
    let user = format!("system:serviceaccount:{ns}:{USER}");
    let message = format!(
        "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" \
         in API group \"{group}\" in the namespace \"{ns}\""
    );
    fail(
        403,
        "Forbidden",
        &message,
        Some((name.unwrap_or(""), group, plural)),
    )
}

/// A list (empty in other namespaces) at the current resourceVersion.
fn list<T: ListableResource + Serialize>(st: &State, ns: &str, items: Vec<T>) -> Bytes {
    let items = if ns == st.opts.namespace {
        items
    } else {
        Vec::new()
    };
    let metadata = typed(json!({ "resourceVersion": st.rv.to_string() }));
    line(&List { items, metadata })
}

/// `answer(st)` if `ns`/`name` is the Deployment and it exists.
fn deployment(st: &State, ns: &str, name: &str, answer: impl Fn(&State) -> Bytes) -> Answer {
    if st.deployment && ns == st.opts.namespace && name == st.opts.deployment {
        return Ok(answer(st));
    }
    Err(not_found(name, "apps", "deployments").into())
}

fn patch_scale(sim: &Arc<Sim>, ns: &str, name: &str, kind: &str, body: &[u8]) -> Answer {
    let scale = {
        let st = sim.lock();
        deployment(&st, ns, name, |_| Bytes::new())?;
        let mut scale = json!(st.scale_object());
        apply_patch(&mut scale, kind, body)?;
        serde_json::from_value::<Scale>(scale).map_err(|e| bad_request(&e.to_string()))?
    };
    if let Some(replicas) = scale.spec.and_then(|s| s.replicas) {
        sim.lock().set_replicas(replicas);
        sim.reconcile();
    }
    Ok(line(&sim.lock().scale_object()))
}

/// GET or PATCH a pod; a patch may change its annotations (nothing else is kept).
fn pod(sim: &Arc<Sim>, ns: &str, name: &str, patch: Option<(&str, &Bytes)>) -> Answer {
    let mut st = sim.lock();
    let here = ns == st.opts.namespace;
    let Some(i) = st.pods.iter().position(|p| here && p.name == name) else {
        return Err(not_found(name, "", "pods").into());
    };
    if let Some((kind, body)) = patch {
        let mut object = json!(st.pod_object(&st.pods[i]));
        apply_patch(&mut object, kind, body)?;
        let object: Pod =
            serde_json::from_value(object).map_err(|e| bad_request(&e.to_string()))?;
        st.pods[i].annotations = object.metadata.annotations.unwrap_or_default();
        st.pods[i].rv = st.bump();
    }
    Ok(line(&st.pod_object(&st.pods[i])))
}

fn bad_request(message: &str) -> Response<Body> {
    fail(400, "BadRequest", message, None)
}

/// A merge patch; a strategic one reads the same for these fields. (JSON patches get 415.)
fn apply_patch(target: &mut Value, kind: &str, body: &[u8]) -> Result<(), Box<Response<Body>>> {
    if kind != "application/merge-patch+json" && kind != "application/strategic-merge-patch+json" {
        let message = format!(
            "the body of the request was in an unknown format ({kind}) - accepted media types \
             include: application/merge-patch+json, application/strategic-merge-patch+json"
        );
        return Err(fail(415, "UnsupportedMediaType", &message, None).into());
    }
    let patch: Value = serde_json::from_slice(body).map_err(|e| bad_request(&e.to_string()))?;
    merge(target, &patch);
    Ok(())
}

/// RFC 7386: objects merge member by member, null removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        return *target = patch.clone();
    };
    if !target.is_object() {
        *target = json!({});
    }
    let object = target.as_object_mut().unwrap();
    for (key, value) in members {
        match value.is_null() {
            true => drop(object.remove(key)),
            false => merge(object.entry(key.clone()).or_insert(Value::Null), value),
        }
    }
}

/// Whether the `labelSelector` (k=v, k==v, k!=v, k; comma-joined) selects the slice.
fn selects(st: &State, query: &Query) -> bool {
    let label = |key: &str| (key.trim() == SERVICE_LABEL).then_some(st.opts.service.as_str());
    let selects = |term: &str| match term.split_once("!=") {
        Some((k, v)) => label(k) != Some(v.trim()),
        None => match term.split_once('=') {
            Some((k, v)) => label(k) == Some(v.trim_start_matches('=').trim()),
            None => term.trim().is_empty() || label(term).is_some(),
        },
    };
    let selector = param(query, "labelSelector").unwrap_or("");
    selector.split(',').all(selects)
}

/// A watch: events after `resourceVersion` (or the current slice first when it is absent or
/// "0"), open until `timeoutSeconds`, the client leaves, or the cluster ends it.
fn watch_slices(sim: &Arc<Sim>, ns: &str, query: &Query) -> Response<Body> {
    let from = match param(query, "resourceVersion").unwrap_or("0") {
        "" | "0" => None,
        rv => match rv.parse() {
            Ok(rv) => Some(rv),
            Err(_) => return bad_request(&format!("invalid resource version {rv:?}")),
        },
    };
    let initial = param(query, "sendInitialEvents") == Some("true");
    let mut st = sim.lock();
    let matches = ns == st.opts.namespace && selects(&st, query);
    let mut events = st.open_watch(from, initial, matches);
    drop(st);
    let seconds = param(query, "timeoutSeconds").and_then(|t| t.parse().ok());
    let seconds = seconds.filter(|t| *t > 0).unwrap_or(DEFAULT_WATCH_TIMEOUT);
    let timeout = tokio::time::sleep(Duration::from_secs(seconds));
    let frames = futures_util::stream::poll_fn(move |cx| events.poll_recv(cx));
    let frames = frames
        .map(|event| Ok(Frame::data(event)))
        .take_until(timeout);
    let mut response = respond(200, Bytes::new());
    *response.body_mut() = StreamBody::new(frames).boxed_unsync();
    response
}

fn param<'a>(query: &'a Query, key: &str) -> Option<&'a str> {
    let found = query.iter().find(|(k, _)| k == key);
    found.map(|(_, v)| v.as_str())
}

/// `a=1&b=x%2Fy` as decoded pairs, in order (empty pieces, as kube's leading `&`, skipped).
fn parse_query(query: &str) -> Vec<(String, String)> {
    let pairs = query.split('&').filter(|p| !p.is_empty());
    let pairs = pairs.map(|p| p.split_once('=').unwrap_or((p, "")));
    pairs.map(|(k, v)| (decode(k), decode(v))).collect()
}

fn decode(s: &str) -> String {
    let (bytes, mut out, mut i) = (s.as_bytes(), Vec::new(), 0);
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => (out.push(byte), i += 3),
            (b'+', _) => (out.push(b' '), i += 1),
            (byte, _) => (out.push(byte), i += 1),
        };
    }
    String::from_utf8_lossy(&out).into_owned()
}
