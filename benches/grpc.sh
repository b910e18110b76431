#!/usr/bin/env bash
# gRPC through weir beside a direct connection: the same client (PyPI's grpcio, 8 threads on
# one channel) and the same worker (grpcio's health service over h2c), unary Check calls for
# DURATION seconds, then Watch streams opened and read one after another. Prints calls/s and
# streams/s for each path and the ratio weir/direct. Rounds alternate so drift hits both.
#
# Needs: python3 -m pip install grpcio grpcio-health-checking; build first: cargo build --release
# Knobs: ROUNDS=3 DURATION=10 CONC=8
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONC=${CONC:-8}
WEIR=${WEIR:-target/release/weir}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT

python3 tests/grpc/health_worker.py --port 0 < <(sleep infinity) > "$dir/worker.out" &
until grep -q listening "$dir/worker.out" 2>/dev/null; do sleep 0.1; done
worker_port=$(awk '/listening/ {print $2}' "$dir/worker.out")
weir_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
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
"$WEIR" run --config "$dir/weir.toml" > "$dir/weir.log" 2>&1 &
until python3 tests/grpc/client.py check "127.0.0.1:$weir_port" "" 2>/dev/null | grep -q SERVING; do sleep 0.2; done

printf '| round | path | unary calls/s | errors | streams/s |\n|---|---|---|---|---|\n'
for round in $(seq "$ROUNDS"); do
  for path in direct weir; do
    port=$worker_port
    [ "$path" = weir ] && port=$weir_port
    read -r _ calls _ errors _ secs < <(python3 tests/grpc/client.py bench "127.0.0.1:$port" "$DURATION" "$CONC")
    read -r _ streams _ ssecs < <(python3 tests/grpc/client.py stream "127.0.0.1:$port" "$DURATION")
    printf '| %s | %s | %.0f | %s | %.0f |\n' "$round" "$path" \
      "$(echo "$calls / $secs" | bc -l)" "$errors" "$(echo "$streams / $ssecs" | bc -l)"
  done
done
