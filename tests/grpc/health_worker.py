"""A gRPC worker for weir's tests: grpcio's own health service (grpcio-health-checking), not
code of weir's. Serves h2c, or TLS (ALPN h2) with --cert/--key (and --client-ca to require a
client certificate). Prints "listening PORT" once it serves; reads commands from stdin:
"set SERVICE STATUS" (SERVING, NOT_SERVING, ...; "-" names the whole server, ""), which
Watch streams see at once."""

import argparse
import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--client-ca")
    args = parser.parse_args()

    # No SO_REUSEPORT: a worker restarted on its port must not share it with one still exiting.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32), options=[("grpc.so_reuseport", 0)]
    )
    servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("svc", health_pb2.HealthCheckResponse.SERVING)
    address = f"127.0.0.1:{args.port}"
    if args.cert:
        with open(args.cert, "rb") as c, open(args.key, "rb") as k:
            pair = (k.read(), c.read())
        root = None
        if args.client_ca:
            with open(args.client_ca, "rb") as f:
                root = f.read()
        creds = grpc.ssl_server_credentials(
            [pair], root_certificates=root, require_client_auth=root is not None
        )
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    server.start()
    print(f"listening {port}", flush=True)
    for line in sys.stdin:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "set":
            status = health_pb2.HealthCheckResponse.ServingStatus.Value(parts[2])
            servicer.set("" if parts[1] == "-" else parts[1], status)
            print(f"set {parts[1]} {parts[2]}", flush=True)
    server.stop(0)


if __name__ == "__main__":
    main()
