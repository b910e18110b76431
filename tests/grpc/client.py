"""A gRPC client for weir's tests (grpcio's generated health stub). One line per result:
  check TARGET SERVICE         -> "ok STATUS" or "error CODE details"
  watch TARGET SERVICE         -> "status STATUS" per message (flushed), then "error CODE ..."
  bench TARGET SECONDS CONC    -> unary Check calls from CONC threads: "calls N seconds S"
  stream TARGET SECONDS        -> Watch streams opened, read to their first message, cancelled:
                                  "streams N seconds S failed F"
TARGET is HOST:PORT; --ca FILE makes it TLS (name from --name, default localhost)."""

import argparse
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def channel(args):
    if args.ca:
        with open(args.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        return grpc.secure_channel(
            args.target, creds, options=[("grpc.ssl_target_name_override", args.name)]
        )
    return grpc.insecure_channel(args.target)


def name(status):
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("target")
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--ca")
    parser.add_argument("--name", default="localhost")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument(
        "--timed", action="store_true", help="check: add the call's own time, ' in N ms'"
    )
    args = parser.parse_args()
    stub = health_pb2_grpc.HealthStub(channel(args))
    if args.mode == "check":
        started = time.monotonic()
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=args.rest[0]), timeout=args.timeout
            )
            line = f"ok {name(reply.status)}"
        except grpc.RpcError as e:
            line = f"error {e.code().name} {e.details()}"
        if args.timed:
            line += f" in {(time.monotonic() - started) * 1000:.0f} ms"
        print(line, flush=True)
    elif args.mode == "watch":
        try:
            for reply in stub.Watch(
                health_pb2.HealthCheckRequest(service=args.rest[0]), timeout=args.timeout
            ):
                print(f"status {name(reply.status)}", flush=True)
            print("end", flush=True)
        except grpc.RpcError as e:
            print(f"error {e.code().name} {e.details()}", flush=True)
    elif args.mode == "bench":
        seconds, conc = float(args.rest[0]), int(args.rest[1])
        calls = [0] * conc
        errors = [0] * conc
        stop = time.monotonic() + seconds
        request = health_pb2.HealthCheckRequest(service="")

        def run(i):
            while time.monotonic() < stop:
                try:
                    stub.Check(request, timeout=5)
                    calls[i] += 1
                except grpc.RpcError:
                    errors[i] += 1

        started = time.monotonic()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(conc)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - started
        print(f"calls {sum(calls)} errors {sum(errors)} seconds {took:.2f}", flush=True)
    elif args.mode == "stream":
        # Messages a Watch stream carries while the worker flips a status as fast as it can
        # is not controllable from here; instead: Watch streams opened and read one after
        # another for SECONDS (a stream's set-up and first message, end to end).
        seconds = float(args.rest[0])
        stop = time.monotonic() + seconds
        opened = 0
        failed = 0
        started = time.monotonic()
        request = health_pb2.HealthCheckRequest(service="svc")
        while time.monotonic() < stop:
            call = stub.Watch(request, timeout=1)
            try:
                next(call)
                opened += 1
            except grpc.RpcError:
                # grpcio's servicer now and then never answers a Watch (direct or not).
                failed += 1
            call.cancel()
        took = time.monotonic() - started
        print(f"streams {opened} seconds {took:.2f} failed {failed}", flush=True)
    else:
        sys.exit(f"unknown mode {args.mode}")


if __name__ == "__main__":
    main()
