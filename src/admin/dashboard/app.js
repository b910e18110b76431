// weir's dashboard: polls the admin JSON API once a second and draws what it reads. It builds
// DOM nodes and sets text, never markup, so nothing a worker or a request can put into a name
// or a reason runs as code here. The admin token, when this weir needs one, lives in this
// tab's sessionStorage and goes out only as an Authorization header.
"use strict";

const POLL_MS = 1000;
const WINDOW_S = 900;
const TOKEN_KEY = "weir.admin-token";
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  // Pool name -> its samples, oldest first, and the card that shows it.
  history: new Map(),
  cards: new Map(),
  activity: [],
  timer: null,
  polling: false,
  again: false,
  locked: false,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

// ---- the API ----

class Unauthorized extends Error {}

async function api(path, options) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  let body;
  if (options && options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.json);
  }
  const response = await fetch(path, {
    method: (options && options.method) || "GET",
    headers,
    body,
    cache: "no-store",
    credentials: "omit",
  });
  if (response.status === 401) throw new Unauthorized("the admin API wants a token");
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  return { status: response.status, ok: response.ok, data };
}

// ---- the token prompt ----

function lock(message) {
  state.locked = true;
  // Nothing read with a token stays on screen once the token is gone or refused.
  $("main").hidden = true;
  $("pools").replaceChildren();
  for (const id of ["workers", "queue", "activity", "instances"]) {
    $(id).tBodies[0].replaceChildren();
  }
  state.cards.clear();
  state.history.clear();
  $("reload").hidden = true;
  $("forget").hidden = !state.token;
  $("login").hidden = false;
  $("status").textContent = "locked";
  const error = $("login-error");
  error.textContent = message || "";
  error.hidden = !message;
  $("token").focus();
}

function unlock() {
  state.locked = false;
  $("login").hidden = true;
  $("main").hidden = false;
  $("reload").hidden = false;
  $("forget").hidden = !state.token;
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const given = $("token").value.trim();
  if (!given) return;
  state.token = given;
  try {
    await api("/api/v1/pools");
  } catch (e) {
    state.token = null;
    lock(e instanceof Unauthorized ? "That token was refused." : "Cannot reach weir: " + e.message);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, given);
  $("token").value = "";
  unlock();
  poll();
});

$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  lock("");
  // Without a token, see whether this weir needs one at all.
  poll();
});

// ---- actions ----

function showResult(ok, text) {
  const box = $("result");
  box.hidden = false;
  box.className = ok ? "" : "failed";
  box.textContent = text;
}

async function act(description, path, json) {
  try {
    const r = await api(path, { method: "POST", json });
    const problem = r.data && r.data.error;
    showResult(r.ok, r.ok ? description(r.data) : `Failed (${r.status}): ${problem || "no reason given"}`);
    poll();
    return r.ok;
  } catch (e) {
    if (e instanceof Unauthorized) lock("The token was refused; give it again.");
    else showResult(false, "Cannot reach weir: " + e.message);
    return false;
  }
}

$("reload").addEventListener("click", async (event) => {
  const button = event.currentTarget;
  button.disabled = true;
  await act(
    (d) => {
      const changed = (d && d.changed) || [];
      return changed.length ? "Config reloaded: " + changed.join("; ") : "Config reloaded: nothing changed.";
    },
    "/api/v1/reload",
    undefined,
  );
  button.disabled = false;
});

// ---- formatting ----

const time = (at) => new Date(at).toLocaleTimeString([], { hour12: false });

