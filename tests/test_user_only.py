"""What is the user's own on the status API, the settings and the events, answers only the user.

The user is whoever holds the token, or (on Linux, where ``/proc/net/tcp`` shows it) a program run by
the user the manager runs as. Another local user's program is refused, as it is on a real machine:
the server is real, on a loopback socket, and the other user's program is a process of its own.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from tests.support.users import SYSTEM_PYTHON, Account, run_as
from tests.test_dashboard import AUTH, TOKEN, Setup
from tray.dashboard.routes import Dashboard, mount_dashboard
from tray.history import EventKind
from tray.system.peers import OwnUserCheck
from tray.web.server import LoopbackServer
from tray.web.status_api import NOT_THE_USER, build_app

pytestmark = pytest.mark.process

USER_ONLY = ("/api/settings", "/api/events")

GET = (
    "import json, sys, urllib.request, urllib.error\n"
    "headers = {'Authorization': sys.argv[2]} if sys.argv[2] else {}\n"
    "try:\n"
    "    answer = urllib.request.urlopen(urllib.request.Request(sys.argv[1], headers=headers), timeout=30)\n"
    "except urllib.error.HTTPError as error:\n"
    "    answer = error\n"
    "print(json.dumps([answer.status, answer.read().decode()]))\n"
)


# Another user's program that borrows the address of a connection the user holds open to the server: it finds the
# server's owner (the listener's uid) and that owner's connection to the server in /proc/net/tcp, which every user
# may read, and names that connection's address in X-Forwarded-For.
BORROW_ADDRESS = (
    "import json, sys, urllib.parse, urllib.request, urllib.error\n"
    "url = urllib.parse.urlsplit(sys.argv[1])\n"
    "rows = [line.split() for line in open('/proc/net/tcp').read().splitlines()[1:]]\n"
    "def port(field): return int(field.rsplit(':', 1)[1], 16)\n"
    "owner = next(r[7] for r in rows if r[3] == '0A' and port(r[1]) == url.port)\n"
    "borrowed = next(port(r[1]) for r in rows if r[3] == '01' and port(r[2]) == url.port and r[7] == owner)\n"
    "headers = {'X-Forwarded-For': f'127.0.0.1:{borrowed}', 'X-Forwarded-Proto': 'https'}\n"
    "try:\n"
    "    answer = urllib.request.urlopen(urllib.request.Request(sys.argv[1], headers=headers), timeout=30)\n"
    "except urllib.error.HTTPError as error:\n"
    "    answer = error\n"
    "print(json.dumps([answer.status, answer.read().decode()]))\n"
)


@dataclass
class Served:
    setup: Setup
    url: str

    def get_as(self, account: Account, path: str, authorization: str = "", script: str = GET) -> tuple[int, str]:
        done = run_as(
            account,
            [str(SYSTEM_PYTHON), "-c", script, self.url + path, authorization],
            env=account.env({"PATH": "/usr/bin:/bin"}),
        )
        assert done.returncode == 0, done.stderr
        status, text = json.loads(done.stdout)
        return int(status), str(text)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    setup = Setup(tmp_path)
    setup.history.record(EventKind.ERROR, "the model llama3 failed to load")
    server = LoopbackServer(setup.app, 0, what="the status API", thread_name="status-api-test")
    server.start()
    yield Served(setup, server.url)
    server.stop()
    setup.dashboard.close()
    setup.history.close()


@pytest.mark.slow
def test_another_local_user_is_refused_the_settings_and_the_events(served: Served, desktop_user: Account) -> None:
    for path in USER_ONLY:
        for authorization in ("", "Bearer wrong-token"):
            status, text = served.get_as(desktop_user, path, authorization)
            assert (status, json.loads(text)["error"]) == (401, NOT_THE_USER), path
        # The status itself stays open to every local program, as the tray icon's colour is.
        assert served.get_as(desktop_user, "/api/status")[0] == 200
        # Whoever holds the token is the user (it is readable by the user alone).
        status, text = served.get_as(desktop_user, path, f"Bearer {TOKEN}")
        assert status == 200, path


@pytest.mark.slow
def test_a_forwarded_for_header_cannot_borrow_the_address_of_the_users_own_connection(
    served: Served, desktop_user: Account
) -> None:
    if not OwnUserCheck().lookup:
        pytest.skip("this OS does not show who a loopback connection belongs to")
    # The user's dashboard is open: its event stream holds a connection to the status API.
    host, port = served.url.removeprefix("http://").split(":")
    dashboard_tab = socket.create_connection((host, int(port)), timeout=10)
    try:
        dashboard_tab.sendall(f"GET /api/stream HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += dashboard_tab.recv(4096)
        assert head.startswith(b"HTTP/1.1 200")
        for path in USER_ONLY:
            status, text = served.get_as(desktop_user, path, script=BORROW_ADDRESS)
            assert (status, json.loads(text)["error"]) == (401, NOT_THE_USER), path
    finally:
        dashboard_tab.close()


def test_the_users_own_programs_are_answered_without_the_token_where_the_os_shows_them(served: Served) -> None:
    if not OwnUserCheck().lookup:
        pytest.skip("this OS does not show who a loopback connection belongs to")
    settings = httpx.get(served.url + "/api/settings", timeout=10, trust_env=False)
    assert settings.status_code == 200
    assert "health_check_interval" in {row["key"] for row in settings.json()["settings"]}
    events = httpx.get(served.url + "/api/events", timeout=10, trust_env=False)
    assert [event["message"] for event in events.json()] == ["the model llama3 failed to load"]


def test_where_the_os_cannot_tell_users_apart_only_the_token_is_answered(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    unknown = OwnUserCheck(lookup=False)  # macOS and Windows: no socket owners for an ordinary user
    dashboard = Dashboard(setup.monitor, setup.history, TOKEN, env={}, owners=unknown)
    app = mount_dashboard(build_app(setup.monitor, setup.history, TOKEN, owners=unknown), dashboard)  # type: ignore[arg-type]
    client = TestClient(app, base_url="http://127.0.0.1:11436", client=("127.0.0.1", 50123))
    try:
        for path in USER_ONLY:
            refused = client.get(path)
            assert (refused.status_code, refused.json()["error"]) == (401, NOT_THE_USER), path
            assert client.get(path, headers=AUTH).status_code == 200, path
        assert client.get("/api/status").status_code == 200
    finally:
        dashboard.close()
        setup.dashboard.close()
        setup.history.close()
