#!/usr/bin/env bash
# Side-by-side load test on loopback: the demo worker directly, through weir, and through nginx
# and HAProxy when installed, in alternating rounds. Prints markdown tables of median req/s,
# p50, p99, the proxy's CPU microseconds per request, user and system (from /proc: steadier
# than req/s when the load generator shares the cores) and the ratio to nginx, then each
# proxy's RSS (idle, after the 64-connection load, peak), and ends with the goal table of the
# second performance issue, each goal marked met or not.
#
# Installs nothing. Needs Debian's `wrk`; optional: `nginx` (or nginx-light), `haproxy`,
# `apache2-utils` (ab, for the new-TLS-connection scenario).
#   apt-get install wrk nginx haproxy apache2-utils
# Build first: cargo build --release
#
# Scenarios (SCENARIOS, default all): idle (IDLE_CONNS=9000 keep-alive connections that made
# one request each and then wait: the RSS each costs; it runs first, before busy scenarios leave
# freed heap behind that would hide the cost; 9,000 keeps every proxy, client and worker
# connections together, within 20,000 file descriptors), plain (HTTP/1.1 keep-alive), https
# (keep-alive over TLS), handshake (a new TLS connection per request, ab without -k), c1000 and
# c10000 (1,000 and 10,000 concurrent keep-alive connections), burst (BURST_CONNS=10000
# keep-alive connections busy for BURST_DURATION=5s, then gone: RSS right after and
# BURST_SETTLE=60s later, i.e. whether the memory a burst took is given back; not in the default
# set, as it waits a minute per target).
# Knobs: ROUNDS=3 DURATION=10s CONNS=64 WRK_THREADS=1 PROXY_THREADS=1 PATH_TO_GET=/
#   BASE_PORT=18080 SKIP_OTHERS=1 (weir and direct only) AB_REQUESTS=4000 AB_CONCURRENCY=16
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
SCENARIOS=${SCENARIOS:-idle plain https handshake c1000 c10000}
IDLE_CONNS=${IDLE_CONNS:-9000}
BURST_CONNS=${BURST_CONNS:-10000}
BURST_DURATION=${BURST_DURATION:-5s}
BURST_SETTLE=${BURST_SETTLE:-60}
AB_REQUESTS=${AB_REQUESTS:-4000}
AB_CONCURRENCY=${AB_CONCURRENCY:-16}
WEIR=${WEIR:-target/release/weir}
CERT=$PWD/certs-dev/cert.pem
KEY=$PWD/certs-dev/key.pem

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 2; }
[ -x "$WEIR" ] || { echo "needs $WEIR (cargo build --release)" >&2; exit 2; }

WORKER_PORT=$((BASE_PORT + 1))
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listening on $1" >&2; exit 1
}

"$WEIR" demo-worker --listen "127.0.0.1:$WORKER_PORT" --threads 1 >/dev/null &
PIDS+=($!)
wait_port "$WORKER_PORT"

# name -> "plain_port tls_port pids..." ; direct has no TLS port (0).
declare -A PLAIN TLS PROC
PLAIN[direct]=$WORKER_PORT; TLS[direct]=0; PROC[direct]=""
TARGETS=(direct)
NEXT_PORT=$((BASE_PORT + 10))

