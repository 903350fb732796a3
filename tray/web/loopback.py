"""Who may talk to the app's loopback servers: loopback clients that name this machine (no DNS rebinding).

Shared by the status API, the dashboard and the gateway, with :class:`AsgiEndpoint` for the routes they
hand to an ASGI callable of their own, and :func:`read_body` for every body they read whole.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

ALLOWED_HOST_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


class BodyTooLarge(Exception):
    """A request body over the endpoint's limit (known from its Content-Length, or counted as it arrived).

    The 413 that answers it keeps the connection open: the server drops the
    rest of the body as it comes (never holding it), so a client that sends
    its whole body before reading (as most do) reads the 413 instead of a
    reset connection.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the request body is larger than {size_text(limit)}, the most this endpoint accepts")


def size_text(size: int) -> str:
    """A byte count as people write it.

    >>> size_text(32 * 1024 * 1024), size_text(64 * 1024), size_text(1000)
    ('32 MiB', '64 KiB', '1000 bytes')
    """
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, at most ``limit`` bytes: BodyTooLarge before reading when the Content-Length
    says more, or as soon as a body without one (chunked) has brought more."""
    length = request.headers.get("content-length", "").strip()
    if length.isdigit() and int(length) > limit:
        raise BodyTooLarge(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def host_allowed(host_header: str) -> bool:
    """Is this Host header a loopback name (so a rebinding DNS name is refused)?

    >>> host_allowed("127.0.0.1:11436"), host_allowed("localhost"), host_allowed("evil.example:11436")
    (True, True, False)
    """
    host = host_header.strip().lower()
    if host.startswith("["):
        name = host[: host.find("]") + 1] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in ALLOWED_HOST_NAMES or _is_loopback(name.strip("[]"))


class LoopbackOnly:
    """ASGI middleware refusing non-loopback clients and foreign Host headers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            client = scope.get("client") or ("", 0)
            headers = dict(scope.get("headers") or [])
            host = headers.get(b"host", b"").decode("latin-1")
            if not _is_loopback(client[0]) or not host_allowed(host):
                response = JSONResponse({"error": "forbidden: loopback clients and localhost names only"}, 403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class AsgiEndpoint:
    """An ASGI callable Starlette routes to as it is (a method would be wrapped as a request handler)."""

    def __init__(self, handler: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)
