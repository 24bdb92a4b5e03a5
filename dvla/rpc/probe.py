"""Health probe for container health checks: `python -m dvla.rpc.probe HOST:PORT [--timeout S]`.

Calls the standard grpc.health.v1 Health/Check (service name '', the whole
server) and exits 0 when the answer is SERVING, 1 otherwise (not serving,
unreachable, deadline passed), printing one line either way. It speaks plaintext
gRPC, like Kubernetes' native `grpc:` probe; it needs no dvla config and imports
no torch, so it starts in well under a second.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, timeout_s: float) -> tuple[bool, str]:
    """(serving, one-line status) of the gRPC server at `address`."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.RpcError as e:
            return False, f"{address}: {e.code().name} {e.details() or ''}".rstrip()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {status}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dvla.rpc.probe", description=__doc__.splitlines()[0])
    p.add_argument("address", help="HOST:PORT of a gRPC server with the standard health service")
    p.add_argument("--timeout", type=float, default=3.0, help="deadline of the check in seconds (default 3)")
    args = p.parse_args(argv)
    if args.timeout <= 0:
        p.error("--timeout must be > 0")
    serving, line = check(args.address, args.timeout)
    print(line, flush=True)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
