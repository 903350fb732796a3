"""Who may talk to the app's loopback servers: loopback clients that name this machine (no DNS rebinding).

Shared by the status API, the dashboard and the gateway, with :class:`AsgiEndpoint` for the routes they
hand to an ASGI callable of their own, and :func:`read_body` for every body they read whole.

Each server holds at most :data:`BODY_BUDGET` bytes of request bodies at once (:class:`BodyBudget`,
applied by :class:`BudgetedBodies`): each body is within its endpoint's limit, but a hundred of them at
once would not be within the memory of the process that also supervises Ollama. A body that would take
more than what is left is refused (503, with a ``Retry-After``) before it is read; what a request holds
is given back when it ends, however it ends.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from tray.core.units import binary_size

ALLOWED_HOST_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
BODY_BUDGET = 256 * 1024 * 1024  # bytes of request bodies one server holds at once: eight of the largest JSON bodies
BUDGET_RETRY_AFTER = 5  # seconds: the Retry-After of a body refused for want of budget
HOLD_KEY = "ollama_manager.body_hold"  # the ASGI scope's entry for the request's BodyHold


class BodyRefused(Exception):
    """A request body the server will not read: ``status`` and ``headers`` for the answer, ``str()`` its message."""

    status: ClassVar[int]

    @property
    def headers(self) -> dict[str, str]:
        return {}


class BodyTooLarge(BodyRefused):
    """A request body over the endpoint's limit (known from its Content-Length, or counted as it arrived).

    The 413 that answers it keeps the connection open: the server drops the
    rest of the body as it comes (never holding it), so a client that sends
    its whole body before reading (as most do) reads the 413 instead of a
    reset connection.
    """

    status = 413

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the request body is larger than {binary_size(limit)}, the most this endpoint accepts")


class BodyBudgetSpent(BodyRefused):
    """A request body that would take more than is left of the server's :class:`BodyBudget`."""

    status = 503

    def __init__(self, total: int) -> None:
        self.total = total
        super().__init__(
            f"the server is busy: the requests under way hold {binary_size(total)} of request bodies, "
            f"the most it holds at once; try again in {BUDGET_RETRY_AFTER} seconds"
        )

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(BUDGET_RETRY_AFTER)}


class BodyBudget:
    """The bytes of request bodies one server holds at once, shared by its requests (used on the server's loop).

    >>> budget = BodyBudget(100)
    >>> budget.take(60), budget.take(50), budget.take(40), budget.left
    (True, False, True, 0)
    >>> budget.give_back(60); budget.left
    60
    """

    def __init__(self, total: int = BODY_BUDGET) -> None:
        self.total = total
        self.in_use = 0

    @property
    def left(self) -> int:
        return self.total - self.in_use

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes: False, and nothing reserved, when fewer are left."""
        if size > self.left:
            return False
        self.in_use += size
        return True

    def give_back(self, size: int) -> None:
        self.in_use -= size


class BodyHold:
    """What one request holds of its server's :class:`BodyBudget`, given back in one go when the request ends."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held = 0

    def take(self, size: int) -> None:
        """Hold ``size`` more bytes; BodyBudgetSpent (nothing more held) when the budget has not got them."""
        if not self.budget.take(size):
            raise BodyBudgetSpent(self.budget.total)
        self.held += size

    def release(self) -> None:
        self.budget.give_back(self.held)
        self.held = 0


class BudgetedBodies:
    """ASGI middleware giving each request a :class:`BodyHold` on ``budget`` (for :func:`read_body`), released
    when the request ends: answered, failed, cancelled or left by its client."""

    def __init__(self, app: Any, budget: BodyBudget) -> None:
        self.app = app
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hold = BodyHold(self.budget)
        scope[HOLD_KEY] = hold
        try:
            await self.app(scope, receive, send)
        finally:
            hold.release()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, at most ``limit`` bytes: BodyTooLarge before reading when the Content-Length
    says more, or as soon as a body without one (chunked) has brought more.

    On a server with a :class:`BodyBudget` the body is held against it: all of a Content-Length before a
    byte is read, a chunked body as it arrives; BodyBudgetSpent when what is left does not cover it.
    """
    length = request.headers.get("content-length", "").strip()
    hold: BodyHold | None = request.scope.get(HOLD_KEY)
    held = 0
    if length.isdigit():
        if int(length) > limit:
            raise BodyTooLarge(limit)
        held = int(length)
        if hold is not None:
            hold.take(held)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
        if hold is not None and len(body) > held:
            hold.take(len(body) - held)
            held = len(body)
    return bytes(body)


@functools.lru_cache(maxsize=256)  # asked on every request, with the same few addresses
def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=256)
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
            hosts = [value for name, value in scope.get("headers") or () if name == b"host"] or [b""]
            if not _is_loopback(client[0]) or not all(host_allowed(host.decode("latin-1")) for host in hosts):
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
