#!/usr/bin/env bash
# The Docker provider against a real engine: how long a container launch takes, phase by phase
# (weir's launch log: create, start, launch call, first passing probe, cold start = launch call
# to ready), one at a time and many at once; what a client's first request into an empty pool
# waits; and an autoscaling trace with container workers. Prints a markdown report.
#
# 1. LAUNCHES sequential launches: pool `app` at min_workers 0, max 1; each round POSTs
#    {"workers": 1} to /api/v1/pools/app/scale, waits for one ready worker, POSTs
#    {"workers": 0} and waits until no container labelled weir.pool=app is left.
# 2. CONCURRENT launches at once: a fresh weir with min_workers = max_workers = CONCURRENT.
# 3. COLD_RUNS cold starts: a fresh weir at min_workers 0 each time, one curl of the proxy
#    listener timed from request to response (the request waits for a container).
# 4. Scale trace: min 1, max 4, worker_concurrency 2, max_idle_time 2s, queue timeout 20s;
#    CLIENTS concurrent clients of /?delay=DELAY for STEP_SECONDS, then QUIET_SECONDS quiet:
#    the activity log's events and every change of the ready count (polled every 100 ms),
#    in seconds from the load start, and the failed requests.
#
# Needs: a Docker Engine at DOCKER_SOCK holding IMAGE (.ci/test-image target/debug/weir), curl,
# python3; wrk when installed (else curl loops). Talks to the engine's API with curl, no docker
# CLI. On exit it stops weir and removes every container labelled weir.pool=app; it refuses to
# start while such containers exist. Build first: cargo build (or set WEIR).
# Knobs: WEIR=target/debug/weir IMAGE=weir-demo:dev DOCKER_SOCK=/var/run/docker.sock
#   BASE_PORT=18380 (uses BASE_PORT..BASE_PORT+15 on 127.0.0.1) LAUNCHES=20 CONCURRENT=20
#   COLD_RUNS=5 CLIENTS=8 DELAY=50ms STEP_SECONDS=10 QUIET_SECONDS=12 LOAD=wrk|curl
#   SECTIONS="sequential concurrent cold trace"
set -euo pipefail
cd "$(dirname "$0")/.."
WEIR=${WEIR:-target/debug/weir}
IMAGE=${IMAGE:-weir-demo:dev}
DOCKER_SOCK=${DOCKER_SOCK:-/var/run/docker.sock}
BASE_PORT=${BASE_PORT:-18380}
LAUNCHES=${LAUNCHES:-20}
CONCURRENT=${CONCURRENT:-20}
COLD_RUNS=${COLD_RUNS:-5}
CLIENTS=${CLIENTS:-8}
DELAY=${DELAY:-50ms}
STEP_SECONDS=${STEP_SECONDS:-10}
QUIET_SECONDS=${QUIET_SECONDS:-12}
SECTIONS=${SECTIONS:-sequential concurrent cold trace}
if [ -z "${LOAD:-}" ]; then
  if command -v wrk >/dev/null; then LOAD=wrk; else LOAD=curl; fi
fi
POOL=app
WAIT_LIMIT=60 # seconds any one wait may take before it is reported as a failure

for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
[ -x "$WEIR" ] || { echo "needs $WEIR (cargo build)" >&2; exit 2; }
[ -S "$DOCKER_SOCK" ] || { echo "no Docker Engine socket at $DOCKER_SOCK" >&2; exit 2; }

TMP=$(mktemp -d)
# A copy, so a rebuild of target/debug/weir during the run does not change what is measured.
cp "$WEIR" "$TMP/weir"
BIN="$TMP/weir"
WEIR_PID=
BG_PIDS=()
ODD=() # things weir did that it should not have, for the report's end

engine() { curl -s --unix-socket "$DOCKER_SOCK" "$@"; }
# Ids of every container (running or not) labelled weir.pool=$POOL.
containers() {
  engine -G --data-urlencode all=1 --data-urlencode "filters={\"label\":[\"weir.pool=$POOL\"]}" \
    http://docker/containers/json | grep -o '"Id":"[0-9a-f]*"' | cut -d'"' -f4 || true
}
remove_containers() {
  local id
  for id in $(containers); do
    engine -X DELETE "http://docker/containers/$id?force=1" >/dev/null || true
  done
}

