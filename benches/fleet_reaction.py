#!/usr/bin/env python3
"""How fast a fleet of weirs reacts to a burst, beside one weir alone, in one run.

Each round runs both, one after the other, on the same machine and the same kind of pool (an
exec pool of detached demo workers, min 1, max 4, worker_concurrency 2, max_idle_time 1s):

- single: one weir without [cluster]; CLIENTS keep-alive clients of /?delay=DELAY start at t0.
- fleet: three weirs in one fleet through a real redis-server (lease_ttl 1s); the same clients
  start at t0 but only at one follower, so the burst has to reach the leader through Redis.

For each it reports, from t0:
- decision: the scale_up event of the instance that decides (the weir alone, the fleet's
  leader) in its activity log; for the fleet, the signal-to-decision latency;
- ready: when the instance receiving the burst has a second ready worker (the reaction a
  client sees: its requests can use the new worker);
and the failed requests. Then the load stops, the workers are released, the next round starts.
Prints a markdown table of medians and worsts over ROUNDS, and the fleet / single ratios.

Needs: redis-server, and weir built (cargo build). Talks to 127.0.0.1 only.
Knobs: WEIR=target/debug/weir ROUNDS=5 CLIENTS=8 DELAY=100ms
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIR = os.path.abspath(os.environ.get("WEIR", os.path.join(ROOT, "target/debug/weir")))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
CLIENTS = int(os.environ.get("CLIENTS", "8"))
DELAY = os.environ.get("DELAY", "100ms")
WAIT_LIMIT = 30.0  # seconds any one wait may take


def fail(message):
    print(f"fleet_reaction: {message}", file=sys.stderr)
    sys.exit(2)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def exec_provider(work):
    """The exec provider's commands: detached demo workers, pid and address files in `work`."""
    launch = (
        f"setsid {WEIR} demo-worker --listen 127.0.0.1:0 --name $WEIR_WORKER > {work}/$WEIR_WORKER.out 2>&1 < /dev/null & "
        f"echo $! > {work}/$WEIR_WORKER.pid; "
        f"for i in $(seq 200); do a=$(sed -n 's/^demo-worker listening on //p' {work}/$WEIR_WORKER.out); [ -n \"$a\" ] && break; sleep 0.05; done; "
        f"[ -n \"$a\" ] || exit 1; echo \"$WEIR_WORKER $a\" > {work}/$WEIR_WORKER.addr; echo \"$WEIR_WORKER $a\""
    )
    release = f"kill $(cat {work}/{{id}}.pid) 2>/dev/null; rm -f {work}/{{id}}.addr {work}/{{id}}.pid"
    listing = f"cat {work}/*.addr 2>/dev/null; true"
    return (
        f"provider = {{ kind = \"exec\", launch = {json.dumps(launch)}, "
        f"release = {json.dumps(release)}, list = {json.dumps(listing)} }}"
    )


def config(work, cluster=""):
    return (
        '[server]\nthreads = 1\n[admin]\nlisten = "127.0.0.1:0"\n[[listeners]]\nlisten = "127.0.0.1:0"\n'
        '[[routes]]\npool = "app"\n[pools.app]\nworker_concurrency = 2\n'
        'health = { path = "/hello", interval = "100ms" }\n'
        f"{exec_provider(work)}\n"
        '[pools.app.autoscale]\nmin_workers = 1\nmax_workers = 4\nmax_idle_time = "1s"\n'
        f"{cluster}"
    )


