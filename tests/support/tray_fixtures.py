"""Fixtures and helpers shared by the end-to-end tray tests (``python -m tray`` against the stand-in Ollama).

A test module imports the fixtures it uses by name, which makes pytest see them there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from standin.harness import StandinEnv
from tests.support.manager import Manager
from tests.support.tray_driver import BrowserLog, NotificationLog, wait_for


@pytest.fixture
def manager(standin: StandinEnv, tmp_path: Path) -> Manager:
    """Fast settings and the status API reader; the tray itself is started by the test."""
    return Manager(standin.env, tmp_path)


@pytest.fixture
def notifications(tmp_path: Path) -> NotificationLog:
    return NotificationLog(tmp_path)


@pytest.fixture
def browser(tmp_path: Path) -> BrowserLog:
    return BrowserLog(tmp_path)


def app_log(manager: Manager) -> str:
    """The tray's own log file, so far."""
    path = Path(manager.env["XDG_STATE_HOME"]) / "ollama-manager" / "log" / "ollama-manager.log"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_healthy(manager: Manager, timeout: float = 20) -> dict[str, Any]:
    """The status API's answer once it reports Ollama healthy."""

    def healthy_status() -> dict[str, Any] | None:
        status = manager.api_status()
        return status if status is not None and status["health"] == "healthy" else None

    status = wait_for(healthy_status, timeout, "a healthy status")
    assert status is not None
    return status
