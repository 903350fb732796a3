"""Who may talk to the app's loopback servers: loopback clients that name this machine (no DNS rebinding).

Shared by the status API, the dashboard and the gateway, with :class:`AsgiEndpoint` for the routes they
hand to an ASGI callable of their own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

ALLOWED_HOST_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


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
