"""``ollama-manager status`` as text: every line from the status dict, including what Ollama is busy with."""

from __future__ import annotations

import doctest

from tray import cli
from tray.cli import format_status

RUNNING = {
    "ollama_running": True,
    "health": "healthy",
    "latency_ms": 12,
    "state": "running",
    "pid": 4242,
    "managed_by": "manager",
    "ollama_host": "http://127.0.0.1:11434",
    "model": "llama3",
    "model_loaded": "llama3",
    "uptime_seconds": 3700,
    "memory_usage_mb": 4608,
    "cpu_usage_percent": 95.5,
    "gpu_available": False,
    "restart_attempt": 0,
    "last_error": None,
    "monitor_running": True,
    "busy": None,
}


def test_docstring_examples() -> None:
    assert doctest.testmod(cli).failed == 0


def test_an_idle_server() -> None:
    assert format_status(RUNNING).splitlines() == [
        "Ollama: healthy (12 ms), running, pid 4242, started by this manager",
        "Address: http://127.0.0.1:11434",
        "Model: llama3 (present)",
        "Uptime: 1h 1m, memory 4608 MB, CPU 95.5 %, GPU none",
        "Busy: no",
        "Monitor: running",
    ]


def test_a_busy_server_gets_one_line_saying_with_what() -> None:
    busy = {
        "model": "llama3:latest",
        "requests": None,
        "waiting": None,
        "since_seconds": 125.0,
        "progress_seconds_ago": 0.0,
        "source": "runner",
        "stuck": False,
    }
    lines = format_status({**RUNNING, "busy": busy}).splitlines()
    assert lines[0].startswith("Ollama: healthy")
    assert lines[4] == (
        "Busy: generating on llama3:latest for 2m 5s; last progress 0s ago; seen by the runner's CPU use"
    )


def test_a_stopped_server_has_no_busy_line() -> None:
    stopped = {**RUNNING, "ollama_running": False, "health": "down", "state": "stopped", "pid": None}
    assert not any(line.startswith("Busy:") for line in format_status(stopped).splitlines())
