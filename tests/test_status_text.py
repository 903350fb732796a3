"""``ollama-manager status`` as text: every line from the status, including what Ollama is busy with."""

from __future__ import annotations

from dataclasses import replace

from tray.cli import format_status
from tray.core.health import BusySource, Health
from tray.core.status import BusyStatus, MonitorState, make_status

RUNNING = make_status(
    latency_ms=12,
    pid=4242,
    model="llama3",
    modelfile_model="llama3",
    model_loaded="llama3",
    uptime_seconds=3700,
    memory_usage_mb=4608,
    cpu_usage_percent=95.5,
)


def test_an_idle_server() -> None:
    assert format_status(RUNNING, monitor_running=True).splitlines() == [
        "Ollama: healthy (12 ms), running, pid 4242, started by this manager",
        "Address: http://127.0.0.1:11434",
        "Model: llama3 (present)",
        "Uptime: 1 h 2 min, memory 4.5 GB, CPU 95.5 %, GPU none",
        "Busy: no",
        "Monitor: running",
    ]


def test_another_active_model_is_named_beside_the_modelfile_model() -> None:
    lines = format_status(replace(RUNNING, model="mistral:latest", model_loaded="mistral:latest"), True).splitlines()
    assert lines[2] == "Model: mistral:latest (present); Modelfile model: llama3"


def test_the_modelfile_model_is_not_named_again_under_another_spelling_of_the_same_name() -> None:
    lines = format_status(replace(RUNNING, model="Llama3:latest", modelfile_model="llama3"), True).splitlines()
    assert lines[2] == "Model: Llama3:latest (present)"


def test_a_busy_server_gets_one_line_saying_with_what() -> None:
    busy = BusyStatus("llama3:latest", None, None, 125.0, 0.0, BusySource.RUNNER, stuck=False)
    lines = format_status(replace(RUNNING, busy=busy), monitor_running=True).splitlines()
    assert lines[0].startswith("Ollama: healthy")
    assert lines[4] == (
        "Busy: generating on llama3:latest for 2 min; last progress just now; seen by the runner's CPU use"
    )


def test_a_stopped_server_has_no_busy_line() -> None:
    stopped = replace(
        RUNNING,
        ollama_running=False,
        health=Health.DOWN,
        state=MonitorState.STOPPED,
        pid=None,
        latency_ms=None,
        managed_by="none",
    )
    lines = format_status(stopped, monitor_running=False).splitlines()
    assert not any(line.startswith("Busy:") for line in lines)
    assert lines[0] == "Ollama: down, stopped"
    assert lines[-1] == "Monitor: not running"


def test_a_monitor_that_no_longer_supervises_says_so() -> None:
    from tray.service.monitor import not_supervising

    halted = not_supervising(RUNNING, "supervision stopped: RuntimeError: boom")
    lines = format_status(halted, monitor_running=True).splitlines()
    assert lines[0].startswith("Ollama: unknown")
    assert "Last error: supervision stopped: RuntimeError: boom" in lines
    assert lines[-1] == "Monitor: running but NOT supervising Ollama; restart Ollama Manager"


def test_the_tray_and_the_dashboard_say_when_nothing_is_supervised() -> None:
    from tray.core.status_text import status_summary
    from tray.service.monitor import not_supervising
    from tray.ui.icon import tooltip

    halted = not_supervising(RUNNING, "supervision stopped: RuntimeError: boom")
    assert status_summary(halted) == "Not supervising Ollama — restart Ollama Manager"
    assert tooltip(halted) == "Not supervising Ollama — restart Ollama Manager"
