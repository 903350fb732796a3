"""A web server that is not Ollama answers on Ollama's port with an HTML page: what the manager records
(events, its log, notifications) stays one plain line, and what a notification shows is escaped."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.manager import Manager, wait_until
from tests.support.notification_server import NotificationServer

pytestmark = [pytest.mark.process, pytest.mark.slow]

MARKUP = ("<html", "<h1", "<p>", "<br", "</", "<title", "\x1b", "<script", "alert(")


@pytest.fixture
def foreign(standin) -> Iterator[subprocess.Popen[str]]:
    server = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(__file__), "support", "foreign_server.py"), str(standin.port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdout.readline() == "ready\n"
    yield server
    server.kill()
    server.wait()


def test_a_foreign_html_page_reaches_events_logs_and_notifications_as_plain_text(
    standin, foreign, session_bus, tmp_path
) -> None:
    notifications = NotificationServer(session_bus)
    manager = Manager(standin.env, tmp_path)
    manager.env["DBUS_SESSION_BUS_ADDRESS"] = session_bus
    try:
        manager.spawn_monitor()
        wait_until(
            lambda: any("502 Bad Gateway" in e["message"] or "not Ollama" in e["message"] for e in manager.events()),
            60,
            what="an event about the foreign server",
        )
        notifications.notifications(1)
        events = manager.events()
        for event in events:
            text = event["message"]
            assert "\n" not in text and not any(mark in text for mark in MARKUP), text
            assert len(text) <= 400
        log = (Path(standin.env["XDG_STATE_HOME"]) / "ollama-manager" / "log" / "ollama-manager.log").read_text()
        log += manager.monitor_log()
        assert "<script" not in log and "<html" not in log.lower() and "\x1b" not in log
        for call in notifications.calls:
            if call[0] == "Notify":
                body = call[1][4]
                assert "<" not in body.replace("&lt;", "") and "\x1b" not in body, body
    finally:
        manager.cleanup()
        notifications.close()