start_weir() { # name pool-keys [binary]
  local name=$1 keys=$2 binary=${3:-$WEIR}
  local plain=$NEXT_PORT tls=$((NEXT_PORT + 1))
  NEXT_PORT=$((NEXT_PORT + 2))
  # Each weir gets its own admin port (a baseline build may predate the admin API).
  local admin=$'[admin]\nlisten = "127.0.0.1:0"'
  [ "$binary" = "$WEIR" ] || admin=""
  cat > "$TMP/$name.toml" <<TOML
[server]
threads = $PROXY_THREADS
$admin
[[listeners]]
listen = "127.0.0.1:$plain"
[[listeners]]
listen = "127.0.0.1:$tls"
tls = { cert = "$CERT", key = "$KEY" }
[[routes]]
pool = "bench"
[pools.bench]
provider = { kind = "static", addresses = ["127.0.0.1:$WORKER_PORT"] }
${keys//|/$'\n'}
TOML
  WEIR_LOG=warn "$binary" run --config "$TMP/$name.toml" &
  PIDS+=($!)
  PLAIN[$name]=$plain; TLS[$name]=$tls; PROC[$name]=$!
  TARGETS+=("$name")
  wait_port "$plain"
}
start_weir weir ""
if [ -n "${WEIR_VARIANTS:-}" ]; then
  IFS=';' read -ra variants <<<"$WEIR_VARIANTS"
  for variant in "${variants[@]}"; do
    start_weir "${variant%%=*}" "${variant#*=}"
  done
fi
[ -n "${WEIR_BASELINE:-}" ] && start_weir baseline "" "$WEIR_BASELINE"

NGINX=$( [ -z "${SKIP_OTHERS:-}" ] && command -v nginx || true)
if [ -n "$NGINX" ]; then
  plain=$NEXT_PORT; tls=$((NEXT_PORT + 1)); NEXT_PORT=$((NEXT_PORT + 2))
  cat > "$TMP/nginx.conf" <<CONF
worker_processes $PROXY_THREADS;
worker_rlimit_nofile 20000;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 19000; multi_accept on; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream worker { server 127.0.0.1:$WORKER_PORT; keepalive 256; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$plain reuseport backlog=4096;
    listen 127.0.0.1:$tls ssl reuseport backlog=4096;
    ssl_certificate $CERT;
    ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    location / {
      proxy_pass http://worker;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
  "$NGINX" -c "$TMP/nginx.conf" -p "$TMP" -e "$TMP/nginx-error.log" -g "daemon on;" 2>/dev/null
  wait_port "$plain"
  PLAIN[nginx]=$plain; TLS[nginx]=$tls; PROC[nginx]=nginx
  TARGETS+=(nginx)
fi

HAPROXY=$( [ -z "${SKIP_OTHERS:-}" ] && command -v haproxy || true)
if [ -n "$HAPROXY" ]; then
  plain=$NEXT_PORT; tls=$((NEXT_PORT + 1)); NEXT_PORT=$((NEXT_PORT + 2))
  cat "$CERT" "$KEY" > "$TMP/haproxy.pem"
  cat > "$TMP/haproxy.cfg" <<CONF
global
  nbthread $PROXY_THREADS
  maxconn 9900
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:$plain
  bind 127.0.0.1:$tls ssl crt $TMP/haproxy.pem alpn http/1.1
  default_backend be
backend be
  server w1 127.0.0.1:$WORKER_PORT
CONF
  "$HAPROXY" -f "$TMP/haproxy.cfg" -db >/dev/null 2>&1 &
  PIDS+=($!)
  wait_port "$plain"
  PLAIN[haproxy]=$plain; TLS[haproxy]=$tls; PROC[haproxy]=$!
  TARGETS+=(haproxy)
fi

pids_of() { # name -> pids to account CPU and memory to
  case "${PROC[$1]}" in
    "") echo "" ;;
    nginx) local m; m=$(cat "$TMP/nginx.pid"); echo "$m $(pgrep -P "$m" | tr '\n' ' ')" ;;
    *) echo "${PROC[$1]}" ;;
  esac
}

cpu_ticks() { # pids... -> "user system" clock ticks, summed
  local user=0 system=0 pid u s
  for pid in "$@"; do
    [ -r "/proc/$pid/stat" ] || continue
    read -r u s < <(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12, $13}')
    user=$((user + u)); system=$((system + s))
  done
  echo "$user $system"
}

