"""The one way the app runs its loopback HTTP servers: uvicorn on a thread of its own, asleep while idle.

:class:`LoopbackServer` binds the socket itself (so a taken port is a one-line
``OSError`` before any thread starts, and port 0 is known at once), serves an
ASGI app with uvicorn (its httptools protocol, and Starlette: the real stack)
on a background thread, and stops when asked. httptools (llhttp, in C) rather
than uvicorn's h11 protocol: a request through the gateway is parsed and
answered here, and uvicorn's h11 side took about a fifth of the gateway's
CPU per chat in a profile. The status API and the gateway both run on it;
limits that every loopback server should share belong here.

uvicorn's own main loop wakes every 0.1 s to look at ``should_exit`` (and,
once a second, to refresh the ``Date`` header and call ``callback_notify``).
:class:`QuietServer` replaces that loop with a wait on an event that setting
``should_exit`` sets, from whichever thread sets it, so an idle server's
thread sleeps in the selector until a connection arrives or a stop is asked
for. What the replaced loop did once is done once: the default headers are
set at start-up. A ``Date`` header, ``limit_max_requests`` and
``callback_notify`` need the periodic loop, so the server refuses a config
that asks for them.

Every server has the same :class:`Limits`, enforced by :class:`BoundedProtocol`
(uvicorn's httptools protocol with what it lacks): a connection must send its request
headers within ``header_timeout`` seconds of its first byte (or of being accepted),
a request body may pause at most ``body_timeout`` seconds between two pieces, and
at most ``max_connections`` are open at once — one more closes the connection
that has waited longest without sending a request, or, when every one is in a
request, is answered 503 and closed at accept — so sockets that never send a
byte can neither take the descriptors the rest of the process (health checks,
the history database, Ollama's pipes) needs nor keep the user out. uvicorn's
own ``limit_concurrency`` answers 503 only once a request has arrived, which
such a socket never sends, and its keep-alive timeout starts only after a first
answer. Accept errors (out of descriptors all the same) are logged
at most once a minute. The bodies its endpoints read whole share one
``body_budget`` (:class:`~tray.web.loopback.BodyBudget`): at the connection cap,
each with the gateway's largest JSON body, they would hold gigabytes.

uvicorn's ``proxy_headers`` is off: by default it believes ``X-Forwarded-For``
and ``X-Forwarded-Proto`` from 127.0.0.1, which on a loopback server is every
client, so any local user could name another connection's address (the user's
own, found in ``/proc/net/tcp``) and be taken for its owner by the peer-uid check.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tray.web.loopback import BODY_BUDGET, BodyBudget, BudgetedBodies

try:
    import resource
except ImportError:  # Windows: no descriptor limit to share
    resource = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# The listen queue, and how many connections asyncio accepts at one wake-up before any of them reaches the
# protocol's cap: kept small, so a burst overshoots the cap by a few dozen descriptors, not by thousands
# (uvicorn's default of 2,048 let one burst of idle sockets take every descriptor of the process).
BACKLOG = 32
LOG_EVERY = 60.0  # seconds between two log lines about refused or failed accepts
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 33\r\nconnection: close\r\n\r\ntoo many connections, try again\r\n"
)


def connection_budget(descriptor_limit: int | None) -> int:
    """How many connections one loopback server keeps open, given the process's descriptor limit.

    An eighth of the limit each: with what a burst of accepts adds before the
    cap applies (a few BACKLOGs), the status API and a gateway together hold at
    most half, the rest stays for supervision (sockets to Ollama, the history
    database, log files, child pipes).

    >>> connection_budget(1024), connection_budget(256), connection_budget(10), connection_budget(1 << 20)
    (128, 32, 16, 1024)
    >>> connection_budget(None)
    512
    """
    if descriptor_limit is None:
        return 512
    return max(16, min(1024, descriptor_limit // 8))


def descriptor_limit() -> int | None:
    """The process's soft limit on open descriptors; None where there is none to read (Windows) or it is unlimited."""
    if resource is None:
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


@dataclass(frozen=True)
class Limits:
    """What one loopback server allows a connection (seconds and counts)."""

    header_timeout: float = 10.0  # from accept (or a kept-alive request's first byte) to the end of its headers
    body_timeout: float = 30.0  # the longest pause between two pieces of a request body
    max_connections: int = 0  # 0: :func:`connection_budget` of the descriptor limit when the server starts
    body_budget: int = BODY_BUDGET  # bytes of request bodies read whole that all its requests hold at once

    def resolved(self) -> Limits:
        if self.max_connections > 0:
            return self
        return replace(self, max_connections=connection_budget(descriptor_limit()))


