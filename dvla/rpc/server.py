"""gRPC server factory: one place for message limits, health and shutdown."""
from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def make_server(max_message_bytes: int, interceptors: list | None = None) -> grpc.aio.Server:
    opts = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
    ]
    return grpc.aio.server(options=opts, interceptors=interceptors or None)


def add_health(server: grpc.aio.Server, services: list[str]) -> health.aio.HealthServicer:
    h = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(h, server)
    return h


async def set_serving(h: health.aio.HealthServicer, services: list[str], serving: bool = True) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for s in ["", *services]:
        await h.set(s, status)


def bind(server: grpc.aio.Server, host: str, port: int, credentials: grpc.ServerCredentials | None = None) -> int:
    """Bind host:port (0 = any free port), with TLS when credentials are given; returns the bound port.

    ValueError if the port is taken.
    """
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_secure_port(addr, credentials) if credentials else server.add_insecure_port(addr)
    except RuntimeError as e:
        raise ValueError(f"cannot listen on {addr}: {e}") from None
    if bound == 0:
        raise ValueError(f"cannot listen on {addr} (port taken?)")
    return bound
