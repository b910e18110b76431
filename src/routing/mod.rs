//! Host + longest-path-prefix routing, compiled once per config so a lookup is a hash probe and
//! a short scan with no allocation.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, RouteConfig};
use crate::pool::{Pool, RouteQueue};
use crate::telemetry::AlertCounters;
use crate::telemetry::RouteMetrics;
use crate::values::HostPattern;

mod rewrite;

pub use rewrite::Rewrite;

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// Label for logs and metrics.
    pub name: Arc<str>,
    /// Path prefix without a trailing slash ("" for the root).
    prefix: String,
    /// Where matching requests go.
    pub pool: Arc<Pool>,
    /// Its place among the pools its `[[routes]]` entry splits requests between (0 alone).
    pub variant: u16,
    /// Where matching requests wait for a worker slot.
    pub queue: Arc<RouteQueue>,
    /// The route's metric series.
    pub metrics: Arc<RouteMetrics>,
    /// What it changes in the request the worker gets and the response the client gets.
    pub rewrite: Option<Arc<Rewrite>>,
    /// The config it was compiled from: a reload that leaves it (and its pool) unchanged keeps
    /// the queue and metric objects above.
    config: RouteConfig,
}

impl Route {
    /// Whether request bodies are read before the request takes a worker slot.
    pub fn buffer_requests(&self) -> bool {
        self.config.buffer_requests
    }

    /// Whether responses are held so the worker is released when it is done.
    pub fn buffer_responses(&self) -> bool {
        self.config.buffer_responses
    }