function age(at) {
  let s = Math.max(0, Math.round((Date.now() - Date.parse(at)) / 1000));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  s %= 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function number(x) {
  if (x === null || x === undefined) return "–";
  if (Math.abs(x) >= 100 || Number.isInteger(x)) return String(Math.round(x));
  return x.toFixed(1);
}

// ---- tables, updated row by row so a button under the pointer is not replaced ----

function syncRows(tbody, items, key, build, update) {
  const rows = new Map();
  for (const row of tbody.rows) rows.set(row.dataset.key, row);
  const order = [];
  for (const item of items) {
    const k = key(item);
    let row = rows.get(k);
    if (!row) {
      row = build(item);
      row.dataset.key = k;
    }
    rows.delete(k);
    update(row, item);
    order.push(row);
  }
  for (const stale of rows.values()) stale.remove();
  order.forEach((row, i) => {
    if (tbody.rows[i] !== row) tbody.insertBefore(row, tbody.rows[i] || null);
  });
}

function setText(node, text) {
  const t = String(text);
  if (node.textContent !== t) node.textContent = t;
}

function cells(row) {
  return Array.from(row.cells);
}

function renderWorkers(workers) {
  workers.sort((a, b) => a.pool.localeCompare(b.pool) || a.id.localeCompare(b.id, undefined, { numeric: true }));
  syncRows(
    $("workers").tBodies[0],
    workers,
    (w) => w.id,
    (w) => {
      const button = el("button", { type: "button", class: "protect" });
      button.addEventListener("click", () => {
        const on = button.dataset.protected !== "true";
        act(
          () => `Worker ${w.id} ${on ? "protected from" : "no longer protected from"} scale-in.`,
          `/api/v1/workers/${encodeURIComponent(w.id)}/${on ? "protect" : "unprotect"}`,
          undefined,
        );
      });
      return el(
        "tr",
        {},
        el("td", { class: "id" }),
        el("td"),
        el("td", {}, el("span", { class: "state" })),
        el("td", { class: "num" }),
        el("td", { class: "num" }),
        el("td"),
        el("td", { class: "revision" }),
        el("td"),
        el("td", {}, el("span", { class: "protected" }), " ", button),
      );
    },
    (row, w) => {
      const [id, pool, st, inFlight, served, address, revision, since, prot] = cells(row);
      setText(id, w.id);
      setText(pool, w.pool);
      const badge = st.firstChild;
      badge.className = "state state-" + w.state;
      setText(badge, w.surplus && w.state === "ready" ? "ready (surplus)" : w.state);
      row.dataset.state = w.state;
      setText(inFlight, w.cap ? `${w.in_flight} / ${w.cap}` : w.in_flight);
      setText(served, w.served);
      setText(address, w.address);
      setText(revision, w.revision || "-");
      setText(since, age(w.created_at));
      setText(prot.firstChild, w.protected ? "yes" : "no");
      const button = prot.lastChild;
      button.dataset.protected = String(w.protected);
      setText(button, w.protected ? "Unprotect" : "Protect");
    },
  );
  $("workers").closest(".scroll").hidden = workers.length === 0;
  $("workers-empty").hidden = workers.length > 0;
}

function renderQueue(waiting) {
  const shown = waiting.slice(0, 200);
  syncRows(
    $("queue").tBodies[0],
    shown,
    (q) => `${q.pool}\u0000${q.route}\u0000${q.enqueued_at}`,
    () => el("tr", {}, el("td"), el("td"), el("td"), el("td", { class: "num" }), el("td")),
    (row, q) => {
      const [pool, route, since, waited, reason] = cells(row);
      setText(pool, q.pool);
      setText(route, q.route);
      setText(since, time(q.enqueued_at));
      setText(waited, `${(q.waited_ms / 1000).toFixed(1)} s`);
      setText(reason, q.reason.replace("_", " "));
    },
  );
  $("queue").closest(".scroll").hidden = waiting.length === 0;
  $("queue-empty").hidden = waiting.length > 0;
  if (waiting.length > shown.length) $("queue-empty").hidden = false;
  if (waiting.length > shown.length) setText($("queue-empty"), `…and ${waiting.length - shown.length} more.`);
  else setText($("queue-empty"), "Nothing waiting.");
}

function renderActivity(events) {
  state.activity = events;
  const newest = events.slice(-100).reverse();
  syncRows(
    $("activity").tBodies[0],
    newest,
    (e) => `${e.at}\u0000${e.pool}\u0000${e.action}\u0000${e.from}\u0000${e.to}`,
    () => el("tr", {}, el("td"), el("td"), el("td"), el("td"), el("td", { class: "wrap" })),
    (row, e) => {
      const [at, pool, action, workers, reason] = cells(row);
      setText(at, time(e.at));
      setText(pool, e.pool);
      setText(action, e.action.replace("_", " "));
      setText(workers, `${e.from} → ${e.to}`);
      setText(reason, e.reason);
    },
  );
  $("activity").closest(".scroll").hidden = events.length === 0;
  $("activity-empty").hidden = events.length > 0;
}

function renderFleet(cluster) {
  $("fleet").hidden = !cluster;
  if (!cluster) return;
  const leader = cluster.leader || "none";
  setText(
    $("fleet-summary"),
    `${cluster.instances.length} instance(s), leader ${leader}; this one is ${cluster.name}`,
  );
  syncRows(
    $("instances").tBodies[0],
    cluster.instances,
    (i) => i.name,
    () => el("tr", {}, el("td"), el("td"), el("td"), el("td"), el("td", { class: "num" }), el("td", { class: "num" }), el("td")),
    (row, i) => {
      const [name, role, admin, seen, inFlight, queued, shares] = cells(row);
      setText(name, i.name === cluster.name ? `${i.name} (this one)` : i.name);
      setText(role, i.leader ? "leader" : "follower");
      setText(admin, i.admin);
      setText(seen, `${(i.last_seen_ms / 1000).toFixed(1)} s ago`);
      setText(inFlight, i.in_flight);
      setText(queued, i.queued);
      setText(
        shares,
        Object.entries(i.shares || {})
          .map(([pool, share]) => `${pool} ${share}`)
          .join(", "),
      );
    },
  );
}

// ---- pool cards ----

const STATS = [
  ["ready", "ready"],
  ["starting", "starting"],
  ["draining", "draining"],
  ["unhealthy", "unhealthy"],
  ["desired", "desired"],
  ["min_workers", "min"],
  ["max_workers", "max"],
  ["in_flight", "in flight"],
  ["queued", "queued"],
];

function card(pool) {
  let c = state.cards.get(pool.name);
  if (c) return c;
  const node = $("pool-card").content.firstElementChild.cloneNode(true);
  node.dataset.pool = pool.name;
  const stats = node.querySelector(".stats");
  const values = {};
  for (const [field, label] of STATS) {
    const dd = el("dd", { "data-field": field });
    values[field] = dd;
    stats.append(el("div", {}, el("dt", {}, label), dd));
  }
  const form = node.querySelector(".scale");
  const input = form.querySelector("input");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const n = Number(input.value);
    if (!Number.isInteger(n) || n < 0) return;
    const ok = await act(
      (d) => `Pool ${pool.name}: asked for ${d.requested} worker(s); it will hold ${d.workers}.`,
      `/api/v1/pools/${encodeURIComponent(pool.name)}/scale`,
      { workers: n },
    );
    if (ok) input.value = "";
  });
  const rollout = node.querySelector(".rollout");
  for (const button of rollout.querySelectorAll("button")) {
    button.addEventListener("click", async () => {
      const action = button.dataset.action;
      button.disabled = true;
      await act(
        (r) => `Pool ${pool.name}: rollout ${r.from || "?"} -> ${r.to} ${r.state.replace("_", " ")}.`,
        `/api/v1/pools/${encodeURIComponent(pool.name)}/rollout`,
        { action },
      );
      button.disabled = false;
    });
  }
  c = { node, values, input, form, rollout, chart: node.querySelector(".chart"), legend: node.querySelector(".legend") };
  state.cards.set(pool.name, c);
  return c;
}