rss_kib() { # field pids... -> summed VmRSS or VmHWM in KiB
  local field=$1 total=0 pid; shift
  for pid in "$@"; do
    [ -r "/proc/$pid/status" ] || continue
    total=$((total + $(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/status")))
  done
  echo "$total"
}

to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else print v }'
}

TICK_US=$((1000000 / $(getconf CLK_TCK)))
RESULTS="$TMP/results"
: > "$RESULTS"
declare -A IDLE_RSS
for t in "${TARGETS[@]}"; do
  p=$(pids_of "$t"); [ -n "$p" ] && IDLE_RSS[$t]=$(rss_kib VmRSS $p) || IDLE_RSS[$t]=0
done

measure() { # scenario target command...
  local scenario=$1 name=$2; shift 2
  local pids; pids=$(pids_of "$name")
  local before; before=$( [ -n "$pids" ] && cpu_ticks $pids || echo "0 0")
  local out; out=$("$@" 2>&1 || true)
  local after; after=$( [ -n "$pids" ] && cpu_ticks $pids || echo "0 0")
  local rps total p50 p99
  if [[ "$1" == ab ]]; then
    rps=$(awk '/^Requests per second/ {print $4}' <<<"$out")
    total=$(awk '/^Complete requests/ {print $3}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out"); p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  else
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
  fi
  local errors; errors=$(awk '/Non-2xx|Socket errors|Failed requests/ {print}' <<<"$out" | tr '\n' ' ')
  local cpu="-" user="-" system="-"
  if [ -n "$pids" ] && [ "${total:-0}" -gt 0 ] 2>/dev/null; then
    read -r cpu user system < <(awk -v b="$before" -v a="$after" -v us="$TICK_US" -v n="$total" 'BEGIN {
      split(b, x, " "); split(a, y, " "); u = (y[1] - x[1]) * us / n; s = (y[2] - x[2]) * us / n
      printf "%.1f %.1f %.1f\n", u + s, u, s }')
  fi
  echo "$scenario $name ${rps:-0} ${p50:-0} ${p99:-0} $cpu $user $system" >> "$RESULTS"
  echo "$scenario $name: ${rps:-0} req/s p50 ${p50:-?}ms p99 ${p99:-?}ms cpu ${cpu}us/req (user $user, system $system) $errors" >&2
}

wrk_run() { # conns duration url
  wrk -t"$WRK_THREADS" -c"$1" -d"$2" --latency "$3"
}

IDLE_RESULTS="$TMP/idle-results"
: > "$IDLE_RESULTS"

idle_client() { # port count ready-file: open count connections, one request on each, hold them
  local port=$1 count=$2 ready=$3 fd
  for _ in $(seq 1 "$count"); do
    exec {fd}<>"/dev/tcp/127.0.0.1/$port" || break
    printf 'GET %s HTTP/1.1\r\nHost: bench\r\n\r\n' "$PATH_TO_GET" >&"$fd"
  done
  : > "$ready"
  exec sleep 600
}

measure_idle() { # target port
  local name=$1 port=$2 pids; pids=$(pids_of "$name")
  [ -n "$pids" ] || return 0
  local before; before=$(rss_kib VmRSS $pids)
  rm -f "$TMP/idle.ready"
  idle_client "$port" "$IDLE_CONNS" "$TMP/idle.ready" &
  local client=$!
  for _ in $(seq 1 600); do [ -f "$TMP/idle.ready" ] && break; sleep 0.1; done
  # The last requests are answered within moments; then every connection is idle.
  sleep 1
  local with; with=$(rss_kib VmRSS $pids)
  kill "$client" 2>/dev/null; wait "$client" 2>/dev/null || true
  local per; per=$(awk -v a="$before" -v b="$with" -v n="$IDLE_CONNS" 'BEGIN {printf "%.1f", (b - a) / n}')
  echo "$name $before $with $per" >> "$IDLE_RESULTS"
  echo "idle $name: ${per} KiB per idle connection (RSS ${before} -> ${with} KiB)" >&2
}

BURST_RESULTS="$TMP/burst-results"
: > "$BURST_RESULTS"

measure_burst() { # target port: RSS before, right after, and BURST_SETTLE s after a burst
  local name=$1 port=$2 pids; pids=$(pids_of "$name")
  [ -n "$pids" ] || return 0
  local before; before=$(rss_kib VmRSS $pids)
  wrk -t"$WRK_THREADS" -c"$BURST_CONNS" -d"$BURST_DURATION" "http://127.0.0.1:$port$PATH_TO_GET" >/dev/null 2>&1 || true
  sleep 1
  local after; after=$(rss_kib VmRSS $pids)
  sleep "$BURST_SETTLE"
  local settled; settled=$(rss_kib VmRSS $pids)
  echo "$name $before $after $settled" >> "$BURST_RESULTS"
  echo "burst $name: RSS ${before} -> ${after} KiB right after, ${settled} KiB ${BURST_SETTLE}s later" >&2
}

RSS_AFTER="$TMP/rss-after-plain"
: > "$RSS_AFTER"

for scenario in $SCENARIOS; do
  case $scenario in
    plain|https) rounds=$ROUNDS ;;
    *) rounds=1 ;;
  esac
  for round in $(seq 1 "$rounds"); do
    for t in "${TARGETS[@]}"; do
      plain_url="http://127.0.0.1:${PLAIN[$t]}$PATH_TO_GET"
      tls_url="https://127.0.0.1:${TLS[$t]}$PATH_TO_GET"
      case $scenario in
        plain)
          [ "$round" = 1 ] && wrk -t1 -c"$CONNS" -d2s "$plain_url" >/dev/null 2>&1
          measure plain "$t" wrk_run "$CONNS" "$DURATION" "$plain_url" ;;
        https)
          [ "${TLS[$t]}" = 0 ] && continue
          [ "$round" = 1 ] && wrk -t1 -c"$CONNS" -d2s "$tls_url" >/dev/null 2>&1
          measure https "$t" wrk_run "$CONNS" "$DURATION" "$tls_url" ;;
        handshake)
          [ "${TLS[$t]}" = 0 ] && continue
          command -v ab >/dev/null || continue
          measure handshake "$t" ab -q -n "$AB_REQUESTS" -c "$AB_CONCURRENCY" "$tls_url" ;;
        idle)
          measure_idle "$t" "${PLAIN[$t]}" ;;
        burst)
          measure_burst "$t" "${PLAIN[$t]}" ;;
        c1000)
          measure c1000 "$t" wrk_run 1000 "$DURATION" "$plain_url" ;;
        c10000)
          measure c10000 "$t" wrk_run 10000 "$DURATION" "$plain_url" ;;
      esac
    done
  done
  if [ "$scenario" = plain ]; then
    # What each proxy holds once the 64-connection load has ended.
    sleep 1
    for t in "${TARGETS[@]}"; do
      p=$(pids_of "$t"); [ -n "$p" ] && echo "$t $(rss_kib VmRSS $p)" >> "$RSS_AFTER"
    done
  fi
