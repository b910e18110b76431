#!/usr/bin/env bash
# Side-by-side load test on loopback: wrk against the demo worker directly, through weir, and
# through nginx and HAProxy when installed, in alternating rounds. Prints a markdown table of
# median req/s, p50, p99, proxy CPU microseconds per request, and the ratio to nginx.
#
# Installs nothing. Needs Debian's `wrk`; optional: `nginx` (or nginx-light), `haproxy`.
#   apt-get install wrk nginx haproxy apache2-utils
# Build first: cargo build --release
#
# Knobs (environment): ROUNDS=3 DURATION=10s CONNS=64 WRK_THREADS=1 PROXY_THREADS=1
#                      PATH_TO_GET=/ BASE_PORT=18080 SKIP_OTHERS=1 (weir and direct only)
#   WEIR_VARIANTS='name=pool keys;name2=pool keys' runs extra weir processes whose pool gets
#   those keys, e.g. WEIR_VARIANTS='capped=worker_concurrency = 16' to measure the queue path.
#   A key starting with '[' opens a table, e.g. 'logged=[access_log]|enabled = true|path = "/tmp/a.log"'
#   ('|' stands for a newline). WEIR_BASELINE=/path/to/other/weir adds that build as "baseline".
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-1}
PROXY_THREADS=${PROXY_THREADS:-1}
PATH_TO_GET=${PATH_TO_GET:-/}
BASE_PORT=${BASE_PORT:-18080}
WEIR=${WEIR:-target/release/weir}

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 2; }
[ -x "$WEIR" ] || { echo "needs $WEIR (cargo build --release)" >&2; exit 2; }

WORKER_PORT=$((BASE_PORT + 1)); WEIR_PORT=$BASE_PORT
NGINX_PORT=$((BASE_PORT + 2)); HAPROXY_PORT=$((BASE_PORT + 3))
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

wait_port() { # port
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listening on $1" >&2; exit 1
}

"$WEIR" demo-worker --listen "127.0.0.1:$WORKER_PORT" --threads 1 >/dev/null &
PIDS+=($!)
wait_port "$WORKER_PORT"

declare -A WEIR_PIDS
start_weir() { # name port pool-keys [binary]
  local binary=${4:-$WEIR}
  # Each weir gets its own admin port (a baseline build may predate the admin API).
  local admin=$'[admin]\nlisten = "127.0.0.1:0"'
  [ "$binary" = "$WEIR" ] || admin=""
  cat > "$TMP/$1.toml" <<TOML
[server]
threads = $PROXY_THREADS
$admin
[[listeners]]
listen = "127.0.0.1:$2"
[[routes]]
pool = "bench"
[pools.bench]
provider = { kind = "static", addresses = ["127.0.0.1:$WORKER_PORT"] }
${3//|/$'\n'}
TOML
  WEIR_LOG=warn "$binary" run --config "$TMP/$1.toml" &
  WEIR_PIDS[$1]=$!
  PIDS+=($!)
  wait_port "$2"
}
start_weir weir "$WEIR_PORT" ""
TARGETS=("direct:$WORKER_PORT" "weir:$WEIR_PORT")
VARIANT_PORT=$((BASE_PORT + 10))
if [ -n "${WEIR_VARIANTS:-}" ]; then
  IFS=';' read -ra variants <<<"$WEIR_VARIANTS"
  for variant in "${variants[@]}"; do
    vname=${variant%%=*}; vkeys=${variant#*=}
    start_weir "$vname" "$VARIANT_PORT" "$vkeys"
    TARGETS+=("$vname:$VARIANT_PORT")
    VARIANT_PORT=$((VARIANT_PORT + 1))
  done
fi
if [ -n "${WEIR_BASELINE:-}" ]; then
  start_weir baseline "$VARIANT_PORT" "" "$WEIR_BASELINE"
  TARGETS+=("baseline:$VARIANT_PORT")
fi

NGINX=$( [ -z "${SKIP_OTHERS:-}" ] && command -v nginx || true)
if [ -n "$NGINX" ]; then
  cat > "$TMP/nginx.conf" <<CONF
worker_processes $PROXY_THREADS;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  upstream worker { server 127.0.0.1:$WORKER_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://worker;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
  "$NGINX" -c "$TMP/nginx.conf" -p "$TMP" -e "$TMP/nginx-error.log" -g "daemon on;" 2>/dev/null
  wait_port "$NGINX_PORT"
  TARGETS+=("nginx:$NGINX_PORT")
fi

HAPROXY=$( [ -z "${SKIP_OTHERS:-}" ] && command -v haproxy || true)
if [ -n "$HAPROXY" ]; then
  cat > "$TMP/haproxy.cfg" <<CONF
global
  nbthread $PROXY_THREADS
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend be
backend be
  server w1 127.0.0.1:$WORKER_PORT
CONF
  "$HAPROXY" -f "$TMP/haproxy.cfg" -db >/dev/null 2>&1 &
  PIDS+=($!)
  HAPROXY_PID=$!
  wait_port "$HAPROXY_PORT"
  TARGETS+=("haproxy:$HAPROXY_PORT")
fi

# CPU ticks (user + system) of a set of pids.
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    [ -r "/proc/$pid/stat" ] || continue
    # fields 14 and 15 after the ")" of the command name
    total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}

proxy_pids() { # name
  case "$1" in
    direct) echo "" ;;
    nginx) local m; m=$(cat "$TMP/nginx.pid"); echo "$m $(pgrep -P "$m" | tr '\n' ' ')" ;;
    haproxy) echo "$HAPROXY_PID" ;;
    *) echo "${WEIR_PIDS[$1]:-}" ;;
  esac
}

