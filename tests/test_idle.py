"""Nearly free when idle: what a running app loads and starts only once it is used.

The monitor runs as a real process against the stand-in Ollama; the
dashboard built on demand is checked in-process through the status API.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from standin.harness import StandinEnv
from tests.support.manager import DEFAULT_INTERVAL, Manager, quietest_wakeups
from tray.core.status import Status, make_status
from tray.dashboard.ondemand import DashboardOnDemand
from tray.history import EventKind, History
from tray.ollama.client import OllamaClient
from tray.settings.config import Config
from tray.system.memory import M_ARENA_MAX, share_one_malloc_arena
from tray.system.resources import nvml_library_present
from tray.system.stopping import sleep_until
from tray.web.status_api import build_app

# Loaded by a monitor only when the gateway is enabled, the dashboard is asked for, a model job runs
# or the tray is shown.
LAZY_MODULES = (
    "tray.gateway.app",
    "tray.dashboard.routes",
    "tray.dashboard.metrics",
    "tray.dashboard.settings_form",
    "prometheus_client",
    "tray.models.builder",
    "tray.models.integrity",
    "tray.ui.app",
    "tray.ui.icon",
    "PIL",
    "webbrowser",
)

# Runs `ollama-manager monitor` on this interpreter's main thread; a thread notes the loaded modules once
# Ollama is healthy, asks for the metrics, notes them again and stops the monitor as a signal would.
MONITOR_WATCHER = r"""
import json, os, signal, sys, threading, time
import httpx
from pathlib import Path

def status_port():
    info = Path(os.environ["XDG_STATE_HOME"]) / "ollama-manager" / "monitor.json"
    return json.loads(info.read_text())["port"]

def watch():
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                base = f"http://127.0.0.1:{status_port()}"
                if httpx.get(base + "/api/status", timeout=5, trust_env=False).json()["health"] == "healthy":
                    break
            except (OSError, ValueError, KeyError, httpx.HTTPError):
                pass
            time.sleep(0.1)
        wanted = json.loads(os.environ["WATCH_MODULES"])
        started = [name for name in wanted if name in sys.modules]
        metrics = httpx.get(base + "/metrics", timeout=30, trust_env=False)
        used = [name for name in wanted if name in sys.modules]
        Path(os.environ["WATCH_OUT"]).write_text(json.dumps(
            {"started": started, "after_metrics": used, "metrics_status": metrics.status_code}
        ))
    finally:
        os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=watch, daemon=True).start()