    fn matches(&self, path: &str) -> bool {
        match path.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// One `[[routes]]` entry: a route per pool it sends to (one, or several sharing its
/// requests by weight).
#[derive(Debug)]
struct RouteGroup {
    routes: Vec<Route>,
    /// Which route takes each turn: the weights' smooth interleaving (90/10: nine of the
    /// first, one of the second, spread out), exact over every cycle.
    schedule: Box<[u16]>,
    turn: std::sync::atomic::AtomicUsize,
}

impl RouteGroup {
    fn new(routes: Vec<Route>, weights: &[u32]) -> Self {
        RouteGroup {
            schedule: smooth_schedule(weights),
            routes,
            turn: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn prefix_len(&self) -> usize {
        self.routes.first().map_or(0, |r| r.prefix.len())
    }

    fn matches(&self, path: &str) -> bool {
        self.routes.first().is_some_and(|r| r.matches(path))
    }

    /// The route that took a request already (`variant`), or a new turn's.
    fn pick_or(&self, variant: Option<u16>) -> Option<&Route> {
        match variant.and_then(|v| self.routes.get(usize::from(v))) {
            Some(route) => Some(route),
            None => self.pick(),
        }
    }

    /// The route that takes this request.
    fn pick(&self) -> Option<&Route> {
        if self.routes.len() == 1 {
            return self.routes.first();
        }
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let i = *self.schedule.get(turn % self.schedule.len().max(1))?;
        self.routes.get(usize::from(i))
    }
}

/// The smooth weighted round-robin sequence of `weights` (divided by their greatest common
/// divisor): each turn, every entry gains its weight and the largest gives up the total.
fn smooth_schedule(weights: &[u32]) -> Box<[u16]> {
    let divisor = weights
        .iter()
        .copied()
        .filter(|w| *w > 0)
        .fold(0, gcd)
        .max(1);
    let weights: Vec<i64> = weights.iter().map(|w| i64::from(w / divisor)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .filter(|(i, _)| weights[*i] > 0)
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
        else {
            break;
        };
        current[best] -= total;
        schedule.push(best as u16);
    }
    schedule.into_boxed_slice()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Routes of one host pattern, longest prefix first.
#[derive(Debug, Default)]
struct HostRoutes(Vec<RouteGroup>);

impl HostRoutes {
    fn find(&self, path: &str, variant: Option<u16>) -> Option<&Route> {
        self.0.iter().find(|g| g.matches(path))?.pick_or(variant)
    }

    fn push(&mut self, group: RouteGroup) {
        self.0.push(group);
        self.0.sort_by_key(|g| std::cmp::Reverse(g.prefix_len()));
    }
}

/// All routes of a config.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, HostRoutes>,
    wildcard: Vec<(String, HostRoutes)>,
    any: HostRoutes,
}

/// Longest host name we normalise on the stack; longer (invalid per DNS) hosts only match "*".
const MAX_HOST_LEN: usize = 253;

impl RouteTable {
    /// Compile the routes of `config`, resolving pool names against `pools`. A route of
    /// `previous` (the table a reload replaces) with the same config and the same pool object
    /// lends its queue, so its waiting requests, depth gauge and bound carry on.
    pub fn build(
        config: &Config,
        pools: &HashMap<String, Arc<Pool>>,
        alerts: &Arc<AlertCounters>,
        previous: Option<&RouteTable>,
    ) -> Result<Self, String> {
        let mut table = RouteTable::default();
        for (i, rc) in config.routes.iter().enumerate() {
            let (host_text, pattern) = match &rc.host {
                Some(rule) => (rule.text(), rule.pattern().clone()),
                None => ("*", HostPattern::Any),
            };
            let prefix_text = rc.path_prefix.as_deref().unwrap_or("/");
            let name: Arc<str> = match &rc.name {
                Some(n) => n.as_str().into(),
                None => format!("{host_text}{prefix_text}").into(),
            };
            let targets = rc.targets();
            let mut routes = Vec::with_capacity(targets.len());
            for target in &targets {
                let pool = pools
                    .get(&target.pool)
                    .cloned()
                    .ok_or_else(|| format!("routes[{i}].pool: unknown pool {:?}", target.pool))?;
                // The same route to the same pool object keeps its queue, whatever the
                // weights: a reload that moves the split keeps every waiting request.
                let kept = previous.and_then(|t| {
                    t.all().find(|r| {
                        unweighted(&r.config) == unweighted(rc) && Arc::ptr_eq(&r.pool, &pool)
                    })
                });
                let (queue, metrics) = match kept {
                    Some(old) => (Arc::clone(&old.queue), Arc::clone(&old.metrics)),
                    None => (
                        RouteQueue::new(Arc::clone(&name), &rc.queue),
                        RouteMetrics::new(&name, &pool, alerts),
                    ),
                };
                let prefix = prefix_text.trim_end_matches('/').to_string();
                routes.push(Route {
                    variant: routes.len() as u16,
                    queue,
                    metrics,
                    rewrite: Rewrite::compile(rc, &prefix).map(Arc::new),
                    name: Arc::clone(&name),
                    prefix,
                    pool,
                    config: rc.clone(),
                });
            }
            let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
            let route = RouteGroup::new(routes, &weights);
            match pattern {
                HostPattern::Any => table.any.push(route),
                HostPattern::Exact(h) => table.exact.entry(h).or_default().push(route),
                HostPattern::Wildcard(suffix) => {
                    match table.wildcard.iter_mut().find(|(s, _)| *s == suffix) {
                        Some((_, routes)) => routes.push(route),
                        None => {
                            let mut routes = HostRoutes::default();
                            routes.push(route);
                            table.wildcard.push((suffix, routes));
                        }
                    }
                }
            }
        }
        table.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        Ok(table)
    }

    /// Every route, in no particular order (metrics, admin).
    pub fn all(&self) -> impl Iterator<Item = &Route> {
        self.exact
            .values()
            .chain(self.wildcard.iter().map(|(_, r)| r))
            .chain(std::iter::once(&self.any))
            .flat_map(|r| r.0.iter())
            .flat_map(|g| g.routes.iter())
    }

    /// The route for `host` (as sent: any case, maybe with a port) and `path`. The most specific
    /// host pattern with a matching prefix wins: exact, then the longest wildcard, then "*".
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.lookup_variant(host, path, None)
    }

    /// [`RouteTable::lookup`], for a request already given `variant` of a split route (the
    /// same pool at every look); `None`: a new request, which takes the split's next turn.
    pub fn lookup_variant(
        &self,
        host: Option<&str>,
        path: &str,
        variant: Option<u16>,
    ) -> Option<&Route> {
        let mut buf = [0u8; MAX_HOST_LEN];
        if let Some(host) = host.and_then(|h| normalize_host(h, &mut buf)) {
            if let Some(route) = self.exact.get(host).and_then(|r| r.find(path, variant)) {
                return Some(route);
            }
            for (suffix, routes) in &self.wildcard {
                if let Some(label) = host.strip_suffix(suffix.as_str()) {
                    if !label.is_empty() && !label.contains('.') {
                        if let Some(route) = routes.find(path, variant) {
                            return Some(route);
                        }
                    }
                }
            }
        }
        self.any.find(path, variant)
    }
}

/// A route's config without its split's weights and rewrites: what decides whether a reload
/// keeps its queues.
fn unweighted(config: &RouteConfig) -> RouteConfig {
    let mut config = config.clone();
    config.strip_prefix = false;
    config.add_prefix = None;
    config.rewrite_host = None;
    config.request_headers = Default::default();
    config.response_headers = Default::default();
    for target in &mut config.pools {
        target.weight = 0;
    }
    config
}

/// Lowercase `host` into `buf`, dropping any port and a trailing dot. `None` when it does not fit
/// or is not UTF-8-clean ASCII.
fn normalize_host<'b>(host: &str, buf: &'b mut [u8; MAX_HOST_LEN]) -> Option<&'b str> {
    let name = if host.starts_with('[') {
        // IPv6 literal: keep the brackets' content.
        &host[1..host.find(']')?]
    } else {
        match host.rfind(':') {
            Some(i) => &host[..i],
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let bytes = name.as_bytes();
    if bytes.len() > buf.len() || !bytes.is_ascii() {
        return None;
    }
    let out = &mut buf[..bytes.len()];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn table(routes: &str) -> RouteTable {
        let text = format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n{routes}\n[pools.a]\nprovider = {{ kind = \"static\", addresses = [\"127.0.0.1:1\"] }}\n[pools.b]\nprovider = {{ kind = \"static\", addresses = [\"127.0.0.1:2\"] }}\n[pools.c]\nprovider = {{ kind = \"static\", addresses = [\"127.0.0.1:3\"] }}\n"
        );
        let config = parse(&text, "t").unwrap();
        let pools = config
            .pools
            .iter()
            .map(|(n, c)| (n.clone(), Pool::from_config(n, c)))
            .collect();
        RouteTable::build(&config, &pools, &Arc::default(), None).unwrap()
    }

    fn pool_of(t: &RouteTable, host: Option<&str>, path: &str) -> Option<String> {
        t.lookup(host, path).map(|r| r.pool.name.clone())
    }

    #[test]
    fn longest_prefix_wins_on_segments() {
        let t = table(
            "[[routes]]\npool = \"a\"\n[[routes]]\npath_prefix = \"/api\"\npool = \"b\"\n[[routes]]\npath_prefix = \"/api/v2/\"\npool = \"c\"",
        );
        assert_eq!(pool_of(&t, None, "/").as_deref(), Some("a"));
        assert_eq!(pool_of(&t, None, "/api").as_deref(), Some("b"));
        assert_eq!(pool_of(&t, None, "/api/x").as_deref(), Some("b"));
        assert_eq!(pool_of(&t, None, "/apix").as_deref(), Some("a"));
        assert_eq!(pool_of(&t, None, "/api/v2").as_deref(), Some("c"));
        assert_eq!(pool_of(&t, None, "/api/v2/models").as_deref(), Some("c"));
    }

    #[test]
    fn host_specificity_order() {
        let t = table(
            "[[routes]]\npool = \"a\"\n[[routes]]\nhost = \"*.example.com\"\npool = \"b\"\n[[routes]]\nhost = \"API.example.com\"\npool = \"c\"",
        );
        assert_eq!(
            pool_of(&t, Some("api.example.com"), "/").as_deref(),
            Some("c")
        );
        assert_eq!(
            pool_of(&t, Some("Api.Example.Com:8443"), "/").as_deref(),
            Some("c")
        );
        assert_eq!(
            pool_of(&t, Some("www.example.com"), "/").as_deref(),
            Some("b")
        );
        assert_eq!(
            pool_of(&t, Some("a.b.example.com"), "/").as_deref(),
            Some("a")
        );
        assert_eq!(pool_of(&t, Some("example.com"), "/").as_deref(), Some("a"));
        assert_eq!(pool_of(&t, Some("[::1]:8080"), "/").as_deref(), Some("a"));
        assert_eq!(pool_of(&t, None, "/").as_deref(), Some("a"));
    }

    #[test]
    fn falls_back_to_less_specific_host_when_prefix_misses() {
        let t = table(
            "[[routes]]\npool = \"a\"\n[[routes]]\nhost = \"x.test\"\npath_prefix = \"/only\"\npool = \"b\"",
        );
        assert_eq!(pool_of(&t, Some("x.test"), "/only/1").as_deref(), Some("b"));
        assert_eq!(pool_of(&t, Some("x.test"), "/other").as_deref(), Some("a"));
    }

    #[test]
    fn no_route_is_none() {
        let t = table("[[routes]]\nhost = \"x.test\"\npool = \"a\"");
        assert!(t.lookup(Some("y.test"), "/").is_none());
        assert!(t.lookup(None, "/").is_none());
        let long = "a".repeat(400);
        assert!(t.lookup(Some(&long), "/").is_none());
    }

    #[test]
    fn a_split_is_smooth_and_exact_over_every_cycle() {
        assert_eq!(
            &*smooth_schedule(&[90, 10]),
            &[0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        assert_eq!(&*smooth_schedule(&[1, 1]), &[0, 1]);
        assert_eq!(&*smooth_schedule(&[2, 1]), &[0, 1, 0]);
        assert_eq!(
            &*smooth_schedule(&[0, 5]),
            &[1],
            "a weight of 0 gets nothing"
        );
        let t = table(
            "[[routes]]\npools = [{ pool = \"a\", weight = 90 }, { pool = \"b\", weight = 10 }]",
        );
        let mut a = 0;
        for _ in 0..2000 {
            if pool_of(&t, None, "/").as_deref() == Some("a") {
                a += 1;
            }
        }
        assert_eq!(a, 1800);
        assert_eq!(
            t.all().count(),
            2,
            "a route per pool, each with its own queue"
        );
    }

    #[test]
    fn a_reload_that_moves_the_split_keeps_the_queues() {
        let before = table(
            "[[routes]]\npools = [{ pool = \"a\", weight = 90 }, { pool = \"b\", weight = 10 }]",
        );
        let text = "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npools = [{ pool = \"a\", weight = 50 }, { pool = \"b\", weight = 50 }]\n[pools.a]\nprovider = { kind = \"static\", addresses = [\"127.0.0.1:1\"] }\n[pools.b]\nprovider = { kind = \"static\", addresses = [\"127.0.0.1:2\"] }\n";
        let config = parse(text, "t").unwrap();
        let pools: HashMap<String, Arc<Pool>> = before
            .all()
            .map(|r| (r.pool.name.clone(), Arc::clone(&r.pool)))
            .collect();
        let after = RouteTable::build(&config, &pools, &Arc::default(), Some(&before)).unwrap();
        for route in after.all() {
            let old = before
                .all()
                .find(|r| r.pool.name == route.pool.name)
                .unwrap();
            assert!(Arc::ptr_eq(&old.queue, &route.queue), "{}", route.pool.name);
        }
    }
}