to_ms() { # "490.00us" | "2.10ms" | "1.2s"
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else print v }'
}

TICK_US=$((1000000 / $(getconf CLK_TCK)))
RESULTS="$TMP/results"
: > "$RESULTS"
# Warm-up, so pools and caches are filled before measuring.
for target in "${TARGETS[@]}"; do
  wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:${target#*:}$PATH_TO_GET" >/dev/null
done
for round in $(seq 1 "$ROUNDS"); do
  for target in "${TARGETS[@]}"; do
    name=${target%%:*}; port=${target#*:}
    pids=$(proxy_pids "$name")
    before=$( [ -n "$pids" ] && cpu_ticks $pids || echo 0)
    out=$(wrk -t"$WRK_THREADS" -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$port$PATH_TO_GET")
    after=$( [ -n "$pids" ] && cpu_ticks $pids || echo 0)
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
    cpu_us="-"
    if [ -n "$pids" ] && [ "$total" -gt 0 ]; then
      cpu_us=$(awk -v t=$((after - before)) -v us="$TICK_US" -v n="$total" 'BEGIN {printf "%.1f", t * us / n}')
    fi
    echo "$name $rps $p50 $p99 $cpu_us" >> "$RESULTS"
    echo "round $round $name: $rps req/s p50 ${p50}ms p99 ${p99}ms cpu ${cpu_us}us/req $errors" >&2
  done
done

median() { sort -n | awk '{a[NR] = $1} END {if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
col() { awk -v n="$1" -v c="$2" '$1 == n {print $c}' "$RESULTS" | { grep -v '^-$' || true; } | median; }

nginx_rps=""
grep -q '^nginx ' "$RESULTS" && nginx_rps=$(col nginx 2)
echo
echo "wrk -t$WRK_THREADS -c$CONNS -d$DURATION, $ROUNDS alternating rounds (medians), proxies with $PROXY_THREADS thread(s)/worker(s), path $PATH_TO_GET, $(nproc) cores"
echo
echo "| target | req/s | p50 ms | p99 ms | proxy CPU us/req | vs nginx |"
echo "|---|---:|---:|---:|---:|---:|"
for target in "${TARGETS[@]}"; do
  name=${target%%:*}
  rps=$(col "$name" 2); p50=$(col "$name" 3); p99=$(col "$name" 4)
  cpu=$(col "$name" 5); [ -n "$cpu" ] || cpu="-"
  ratio="-"
  [ -n "$nginx_rps" ] && ratio=$(awk -v a="$rps" -v b="$nginx_rps" 'BEGIN {printf "%.2fx", a / b}')
  echo "| $name | $rps | $p50 | $p99 | $cpu | $ratio |"
done