function renderPools(pools) {
  pools.sort((a, b) => a.name.localeCompare(b.name));
  const container = $("pools");
  const live = new Set(pools.map((p) => p.name));
  for (const [name, c] of state.cards) {
    if (!live.has(name)) {
      c.node.remove();
      state.cards.delete(name);
      state.history.delete(name);
    }
  }
  pools.forEach((pool, i) => {
    const c = card(pool);
    setText(c.node.querySelector(".pool-name"), pool.name);
    setText(c.node.querySelector(".pool-provider"), pool.provider);
    for (const [field] of STATS) setText(c.values[field], pool[field]);
    const fixed = pool.provider.startsWith("static");
    c.form.hidden = fixed;
    c.input.max = String(pool.max_workers);
    if (document.activeElement !== c.input) c.input.placeholder = String(pool.desired);
    renderRollout(c.rollout, pool.rollout);
    if (container.children[i] !== c.node) container.insertBefore(c.node, container.children[i] || null);
  });
}

// Which operator actions apply in each rollout state (the API refuses the others).
const ROLLOUT_ACTIONS = {
  running: ["pause", "abort"],
  paused: ["resume", "abort"],
  done: ["undo"],
  rolled_back: [],
  aborted: [],
};

// A pool's rollout: where it stands in words, a bar of the new revision's share of the ready
// workers, the last canary gate, and the buttons that apply now.
function renderRollout(box, r) {
  box.hidden = !r;
  if (!r) return;
  box.dataset.state = r.state;
  const ready = r.old_ready + r.new_ready;
  const share = r.state === "done" ? 100 : ready ? Math.round((100 * r.new_ready) / ready) : 0;
  const canary = r.step ? `, canary step ${r.step}/${r.steps}` + (r.weight != null ? ` at ${r.weight}%` : "") : "";
  setText(
    box.querySelector(".rollout-text"),
    `Rollout ${r.from || "?"} → ${r.to}: ${r.state.replace("_", " ")}${canary}; ` +
      `${r.new_ready} new, ${r.old_ready} old ready, ${r.replaced} replaced` +
      (r.failures ? `, ${r.failures} failed starts` : ""),
  );
  const bar = box.querySelector(".bar");
  bar.setAttribute("aria-valuenow", String(share));
  bar.firstElementChild.style.width = `${share}%`;
  setText(box.querySelector(".rollout-gate"), r.gate ? `Last gate: ${r.gate}` : "");
  const allowed = ROLLOUT_ACTIONS[r.state] || [];
  for (const button of box.querySelectorAll("button")) {
    button.hidden = !allowed.includes(button.dataset.action);
  }
}