stop_weir() { # SIGTERM (weir releases its workers), SIGKILL after 30 s
  [ -n "$WEIR_PID" ] || return 0
  kill -TERM "$WEIR_PID" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$WEIR_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$WEIR_PID" 2>/dev/null; then
    ODD+=("weir (pid $WEIR_PID) did not stop within 30 s of SIGTERM; killed")
    kill -KILL "$WEIR_PID" 2>/dev/null || true
  fi
  wait "$WEIR_PID" 2>/dev/null || true
  WEIR_PID=
}

cleanup() {
  local p
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${BG_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  stop_weir
  remove_containers
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_us() { echo "${EPOCHREALTIME/./}"; }
ms_since() { awk -v a="$1" -v b="$(now_us)" 'BEGIN {printf "%.0f", (b - a) / 1000}'; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
NEXT_PORT=$BASE_PORT
take_ports() { # sets PROXY_PORT and ADMIN_PORT: a fresh pair per weir, so no port is reused
  PROXY_PORT=$NEXT_PORT ADMIN_PORT=$((NEXT_PORT + 1))
  NEXT_PORT=$((NEXT_PORT + 2))
  port_free "$PROXY_PORT" && port_free "$ADMIN_PORT" || {
    echo "port $PROXY_PORT or $ADMIN_PORT on 127.0.0.1 is in use; pick another BASE_PORT" >&2
    exit 2
  }
}

config() { # min max [extra pool keys] [extra autoscale keys] [route queue]
  cat <<TOML
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[[listeners]]
listen = "127.0.0.1:$PROXY_PORT"
[[routes]]
pool = "$POOL"
${5:-}
[pools.$POOL]
${3:-}
provider = { kind = "docker", image = "$IMAGE", port = 8080, pull = "never", stop_grace = "2s", endpoint = "unix://$DOCKER_SOCK" }
health = { path = "/hello", interval = "100ms" }
[pools.$POOL.autoscale]
min_workers = $1
max_workers = $2
${4:-}
TOML
}

start_weir() { # name min max [extra pool keys] [extra autoscale keys] [route queue]
  local name=$1
  shift
  take_ports
  config "$@" > "$TMP/$name.toml"
  WEIR_LOG=info "$BIN" run --config "$TMP/$name.toml" 2> "$TMP/$name.log" &
  WEIR_PID=$!
  for _ in $(seq 1 200); do
    curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/healthz" && return 0
    kill -0 "$WEIR_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "weir did not start; its log:" >&2
  cat "$TMP/$name.log" >&2
  exit 1
}

api() { curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT$1"; }
scale_to() {
  curl -s --max-time 5 -o "$TMP/scale.out" -w '%{http_code}' -X POST \
    -H 'content-type: application/json' -d "{\"workers\": $1}" \
    "http://127.0.0.1:$ADMIN_PORT/api/v1/pools/$POOL/scale"
}
ready_count() { api /api/v1/workers | grep -c '"state": "ready"' || true; }

# wait_for WHAT CONDITION...: poll every 20 ms until the condition holds; 1 after WAIT_LIMIT.
wait_for() {
  local what=$1 deadline=$((SECONDS + WAIT_LIMIT))
  shift
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      ODD+=("$what: not reached within ${WAIT_LIMIT}s")
      return 1
    fi
    sleep 0.02
  done
}
has_ready() { [ "$(ready_count)" -ge "$1" ]; }
no_containers() { [ -z "$(containers)" ]; }
no_workers() { ! api /api/v1/workers | grep -q '"id"'; }

# Stop weir, then make sure its containers are gone (it removes them on the way out).
stop_and_check() { # section name
  stop_weir
  if ! wait_for "$1: containers left after weir stopped" no_containers; then
    ODD+=("$1: removed by this script: $(containers | cut -c1-12 | tr '\n' ' ')")
    remove_containers
  fi
}

# Phase figures from a weir log: markdown table plus anything missing.
cat > "$TMP/phases.py" <<'PY'
import re, statistics, sys
from datetime import datetime

def dur_ms(text):
    m = re.fullmatch(r"([0-9.]+)(ns|µs|us|ms|s)", text)
    if not m:
        return None
    scale = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return float(m.group(1)) * scale

def stamp(line):
    return datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()

def field(line, key):
    m = re.search(r"\b" + key + r"=(\S+)", line)
    return m.group(1) if m else None

log = open(sys.argv[1], encoding="utf-8", errors="replace").read().splitlines()
mode = sys.argv[2] if len(sys.argv) > 2 else "table"
per = {}  # worker -> phase -> ms
order = []
def put(worker, key, value):
    if worker not in per:
        per[worker] = {}
        order.append(worker)
    per[worker][key] = value
first_launch = last_ready = None
for line in log:
    if "container created (image and network checked)" in line:
        put(field(line, "container"), "create", dur_ms(field(line, "create") or ""))
    elif "container started" in line and "start=" in line:
        put(field(line, "container"), "start", dur_ms(field(line, "start") or ""))
    elif "launch call returned" in line:
        put(field(line, "worker"), "launch_call", dur_ms(field(line, "launch_call") or ""))
    elif "worker ready after its launch" in line:
        w = field(line, "worker")
        put(w, "first_probe_pass", dur_ms(field(line, "first_probe_pass") or ""))
        put(w, "cold_start", dur_ms(field(line, "cold_start") or ""))
        last_ready = stamp(line)
    if "scaling activity" in line and first_launch is None and 'action="launch_failed"' not in line:
        first_launch = stamp(line)

phases = [
    ("create", "create (image + network checks, create call)"),
    ("start", "start (start call + inspect)"),
    ("launch_call", "launch call (create + start, as the scaler saw it)"),
    ("first_probe_pass", "first probe pass (launch call returned -> ready)"),
    ("cold_start", "cold start (launch call -> ready)"),
]
if mode == "each":
    # One line per launch: worker create start launch_call first_probe_pass cold_start
    for w in order:
        print(w, *("%.1f" % per[w][k] if per[w].get(k) is not None else "-" for k, _ in phases))
    sys.exit(0)
print("| phase | n | median ms | worst ms |")
print("|---|---:|---:|---:|")
for key, label in phases:
    vals = [per[w][key] for w in order if per[w].get(key) is not None]
    if vals:
        print("| %s | %d | %.1f | %.1f |" % (label, len(vals), statistics.median(vals), max(vals)))
    else:
        print("| %s | 0 | - | - |" % label)
missing = ["%s lacks %s" % (w, ", ".join(k for k, _ in phases if per[w].get(k) is None))
           for w in order if any(per[w].get(k) is None for k, _ in phases)]
print()
print("launches seen in the log: %d" % len(order))
if first_launch is not None and last_ready is not None and mode == "span":
    print("first scaling decision to the last worker ready: %.0f ms" % ((last_ready - first_launch) * 1000))
for m in missing:
    print("MISSING: " + m)
PY

median() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print("%.0f" % statistics.median(v) if v else "-")' "$@"; }
worst() { python3 -c 'import sys; v=[float(x) for x in sys.argv[1:]]; print("%.0f" % max(v) if v else "-")' "$@"; }

if [ -n "$(containers)" ]; then
  echo "containers labelled weir.pool=$POOL already exist on the engine; remove them first:" >&2
  containers >&2
  trap - EXIT
  rm -rf "$TMP"
  exit 2
fi
engine -f -o /dev/null "http://docker/images/$IMAGE/json" || {
  echo "the engine has no image $IMAGE (.ci/test-image target/debug/weir)" >&2
  exit 2
}

rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && rev="$rev + uncommitted changes"
engine_version=$(engine http://docker/version | python3 -c 'import json,sys; print(json.load(sys.stdin).get("Version","?"))')
echo "# Docker provider: container launches"
echo
echo "weir $WEIR ($rev), image $IMAGE, Docker Engine $engine_version at $DOCKER_SOCK,"
echo "$(nproc) cores, load average at start $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)."
echo "Pool: provider docker (pull never, stop_grace 2s), health /hello every 100 ms (starting"
echo "workers are probed every 25 ms)."

want() { [[ " $SECTIONS " == *" $1 "* ]]; }

# 1. Sequential launches through the admin API.
if want sequential; then
  start_weir seq 0 1
  sleep 0.5
  release_ms=()
  api_ready_ms=()
  for i in $(seq 1 "$LAUNCHES"); do
    t0=$(now_us)
    code=$(scale_to 1)
    [ "$code" = 200 ] || ODD+=("sequential round $i: scale to 1 answered $code: $(cat "$TMP/scale.out")")
    if wait_for "sequential round $i: one ready worker" has_ready 1; then
      api_ready_ms+=("$(ms_since "$t0")")
    fi
    t1=$(now_us)
    code=$(scale_to 0)
    [ "$code" = 200 ] || ODD+=("sequential round $i: scale to 0 answered $code: $(cat "$TMP/scale.out")")
    if wait_for "sequential round $i: no container left after scaling to 0" no_containers; then
      release_ms+=("$(ms_since "$t1")")
    else
      ODD+=("sequential round $i: weir's workers then: $(api /api/v1/workers | tr -d ' \n' | cut -c1-300)")
      remove_containers
    fi
    wait_for "sequential round $i: no worker listed after scaling to 0" no_workers || true
  done
  # A manual count of 0 must stick: nothing may come back while the pool is left alone.
  sleep 3
  [ -z "$(containers)" ] || ODD+=("sequential: a container came back within 3 s of the last scale to 0")
  api /api/v1/activity > "$TMP/seq.activity.json"
  stop_and_check sequential
  echo
  echo "## 1. $LAUNCHES sequential launches (scale 0 -> 1 -> 0 through the admin API)"
  echo
  python3 "$TMP/phases.py" "$TMP/seq.log"
  echo
  echo "Seen from outside: scale request -> the API lists a ready worker (20 ms polling): median" \
    "$(median "${api_ready_ms[@]}") ms, worst $(worst "${api_ready_ms[@]}") ms;" \
    "scale to 0 -> no container left on the engine: median $(median "${release_ms[@]}") ms," \
    "worst $(worst "${release_ms[@]}") ms (n = ${#release_ms[@]})."
  failed=$(grep -c '"action": "launch_failed"' "$TMP/seq.activity.json" || true)
  [ "$failed" = 0 ] || ODD+=("sequential: $failed launch_failed events in the activity log")
fi

# 2. Concurrent launches: the initial workers of a fresh weir all go at once.
if want concurrent; then
  t0=$(now_us)
  start_weir conc "$CONCURRENT" "$CONCURRENT"
  if wait_for "concurrent: $CONCURRENT ready workers" has_ready "$CONCURRENT"; then
    all_ready=$(ms_since "$t0")
  else
    all_ready="not reached ($(ready_count) ready)"
  fi
  api /api/v1/activity > "$TMP/conc.activity.json"
  stop_and_check concurrent
  echo
  echo "## 2. $CONCURRENT concurrent launches (min_workers = max_workers = $CONCURRENT, fresh start)"
  echo
  python3 "$TMP/phases.py" "$TMP/conc.log" span
  echo "weir process start -> the API lists $CONCURRENT ready workers: $all_ready ms."
  failed=$(grep -c '"action": "launch_failed"' "$TMP/conc.activity.json" || true)
  [ "$failed" = 0 ] || ODD+=("concurrent: $failed launch_failed events: $(grep -A1 '"launch_failed"' "$TMP/conc.activity.json" | head -20 | tr -d '\n')")
fi

# 3. Cold start of the first request into an empty pool.
if want cold; then
  totals=()
  rows=()
  for i in $(seq 1 "$COLD_RUNS"); do
    start_weir "cold$i" 0 1
    sleep 0.5
    [ -z "$(containers)" ] || ODD+=("cold run $i: a container exists before the first request at min_workers 0")
    out=$(curl -s -o /dev/null -D "$TMP/cold$i.h" --max-time 60 -w '%{http_code} %{time_total}' \
      "http://127.0.0.1:$PROXY_PORT/" || true)
    code=${out% *}
    ms=$(awk -v s="${out#* }" 'BEGIN {printf "%.0f", s * 1000}')
    header=$(grep -i '^x-weir-cold-start:' "$TMP/cold$i.h" | cut -d' ' -f2 | tr -d '\r' || true)
    [ "$code" = 200 ] || ODD+=("cold run $i: status $code")
    sleep 0.3 # the cold-start log line is written within 10 ms of ready
    phases=$(python3 "$TMP/phases.py" "$TMP/cold$i.log" each | head -1)
    totals+=("$ms")
    rows+=("| $i | $code | $ms | ${header:--} | $(awk '{print $2" | "$3" | "$5" | "$6}' <<<"${phases:-- - - - - -}") |")
    stop_and_check "cold run $i"
  done
  echo
  echo "## 3. Cold start at min_workers = 0 ($COLD_RUNS fresh weirs, one curl each)"
  echo
  echo "| run | status | curl request -> response ms | x-weir-cold-start | create ms | start ms | first probe pass ms | cold start (log) ms |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "median request -> response: $(median "${totals[@]}") ms (worst $(worst "${totals[@]}") ms)."
fi

# 4. Scale trace with container workers.
if want trace; then
  start_weir trace 1 4 'worker_concurrency = 2' 'max_idle_time = "2s"' 'queue = { timeout = "20s" }'
  wait_for "trace: the first worker ready" has_ready 1 || true
  sleep 1
  ( while :; do
      echo "$EPOCHREALTIME $(api /api/v1/workers | awk '/"state": "ready"/ {r++} /"id":/ {t++} END {print r + 0, t + 0}')"
      sleep 0.1
    done ) > "$TMP/ready.txt" &
  BG_PIDS+=($!)
  sleep 0.3
  load_start=$EPOCHREALTIME
  url="http://127.0.0.1:$PROXY_PORT/?delay=$DELAY"
  if [ "$LOAD" = wrk ]; then
    wrk -t1 -c"$CLIENTS" -d"${STEP_SECONDS}s" --timeout 30s "$url" > "$TMP/wrk.txt"
  else
    end=$((SECONDS + STEP_SECONDS))
    loops=()
    for c in $(seq 1 "$CLIENTS"); do
      ( while [ "$SECONDS" -lt "$end" ]; do
          curl -s -o /dev/null --max-time 30 -w '%{http_code}\n' "$url" || echo 000
        done ) > "$TMP/curl$c.txt" &
      loops+=($!)
    done
    for p in "${loops[@]}"; do wait "$p"; done
  fi
  load_end=$EPOCHREALTIME
  sleep "$QUIET_SECONDS"
  kill "${BG_PIDS[-1]}" 2>/dev/null || true
  wait "${BG_PIDS[-1]}" 2>/dev/null || true
  api /api/v1/activity > "$TMP/trace.activity.json"
  stop_and_check trace
  if [ "$LOAD" = wrk ]; then
    total=$(awk '/requests in/ {print $1}' "$TMP/wrk.txt")
    non2xx=$(awk -F': *' '/Non-2xx/ {print $2}' "$TMP/wrk.txt")
    sockerr=$(sed -nE 's/.*Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+).*/\1 \2 \3 \4/p' "$TMP/wrk.txt" | awk '{print $1 + $2 + $3 + $4}')
    failed=$(( ${non2xx:-0} + ${sockerr:-0} ))
    how="wrk -t1 -c$CLIENTS -d${STEP_SECONDS}s"
  else
    total=$(cat "$TMP"/curl*.txt | wc -l)
    failed=$(cat "$TMP"/curl*.txt | grep -vc '^200$' || true)
    how="$CLIENTS curl loops for ${STEP_SECONDS}s"
  fi
  echo
  echo "## 4. Scale trace (min 1, max 4, worker_concurrency 2, max_idle_time 2s, queue timeout 20s)"
  echo
  echo "Load: $how of /?delay=$DELAY, then ${QUIET_SECONDS}s quiet. Requests: ${total:-?}, failed (non-2xx or socket errors): $failed."
  echo
  python3 - "$TMP/trace.activity.json" "$TMP/ready.txt" "$load_start" "$load_end" "$POOL" <<'PY'
import json, sys
from datetime import datetime, timezone
activity, ready, start, end, pool = sys.argv[1:]
start, end = float(start), float(end)
rows = []
for e in json.load(open(activity)):
    if e["pool"] != pool:
        continue
    at = datetime.strptime(e["at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    rows.append((at, "%s %d -> %d (%s)" % (e["action"], e["from"], e["to"], e["reason"])))
last = None
for line in open(ready):
    parts = line.split()
    if len(parts) != 3:
        continue
    t, r, total = float(parts[0]), int(parts[1]), int(parts[2])
    if last is None:
        last = r
        rows.append((t, "polling starts: %d ready (%d listed)" % (r, total)))
    elif r != last:
        rows.append((t, "ready %d -> %d (%d listed)" % (last, r, total)))
        last = r
rows.append((start, "**load starts**"))
rows.append((end, "**load ends**"))
rows.sort(key=lambda x: x[0])
print("| t (s from load start) | event |")
print("|---:|---|")
for t, what in rows:
    print("| %.2f | %s |" % (t - start, what))
PY
  echo
  echo "(activity times have millisecond resolution; ready counts come from polling /api/v1/workers every ~100 ms plus the call's own time.)"
fi

echo
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
if [ "${#ODD[@]}" -eq 0 ]; then
  echo "Nothing odd seen: every wait was met, every scale call answered 200, no launch_failed, no container left behind."
else
  echo "## Odd"
  echo
  for o in "${ODD[@]}"; do echo "- $o"; done
fi
