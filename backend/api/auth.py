"""Who may call: bearer tokens checked in constant time, and which addresses are loopback."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import Any

import grpc

from ..errors import UsageError
from ..service.remote import read_token_file as read_token_file  # the CLI's `serve` reads it

# Health checks answer without a token: probes and load balancers carry none.
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)
MIN_TOKEN_LENGTH = 16


def split_address(address: str) -> tuple[str, int]:
    """'HOST:PORT', '[IPV6]:PORT' -> (host, port)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise UsageError(f"not a listen address: {address!r} (use HOST:PORT, e.g. 127.0.0.1:7443)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if port > 65535:
        raise UsageError(f"port {port} of {address!r} is out of range")
    return host, port


def is_loopback(address: str) -> bool:
    host, _ = split_address(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _abort_handler(
    handler: grpc.RpcMethodHandler[Any, Any], message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as ``handler`` that only refuses the call."""

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call without ``authorization: Bearer <token>`` (health checks aside)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler
        given = [
            v for k, v in (handler_call_details.invocation_metadata or ()) if k == "authorization"
        ]
        if not given:
            return _abort_handler(handler, "missing bearer token (authorization metadata)")
        value = given[0]
        presented = value.encode() if isinstance(value, str) else bytes(value)
        if len(given) != 1 or not hmac.compare_digest(presented, self._expected):
            return _abort_handler(handler, "invalid bearer token")
        return handler
