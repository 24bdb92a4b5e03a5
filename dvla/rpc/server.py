"""gRPC server factory: one place for message limits, health and shutdown."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def make_server(max_message_bytes: int, interceptors: list | None = None) -> grpc.aio.Server:
    opts = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
        # clients ping every 20 s (dvla/rpc/client.py KEEPALIVE); the default would answer GOAWAY
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    return grpc.aio.server(options=opts, interceptors=[*(interceptors or []), MalformedInterceptor()])


class _Malformed:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, error: Exception):
        self.error = error


def _parse_or_mark(deserializer):
    def parse(raw: bytes):
        try:
            return deserializer(raw)
        except Exception as e:  # DecodeError and friends: the bytes are not this message
            return _Malformed(e)

    return parse


class MalformedInterceptor(grpc.aio.ServerInterceptor):
    """Requests whose bytes do not parse get INVALID_ARGUMENT, in unary and streaming calls alike.

    gRPC would otherwise answer INTERNAL for a unary request, and for a message
    inside a client stream raise the DecodeError in the middle of the handler.
    """

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None or details.method.startswith("/grpc.health."):
            return handler  # health's Watch writes through the context rather than yielding: leave it be
        method = details.method

        async def refuse(context, m: _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: malformed request: {m.error}")

        async def checked(requests, context):
            async for m in requests:
                if isinstance(m, _Malformed):
                    await refuse(context, m)
                yield m

        kw = dict(
            request_deserializer=_parse_or_mark(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
        if handler.unary_unary or handler.unary_stream:
            inner = handler.unary_unary or handler.unary_stream

            if handler.unary_unary:

                async def unary(request, context):
                    if isinstance(request, _Malformed):
                        await refuse(context, request)
                    return await inner(request, context)

                return grpc.unary_unary_rpc_method_handler(unary, **kw)

            async def unary_stream(request, context):
                if isinstance(request, _Malformed):
                    await refuse(context, request)
                async for item in inner(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(unary_stream, **kw)
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(requests, context):
                return await inner_su(checked(requests, context), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, **kw)
        inner_ss = handler.stream_stream

        async def stream_stream(requests, context):
            async for item in inner_ss(checked(requests, context), context):
                yield item

        return grpc.stream_stream_rpc_method_handler(stream_stream, **kw)


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
