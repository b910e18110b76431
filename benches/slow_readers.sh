#!/usr/bin/env bash
# What buffering costs under the slow-reader attack: READERS connections each ask for a
# SIZE-byte response and never read it (receive buffer as small as the kernel allows), against
# weir in front of one demo worker of 4 slots. Prints weir's RSS and the bytes its temporary
# files hold (weir_temp_file_bytes) before and during the attack, the worker slots in use
# (weir_inflight_requests), and how many of a good client's requests (one GET every 20 ms on a
# new connection, 2 s each) were answered meanwhile.
#
# Installs nothing; needs python3. Build first: cargo build --release
# Knobs: READERS=500 SIZE=1048576 HOLD=10 (seconds the attack is held) WEIR=target/release/weir
#   EXTRA_ROUTE_KEYS='buffer_responses = false' (e.g., to see the unbuffered path)
set -euo pipefail
cd "$(dirname "$0")/.."

READERS=${READERS:-500}
SIZE=${SIZE:-1048576}
HOLD=${HOLD:-10}
WEIR=${WEIR:-target/release/weir}
EXTRA_ROUTE_KEYS=${EXTRA_ROUTE_KEYS:-}
[ -x "$WEIR" ] || { echo "needs $WEIR (cargo build --release)" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORKER_PORT=$(free_port); PROXY_PORT=$(free_port); ADMIN_PORT=$(free_port)
"$WEIR" demo-worker --listen "127.0.0.1:$WORKER_PORT" --threads 1 >/dev/null &
PIDS+=($!)
cat >"$TMP/weir.toml" <<EOF
[server]
threads = 1
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[[listeners]]
listen = "127.0.0.1:$PROXY_PORT"
[[routes]]
pool = "app"
queue = { timeout = "1500ms" }
$EXTRA_ROUTE_KEYS
[pools.app]
worker_concurrency = 4
provider = { kind = "static", addresses = ["127.0.0.1:$WORKER_PORT"] }
EOF
WEIR_LOG=error "$WEIR" run --config "$TMP/weir.toml" 2>"$TMP/weir.log" &
WEIR_PID=$!
PIDS+=($WEIR_PID)

python3 - "$PROXY_PORT" "$ADMIN_PORT" "$WEIR_PID" "$READERS" "$SIZE" "$HOLD" <<'PY'
import socket, sys, threading, time, urllib.request

proxy, admin, pid, readers, size, hold = (int(a) for a in sys.argv[1:])

def wait_port(port):
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listening on {port}")

def rss_mib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0

def metric(name):
    body = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2).read().decode()
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total

def good_client(seconds, results):
    end = time.time() + seconds
    threads = []
    def one():
        try:
            s = socket.create_connection(("127.0.0.1", proxy), 2)
            s.settimeout(2)
            s.sendall(b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            data = s.recv(64)
            results.append(data.startswith(b"HTTP/1.1 200"))
            s.close()
        except OSError:
            results.append(False)
    while time.time() < end:
        t = threading.Thread(target=one); t.start(); threads.append(t)
        time.sleep(0.02)
    for t in threads:
        t.join()

wait_port(proxy); wait_port(admin)
time.sleep(0.5)
before = (rss_mib(), metric("weir_temp_file_bytes"))
held = []
request = f"GET /bytes/{size} HTTP/1.1\r\nhost: x\r\n\r\n".encode()
for _ in range(readers):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.connect(("127.0.0.1", proxy))
    s.sendall(request)
    held.append(s)
results = []
good = threading.Thread(target=good_client, args=(hold, results)); good.start()
peak_rss, peak_temp, peak_inflight = 0.0, 0.0, 0.0
end = time.time() + hold
while time.time() < end:
    peak_rss = max(peak_rss, rss_mib())
    peak_temp = max(peak_temp, metric("weir_temp_file_bytes"))
    peak_inflight = max(peak_inflight, metric("weir_inflight_requests"))
    time.sleep(0.5)
good.join()
print(f"| readers | response | RSS before | RSS peak | temp files peak | worker slots in use (peak of 4) | good client |")
print(f"|---|---|---|---|---|---|---|")
ok = sum(results)
print(f"| {readers} | {size // 1024} KiB | {before[0]:.1f} MiB | {peak_rss:.1f} MiB | "
      f"{peak_temp / 2**20:.1f} MiB | {int(peak_inflight)} | {ok}/{len(results)} ({100 * ok / max(1, len(results)):.1f} %) |")
for s in held:
    s.close()
PY