done

median() { sort -n | awk '{a[NR] = $1} END {if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
col() { awk -v s="$1" -v n="$2" -v c="$3" '$1 == s && $2 == n {print $c}' "$RESULTS" | { grep -v '^-$' || true; } | median; }

echo
echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); wrk -t$WRK_THREADS, proxies with $PROXY_THREADS thread(s)/worker(s), demo worker on 1 thread; medians of $ROUNDS alternating rounds of $DURATION (1 round for handshake/c1000/c10000)."
for scenario in $SCENARIOS; do
  case $scenario in
    plain) title="HTTP/1.1 keep-alive, $CONNS connections" ;;
    https) title="HTTPS keep-alive, $CONNS connections" ;;
    handshake) title="new TLS connection per request (ab -n $AB_REQUESTS -c $AB_CONCURRENCY, no -k): CPU column is per handshake" ;;
    c1000) title="1,000 keep-alive connections" ;;
    c10000) title="10,000 keep-alive connections" ;;
    idle|burst) continue ;;
  esac
  grep -q "^$scenario " "$RESULTS" || continue
  nginx_rps=""
  grep -q "^$scenario nginx " "$RESULTS" && nginx_rps=$(col "$scenario" nginx 3)
  echo
  echo "### $title"
  echo
  echo "| target | req/s | p50 ms | p99 ms | proxy CPU us/req | user / system | vs nginx |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for t in "${TARGETS[@]}"; do
    grep -q "^$scenario $t " "$RESULTS" || continue
    rps=$(col "$scenario" "$t" 3); p50=$(col "$scenario" "$t" 4); p99=$(col "$scenario" "$t" 5)
    cpu=$(col "$scenario" "$t" 6); [ -n "$cpu" ] || cpu="-"
    user=$(col "$scenario" "$t" 7); system=$(col "$scenario" "$t" 8)
    split="-"; [ -n "$user" ] && split="$user / $system"
    ratio="-"
    [ -n "$nginx_rps" ] && ratio=$(awk -v a="$rps" -v b="$nginx_rps" 'BEGIN {if (b > 0) printf "%.2fx", a / b}')
    echo "| $t | $rps | $p50 | $p99 | $cpu | $split | $ratio |"
  done
done
echo
echo "### Memory (RSS of all the proxy's processes)"
echo
echo "| target | idle RSS MiB | after the $CONNS-connection load MiB | peak RSS MiB |"
echo "|---|---:|---:|---:|"
for t in "${TARGETS[@]}"; do
  p=$(pids_of "$t"); [ -n "$p" ] || continue
  after=$(awk -v t="$t" '$1 == t {printf "%.1f", $2/1024}' "$RSS_AFTER"); [ -n "$after" ] || after="-"
  echo "| $t | $(awk -v k="${IDLE_RSS[$t]}" 'BEGIN {printf "%.1f", k/1024}') | $after | $(awk -v k="$(rss_kib VmHWM $p)" 'BEGIN {printf "%.1f", k/1024}') |"
done
if [ -s "$IDLE_RESULTS" ]; then
  echo
  echo "### $IDLE_CONNS idle keep-alive connections (each made one request, then waits)"
  echo
  echo "| target | RSS before MiB | RSS with them MiB | KiB per connection |"
  echo "|---|---:|---:|---:|"
  while read -r name before peak per; do
    echo "| $name | $(awk -v k="$before" 'BEGIN {printf "%.1f", k/1024}') | $(awk -v k="$peak" 'BEGIN {printf "%.1f", k/1024}') | $per |"
  done < "$IDLE_RESULTS"
