"""A stale monitor.json (its monitor gone, its pid or port taken by another program) never gets the API token.

Each case runs real processes: a small HTTP server that records every request it
receives (and answers like the manager would) sits where monitor.json points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.manager import Manager, wait_until
from tests.support.users import Account, popen_as, scratch
from tray.system.monitor_record import read_record

pytestmark = [pytest.mark.process, pytest.mark.slow]

TOKEN = "t0ken-that-must-stay-home"

# Records the request line and Authorization header of every request; answers as the manager's status API would.
FAKE_SERVER = textwrap.dedent(
    """
    import json, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def answer(self):
            with open(sys.argv[2], "a") as seen:
                seen.write(json.dumps([self.command, self.path, self.headers.get("Authorization")]) + "\\n")
            body = json.dumps({"ok": True, "message": "FAKE: Ollama stopped"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, *args):
            pass

    address = (sys.argv[3], int(sys.argv[4])) if len(sys.argv) > 4 else ("127.0.0.1", 0)
    server = HTTPServer(address, Handler)
    with open(sys.argv[1] + ".tmp", "w") as port:
        port.write(str(server.server_address[1]))
    import os
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    server.serve_forever()
    """
)


class FakeServer:
    """The recording server, run as this user or as ``account``."""

    def __init__(self, root: Path, account: Account | None = None, address: tuple[str, int] | None = None) -> None:
        self.script = root / "fake_server.py"
        self.script.write_text(FAKE_SERVER)
        self.port_file = root / "port"
        self.seen_file = root / "seen.jsonl"
        self.seen_file.touch()
        argv = [sys.executable, str(self.script), str(self.port_file), str(self.seen_file)]
        if address is not None:
            argv += [address[0], str(address[1])]
        if account is None:
            self.process = subprocess.Popen(argv)
        else:
            for path in (self.script, self.seen_file):
                path.chmod(0o666)
            root.chmod(0o777)
            self.process = popen_as(account, ["/usr/bin/python3", *argv[1:]], env=account.env({"PATH": "/usr/bin"}))
        self.port = int(wait_until(lambda: self.port_file.exists() and self.port_file.read_text(), 30, what="port"))

    @property
    def pid(self) -> int:
        return self.process.pid

    def seen(self) -> list[list[str | None]]:
        return [json.loads(line) for line in self.seen_file.read_text().splitlines()]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def fake_server(tmp_path: Path) -> Iterator[FakeServer]:
    root = tmp_path / "fake"
    root.mkdir()
    server = FakeServer(root)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def manager(standin, tmp_path: Path) -> Iterator[Manager]:
    manager = Manager(standin.env, tmp_path)
    try:
        yield manager
    finally:
        manager.cleanup()


def state_dir(manager: Manager) -> Path:
    return Path(manager.env["XDG_STATE_HOME"]) / "ollama-manager"


def plant_record(manager: Manager, pid: int, port: int, started: float | None) -> None:
    """A monitor.json (and the token) as a monitor that is gone would have left them."""
    state = state_dir(manager)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    (state / "api-token").write_text(TOKEN + "\n")
    (state / "api-token").chmod(0o600)
    (state / "monitor.json").write_text(json.dumps({"pid": pid, "port": port, "started": started}))


def assert_acts_without_a_monitor(manager: Manager, why: str) -> None:
    """``stop`` and ``status`` send nothing to the recorded port, say why in one line, and act themselves."""
    stop = manager.run("stop")
    assert (stop.returncode, stop.stdout) == (0, "Ollama is not running\n"), stop.stderr
    assert stop.stderr == f"ollama-manager: no monitor is running (monitor.json is stale: {why})\n"
    status = manager.run("status", "--json")
    assert json.loads(status.stdout)["monitor_running"] is False, status.stderr
    assert status.stderr == stop.stderr


def test_a_reused_pid_listening_on_the_recorded_port_never_gets_the_token(manager, fake_server) -> None:
    earlier = psutil.Process(fake_server.pid).create_time() - 3600  # the monitor that pid belonged to, an hour ago
    plant_record(manager, fake_server.pid, fake_server.port, earlier)
    assert_acts_without_a_monitor(manager, f"pid {fake_server.pid} is another program")
    assert fake_server.seen() == []


def test_another_program_that_listens_on_the_recorded_port_is_not_the_monitor(manager, fake_server) -> None:
    # Even with the start time right (a record written for it), its command line is not the manager's.
    plant_record(manager, fake_server.pid, fake_server.port, psutil.Process(fake_server.pid).create_time())
    assert_acts_without_a_monitor(manager, f"pid {fake_server.pid} is another program")
    assert fake_server.seen() == []


def test_a_pid_that_died_is_no_monitor(manager, fake_server) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(30)
    plant_record(manager, gone.pid, fake_server.port, 1.0)
    assert_acts_without_a_monitor(manager, f"pid {gone.pid} has exited")
    assert fake_server.seen() == []


def test_a_pid_reused_by_a_program_that_is_not_the_manager_is_no_monitor(manager, fake_server) -> None:
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        plant_record(manager, sleeper.pid, fake_server.port, psutil.Process(sleeper.pid).create_time())
        assert_acts_without_a_monitor(manager, f"pid {sleeper.pid} is another program")
    finally:
        sleeper.kill()
        sleeper.wait(10)
    assert fake_server.seen() == []


def test_the_running_monitor_is_found_and_a_port_it_does_not_hold_is_refused(manager, fake_server) -> None:
    """The happy path, then the same live monitor's record pointed at a port another program holds."""
    monitor = manager.spawn_monitor()
    monitor_json = state_dir(manager) / "monitor.json"
    wait_until(monitor_json.exists, 60, what="the monitor to write monitor.json")
    manager.wait_monitor_ready()
    record = read_record(monitor_json)
    assert record is not None and record.pid == monitor.pid
    assert record.started == psutil.Process(monitor.pid).create_time()
    status = manager.run("status", "--json")
    assert (json.loads(status.stdout)["monitor_running"], status.stderr) == (True, "")
    restarted = manager.run("restart")
    assert restarted.returncode == 0 and restarted.stderr == "", restarted.stderr

    info = json.loads(monitor_json.read_text())
    monitor_json.write_text(json.dumps({**info, "port": fake_server.port}))
    stop = manager.run("stop")
    why = f"port {fake_server.port} is held by another program (pid {fake_server.pid})"
    assert stop.stderr == f"ollama-manager: no monitor is running (monitor.json is stale: {why})\n"
    assert "FAKE" not in stop.stdout
    assert fake_server.seen() == []


def test_another_users_listener_on_the_recorded_port_never_gets_the_token(manager, accounts) -> None:
    other = accounts.regular("other")
    with scratch("om-fake-") as root:
        server = FakeServer(root, other)
        try:
            listener_owner = psutil.Process(server.pid).uids().real
            assert listener_owner == other.uid != os.getuid()
            monitor = manager.spawn_monitor()
            monitor_json = state_dir(manager) / "monitor.json"
            wait_until(monitor_json.exists, 60, what="the monitor to write monitor.json")
            info = json.loads(monitor_json.read_text())
            monitor_json.write_text(json.dumps({**info, "port": server.port}))
            assert monitor.poll() is None
            stop = manager.run("stop")
            assert "no monitor is running (monitor.json is stale: port " in stop.stderr, stop.stderr
            assert "FAKE" not in stop.stdout
            status = manager.run("status", "--json")
            assert json.loads(status.stdout)["monitor_running"] is False
            assert server.seen() == []
        finally:
            server.stop()


def test_another_users_listener_beside_the_monitor_on_another_address_leaves_it_trusted(manager, accounts) -> None:
    """127.0.0.2 on the monitor's port is another socket: the link still reaches the monitor, and only it."""
    other = accounts.regular("other")
    monitor = manager.spawn_monitor()
    monitor_json = state_dir(manager) / "monitor.json"
    wait_until(monitor_json.exists, 60, what="the monitor to write monitor.json")
    manager.wait_monitor_ready()
    port = json.loads(monitor_json.read_text())["port"]
    with scratch("om-fake-") as root:
        server = FakeServer(root, other, ("127.0.0.2", port))
        try:
            status = manager.run("status", "--json")
            assert (json.loads(status.stdout)["monitor_running"], status.stderr) == (True, "")
            restarted = manager.run("restart")
            assert (restarted.returncode, restarted.stderr) == (0, ""), restarted.stderr
            assert "FAKE" not in restarted.stdout
            assert server.seen() == []
            assert monitor.poll() is None
        finally:
            server.stop()
