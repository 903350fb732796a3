"""Limits on the loopback servers (status API, gateway): bodies, slow and idle connections, descriptors.

The monitor runs as a real process against the stand-in, its gateway on; a second, unprivileged
user opens connections that never send a byte, while the monitor's process may hold 1,024 descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from standin.harness import StandinEnv, free_port
from tests.support.manager import Manager, in_thread, wait_until
from tests.support.users import Accounts, can_switch_users, popen_as, shared_dir
from tray.web.server import LoopbackServer

pytestmark = pytest.mark.process

DESCRIPTOR_LIMIT = 1024
HALF_OPEN = 1100  # per server: more than the whole process may hold
KIB = 1024
MIB = 1024 * 1024

# Run as another user: open connections to each port and never send a byte on them; say how many, hold them
# until the stop file appears.
HOLDER = """
    import errno, json, os, socket, sys, time
    ports, count, stop = [int(p) for p in sys.argv[1].split(",")], int(sys.argv[2]), sys.argv[3]
    held, opened = [], {}
    for port in ports:
        opened[port] = 0
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            if sock.connect_ex(("127.0.0.1", port)) in (0, errno.EINPROGRESS):
                held.append(sock)
                opened[port] += 1
            else:
                sock.close()
    print(json.dumps(opened), flush=True)
    while not os.path.exists(stop):
        time.sleep(0.1)
"""

ACCEPT_TROUBLE = re.compile(r"accept|Too many open files|refused a connection", re.IGNORECASE)


def limited_python(directory: Path) -> Path:
    """A python that runs with a hard limit of DESCRIPTOR_LIMIT open files (as ``ulimit -n`` would set)."""
    wrapper = directory / "python-ulimit"
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import os, resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({DESCRIPTOR_LIMIT}, {DESCRIPTOR_LIMIT}))\n"
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
    )
    wrapper.chmod(0o755)
    return wrapper


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def status_port(manager: Manager) -> int:
    record = Path(manager.env["XDG_STATE_HOME"]) / "ollama-manager" / "monitor.json"
    return int(json.loads(record.read_text())["port"])


def token(manager: Manager) -> str:
    return (Path(manager.env["XDG_STATE_HOME"]) / "ollama-manager" / "api-token").read_text().strip()


def ollama_version(standin: StandinEnv) -> bool:
    try:
        return httpx.get(standin.base_url + "/api/version", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def monitor_with_gateway(standin: StandinEnv, tmp_path: Path) -> Iterator[tuple[Manager, int]]:
    """A monitor supervising the stand-in, its gateway on; the manager and the gateway's port."""
    port = free_port()
    manager = Manager(standin.env, tmp_path)
    manager.enable_gateway(port)
    try:
        manager.spawn_monitor()
        manager.wait_monitor_ready()
        yield manager, port
    finally:
        manager.cleanup()


def answer_to(port: int, head: bytes, pieces: Iterable[bytes] = (), timeout: float = 30) -> bytes:
    """Send ``head`` then ``pieces`` until the server answers; its answer (headers and body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        for piece in pieces:
            if select.select([sock], [], [], 0)[0]:
                break  # answered before the body was all sent
            sock.sendall(piece)
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < content_length(received):
            chunk = sock.recv(65536)
            assert chunk, f"closed after {received!r}"
            received += chunk
        return received


def content_length(answer: bytes) -> int:
    found = re.search(rb"\r\ncontent-length: *(\d+)", answer.partition(b"\r\n\r\n")[0], re.IGNORECASE)
    return int(found.group(1)) if found else 0


# --- the server alone, on a thread

Served = tuple[LoopbackServer, list[str], threading.Event]  # the server, what its endpoint saw, what ends /hold


@contextlib.contextmanager
def serving(limits: Any, read: Callable[[Request], Awaitable[bytes]]) -> Iterator[Served]:
    """A loopback server with ``limits`` whose endpoint reads each body with ``read`` (``/hold``: then waits)."""
    from tray.web.loopback import BodyRefused  # here: the module is also run against the code before the limits

    seen: list[str] = []
    release = threading.Event()

    async def endpoint(request: Request) -> Response:
        try:
            body = await read(request)
        except BodyRefused as exc:
            seen.append(f"refused {exc.status}")
            return JSONResponse({"error": str(exc)}, exc.status, exc.headers)
        except ClientDisconnect:
            seen.append("client left")
            raise
        if request.url.path == "/hold":
            seen.append("holding")
            await asyncio.to_thread(release.wait, 60)
        seen.append(f"got {len(body)}")
        return PlainTextResponse(f"got {len(body)}")

    app = Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])
    server = LoopbackServer(app, 0, what="the test server", limits=limits)
    server.start()
    try:
        yield server, seen, release
    finally:
        release.set()
        server.stop()


@pytest.fixture
def small_server() -> Iterator[Served]:
    """A loopback server with 3 connections and short timeouts; what its endpoint saw; what lets ``/hold`` end."""
    from tray.web.server import Limits

    with serving(Limits(0.5, 0.5, 3), Request.body) as served:
        yield served


@pytest.fixture
def budget_server() -> Iterator[Served]:
    """A loopback server whose requests hold at most 1 MiB of bodies, each read with the endpoints' ``read_body``."""
    from tray.web.loopback import read_body
    from tray.web.server import Limits

    with serving(Limits(body_budget=MIB), lambda request: read_body(request, MIB)) as served:
        yield served


def closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(30)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_a_connection_that_sends_nothing_or_half_its_headers_is_closed(small_server):
    server, _seen, _release = small_server
    silent = socket.create_connection(("127.0.0.1", server.port))
    halfway = socket.create_connection(("127.0.0.1", server.port))
    halfway.sendall(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n")
    assert closed(silent) == b"" and closed(halfway) == b""
    assert httpx.get(server.url + "/", trust_env=False).text == "got 0"


def test_a_body_that_stops_arriving_ends_the_request_as_a_client_that_left(small_server):
    server, seen, release = small_server
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 100\r\n\r\nonly part")
        assert closed(sock) == b""
    wait_until(lambda: seen == ["client left"], 10, what="the endpoint to see the client leave")


def test_at_the_connection_cap_idle_sockets_make_room_and_busy_ones_get_503(small_server):
    server, seen, release = small_server
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
    # Ten idle sockets on a server that keeps three: a request sent at once is still answered.
    assert httpx.get(server.url + "/", trust_env=False).text == "got 0"
    assert [closed(sock) for sock in idle[:7]] == [b""] * 7  # the oldest were closed for the newer ones
    for sock in idle:
        sock.close()
    # Three requests in progress fill it: a fourth connection is answered 503 at once.
    held = [in_thread(lambda: httpx.get(server.url + "/hold", trust_env=False, timeout=60)) for _ in range(3)]
    wait_until(lambda: seen.count("holding") == 3, 10, what="three requests in progress")
    refused = httpx.get(server.url + "/", trust_env=False)
    assert (refused.status_code, refused.text) == (503, "too many connections, try again\r\n")
    release.set()
    assert [answer().text for answer in held] == ["got 0"] * 3


def test_bodies_beyond_the_servers_budget_get_503_until_the_requests_holding_it_end(budget_server):
    server, seen, release = budget_server
    budget = server.body_budget
    post = httpx.Client(base_url=server.url, trust_env=False, timeout=60)
    held = [in_thread(lambda: post.post("/hold", content=b"h" * (400 * KIB))) for _ in range(2)]
    wait_until(lambda: seen.count("holding") == 2, 10, what="two requests holding their bodies")
    assert budget.in_use == 800 * KIB

    # A third body of the same size does not fit in what is left: refused before it is read, and it holds nothing.
    refused = post.post("/", content=b"x" * (400 * KIB))
    assert (refused.status_code, refused.headers["retry-after"]) == (503, "5")
    assert refused.json()["error"].startswith("the server is busy: the requests under way hold 1 MiB of request bodies")
    # A chunked one is counted as it comes, and refused once past what is left.
    chunked = post.post("/", content=iter([b"c" * (100 * KIB)] * 3))
    assert chunked.status_code == 503
    # A small request still fits.
    assert post.post("/", content=b"s" * KIB).text == f"got {KIB}"
    assert seen[2:] == ["refused 503", "refused 503", f"got {KIB}"]
    wait_until(lambda: budget.in_use == 800 * KIB, 10, what="the refused and answered requests to give theirs back")

    # A client that leaves in the middle of its body gives back what it held as well.
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: %d\r\n\r\npart" % (100 * KIB))
        wait_until(lambda: budget.in_use == 900 * KIB, 10, what="the half-sent body to be held")
    wait_until(lambda: seen[-1] == "client left", 10, what="the endpoint to see the client leave")
    wait_until(lambda: budget.in_use == 800 * KIB, 10, what="the half-sent body to be given back")

    release.set()
    assert [answer().text for answer in held] == [f"got {400 * KIB}"] * 2
    wait_until(lambda: budget.in_use == 0, 10, what="the holding requests to give theirs back")
    assert post.post("/", content=b"x" * MIB).text == f"got {MIB}"  # all of it is there again
    post.close()


def test_an_oversized_json_body_is_refused_with_413_before_it_is_read(monitor_with_gateway, standin):
    manager, gateway = monitor_with_gateway
    standin.pull("llama3")
    # A Content-Length over the limit: refused with nothing of the body sent.
    head = b"POST /api/chat HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    answer = answer_to(gateway, head + b"content-length: %d\r\n\r\n" % (64 * MIB))
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413 ")
    assert "larger than 32 MiB" in json.loads(rest.partition(b"\r\n\r\n")[2])["error"]

    # A client that sends its whole body before it reads (as httpx does) reads the 413, not a reset connection.
    url = f"http://127.0.0.1:{gateway}/v1/chat/completions"
    refused = httpx.post(url, content=b" " * (40 * MIB), headers={"content-type": "application/json"}, timeout=60)
    assert refused.status_code == 413 and "larger than 32 MiB" in refused.json()["error"]["message"]

    # A chunked body has no length: it is counted as it arrives, and refused once past the limit.
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        while sent < 256 * MIB:
            sent += MIB
            yield b"%x\r\n" % MIB + b" " * MIB + b"\r\n"

    answer = answer_to(gateway, head + b"transfer-encoding: chunked\r\n\r\n", chunks())
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert sent < 128 * MIB  # refused on the way, not after the client gave up

    # The status API's JSON endpoint has its own, smaller limit.
    head = f"POST /api/model HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token(manager)}\r\n".encode()
    answer = answer_to(status_port(manager), head + b"content-length: %d\r\n\r\n" % MIB)
    assert answer.startswith(b"HTTP/1.1 413 ")
    # Both still answer what fits.
    chat = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    assert httpx.post(f"http://127.0.0.1:{gateway}/api/chat", json=chat, timeout=30).status_code == 200
    assert manager.api_status() is not None


def test_a_blob_upload_larger_than_the_json_limit_streams_through_the_gateway(monitor_with_gateway, standin):
    _manager, gateway = monitor_with_gateway
    blob = os.urandom(40 * MIB)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(blob), MIB):
            yield blob[start : start + MIB]

    url = f"http://127.0.0.1:{gateway}/api/blobs/{digest}"
    assert httpx.post(url, content=pieces(), timeout=60).status_code == 201  # chunked
    stored = standin.models_dir / "blobs" / digest.replace(":", "-")
    assert stored.stat().st_size == len(blob)
    stored.unlink()
    assert httpx.post(url, content=blob, timeout=60).status_code == 201  # with a Content-Length
    assert stored.stat().st_size == len(blob)