fi
if [ -s "$BURST_RESULTS" ]; then
  echo
  echo "### Memory after a burst of $BURST_CONNS keep-alive connections for $BURST_DURATION"
  echo
  echo "| target | RSS before MiB | right after MiB | ${BURST_SETTLE} s later MiB |"
  echo "|---|---:|---:|---:|"
  while read -r name before after settled; do
    echo "| $name | $(awk -v k="$before" 'BEGIN {printf "%.1f", k/1024}') | $(awk -v k="$after" 'BEGIN {printf "%.1f", k/1024}') | $(awk -v k="$settled" 'BEGIN {printf "%.1f", k/1024}') |"
  done < "$BURST_RESULTS"
fi

# The goals of the second performance issue, each against what this run measured.
goal() { # description weir-value peer-value verdict
  echo "| $1 | $2 | $3 | $4 |"
}
verdict() { # awk condition on a and b -> met / not met / not measured
  if [ -z "$2" ] || [ -z "$3" ] || [ "$2" = "-" ] || [ "$3" = "-" ]; then echo "not measured"; return; fi
  awk -v a="$2" -v b="$3" "BEGIN {if ($1) print \"met\"; else print \"not met\"}"
}
better_of() { # scenario column higher|lower -> the better value of nginx and haproxy
  local n h
  n=$(grep -q "^$1 nginx " "$RESULTS" && col "$1" nginx "$2" || true)
  h=$(grep -q "^$1 haproxy " "$RESULTS" && col "$1" haproxy "$2" || true)
  awk -v n="$n" -v h="$h" -v w="$3" 'BEGIN {
    if (n == "" && h == "") exit
    if (n == "") { print h; exit } if (h == "") { print n; exit }
    if (w == "higher") print (n > h ? n : h); else print (n < h ? n : h) }'
}
weir_col() { grep -q "^$1 weir " "$RESULTS" && col "$1" weir "$2" || true; }
nginx_col() { grep -q "^$1 nginx " "$RESULTS" && col "$1" nginx "$2" || true; }
ratio_of() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b}' || true; }

echo
echo "### Goals (Performance II), from this run"
echo
echo "| goal | weir | peers | verdict |"
echo "|---|---:|---:|---|"
w=$(weir_col plain 3); b=$(better_of plain 3 higher); r=$(ratio_of "$w" "$b")
goal "plain keep-alive req/s >= 1.0x the better of nginx and HAProxy" "${r:--}x" "${b:--} req/s" "$(verdict 'a >= 1.0' "${r:--}" 1)"
w=$(weir_col plain 6); b=$(better_of plain 6 lower)
goal "plain proxy CPU per request <= the better peer's" "${w:--} us" "${b:--} us" "$(verdict 'a <= b' "${w:--}" "${b:--}")"
w=$(weir_col https 3); n=$(nginx_col https 3); r=$(ratio_of "$w" "$n")
goal "HTTPS keep-alive req/s >= 1.15x nginx" "${r:--}x" "${n:--} req/s" "$(verdict 'a >= 1.15' "${r:--}" 1)"
w=$(weir_col plain 5); n=$(nginx_col plain 5)
goal "p99 at $CONNS connections <= nginx's" "${w:--} ms" "${n:--} ms" "$(verdict 'a <= b' "${w:--}" "${n:--}")"
w=$(weir_col c1000 3); n=$(nginx_col c1000 3); r=$(ratio_of "$w" "$n")
goal "1,000 connections: req/s >= 1.0x nginx" "${r:--}x" "${n:--} req/s" "$(verdict 'a >= 1.0' "${r:--}" 1)"
w=$(awk '$1 == "weir" {print $4}' "$IDLE_RESULTS")
goal "memory per idle keep-alive connection <= 4 KiB" "${w:--} KiB" "$(awk '$1 == "nginx" {print $4 " KiB (nginx)"}' "$IDLE_RESULTS")" "$(verdict 'a <= 4' "${w:--}" 4)"
w=$(awk '$1 == "weir" {print $2}' "$RSS_AFTER"); n=$(awk '$1 == "nginx" {print $2}' "$RSS_AFTER")
goal "RSS after the $CONNS-connection load <= nginx's" "$(ratio_of "${w:-}" 1024) MiB" "$(ratio_of "${n:-}" 1024) MiB" "$(verdict 'a <= b' "${w:--}" "${n:--}")"
w=$(weir_col handshake 6); b=$(better_of handshake 6 lower)
goal "CPU per new TLS handshake <= the better peer's (the lead kept)" "${w:--} us" "${b:--} us" "$(verdict 'a <= b' "${w:--}" "${b:--}")"