// ---- history and charts ----

async function pollHistory(name) {
  const samples = state.history.get(name) || [];
  const last = samples.length ? samples[samples.length - 1] : null;
  // The whole window the first time, then what is new since the last sample (with a margin).
  const seconds = last ? Math.min(WINDOW_S, Math.ceil((Date.now() - Date.parse(last.at)) / 1000) + 3) : WINDOW_S;
  const r = await api(`/api/v1/history?pool=${encodeURIComponent(name)}&seconds=${seconds}`);
  if (!r.ok || !Array.isArray(r.data)) return;
  const lastAt = last ? Date.parse(last.at) : -Infinity;
  for (const s of r.data) {
    if (Date.parse(s.at) > lastAt) samples.push(s);
  }
  const newest = samples.length ? Date.parse(samples[samples.length - 1].at) : 0;
  while (samples.length && Date.parse(samples[0].at) < newest - WINDOW_S * 1000) samples.shift();
  state.history.set(name, samples);
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

const PANELS = [
  { title: "workers", series: ["ready", "starting"] },
  { title: "requests in flight and waiting", series: ["in_flight", "queued"] },
  { title: "requests per second", series: ["rps"], right: "p99_ms" },
];
const NAMES = {
  ready: "ready",
  starting: "starting",
  in_flight: "in flight",
  queued: "queued",
  rps: "req/s",
  p99_ms: "p99 ms",
};

function drawChart(c, name) {
  const samples = state.history.get(name) || [];
  // One unit a pixel, so labels keep their size at any width.
  const W = Math.max(280, Math.round(c.chart.clientWidth) || 720);
  const H = 80;
  const GAP = 26;
  const LEFT = 8;
  const RIGHT = 8;
  const height = PANELS.length * (H + GAP) + 14;
  const root = svg("svg", { viewBox: `0 0 ${W} ${height}`, role: "img", "aria-label": `last 15 minutes of pool ${name}` });
  // Server times throughout (samples and events), so the browser's clock does not matter. The
  // axis spans what there is, from 2 to 15 minutes.
  const end = samples.length ? Date.parse(samples[samples.length - 1].at) : Date.now();
  const first = samples.length ? Date.parse(samples[0].at) : end;
  const span = Math.min(WINDOW_S * 1000, Math.max(120 * 1000, end - first));
  const start = end - span;
  const x = (t) => LEFT + ((t - start) / span) * (W - LEFT - RIGHT);
  const events = state.activity.filter((e) => e.pool === name && Date.parse(e.at) >= start);

  PANELS.forEach((panel, i) => {
    const top = i * (H + GAP) + 16;
    const fields = panel.right ? [...panel.series, panel.right] : panel.series;
    const max = {};
    for (const f of fields) {
      const scaleOf = f === panel.right ? [f] : panel.series;
      max[f] = niceMax(Math.max(0, ...samples.flatMap((s) => scaleOf.map((g) => s[g] || 0))));
    }
    const label = svg("text", { x: LEFT, y: top - 4, class: "label" });
    const left = panel.series.map((f) => max[f])[0];
    label.textContent = panel.right
      ? `${panel.title} (max ${number(left)}) · p99 ms (max ${number(max[panel.right])})`
      : `${panel.title} (max ${number(left)})`;
    root.append(label);
    root.append(svg("rect", { x: LEFT, y: top, width: W - LEFT - RIGHT, height: H, class: "frame" }));
    for (const e of events) {
      const ex = x(Date.parse(e.at));
      const known = ["scale_up", "scale_down", "launch_failed"].includes(e.action);
      const line = svg("line", {
        x1: ex, x2: ex, y1: top, y2: top + H,
        class: `event e-${known ? e.action : "other"}`,
        "data-action": e.action,
      });
      const tip = svg("title");
      tip.textContent = `${time(e.at)} ${e.action.replace("_", " ")} ${e.from} → ${e.to}: ${e.reason}`;
      line.append(tip);
      root.append(line);
    }
    for (const f of fields) {
      const points = samples
        .filter((s) => s[f] !== null && s[f] !== undefined)
        .map((s) => `${x(Date.parse(s.at)).toFixed(1)},${(top + H - ((s[f] || 0) / max[f]) * H).toFixed(1)}`);
      root.append(svg("polyline", { points: points.join(" "), class: `series s-${f}`, "data-series": f, "data-points": points.length }));
    }
  });
  const axis = svg("text", { x: W - RIGHT, y: height - 2, class: "label", "text-anchor": "end" });
  axis.textContent = "now";
  const from = svg("text", { x: LEFT, y: height - 2, class: "label" });
  from.textContent = `${Math.round(span / 60000)} min ago`;
  root.append(axis, from);
  c.chart.replaceChildren(root);

  const latest = samples[samples.length - 1] || {};
  c.legend.replaceChildren(
    ...Object.keys(NAMES).map((f) =>
      el("span", {}, el("span", { class: `swatch s-${f}` }), `${NAMES[f]} ${number(latest[f])}`),
    ),
  );
}

// ---- the loop ----

// One poll at a time: a poll asked for while one runs (after an action) follows it at once.
async function poll() {
  clearTimeout(state.timer);
  if (state.polling) {
    state.again = true;
    return;
  }
  state.polling = true;
  state.again = false;
  const next = await readEverything();
  state.polling = false;
  if (next) state.timer = setTimeout(poll, state.again ? 0 : POLL_MS);
}

// Read and draw everything once; false when the page is locked and polling should stop.
async function readEverything() {
  try {
    const [pools, workers, queue, activity, cluster] = await Promise.all([
      api("/api/v1/pools"),
      api("/api/v1/workers"),
      api("/api/v1/queue"),
      api("/api/v1/activity"),
      api("/api/v1/cluster"),
    ]);
    if (state.locked) unlock();
    $("reload").hidden = false;
    renderPools(pools.data || []);
    renderWorkers(workers.data || []);
    renderQueue(queue.data || []);
    renderActivity(activity.data || []);
    renderFleet(cluster.ok ? cluster.data : null);
    await Promise.all((pools.data || []).map((p) => pollHistory(p.name)));
    for (const [name, c] of state.cards) drawChart(c, name);
    $("main").hidden = false;
    setText($("status"), "live · " + new Date().toLocaleTimeString([], { hour12: false }));
  } catch (e) {
    if (e instanceof Unauthorized) {
      if (state.token) {
        sessionStorage.removeItem(TOKEN_KEY);
        state.token = null;
        lock("The token was refused; give it again.");
      } else {
        lock("");
      }
      return false;
    }
    setText($("status"), "cannot reach weir (" + e.message + "); retrying");
  }
  return true;
}

poll();
