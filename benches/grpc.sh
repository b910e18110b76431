#!/usr/bin/env bash
# gRPC through weir beside a direct connection: the same client (PyPI's grpcio, CONC threads
# on one channel) and the same worker (grpcio's health service over h2c, restarted on the same
# port before each measurement: its servicer slows down after some thousands of cancelled
# Watch streams). Unary Check calls for DURATION seconds, then Watch streams opened, read to
# their first message and cancelled one after another for STREAM_SECONDS. Prints calls/s and
# streams/s per round and path; rounds alternate so drift hits both.
#
# Needs: python3 -m pip install grpcio grpcio-health-checking; build first: cargo build --release
# Knobs: ROUNDS=3 DURATION=10 STREAM_SECONDS=3 CONC=8 WEIR=target/release/weir
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
STREAM_SECONDS=${STREAM_SECONDS:-3}
CONC=${CONC:-8}
WEIR=${WEIR:-target/release/weir}
dir=$(mktemp -d)
worker_pid=
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
worker_port=$(free_port)
weir_port=$(free_port)

# A fresh worker on worker_port, serving once a direct Check says SERVING.
restart_worker() {
  if [ -n "$worker_pid" ]; then kill -9 "$worker_pid" 2>/dev/null || true; wait "$worker_pid" 2>/dev/null || true; fi
  python3 tests/grpc/health_worker.py --port "$worker_port" < <(sleep infinity) > "$dir/worker.out" 2>&1 &
  worker_pid=$!
  until python3 tests/grpc/client.py check "127.0.0.1:$worker_port" "" --timeout 1 2>/dev/null | grep -q SERVING; do sleep 0.1; done
}

# Until a Check through `port` says SERVING (weir's connection to a restarted worker renews).
serving() {
  until python3 tests/grpc/client.py check "127.0.0.1:$1" "" --timeout 1 2>/dev/null | grep -q SERVING; do sleep 0.1; done
}

cat > "$dir/weir.toml" <<TOML
[server]
threads = 1
[admin]
listen = "127.0.0.1:0"
[[listeners]]
listen = "127.0.0.1:$weir_port"
[[routes]]
pool = "grpc"
[pools.grpc]
protocol = "h2c"
provider = { kind = "static", addresses = ["127.0.0.1:$worker_port"] }
TOML
restart_worker
"$WEIR" run --config "$dir/weir.toml" > "$dir/weir.log" 2>&1 &
serving "$weir_port"

printf '| round | path | unary calls/s | errors | Watch streams/s | streams unanswered in 1 s |\n|---|---|---|---|---|---|\n'
for round in $(seq "$ROUNDS"); do
  for path in direct weir; do
    port=$worker_port
    [ "$path" = weir ] && port=$weir_port
    restart_worker
    serving "$port"
    read -r _ calls _ errors _ secs < <(python3 tests/grpc/client.py bench "127.0.0.1:$port" "$DURATION" "$CONC")
    restart_worker
    serving "$port"
    read -r _ streams _ ssecs _ sfailed < <(python3 tests/grpc/client.py stream "127.0.0.1:$port" "$STREAM_SECONDS")
    printf '| %s | %s | %.0f | %s | %.0f | %s |\n' "$round" "$path" \
      "$(echo "$calls / $secs" | bc -l)" "$errors" "$(echo "$streams / $ssecs" | bc -l)" "$sfailed"
  done
done
