"""Who may call what on weight_control: a bearer token and TLS, both set by configuration.

- Token: the Admin RPCs and PublishWeights (and OpenPublish, its bulk-port form) need `authorization: Bearer <token>`
  metadata when a token is configured (DVLA_TOKEN, or control.token). A call
  without it, or with a wrong one, gets UNAUTHENTICATED before any handler runs,
  so it changes nothing. Registration, heartbeats, fetches and health stay open:
  a rollout reads weights, it never changes them.
- TLS: control.tls_cert + control.tls_key make the server speak TLS only;
  control.tls_ca makes clients verify the server against that CA, and the server
  require client certificates signed by it (mutual TLS) when
  control.tls_client_auth is on.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import grpc

from dvla.config import ControlConfig

TOKEN_ENV = "DVLA_TOKEN"
# Full method names (/package.Service/Method) that need the token; a trailing '/' covers a whole service.
PROTECTED = ("/dvla.v1.Admin/", "/dvla.v1.WeightControl/PublishWeights", "/dvla.v1.WeightControl/OpenPublish")


def resolve_token(cfg: ControlConfig) -> str:
    """The token in force: the environment's DVLA_TOKEN wins over control.token; '' = none."""
    return os.environ.get(TOKEN_ENV, "") or cfg.token


def is_protected(method: str) -> bool:
    return any(method == p or (p.endswith("/") and method.startswith(p)) for p in PROTECTED)


def token_ok(metadata, token: str) -> bool:
    """Constant-time check of `authorization: Bearer <token>` in a call's metadata."""
    got = ""
    for key, value in metadata or ():
        if key == "authorization":
            got = value if isinstance(value, str) else value.decode("utf-8", "replace")
    return hmac.compare_digest(got.encode(), f"Bearer {token}".encode())


def _deny(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that refuses the call."""
    message = f"{method} needs a valid token (authorization: Bearer <token>; set {TOKEN_ENV})"

    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover  (makes this an async generator for *_stream handlers)

    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    return grpc.stream_stream_rpc_method_handler(streaming, **kw)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses protected methods without the right token; other methods pass untouched."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("TokenInterceptor needs a non-empty token")
        self.token = token

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or not is_protected(details.method) or token_ok(details.invocation_metadata, self.token):
            return handler
        return _deny(handler, details.method)


class _AddToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Client side: every call carries the token (the server ignores it where it is not needed)."""

    def __init__(self, token: str):
        self.metadata = (("authorization", f"Bearer {token}"),)

    def _details(self, d):
        # grpc hands interceptors a namedtuple (_ClientCallDetails): copy it with the metadata added
        return d._replace(metadata=tuple(d.metadata or ()) + self.metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


def _read(path: str, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config field 'control.{what}': file '{path}' does not exist")
    return p.read_bytes()


def server_credentials(cfg: ControlConfig) -> grpc.ServerCredentials | None:
    """TLS credentials for the server, or None for plaintext."""
    if not cfg.tls_cert:
        return None
    key, cert = _read(cfg.tls_key, "tls_key"), _read(cfg.tls_cert, "tls_cert")
    ca = _read(cfg.tls_ca, "tls_ca") if cfg.tls_client_auth else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=cfg.tls_client_auth)


def secure_channel(address: str, cfg: ControlConfig, options: list) -> grpc.Channel:
    """A channel to weight_control: TLS when control.tls_ca is set, with the token interceptor if any."""
    if cfg.tls_ca:
        client_key = _read(cfg.tls_client_key, "tls_client_key") if cfg.tls_client_key else None
        client_cert = _read(cfg.tls_client_cert, "tls_client_cert") if cfg.tls_client_cert else None
        creds = grpc.ssl_channel_credentials(_read(cfg.tls_ca, "tls_ca"), client_key, client_cert)
        if cfg.tls_server_name:
            options = options + [("grpc.ssl_target_name_override", cfg.tls_server_name)]
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    token = resolve_token(cfg)
    return grpc.intercept_channel(channel, _AddToken(token)) if token else channel