from tray.cli import main
sys.exit(main(["monitor"]))
"""


@pytest.mark.process
def test_a_monitor_with_gateway_and_dashboard_off_loads_neither_until_the_dashboard_is_asked_for(
    standin: StandinEnv, tmp_path: Path
) -> None:
    manager = Manager(standin.env, tmp_path)
    out = tmp_path / "modules.json"
    wanted = [*LAZY_MODULES, "pynvml"]
    env = {**manager.env, "WATCH_OUT": str(out), "WATCH_MODULES": json.dumps(wanted)}
    done = subprocess.run(
        [sys.executable, "-c", MONITOR_WATCHER],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(out.read_text())
    # NVML's bindings load only where the NVIDIA driver's library is.
    assert seen["started"] == (["pynvml"] if nvml_library_present() else [])
    assert seen["metrics_status"] == 200
    assert {"tray.dashboard.routes", "tray.dashboard.metrics", "prometheus_client"} <= set(seen["after_metrics"])
    assert "tray.gateway.app" not in seen["after_metrics"] and "tray.models.builder" not in seen["after_metrics"]


@pytest.mark.process
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads the threads' counters from /proc")
def test_a_monitor_between_checks_has_no_thread_that_wakes(standin: StandinEnv, tmp_path: Path) -> None:
    # The quietest 3 s of the 12 after Ollama is found healthy, with the next check 30 s away, must see at
    # most one wakeup of the whole process; before the servers and the main thread stopped polling, 32.
    manager = Manager(standin.env, tmp_path)
    monitor = manager.spawn_monitor(DEFAULT_INTERVAL)
    manager.wait_monitor_ready(60)
    quietest, readings = quietest_wakeups(monitor.pid)
    assert monitor.poll() is None
    assert quietest <= 1, f"the monitor woke {quietest} times in its quietest 3 s: {readings}"


# --------------------------------------------------------------------------- the dashboard, built on demand


class QuietMonitor:
    """The monitor as the dashboard sees it, with no thread of its own."""

    def __init__(self, config_path: Path) -> None:
        self.config = Config(source=str(config_path))
        self.status = make_status()
        self.subscribers: list[Any] = []

    def snapshot(self) -> Status:
        return self.status

    def subscribe(self, callback: Any) -> Any:
        self.subscribers.append(callback)
        return lambda: None

    def apply_settings(self, config: Config) -> Any:
        raise AssertionError("not asked for here")


def status_api(tmp_path: Path) -> tuple[TestClient, DashboardOnDemand, History, QuietMonitor]:
    config_path = tmp_path / "config.toml"
    config_path.write_text("")
    monitor = QuietMonitor(config_path)
    history = History(tmp_path / "history.sqlite3")
    on_demand = DashboardOnDemand(monitor, history, "token")
    app = build_app(monitor, history, "token", extra_routes=on_demand.routes())  # type: ignore[arg-type]
    return TestClient(app, base_url="http://127.0.0.1:11436", client=("127.0.0.1", 50123)), on_demand, history, monitor


def restarts_by_user(metrics_text: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "ollama_manager_restarts_total" and sample.labels == {"reason": "user"}:
                return sample.value
    raise AssertionError("no restart counter")


def test_the_status_api_answers_without_building_the_dashboard(tmp_path: Path) -> None:
    client, on_demand, history, monitor = status_api(tmp_path)
    assert client.get("/api/status").status_code == 200
    assert client.get("/api/events", headers={"Authorization": "Bearer token"}).status_code == 200
    assert client.get("/nothing-here").status_code == 404
    assert on_demand.dashboard is None and monitor.subscribers == []
    page = client.get("/")
    assert page.status_code == 200 and 'src="/static/dashboard.js"' in page.text
    assert on_demand.dashboard is not None and len(monitor.subscribers) == 1
    assert client.get("/static/dashboard.js").status_code == 200
    assert client.get("/static/nothing.js").status_code == 404
    assert client.post("/metrics").status_code == 405  # the dashboard's own routes decide, once it is built
    on_demand.close()
    history.close()


def test_metrics_of_a_dashboard_built_late_count_what_happened_since_the_app_started(tmp_path: Path) -> None:
    client, on_demand, history, _ = status_api(tmp_path)
    history.record(EventKind.RESTART, "Ollama restarted by the user", {"reason": "user", "ok": True})
    history.record(EventKind.RESTART, "Ollama restarted by the user", {"reason": "user", "ok": True})
    assert on_demand.dashboard is None
    assert restarts_by_user(client.get("/metrics").text) == 2
    history.record(EventKind.RESTART, "Ollama restarted by the user", {"reason": "user", "ok": True})
    assert restarts_by_user(client.get("/metrics").text) == 3
    on_demand.close()
    history.close()


def test_a_replaying_subscriber_gets_each_event_once_while_others_are_recorded(tmp_path: Path) -> None:
    history = History(tmp_path / "history.sqlite3")
    seen: list[str] = []
    recording = threading.Thread(target=lambda: [history.record(EventKind.HEALTH, f"e{i}") for i in range(300)])
    recording.start()
    history.subscribe(lambda event: seen.append(event.message), replay_since=0)
    recording.join()
    assert sorted(seen, key=lambda m: int(m[1:])) == [f"e{i}" for i in range(300)]
    history.close()


def test_a_main_thread_sleeping_until_stopped_wakes_when_another_thread_sets_it() -> None:
    stop = threading.Event()
    setter = threading.Timer(0.05, stop.set)
    setter.start()
    for platform in ("linux", "win32"):
        sleep_until(stop, platform)  # returns; on win32 it looks once a second
        assert stop.is_set()
    setter.join()


@pytest.mark.process
def test_a_missing_nvidia_driver_leaves_the_bindings_unloaded() -> None:
    code = (
        "import sys\n"
        "from tray.system.resources import ResourceSampler, nvml_library_present\n"
        "sample = ResourceSampler(None).sample(None)\n"
        "print(nvml_library_present(), 'pynvml' in sys.modules, sample.gpu_available)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                          env={**os.environ})  # fmt: skip
    present, loaded, _ = done.stdout.split()
    assert loaded == present  # the bindings load where the driver's library is, and only there


def test_where_the_nvml_library_is_looked_for() -> None:
    def no_library(name: str) -> object:
        raise OSError(f"{name}: cannot open shared object file")

    assert nvml_library_present("darwin", load=lambda name: pytest.fail("macOS has no NVML")) is False
    assert nvml_library_present("linux", load=no_library) is False
    assert nvml_library_present("linux", load=lambda name: name) is True
    program_files = {"ProgramFiles": "D:/Programs", "WINDIR": "C:/Windows"}
    nvsmi = "D:/Programs/NVIDIA Corporation/NVSMI/nvml.dll"
    assert nvml_library_present("win32", program_files, exists=lambda path: path == nvsmi) is True
    assert nvml_library_present("win32", program_files, exists=lambda path: False) is False


def test_a_client_of_a_plain_http_ollama_loads_no_certificates(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx loads its CA bundle into every client it makes (about 3 MiB held for the process's life); the
    # monitor's client of an http:// Ollama never speaks TLS, so only a client of an https:// one loads it.
    loaded: list[object] = []
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", lambda _self, *args, **kwargs: loaded.append(args))
    with OllamaClient("http://127.0.0.1:11434"):
        pass
    assert loaded == []
    with OllamaClient("https://ollama.example.com"):
        pass
    assert len(loaded) == 1


def reserved_malloc_arenas(pid: int) -> int:
    """The per-thread malloc arenas of ``pid``: glibc reserves each as a 64 MiB mapping, inaccessible but its head."""
    count = 0
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(part, 16) for part in fields[0].split("-"))
        if fields[1] == "---p" and len(fields) == 5 and end - start > 2**20:  # anonymous, not a 4 KiB guard page
            count += 1
    return count


@pytest.mark.process
@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc arenas, read from /proc")
def test_a_monitors_threads_share_one_malloc_arena(standin: StandinEnv, tmp_path: Path) -> None:
    manager = Manager(standin.env, tmp_path)
    manager.env.pop("MALLOC_ARENA_MAX", None)
    monitor = manager.spawn_monitor(DEFAULT_INTERVAL)
    manager.wait_monitor_ready(60)
    assert (
        len(list(Path(f"/proc/{monitor.pid}/task").iterdir())) > 1
    )  # threads that allocate, yet no arena of their own
    assert reserved_malloc_arenas(monitor.pid) == 0


def test_one_malloc_arena_is_asked_of_glibc_on_linux_unless_the_user_chose() -> None:
    calls: list[tuple[int, int]] = []

    def mallopt(option: int, value: int) -> int:
        calls.append((option, value))
        return 1

    assert share_one_malloc_arena({}, "linux", lambda: mallopt) is True
    assert calls == [(M_ARENA_MAX, 1)]
    assert share_one_malloc_arena({"MALLOC_ARENA_MAX": "4"}, "linux", lambda: mallopt) is False
    assert share_one_malloc_arena({}, "darwin", lambda: mallopt) is False
    assert share_one_malloc_arena({}, "linux", lambda: None) is False  # another C library
    assert calls == [(M_ARENA_MAX, 1)]