@pytest.mark.skipif(not can_switch_users(), reason="needs root to run a second user")
def test_half_open_connections_from_another_user_leave_supervision_and_the_status_api_working(
    standin: StandinEnv, tmp_path: Path, accounts: Accounts
) -> None:
    gateway = free_port()
    manager = Manager(standin.env, tmp_path, python=limited_python(tmp_path))
    manager.enable_gateway(gateway)
    other = accounts.regular("crowd")
    shared = shared_dir("om-crowd-")
    holder = None
    try:
        monitor = manager.spawn_monitor()
        first = manager.wait_monitor_ready()
        limits = Path(f"/proc/{monitor.pid}/limits").read_text()
        assert re.search(rf"Max open files\s+{DESCRIPTOR_LIMIT}\s+{DESCRIPTOR_LIMIT}\s", limits)
        script, stop = shared / "hold.py", shared / "stop"
        script.write_text(textwrap.dedent(HOLDER))
        script.chmod(0o644)
        ports = [status_port(manager), gateway]
        holder = popen_as(
            other,
            ["/usr/bin/python3", str(script), ",".join(map(str, ports)), str(HALF_OPEN), str(stop)],
            env={"PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        opened = json.loads(holder.stdout.readline() or "{}")
        assert opened == {str(port): HALF_OPEN for port in ports}, holder.stderr and holder.stderr.read()

        # They reach the monitor: hundreds of its descriptors are theirs (the kernel's listen queue holds the rest).
        wait_until(lambda: open_descriptors(monitor.pid) >= 200, 30, what="the connections to be accepted")
        # While the other user holds its sockets, Ollama dies: the monitor restarts it.
        os.kill(first["pid"], signal.SIGKILL)
        wait_until(lambda: len(standin.serve_pids()) >= 2 and ollama_version(standin), 90, what="Ollama restarted")
        # The status API answers its user again, and reports the new server healthy.
        now = wait_until(
            lambda: (s := manager.api_status()) and s["pid"] != first["pid"] and s["health"] == "healthy" and s,
            90,
            what="the status API to answer with the restarted Ollama",
        )
        assert now["pid"] == standin.serve_pids()[-1]
        assert httpx.get(f"http://127.0.0.1:{gateway}/_gateway/status", timeout=10).status_code == 200
        assert holder.poll() is None  # the sockets were all still held
        stop.touch()
        holder.wait(30)
        log = manager.monitor_log()
        assert "Too many open files" not in log  # the descriptors never ran out
        trouble = [line for line in log.splitlines() if ACCEPT_TROUBLE.search(line)]
        assert len(trouble) <= 10, trouble[:20]
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        manager.cleanup()
        shutil.rmtree(shared, ignore_errors=True)