class RateLimitedLog:
    """Logs the first of a kind of message at once, then at most one line per ``every`` seconds with the count."""

    def __init__(self, every: float = LOG_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._last: float | None = None
        self._held = 0

    def note(self, message: str) -> None:
        now = self.clock()
        if self._last is not None and now - self._last < self.every:
            self._held += 1
            return
        more = f" ({self._held} more since the last report)" if self._held else ""
        self._last, self._held = now, 0
        log.warning("%s%s", message, more)


class CoalescingTransport(asyncio.Transport):
    """A connection's transport whose writes in one turn of the event loop leave in one send.

    uvicorn writes an answer's status line and headers as soon as the app
    starts the answer, and the body in a second write; with Nagle off (as
    asyncio sets it) those are two segments, and a client reading the answer
    wakes for each. Held until the loop's next turn, a whole answer goes out
    at once and a streamed chunk is not delayed past the current turn.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(data) for data in self._pending)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()


class Phase(enum.Enum):
    """Where a connection is in its current request, as the protocol's parser has seen it."""

    IDLE = "idle"  # no request under way: none sent yet, or the last one answered
    HEAD = "head"  # a request's first bytes are in, its headers are not complete
    BODY = "body"  # headers complete, the body not yet all in
    ANSWERING = "answering"  # the request is in; the app is answering it


class BoundedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body read timeouts and a cap on open connections.

    A subclass per server sets ``limits``, ``what`` and ``refusals`` (see :meth:`LoopbackServer.protocol_for`).
    """

    limits: ClassVar[Limits] = Limits(max_connections=512)
    what: ClassVar[str] = "a loopback server"
    refusals: ClassVar[RateLimitedLog] = RateLimitedLog()

    _read_timer: asyncio.TimerHandle | None = None
    _refused = False
    _idle_since = 0.0  # loop time since when the connection waits for a request
    phase = Phase.IDLE

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.connections) >= self.limits.max_connections and not self._make_room():
            self._refused = True
            assert isinstance(transport, asyncio.Transport)
            transport.write(BUSY_ANSWER)
            transport.close()
            self.refusals.note(f"{self.what} refused a connection: all {self.limits.max_connections} are busy")
            return
        assert isinstance(transport, asyncio.Transport)
        super().connection_made(CoalescingTransport(transport, self.loop))
        self._idle_since = self.loop.time()
        self._arm(self.limits.header_timeout)

    def waiting_for_request(self) -> bool:
        """Has this connection no request under way (none sent yet, or an answer given and a next one awaited)?"""
        return self.phase is Phase.IDLE and not self.transport.is_closing()

    def _make_room(self) -> bool:
        """Close the connection that has waited longest without a request, for a new one: True if there was one.

        Sockets that never send a byte then push out each other, never a
        request being answered, and a client that sends its request at once
        (as every real one does) is served even while they keep coming.
        """
        idle = [c for c in self.connections if isinstance(c, BoundedProtocol) and c.waiting_for_request()]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c._idle_since)
        self.connections.discard(oldest)  # at once: its close completes on a later turn of the loop
        oldest._disarm()
        oldest.transport.close()
        self.refusals.note(
            f"{self.what} closed idle connections to make room: all {self.limits.max_connections} were open"
        )
        return True

    # The parser's callbacks (called from data_received), which say where the request is.

    def on_message_begin(self) -> None:
        self.phase = Phase.HEAD
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.phase = Phase.BODY
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.phase = Phase.ANSWERING
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self.phase is Phase.ANSWERING and not self.pipeline:  # no next request read or queued
            self.phase = Phase.IDLE
        super().on_response_complete()
        self._idle_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.phase is Phase.BODY:
            self._arm(self.limits.body_timeout)  # each piece of the body restarts the wait for the next
        elif self.phase is Phase.ANSWERING:
            self._disarm()
        elif self._read_timer is None:  # headers under way: the deadline runs from their first byte
            self._arm(self.limits.header_timeout)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._read_timed_out, seconds)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self, seconds: float) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # the app is not reading yet: the client is not the one who is late
            self._arm(seconds)
            return
        if self.phase is not Phase.ANSWERING:
            self.transport.close()  # a request in progress sees the client leave


def quiet_accept_errors(
    what: str, refusals: RateLimitedLog
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """A loop exception handler that logs accept failures (out of descriptors) rarely, and the rest as asyncio does."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in OUT_OF_RESOURCES and "accept" in context.get("message", ""):
            refusals.note(f"{what} cannot accept connections: {exc.strerror or exc}")
            return
        loop.default_exception_handler(context)

    return handle


class QuietServer(uvicorn.Server):
    """A uvicorn server whose main loop sleeps until ``should_exit`` is set (from any thread)."""

    def __init__(self, config: uvicorn.Config) -> None:
        if config.date_header or config.limit_max_requests is not None or config.callback_notify is not None:
            raise ValueError("a quiet server sends no Date header and has no request limit or notify callback")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit_requested: asyncio.Event | None = None
        self._should_exit = False
        self.started_or_ended = threading.Event()  # set once serving, or once serving failed
        super().__init__(config)

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        loop, event = self._loop, self._exit_requested
        if value and loop is not None and event is not None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop has closed: the server is done already
                pass

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._exit_requested = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        protocol = self.config.http
        if isinstance(protocol, type) and issubclass(protocol, BoundedProtocol):
            self._loop.set_exception_handler(quiet_accept_errors(protocol.what, protocol.refusals))
        await super().startup(sockets=sockets)
        if self.started:
            self.started_or_ended.set()

    async def main_loop(self) -> None:
        # What uvicorn's loop does on its first tick: the default headers (no Date header here).
        await self.on_tick(0)
        assert self._exit_requested is not None
        while not self.should_exit:
            await self._exit_requested.wait()
            self._exit_requested.clear()


class LoopbackServer:
    """Serves an ASGI app with uvicorn on a background thread, on a socket bound to ``host:port`` (0: any free port).

    ``what`` names the server in errors ("the status API"); ``lifespan`` is
    uvicorn's setting; ``graceful_seconds`` is how long a stop waits for
    requests in progress before cancelling them (None: as long as they take);
    ``limits`` the timeouts, connection cap and body budget (:class:`Limits`); ``body_budget`` is that
    budget as its requests hold it.
    """

    def __init__(
        self,
        app: Any,
        port: int,
        *,
        what: str,
        host: str = "127.0.0.1",
        lifespan: Literal["auto", "on", "off"] = "off",
        graceful_seconds: int | None = None,
        thread_name: str = "loopback-server",
        limits: Limits = Limits(),
    ) -> None:
        self.what = what
        self.host = host
        self.requested_port = port
        self.thread_name = thread_name
        self.limits = limits.resolved()
        self.body_budget = BodyBudget(self.limits.body_budget)
        config = uvicorn.Config(
            BudgetedBodies(app, self.body_budget),
            http=self.protocol_for(what, self.limits),
            loop="asyncio",
            backlog=BACKLOG,
            log_level="warning",
            access_log=False,
            lifespan=lifespan,
            server_header=False,
            date_header=False,
            proxy_headers=False,  # no proxy sits in front of a loopback server: the client is the socket's peer
            timeout_graceful_shutdown=graceful_seconds,
        )
        self._server = QuietServer(config)  # off the main thread, uvicorn leaves signal handlers alone
        self._thread: threading.Thread | None = None
        self._on_stop: list[Callable[[], None]] = []
        self.port: int | None = None

    @staticmethod
    def protocol_for(what: str, limits: Limits) -> type[BoundedProtocol]:
        """The protocol class of one server: its limits, and one log budget shared by its connections."""

        class Protocol(BoundedProtocol):
            pass

        Protocol.limits, Protocol.what, Protocol.refusals = limits, what, RateLimitedLog()
        return Protocol

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def serving(self) -> bool:
        return self._server.started and self._thread is not None and self._thread.is_alive()

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` first thing when the server stops (e.g. to unsubscribe from the monitor)."""
        self._on_stop.append(callback)

    def start(self, timeout: float = 10.0) -> int:
        """Listen and serve; the port. OSError (one line) when the port cannot be had or serving does not start."""
        sock = self._bind()
        self.port = int(sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, args=(sock,), name=self.thread_name, daemon=True)
        self._thread.start()
        self._server.started_or_ended.wait(timeout)
        if not self._server.started:
            self._server.should_exit = True
            raise OSError(f"{self.what} did not start on {self.host}:{self.port}")
        return self.port

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let requests in progress end (up to ``graceful_seconds``), and wait for the thread."""
        for callback in self._on_stop:
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - stopping goes on regardless
                log.warning("%s stop hook failed: %s", self.what, exc)
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY only then
        try:
            if os.name == "posix":  # on Windows the option would let another program take the port over
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.requested_port))
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise OSError(
                f"{self.what} cannot listen on {self.host}:{self.requested_port} ({exc.strerror or exc})"
            ) from None
        return sock

    def _serve(self, sock: socket.socket) -> None:
        try:
            self._server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - the thread ends; start() reports it
            log.error("%s stopped: %s", self.what, exc)
        finally:
            sock.close()
            self._server.started_or_ended.set()
