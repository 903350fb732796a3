"""The design notes' functions, imported and called as a script would, against the stand-in."""

from __future__ import annotations

import time

import pytest

from tests.support.manager import FAST_SETTINGS
from tray import api

pytestmark = [pytest.mark.process, pytest.mark.slow]


@pytest.fixture
def user_env(standin, monkeypatch):
    for key, value in {**standin.env, **FAST_SETTINGS}.items():
        monkeypatch.setenv(key, value)
    return standin


def test_the_design_notes_api(user_env):
    assert api.is_ollama_running() is False
    health = api.health_check()
    assert health["status"] == "down"
    assert api.start_ollama() is True
    assert api.is_ollama_running() is True
    started = time.monotonic()
    health = api.health_check()
    took = round(time.monotonic() - started, 3)
    # The probe's own time, in seconds: inside the call that made it (as the API rounds it).
    assert health["status"] == "healthy" and 0 <= health["latency"] <= took
    pid_before = api.get_status()["pid"]
    assert api.ensure_model_loaded() is True  # the default Modelfile: FROM llama3, pulled and built
    assert api.health_check()["status"] == "healthy"  # now the one-token test inference
    assert api.auto_restart() is True
    status = api.get_status()
    assert status["ollama_running"] is True and status["health"] == "healthy"
    assert status["pid"] != pid_before
    assert set(status) >= {
        "ollama_running",
        "model_loaded",
        "latency_ms",
        "health",
        "uptime_seconds",
        "inference_count",
        "memory_usage_mb",
        "gpu_available",
        "cpu_usage_percent",
        "last_error",
    }


def test_start_ollama_is_false_when_not_installed(user_env, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert api.start_ollama() is False
