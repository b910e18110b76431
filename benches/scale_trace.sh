#!/usr/bin/env bash
# Autoscaling trace on loopback: one load step up and down against weir with process-launched
# demo workers. Prints when each worker launched, became ready and was released, the reaction
# time of the first scale-up, and the cold-start overhead of a pool at min_workers = 0.
#
# Needs: wrk (apt-get install wrk), curl. Build first: cargo build --release
# Knobs: STEP_SECONDS=10 CONNS=32 DELAY=50ms IDLE=5s BASE_PORT=18180
set -euo pipefail
cd "$(dirname "$0")/.."
STEP_SECONDS=${STEP_SECONDS:-10}
CONNS=${CONNS:-32}
DELAY=${DELAY:-50ms}
IDLE=${IDLE:-5s}
BASE_PORT=${BASE_PORT:-18180}
WEIR=${WEIR:-target/release/weir}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 2; }
[ -x "$WEIR" ] || { echo "needs $WEIR (cargo build --release)" >&2; exit 2; }
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT INT TERM

config() { # port min
  cat <<TOML
[[listeners]]
listen = "127.0.0.1:$1"
[[routes]]
pool = "app"
[pools.app]
worker_concurrency = 4
provider = { kind = "process", command = ["{weir}", "demo-worker", "--listen", "127.0.0.1:{port}"] }
health = { path = "/hello", interval = "500ms", timeout = "200ms" }
[pools.app.autoscale]
min_workers = $2
max_workers = 8
max_idle_time = "$IDLE"
panic_window = "2s"
stable_window = "4s"
TOML
}
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; exit 1; }
ts() { date +%s.%N; }

# 1. Load step up and down.
config "$BASE_PORT" 1 > "$TMP/step.toml"
WEIR_LOG=info "$WEIR" run --config "$TMP/step.toml" 2> "$TMP/step.log" &
PIDS+=($!)
wait_port "$BASE_PORT"
sleep 1
load_start=$(ts)
wrk -t1 -c"$CONNS" -d"${STEP_SECONDS}s" "http://127.0.0.1:$BASE_PORT/?delay=$DELAY" > "$TMP/wrk.txt"
load_end=$(ts)
idle_secs=${IDLE%s}
sleep "$(awk -v i="$idle_secs" 'BEGIN {print i + 6}')"
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true

epoch() { date -d "$1" +%s.%N; }
echo "## Load step: wrk -c$CONNS ${STEP_SECONDS}s of /?delay=$DELAY, worker_concurrency 4 (target 2.8), max_idle_time $IDLE"
echo
grep -E 'Requests/sec|Non-2xx|Socket errors' "$TMP/wrk.txt" | sed 's/^/    /'
echo
echo "| t (s from load start) | event |"
echo "|---:|---|"
while IFS= read -r line; do
  stamp=${line%% *}
  t=$(awk -v a="$(epoch "$stamp")" -v b="$load_start" 'BEGIN {printf "%.3f", a - b}')
  what=$(sed -E 's/^[^ ]+ +[A-Z]+ +[^ ]+ //' <<<"$line" | cut -c1-110)
  echo "| $t | $what |"
done < <(grep -E 'scaling activity|worker process started|demo-worker listening|worker ready|worker released' "$TMP/step.log")
echo
echo "load ended at t=$(awk -v a="$load_end" -v b="$load_start" 'BEGIN {printf "%.3f", a - b}') s"

# First reaction: first scale_up after the load started, that worker's boot, its readiness.
set +o pipefail
first_up=$(grep 'action="scale_up"' "$TMP/step.log" | sed -n 2p | cut -d' ' -f1)
if [ -n "$first_up" ]; then
  up_t=$(epoch "$first_up")
  started=$(awk -v t="$up_t" '/worker process started/ {print $1}' "$TMP/step.log" | while read -r s; do e=$(epoch "$s"); awk -v e="$e" -v t="$up_t" 'BEGIN {if (e >= t) print e}'; done | head -1)
  port=$(grep 'worker process started' "$TMP/step.log" | sed -n 2p | sed -E 's/.*port=([0-9]+).*/\1/')
  booted=$(epoch "$(grep "demo-worker listening on 127.0.0.1:$port" "$TMP/step.log" | cut -d' ' -f1)")
  name=$(grep 'worker process started' "$TMP/step.log" | sed -n 2p | sed -E 's/.*worker=([^ ]+).*/\1/')
  readyt=$(epoch "$(grep "worker ready pool=app worker=$name " "$TMP/step.log" | cut -d' ' -f1)")
  echo
  awk -v l="$load_start" -v u="$up_t" -v s="$started" -v b="$booted" -v r="$readyt" 'BEGIN {
    printf "decision after load start: %.1f ms; launch to process start %.1f ms; worker boot (start to listening) %.1f ms; listening to ready (first probe pass) %.1f ms; load step to new worker serving minus boot: %.1f ms\n", (u-l)*1000, (s-u)*1000, (b-s)*1000, (r-b)*1000, ((r-l)-(b-s))*1000 }'
fi

set -o pipefail

# 2. Cold start with min_workers = 0.
COLD_PORT=$((BASE_PORT + 1))
config "$COLD_PORT" 0 > "$TMP/cold.toml"
WEIR_LOG=info "$WEIR" run --config "$TMP/cold.toml" 2> "$TMP/cold.log" &
PIDS+=($!)
wait_port "$COLD_PORT"
sleep 0.5
echo
echo "## Cold start (min_workers = 0)"
for i in 1 2 3; do
  curl -s -o /dev/null -D "$TMP/h$i" -w "request $i: %{time_total}s total\n" "http://127.0.0.1:$COLD_PORT/"
  grep -i x-weir-cold-start "$TMP/h$i" | tr -d '\r' | sed 's/^/    /' || true
done
s=$(epoch "$(grep 'worker process started' "$TMP/cold.log" | head -1 | cut -d' ' -f1)")
b=$(epoch "$(grep 'demo-worker listening' "$TMP/cold.log" | head -1 | cut -d' ' -f1)")
echo "worker boot (process start to listening): $(awk -v s="$s" -v b="$b" 'BEGIN {printf "%.1f", (b-s)*1000}') ms"
