"""The one way the app runs its loopback HTTP servers: uvicorn on a thread of its own, asleep while idle.

:class:`LoopbackServer` binds the socket itself (so a taken port is a one-line
``OSError`` before any thread starts, and port 0 is known at once), serves an
ASGI app with uvicorn (h11 and Starlette: the real stack) on a background
thread, and stops when asked. The status API and the gateway both run on it;
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
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, Literal

import uvicorn

log = logging.getLogger(__name__)

BACKLOG = 128


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
    requests in progress before cancelling them (None: as long as they take).
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
    ) -> None:
        self.what = what
        self.host = host
        self.requested_port = port
        self.thread_name = thread_name
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan=lifespan,
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=graceful_seconds,
        )
        self._server = QuietServer(config)  # off the main thread, uvicorn leaves signal handlers alone
        self._thread: threading.Thread | None = None
        self._on_stop: list[Callable[[], None]] = []
        self.port: int | None = None

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