class Weir:
    """A `weir run` process and the addresses it printed."""

    def __init__(self, path):
        self.proc = subprocess.Popen(
            [WEIR, "run", "--config", path],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.addr = self.admin = None
        deadline = time.time() + WAIT_LIMIT
        while self.admin is None:
            line = self.proc.stderr.readline()
            if not line or time.time() > deadline:
                fail(f"weir on {path} did not start")
            found = re.search(r"addr=(\S+)", line)
            if found and "admin API listening" in line:
                self.admin = found.group(1)
            elif found and "listening" in line and self.addr is None:
                self.addr = found.group(1)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for _ in self.proc.stderr:
            pass

    def api(self, path):
        host, port = self.admin.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("GET", path)
        body = conn.getresponse().read()
        conn.close()
        return json.loads(body)

    def ready(self):
        return sum(1 for w in self.api("/api/v1/workers") if w["state"] == "ready")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_for(what, check):
    deadline = time.time() + WAIT_LIMIT
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            fail(f"timed out waiting for {what}")
        time.sleep(0.01)


class Load:
    """CLIENTS keep-alive clients of /?delay=DELAY at `addr` until stopped."""

    def __init__(self, addr):
        self.stopping = threading.Event()
        self.failures = 0
        self.lock = threading.Lock()
        host, port = addr.rsplit(":", 1)
        self.threads = [
            threading.Thread(target=self._client, args=(host, int(port)), daemon=True)
            for _ in range(CLIENTS)
        ]
        for t in self.threads:
            t.start()

    def _client(self, host, port):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        while not self.stopping.is_set():
            try:
                conn.request("GET", f"/?delay={DELAY}")
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
            if not ok:
                with self.lock:
                    self.failures += 1

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join()
        return self.failures


def first_scale_up_after(weir, t0):
    for event in weir.api("/api/v1/activity"):
        at = datetime.fromisoformat(event["at"].replace("Z", "+00:00")).timestamp()
        if event["action"] == "scale_up" and at >= t0:
            return at
    return None


def kill_workers(work):
    for name in os.listdir(work):
        if name.endswith(".pid"):
            try:
                with open(os.path.join(work, name)) as f:
                    os.kill(int(f.read().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass


def measure(decider, receiver):
    """Load at `receiver` from t0; (decision s, ready s, failures)."""
    t0 = time.time()
    load = Load(receiver.addr)
    decided = wait_for("a scale_up decision", lambda: first_scale_up_after(decider, t0))
    wait_for("a second ready worker", lambda: receiver.ready() >= 2)
    ready = time.time()
    failures = load.stop()
    return decided - t0, ready - t0, failures


def single_round(work):
    path = os.path.join(work, "single.toml")
    with open(path, "w") as f:
        f.write(config(work))
    weir = Weir(path)
    try:
        wait_for("one ready worker", lambda: weir.ready() == 1)
        return measure(weir, weir)
    finally:
        weir.stop()  # releases its workers
        kill_workers(work)


def fleet_round(work, redis_port, prefix):
    fleet = []
    for name in ("weir-a", "weir-b", "weir-c"):
        path = os.path.join(work, f"{name}.toml")
        cluster = (
            f'[cluster]\nredis = "redis://127.0.0.1:{redis_port}/0"\nname = "{name}"\n'
            f'prefix = "{prefix}"\nlease_ttl = "1s"\n'
        )
        with open(path, "w") as f:
            f.write(config(work, cluster))
        fleet.append(Weir(path))
    try:
        def agreed():
            leaders = {w.api("/api/v1/cluster")["leader"] for w in fleet}
            counts = {len(w.api("/api/v1/cluster")["instances"]) for w in fleet}
            return leaders != {None} and len(leaders) == 1 and counts == {3} and leaders.pop()

        leader_name = wait_for("one agreed leader", agreed)
        names = ["weir-a", "weir-b", "weir-c"]
        leader = fleet[names.index(leader_name)]
        follower = next(w for w, n in zip(fleet, names) if n != leader_name)
        wait_for("one ready worker everywhere", lambda: all(w.ready() == 1 for w in fleet))
        return measure(leader, follower)
    finally:
        for w in fleet:
            w.stop()  # a fleet leaves its workers running
        kill_workers(work)


def main():
    if not os.access(WEIR, os.X_OK):
        fail(f"needs {WEIR} (cargo build)")
    if not shutil.which("redis-server"):
        fail("needs redis-server (apt-get install redis-server)")
    work = tempfile.mkdtemp(prefix="weir-fleet-reaction-")
    redis_port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    results = {"single": [], "fleet": []}
    try:
        wait_for("redis-server", lambda: listening(redis_port))
        for i in range(ROUNDS):
            # A fresh directory each time: nothing to adopt from the last one.
            single_dir = os.path.join(work, f"single{i}")
            fleet_dir = os.path.join(work, f"fleet{i}")
            os.makedirs(single_dir)
            os.makedirs(fleet_dir)
            results["single"].append(single_round(single_dir))
            results["fleet"].append(fleet_round(fleet_dir, redis_port, f"reaction{os.getpid()}r{i}"))
            s, f = results["single"][-1], results["fleet"][-1]
            print(
                f"round {i + 1}: single decision {s[0] * 1000:.0f} ms, ready {s[1] * 1000:.0f} ms; "
                f"fleet decision {f[0] * 1000:.0f} ms, ready {f[1] * 1000:.0f} ms",
                file=sys.stderr,
            )
    finally:
        redis.terminate()
        redis.wait()
        shutil.rmtree(work, ignore_errors=True)

    def column(kind, index):
        return [r[index] * 1000 for r in results[kind]]

    print(f"\n{ROUNDS} rounds, {CLIENTS} clients of /?delay={DELAY}, weir {WEIR}\n")
    print("| from the burst's start | single weir median | worst | fleet of 3 median | worst | fleet / single |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, index in (("scale-up decision", 0), ("second worker ready at the receiving instance", 1)):
        single, fleet = column("single", index), column("fleet", index)
        ratio = statistics.median(fleet) / max(statistics.median(single), 0.001)
        print(
            f"| {label} | {statistics.median(single):.0f} ms | {max(single):.0f} ms | "
            f"{statistics.median(fleet):.0f} ms | {max(fleet):.0f} ms | {ratio:.2f}x |"
        )
    failed = {k: sum(r[2] for r in v) for k, v in results.items()}
    print(f"\nfailed requests: single {failed['single']}, fleet {failed['fleet']}")


if __name__ == "__main__":
    main()
