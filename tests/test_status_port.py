"""A status port taken by another program: the monitor listens on a free one, and the CLI finds it there."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.support.manager import Manager, wait_until

pytestmark = [pytest.mark.process, pytest.mark.slow]


def test_a_taken_status_port_falls_back_to_a_free_one_the_cli_finds(standin, tmp_path: Path) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    manager = Manager(standin.env, tmp_path)
    try:
        monitor = manager.spawn_monitor({"OLLAMA_MANAGER_STATUS_PORT": str(taken)})
        state = Path(manager.env["XDG_STATE_HOME"]) / "ollama-manager"
        wait_until((state / "monitor.json").exists, 30, what="the monitor to write monitor.json")
        assert monitor.poll() is None, manager.monitor_log()
        manager.wait_monitor_ready()
        port = json.loads((state / "monitor.json").read_text())["port"]
        assert port != taken
        status = manager.run("status", "--json")
        assert json.loads(status.stdout)["monitor_running"] is True, status.stderr
        moved = [event for event in manager.events() if "is in use by another program" in event["message"]]
        assert [event["message"] for event in moved] == [
            f"the status port {taken} is in use by another program; the status API listens on 127.0.0.1:{port} "
            f"instead (ollama-manager finds it through {state / 'monitor.json'})"
        ]
    finally:
        manager.cleanup()
        squatter.close()
