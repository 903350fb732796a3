"""The loopback server runner: uvicorn on a thread that sleeps until a connection or a stop request."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import types
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
import uvicorn.server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tray.web.server import CoalescingTransport, LoopbackServer, QuietServer


class Timeline:
    """What happened, in order, across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[str] = []

    def note(self, entry: str) -> None:
        with self._lock:
            self.entries.append(entry)


@pytest.fixture
def timeline(monkeypatch: pytest.MonkeyPatch) -> Iterator[Timeline]:
    """Notes every ``asyncio.sleep`` uvicorn's server code makes (its polling main loop is made of them)."""
    notes = Timeline()
    real_sleep = asyncio.sleep

    async def noted_sleep(delay: float, result: Any = None) -> Any:
        notes.note(f"uvicorn slept {delay:g} s")
        return await real_sleep(delay, result)

    proxy = types.SimpleNamespace(
        **{name: getattr(asyncio, name) for name in dir(asyncio) if not name.startswith("__")}
    )
    proxy.sleep = noted_sleep
    monkeypatch.setattr(uvicorn.server, "asyncio", proxy)
    yield notes


def hello_app(timeline: Timeline) -> Starlette:
    async def hello(request: Request) -> Response:
        timeline.note("served")
        return PlainTextResponse("hello")

    return Starlette(routes=[Route("/", hello)])


def test_an_idle_server_sleeps_until_it_is_asked_to_stop(timeline: Timeline) -> None:
    server = LoopbackServer(hello_app(timeline), 0, what="the test server")
    server.start()
    assert httpx.get(server.url + "/", trust_env=False).text == "hello"
    timeline.note("stop asked")
    server.stop()
    assert not server.serving
    # uvicorn's own loop sleeps 0.1 s at a time from the start; this one does not sleep until shutdown.
    first_sleep = next((i for i, e in enumerate(timeline.entries) if e.startswith("uvicorn slept")), None)
    assert timeline.entries[:2] == ["served", "stop asked"]
    assert first_sleep is None or first_sleep > timeline.entries.index("stop asked")


def test_a_stop_asked_from_another_thread_while_serving_ends_the_thread() -> None:
    notes = Timeline()
    server = LoopbackServer(hello_app(notes), 0, what="the test server", thread_name="test-server")
    server.start()
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    stopper.join(30)
    assert not stopper.is_alive()
    assert not server.serving
    assert not any(thread.name == "test-server" for thread in threading.enumerate())
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/", trust_env=False, timeout=5)


def test_answers_carry_neither_a_date_nor_a_server_header() -> None:
    server = LoopbackServer(hello_app(Timeline()), 0, what="the test server")
    server.start()
    try:
        response = httpx.get(server.url + "/", trust_env=False)
    finally:
        server.stop()
    assert response.status_code == 200
    assert "date" not in response.headers and "server" not in response.headers


def test_forwarded_headers_change_neither_the_client_address_nor_the_scheme() -> None:
    async def who(request: Request) -> Response:
        assert request.client is not None
        return PlainTextResponse(f"{request.client.host}:{request.client.port} {request.url.scheme}")

    server = LoopbackServer(Starlette(routes=[Route("/", who)]), 0, what="the test server")
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port or 0), timeout=10) as client:
            forged = "X-Forwarded-For: 127.0.0.1:1\r\nX-Forwarded-Proto: https\r\n"
            client.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n{forged}Connection: close\r\n\r\n".encode())
            answer = b""
            while chunk := client.recv(4096):
                answer += chunk
            own_port = client.getsockname()[1]
    finally:
        server.stop()
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.split(b"\r\n\r\n", 1)[1].decode() == f"127.0.0.1:{own_port} http"  # the socket's, as sent


def test_a_taken_port_is_one_line_naming_the_server() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = LoopbackServer(hello_app(Timeline()), port, what="the test server")
        with pytest.raises(OSError) as raised:
            server.start()
    assert str(raised.value).startswith(f"the test server cannot listen on 127.0.0.1:{port} (")
    assert "\n" not in str(raised.value)


def test_a_failed_start_up_is_one_line() -> None:
    async def lifespan(app: Any) -> Any:
        raise RuntimeError("no start today")
        yield  # pragma: no cover

    app = Starlette(lifespan=contextlib.asynccontextmanager(lifespan))
    server = LoopbackServer(app, 0, what="the test server", lifespan="on")
    with pytest.raises(OSError, match="the test server did not start"):
        server.start()


def test_settings_that_need_uvicorns_ticking_loop_are_refused() -> None:
    app = hello_app(Timeline())
    for config in (uvicorn.Config(app, date_header=True), uvicorn.Config(app, date_header=False, limit_max_requests=9)):
        with pytest.raises(ValueError):
            QuietServer(config)


class RecordingTransport(asyncio.Transport):
    """A transport that records what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


def test_writes_in_one_turn_of_the_loop_leave_in_one_send() -> None:
    async def scenario() -> list[list[bytes]]:
        raw = RecordingTransport()
        transport = CoalescingTransport(raw, asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(b"ok")
        seen = [list(raw.sent)]
        await asyncio.sleep(0)
        seen.append(list(raw.sent))
        transport.write(b"next")
        await asyncio.sleep(0)
        seen.append(list(raw.sent))
        return seen

    before_turn, after_turn, after_next = asyncio.run(scenario())
    assert before_turn == []
    assert after_turn == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    assert after_next == [*after_turn, b"next"]


def test_a_close_sends_what_is_held_first_and_a_closed_connection_gets_nothing() -> None:
    async def scenario() -> tuple[RecordingTransport, RecordingTransport]:
        loop = asyncio.get_running_loop()
        closed_by_app, closed_by_peer = RecordingTransport(), RecordingTransport()
        first = CoalescingTransport(closed_by_app, loop)
        first.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        assert first.get_write_buffer_size() == len(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        first.close()
        second = CoalescingTransport(closed_by_peer, loop)
        second.write(b"late")
        closed_by_peer.closed = True
        await asyncio.sleep(0)
        return closed_by_app, closed_by_peer

    closed_by_app, closed_by_peer = asyncio.run(scenario())
    assert (closed_by_app.sent, closed_by_app.closed) == ([b"HTTP/1.1 400 Bad Request\r\n\r\n"], True)
    assert closed_by_peer.sent == []
