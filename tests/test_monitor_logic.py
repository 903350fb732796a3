"""The monitor's decisions with a scripted clock and a fake supervisor (no processes, no sleep)."""

from __future__ import annotations

import itertools
import random
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from tests.support.manager import wait_until
from tray.core.health import BusySource, Failure, Health, ProbeResult
from tray.core.oom import LadderMove, OomSettings, OomStep, Place, describe_move, route
from tray.core.restart import RestartPolicy
from tray.core.status import BusyStatus, GatewayStatus, MonitorState
from tray.history import EventKind, History
from tray.ollama.client import InstalledModel, LoadedModel
from tray.service.monitor import RECHECK_SECONDS, ModelChoiceError, Monitor
from tray.service.ports import GatewayFeed, SupervisorPort
from tray.service.supervisor import PortInUse, StartFailed, StartOutcome
from tray.settings.alerts import AlertSettings
from tray.settings.config import Config
from tray.settings.hosts import parse_ollama_host
from tray.settings.server import OllamaServerSettings
from tray.system.owners import ExternalSupervisor, SystemdService
from tray.system.paths import AppPaths
from tray.system.processes import ProcessRef, StopOutcome
from tray.system.resources import ResourceSample

OK = ProbeResult(True, 0.05, "api")
REFUSED = ProbeResult(False, 0.0, "api", Failure.REFUSED, "connection refused")
TIMEOUT = ProbeResult(False, 15.0, "api", Failure.TIMEOUT, "no answer in time")
SLOW = ProbeResult(True, 7.0, "api")
INFERENCE_OK = ProbeResult(True, 0.3, "inference")
INFERENCE_TIMEOUT = ProbeResult(False, 5.0, "inference", Failure.TIMEOUT, "no answer in time")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeUserStop:
    stopped: bool = False

    def set(self) -> None:
        self.stopped = True

    def clear(self) -> None:
        self.stopped = False

    def is_set(self) -> bool:
        return self.stopped


@dataclass
class FakeClient:
    probes: list[ProbeResult] = field(default_factory=list)
    answering: bool | None = True
    loaded: list[str] = field(default_factory=list)  # what /api/ps lists
    inference: list[ProbeResult] = field(default_factory=list)  # answers to the inference probe, in turn
    pings: list[ProbeResult] = field(default_factory=list)  # answers to the re-check after a probe timed out
    inference_timeouts: list[float] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    installed: list[str] = field(default_factory=lambda: ["llama3:latest"])  # what /api/tags lists
    preloaded: list[tuple[str, int | str | None]] = field(default_factory=list)

    def probe_api(self, timeout: float) -> tuple[ProbeResult, set[str] | None]:
        result = self.probes.pop(0) if self.probes else OK
        return result, (set(self.installed) if result.ok else None)

    def loaded_models(self, timeout: float) -> list[LoadedModel] | None:
        return [LoadedModel(name, 100, 0) for name in self.loaded]

    def installed_models(self, timeout: float) -> list[InstalledModel] | None:
        return [InstalledModel(name, 100, "8B", "Q4_0") for name in self.installed]

    def preload(self, model: str, keep_alive: int | str | None, timeout: float) -> str | None:
        self.preloaded.append((model, keep_alive))
        return None

    def probe_inference(self, model: str, timeout: float) -> ProbeResult:
        self.inference_timeouts.append(timeout)
        return self.inference.pop(0) if self.inference else INFERENCE_OK

    def ping(self, timeout: float) -> ProbeResult:
        return self.pings.pop(0) if self.pings else OK

    def answers_as_ollama(self, timeout: float = 2.0) -> bool | None:
        return self.answering

    def unload(self, model: str) -> str | None:
        self.unloaded.append(model)
        return None


_files = tempfile.TemporaryDirectory(prefix="om-fake-app-")  # for fakes built outside this module's tests
fake_paths = AppPaths(*(Path(_files.name) / d for d in ("config", "log", "data", "state")))


@pytest.fixture(autouse=True)
def _app_files_in_a_temp_dir(tmp_path, monkeypatch):
    """The app's files go to this test's temp dir."""
    monkeypatch.setitem(globals(), "fake_paths", AppPaths(*(tmp_path / d for d in ("config", "log", "data", "state"))))


class FakeSupervisor:
    """Scripted in place of :class:`~tray.service.supervisor.Supervisor`: the monitor sees it as a SupervisorPort."""

    def __init__(self, paths: AppPaths | None = None) -> None:
        self.client: FakeClient = FakeClient()
        self.user_stop = FakeUserStop()
        self.external: ExternalSupervisor | None = None
        self.server: ProcessRef | None = ProcessRef(1, 0.0)
        self.runners: set[ProcessRef] = set()
        self.host = parse_ollama_host(None)
        self.models_dir = Path("/nonexistent")
        self.store_source = "the manager's settings"
        self.owner: str | None = None
        self.unit: str | None = None
        self.refused: str | None = None
        self.reaped_names: dict[int, str] = {}
        self.paths = paths or fake_paths
        self.managed_by = "manager"
        self.platform = "linux"
        self.env_overlay: dict[str, str] = {}
        self.started_overlay: dict[str, str] = {}
        self.pid: int | None = None
        self.config: Config | None = None  # set by reconfigure()
        self.exit_listeners: list[Callable[[int], None]] = []
        self.restarts: list[str] = []
        self.restart_errors: list[Exception] = []
        self.stops = 0
        self.exit_code: int | None = None  # set by a test: our child died with this status
        self.runners_tracked_from: list[Sequence[psutil.Process] | None] = []
        self.process_table_looks = 0
        self.tree: list[psutil.Process] = []  # what a look at the process table finds under the server

    @property
    def overlay_pending(self) -> bool:
        return self.managed_by == "manager" and self.started_overlay != self.env_overlay

    def answers(self) -> bool | None:
        return self.client.answers_as_ollama()

    def adopt(self) -> None: ...

    def systemd_owner(self) -> SystemdService | None:
        return None

    def track_runners(self, descendants: Sequence[psutil.Process] | None = None) -> None:
        self.runners_tracked_from.append(descendants)

    def list_descendants(self, server: ProcessRef) -> list[psutil.Process] | None:
        """The server's process tree as the OS would list it, counting the looks."""
        self.process_table_looks += 1
        return self.tree

    def reap_runners(self) -> list[int]:
        return []

    def take_exit(self) -> int | None:
        code, self.exit_code = self.exit_code, None
        return code

    def start(self, reason: str = "start", interactive: bool = False) -> StartOutcome:
        return StartOutcome(True, 1, "manager")

    def restart(self, reason: str, interactive: bool = False) -> StartOutcome:
        self.restarts.append(reason)
        if self.restart_errors:
            raise self.restart_errors.pop(0)
        self.started_overlay = dict(self.env_overlay)
        return StartOutcome(True, 2, "manager", 0.5)

    def stop(self, reason: str = "stop", interactive: bool = False) -> StopOutcome:
        self.stops += 1
        return StopOutcome()

    @property
    def server_log(self) -> Path:
        return self.paths.server_log

    def subscribe_exit(self, callback: Callable[[int], None]) -> None:
        self.exit_listeners.append(callback)

    def forget_server(self) -> None:
        self.external = None
        self.server = None

    def set_env_overlay(self, env: Mapping[str, str]) -> None:
        self.env_overlay = dict(env)

    def reconfigure(self, config: Config) -> None:
        self.config = config


def make(
    probes: list[ProbeResult], paths: AppPaths | None = None, gateway: GatewayFeed | None = None, **config: Any
) -> tuple[Monitor, FakeSupervisor, Clock]:
    clock = Clock()
    sup = FakeSupervisor(paths)
    sup.client.probes = list(probes)
    cfg = Config(**{"health_check_interval": 30, "health_check_timeout": 5, "health_probe": "api", **config})
    policy = RestartPolicy(max_attempts=cfg.auto_restart_attempts, jitter=0, rng=random.Random(1))
    port: SupervisorPort = sup  # what the monitor needs, checked by mypy
    monitor = Monitor(port, cfg, History(None), gateway=gateway, policy=policy, clock=clock)
    monitor.list_descendants = sup.list_descendants
    monitor.state = MonitorState.RUNNING
    return monitor, sup, clock


class TreeRecordingSampler:
    """Notes the server's process tree each sample was given."""

    def __init__(self) -> None:
        self.given: list[tuple[int | None, Sequence[psutil.Process] | None]] = []

    def sample(self, server_pid, descendants=None):
        self.given.append((server_pid, descendants))
        return memory_sample(1 * GIB)


def test_a_check_looks_at_the_process_table_once_for_the_runners_and_the_sample():
    monitor, sup, clock = make([OK] * 3)
    sup.pid = 1  # the server's, as ProcessRef(1, ...)
    sup.tree = tree = [psutil.Process()]
    monitor.sampler = TreeRecordingSampler()
    run_ticks(monitor, clock, 3)
    assert sup.process_table_looks == 3
    assert sup.runners_tracked_from == [tree] * 3
    assert monitor.sampler.given == [(1, tree)] * 3


def run_ticks(monitor, clock, count):
    """Run ``count`` ticks, each at the time the previous one asked for."""
    due = clock.now
    for _ in range(count):
        clock.now = max(clock.now, due)
        due = monitor.tick()
    return due


def test_healthy_checks_every_interval():
    monitor, sup, clock = make([OK])
    assert monitor.tick() == clock.now + 30
    assert monitor.snapshot().health is Health.HEALTHY
    assert sup.restarts == []


def test_a_dead_server_is_restarted_at_once():
    monitor, sup, clock = make([REFUSED])
    due = monitor.tick()
    assert sup.restarts == ["down"]
    assert due == clock.now + RECHECK_SECONDS
    assert monitor.state is MonitorState.RUNNING
    assert monitor.policy.attempts == 1


def test_more_than_three_consecutive_timeouts_restart():
    monitor, sup, clock = make([TIMEOUT] * 4)
    run_ticks(monitor, clock, 3)
    assert sup.restarts == []
    assert monitor.snapshot().health is Health.DOWN
    run_ticks(monitor, clock, 1)
    assert sup.restarts == ["not responding"]


def test_slow_is_unhealthy_and_never_restarted():
    monitor, sup, clock = make([SLOW] * 20)
    run_ticks(monitor, clock, 20)
    assert monitor.snapshot().health is Health.UNHEALTHY
    assert sup.restarts == []


def test_crash_loop_gives_up_after_the_attempts_and_waits_long():
    monitor, sup, clock = make([REFUSED] * 50)
    sup.restart_errors = [StartFailed("Ollama exited at once (status 1): boom")] * 10
    due = clock.now
    while monitor.state is not MonitorState.FAILED:
        clock.now = max(clock.now, due)
        due = monitor.tick()
    assert len(sup.restarts) == 3
    assert clock.now - 1000.0 < 10  # 0 s, 1 s, 2.3 s after the first failure
    status = monitor.snapshot()
    assert status.state is MonitorState.FAILED and status.cloud_active is True
    assert status.health is Health.DOWN
    clock.now = due
    due = monitor.tick()  # one more check confirms it is still down: now the long wait
    assert len(sup.restarts) == 3
    assert due - clock.now >= 300 * 0.9  # the slow retry, not a storm
    assert [e.kind for e in monitor.history.events()].count("gave_up") == 1


def test_a_foreign_process_on_the_port_is_not_retried_quickly():
    monitor, sup, clock = make([REFUSED] * 10)
    sup.restart_errors = [PortInUse("port 11434 is in use by nginx (pid 9)")]
    due = run_ticks(monitor, clock, 2)
    assert sup.restarts == ["down"]
    assert monitor.state is MonitorState.FAILED
    assert due >= clock.now + 270
    assert monitor.snapshot().last_error == "port 11434 is in use by nginx (pid 9)"


def test_after_a_sleep_the_first_failure_is_rechecked_before_restarting():
    monitor, sup, clock = make([OK, REFUSED, REFUSED])
    monitor.tick()
    clock.now += 3600  # the laptop slept
    due = monitor.tick()
    assert sup.restarts == []
    clock.now = due
    monitor.tick()
    assert sup.restarts == ["down"]


def test_user_stop_sticks():
    monitor, sup, clock = make([OK])
    monitor.tick()
    assert monitor._run_command("stop") == "Ollama stopped"
    assert sup.stops == 1 and sup.user_stop.is_set()
    sup.client.answering = None
    sup.client.probes = [REFUSED] * 10
    run_ticks(monitor, clock, 5)
    assert sup.restarts == []
    assert monitor.snapshot().state is MonitorState.STOPPED


def test_started_outside_after_a_user_stop_is_adopted():
    monitor, sup, clock = make([])
    monitor._run_command("stop")
    sup.client.answering = True
    monitor.tick()
    assert monitor.state is MonitorState.RUNNING and not sup.user_stop.is_set()


def test_a_crash_of_our_server_is_handled_before_the_next_tick():
    monitor, sup, clock = make([REFUSED])
    monitor._handle_crash(-9)
    assert monitor.snapshot().last_error == "Ollama exited unexpectedly (status -9)"
    assert [e.kind for e in monitor.history.events()] == ["crash"]


def test_a_crash_seen_first_by_a_failing_probe_is_still_a_crash():
    monitor, sup, clock = make([REFUSED])
    sup.exit_code = -9  # died mid-probe; the exit watcher has not woken the loop yet
    monitor.tick()
    assert [e.kind for e in monitor.history.events()].count("crash") == 1
    assert sup.restarts == ["down"]
    assert sup.take_exit() is None  # reported once


def test_stable_health_resets_the_attempts():
    monitor, sup, clock = make([REFUSED] + [OK] * 30)
    run_ticks(monitor, clock, 1)
    assert monitor.policy.attempts == 1
    run_ticks(monitor, clock, 25)  # 25 ticks x 30 s > 600 s of health
    assert monitor.policy.attempts == 0


def test_a_new_server_the_manager_did_not_start_is_an_unexpected_restart():
    monitor, sup, clock = make([OK, OK])
    run_ticks(monitor, clock, 1)
    sup.server = ProcessRef(2, 5.0)  # someone else restarted Ollama
    clock.now += 30
    monitor.tick()
    events = [e for e in monitor.history.events() if e.kind == "unexpected_restart"]
    assert [e.data for e in events] == [{"old_pid": 1, "new_pid": 2}]
    assert list(monitor.duties.restart_times) == [clock.now]


def test_our_own_restart_is_not_unexpected():
    monitor, sup, clock = make([OK, REFUSED, OK])
    run_ticks(monitor, clock, 1)
    sup.server = ProcessRef(3, 7.0)  # what our restart will bring up
    run_ticks(monitor, clock, 2)
    assert sup.restarts == ["down"]
    assert [e.kind for e in monitor.history.events()].count("unexpected_restart") == 0


def test_health_down_raises_an_alert_once_and_clears_it():
    monitor, sup, clock = make([TIMEOUT] * 3 + [OK] * 3)
    run_ticks(monitor, clock, 6)
    alerts = [(e.data["kind"], e.data["state"]) for e in monitor.history.events() if e.kind == "alert"]
    assert alerts == [("health", "raised"), ("health", "cleared")]


OOM = ProbeResult(
    False,
    0.2,
    "inference",
    Failure.HTTP_ERROR,
    "model requires more system memory (8.0 GiB) than is available (4.0 GiB)",
)


def test_an_out_of_memory_error_restarts_a_server_the_manager_started_with_a_smaller_context():
    monitor, sup, clock = make([OOM])
    run_ticks(monitor, clock, 1)
    assert sup.restarts == ["out of memory: smaller context"]
    assert sup.started_overlay == {"OLLAMA_CONTEXT_LENGTH": "2048"}
    assert [e.message for e in monitor.history.events() if e.kind == "oom"] == [
        "Ollama ran out of memory: Ollama restarts with OLLAMA_CONTEXT_LENGTH=2048 as soon as nothing runs on it",
        "Context window reduced to 2048 tokens: Ollama restarted with OLLAMA_CONTEXT_LENGTH=2048",
    ]
    restart = [e for e in monitor.history.events() if e.kind == "restart"][-1]
    assert restart.data == {"reason": "out of memory: smaller context", "ok": True}
    assert monitor.policy.attempts == 0  # a change of settings, not a failure: no restart attempt is spent


def test_the_ladder_and_what_it_changed_outlive_a_restart_of_the_app(tmp_path):
    paths = AppPaths(*(tmp_path / d for d in ("config", "log", "data", "state")))
    monitor, sup, clock = make([OOM], paths)
    run_ticks(monitor, clock, 1)
    assert sup.started_overlay == {"OLLAMA_CONTEXT_LENGTH": "2048"}
    monitor.models.parameter_overrides = {"num_ctx": 2048}  # as a rebuild for the Modelfile model leaves it
    monitor.duties._save_ladder()

    again, sup_again, _ = make([OK], paths)  # the app starts again
    assert sup_again.env_overlay == {"OLLAMA_CONTEXT_LENGTH": "2048"}  # its first start keeps the smaller context
    assert again.models.parameter_overrides == {"num_ctx": 2048}  # the keeper builds the model as it was
    assert again.duties.oom.level == 1 and again.duties.oom.current.num_ctx == 2048


def test_an_unreadable_saved_ladder_is_ignored(tmp_path, caplog):
    paths = AppPaths(*(tmp_path / d for d in ("config", "log", "data", "state")))
    paths.state_dir.mkdir(parents=True)
    paths.oom_ladder_file.write_text('{"ladder": {"taken": "sideways"}}')
    monitor, sup, clock = make([OK], paths)
    assert monitor.duties.oom.level == 0 and sup.env_overlay == {}
    assert "not a saved out-of-memory ladder" in caplog.text


def test_the_restart_waits_until_no_model_build_runs_on_the_server():
    monitor, sup, clock = make([OOM])
    monitor.models._busy.set()
    run_ticks(monitor, clock, 3)
    assert sup.restarts == []
    assert [e.message for e in monitor.history.events() if e.kind == "oom"] == [
        "Ollama ran out of memory: Ollama restarts with OLLAMA_CONTEXT_LENGTH=2048 as soon as nothing runs on it"
    ]
    monitor.models._busy.clear()
    run_ticks(monitor, clock, 1)
    assert sup.restarts == ["out of memory: smaller context"]


def test_an_out_of_memory_error_on_a_systemd_server_suggests_the_change_and_restarts_nothing():
    monitor, sup, clock = make([OOM], auto_build_model=False)
    sup.managed_by = "systemd"
    run_ticks(monitor, clock, 3)
    assert sup.restarts == [] and sup.env_overlay == {}
    assert [e.message for e in monitor.history.events() if e.kind == "oom"] == [
        "Ollama ran out of memory. The systemd service ollama.service keeps its own settings: to use a context "
        "window of 2048 tokens, set OLLAMA_CONTEXT_LENGTH=2048 in the server's environment "
        "(sudo systemctl edit ollama, then sudo systemctl restart ollama)"
    ]


def test_a_suspend_the_monotonic_clock_did_not_see_is_a_wake_too():
    monitor, sup, clock = make([OK, REFUSED, REFUSED])
    wall = [5000.0]
    monitor.wall_clock = lambda: wall[0]
    monitor.tick()
    clock.now += 30
    wall[0] += 30 + 7200  # two hours asleep, invisible to the monotonic clock
    monitor.tick()
    assert sup.restarts == []
    assert [e.kind for e in monitor.history.events()].count("resume") == 1


def test_a_stuck_subscriber_never_blocks_the_health_checks():
    monitor, sup, clock = make([OK] * 5)
    release = threading.Event()
    seen = []

    def stuck(status):
        seen.append(status.health)
        release.wait(10)

    delivered = threading.Event()
    fresh = []
    unsubscribe = monitor.subscribe(stuck)
    monitor.subscribe(lambda status: (fresh.append(status.health), delivered.set()))
    run_ticks(monitor, clock, 5)  # returns although the first subscriber is stuck
    assert delivered.wait(5) and fresh[-1] is Health.HEALTHY
    release.set()
    unsubscribe()


# --------------------------------------------------------------------------- busy is not hung


class FakeCpu:
    """CPU seconds of the runners, advanced by the test; None for a process the OS hides."""

    def __init__(self, runner: ProcessRef) -> None:
        self.runner = runner
        self.seconds: float | None = 1.0

    def __call__(self, refs):
        return {ref: self.seconds for ref in refs if ref == self.runner}


def make_busy(paths=None, gateway=None, **config):
    """The inference probe on, llama3 installed and loaded, one runner whose CPU time the test sets."""
    monitor, sup, clock = make([], paths, gateway, **{"health_probe": "inference", "ollama_model": "llama3", **config})
    sup.client.loaded = ["llama3:latest"]
    runner = ProcessRef(50, 1.0)
    sup.runners = {runner}
    cpu = FakeCpu(runner)
    monitor.read_cpu_seconds = cpu
    return monitor, sup, clock, cpu


class FakeGateway:
    def __init__(self) -> None:
        self.activity = SimpleNamespace(in_flight={}, waiting=0, last_progress=None)

    def local_activity(self):
        return self.activity

    def snapshot(self):
        return GatewayStatus("closed", "", None, False, False, None, None, 0, 0, None, "http://127.0.0.1:11434")

    def fallback_usage(self):
        return None


def test_an_idle_loaded_model_gets_the_inference_probe_without_options():
    monitor, sup, clock, cpu = make_busy()
    monitor.tick()
    assert monitor.inference_count == 1
    assert sup.client.inference_timeouts == [5]  # the probe gives up after health_check_timeout
    status = monitor.snapshot()
    assert status.health is Health.HEALTHY and status.busy is None


def test_the_probe_never_loads_a_model_that_is_not_loaded():
    monitor, sup, clock, cpu = make_busy()
    sup.client.loaded = []  # unloaded by the user, or evicted by Ollama
    run_ticks(monitor, clock, 5)
    assert monitor.inference_count == 0
    assert monitor.probe_choice.reason == "the model is not loaded (the probe never loads it)"
    assert monitor.snapshot().health is Health.HEALTHY


def test_a_runner_burning_cpu_is_busy_and_gets_no_probe():
    monitor, sup, clock, cpu = make_busy()
    due = monitor.tick()  # idle: probed, and the CPU baseline is taken
    for _ in range(30):  # a long generation: the runner works between every two checks
        cpu.seconds += 3.0
        clock.now = due
        due = monitor.tick()
    status = monitor.snapshot()
    assert monitor.inference_count == 1
    assert status.health is Health.HEALTHY and sup.restarts == []
    assert status.busy == BusyStatus(
        model="llama3:latest",
        requests=None,
        waiting=None,
        since_seconds=29 * 30.0,  # since the first check that saw the work
        progress_seconds_ago=0.0,
        source=BusySource.RUNNER,
        stuck=False,
    )
    clock.now = due
    monitor.tick()  # the runner is done: idle again, probed again
    assert monitor.snapshot().busy is None and monitor.inference_count == 2


def test_a_probe_waiting_behind_a_generation_is_busy_not_a_timeout():
    monitor, sup, clock, cpu = make_busy()
    cpu.seconds = None  # the OS hides the runner's CPU time (another user's server on macOS)
    sup.client.inference = [INFERENCE_TIMEOUT] * 20
    run_ticks(monitor, clock, 20)  # the old rule restarted after 4 timeouts
    status = monitor.snapshot()
    assert sup.restarts == []
    assert status.health is Health.HEALTHY and status.latency_ms == 50
    assert status.busy.source is BusySource.PROBE and status.busy.model == "llama3"
    assert status.busy.progress_seconds_ago is None
    assert monitor.timeouts.count == 0


def test_a_probe_timeout_with_the_http_layer_silent_too_is_a_hang():
    monitor, sup, clock, cpu = make_busy()
    sup.client.inference = [INFERENCE_TIMEOUT] * 4
    sup.client.pings = [TIMEOUT] * 4
    run_ticks(monitor, clock, 3)
    assert sup.restarts == [] and monitor.snapshot().health is Health.DOWN
    run_ticks(monitor, clock, 1)
    assert sup.restarts == ["not responding"]


def test_a_serve_that_stops_answering_is_restarted_even_while_busy():
    gateway = FakeGateway()
    monitor, sup, clock, cpu = make_busy(gateway=gateway)
    gateway.activity = SimpleNamespace(in_flight={"llama3": 1}, waiting=1, last_progress=None)
    monitor.tick()
    assert monitor.snapshot().busy.source is BusySource.GATEWAY
    sup.client.probes = [TIMEOUT] * 4
    run_ticks(monitor, clock, 4)
    assert sup.restarts == ["not responding"]
    assert monitor.snapshot().busy is None


def test_the_gateway_in_flight_requests_are_busy_and_skip_the_probe():
    gateway = FakeGateway()
    monitor, sup, clock, cpu = make_busy(gateway=gateway)
    gateway.activity = SimpleNamespace(in_flight={"llama3": 2, "phi3": 1}, waiting=1, last_progress=clock.now - 4)
    monitor.tick()
    assert monitor.inference_count == 0
    assert monitor.snapshot().busy == BusyStatus(
        model="llama3",
        requests=3,
        waiting=1,
        since_seconds=0.0,
        progress_seconds_ago=None,  # that byte came before this busy spell was first seen
        source=BusySource.GATEWAY,
        stuck=False,
    )


def test_runner_cpu_from_the_gateways_own_finished_requests_is_not_busy():
    gateway = FakeGateway()
    monitor, sup, clock, cpu = make_busy(gateway=gateway)
    due = monitor.tick()  # idle: the CPU baseline is taken
    clock.now = due
    gateway.activity = SimpleNamespace(in_flight={}, waiting=0, last_progress=clock.now - 1)  # done a second ago
    cpu.seconds += 2.0
    monitor.tick()
    assert monitor.snapshot().busy is None  # the gateway's next request keeps its first-byte budget


def test_runner_cpu_with_no_gateway_bytes_since_the_last_check_is_someone_elses_work():
    gateway = FakeGateway()
    monitor, sup, clock, cpu = make_busy(gateway=gateway)
    due = monitor.tick()
    gateway.activity = SimpleNamespace(in_flight={}, waiting=0, last_progress=clock.now - 1)  # before that check
    clock.now = due
    cpu.seconds += 2.0
    monitor.tick()
    busy = monitor.snapshot().busy
    assert busy is not None and busy.source is BusySource.RUNNER


def stuck_alerts(monitor):
    return [
        (e.data["state"], e.message)
        for e in monitor.history.events()
        if e.kind == "alert" and e.data["kind"] == "stuck_runner"
    ]


def test_a_frozen_runner_raises_the_stuck_alert_then_restarts_once():
    monitor, sup, clock, cpu = make_busy(stuck_runner_timeout=60)
    monitor.tick()  # idle and probed; then the runner freezes (SIGSTOP): its CPU time stands still
    sup.client.inference = [INFERENCE_TIMEOUT] * 50
    due = monitor.tick()
    while not sup.restarts:
        clock.now = due
        due = monitor.tick()
        assert clock.now < 1000 + 300
    assert sup.restarts == ["stuck runner"]
    raised = stuck_alerts(monitor)
    assert len(raised) == 1 and raised[0][0] == "raised"
    assert "Ollama has been busy on 'llama3' for" in raised[0][1] and "no progress seen" in raised[0][1]
    restart = [e for e in monitor.history.events() if e.kind == "restart"][-1]
    assert restart.data["reason"] == "stuck runner"
    assert monitor.snapshot().busy is None


def test_a_stuck_runner_without_readable_cpu_time_is_an_alert_never_a_restart():
    monitor, sup, clock, cpu = make_busy(stuck_runner_timeout=60)
    cpu.seconds = None
    sup.client.inference = [INFERENCE_TIMEOUT] * 40
    run_ticks(monitor, clock, 40)
    assert sup.restarts == []
    assert [state for state, _ in stuck_alerts(monitor)] == ["raised"]
    assert monitor.snapshot().busy.stuck is True
    sup.client.inference = []  # it answers again: progress, the alert clears once
    run_ticks(monitor, clock, 3)
    assert [state for state, _ in stuck_alerts(monitor)] == ["raised", "cleared"]
    assert monitor.snapshot().busy is None


def test_a_long_generation_through_the_gateway_is_never_stuck():
    gateway = FakeGateway()
    monitor, sup, clock, cpu = make_busy(stuck_runner_timeout=60, gateway=gateway)
    cpu.seconds = None
    due = clock.now
    for _ in range(40):  # 20 min of tokens flowing
        clock.now = due
        gateway.activity = SimpleNamespace(in_flight={"llama3": 1}, waiting=0, last_progress=clock.now - 1)
        due = monitor.tick()
    assert monitor.snapshot().busy.stuck is False
    assert stuck_alerts(monitor) == [] and sup.restarts == []


def test_a_dropped_test_prompt_with_the_server_answering_is_unhealthy_not_dead():
    monitor, sup, clock, cpu = make_busy()
    sup.client.inference = [ProbeResult(False, 0.1, "inference", Failure.REFUSED, "connection dropped")] * 3
    run_ticks(monitor, clock, 3)
    status = monitor.snapshot()
    assert sup.restarts == []
    assert status.health is Health.UNHEALTHY and status.last_error == "test prompt: connection dropped"


def test_a_dropped_test_prompt_with_the_server_gone_is_down():
    monitor, sup, clock, cpu = make_busy()
    sup.client.inference = [ProbeResult(False, 0.1, "inference", Failure.REFUSED, "connection dropped")]
    sup.client.pings = [REFUSED]
    monitor.tick()
    assert sup.restarts == ["down"]


class TimingClient(FakeClient):
    """A client whose answers take their latency on the monitor's clock, as real timeouts do."""

    clock: Clock | None = None

    def probe_api(self, timeout: float) -> tuple[ProbeResult, set[str] | None]:
        result, names = super().probe_api(timeout)
        assert self.clock is not None
        self.clock.now += result.latency
        return result, names


def test_a_hang_is_restarted_when_the_probe_timeout_is_longer_than_the_interval():
    """Probes that wait out 3 x 5 s are not a sleep of the machine, even at a 1 s interval."""
    monitor, sup, clock = make([], health_check_interval=1)
    sup.client = TimingClient(probes=[TIMEOUT] * 4)
    sup.client.clock = clock
    run_ticks(monitor, clock, 4)
    assert [e.kind for e in monitor.history.events()].count("resume") == 0
    assert sup.restarts == ["not responding"]


def test_an_out_of_memory_restart_waits_while_someone_generates(tmp_path):
    monitor, sup, clock, cpu = make_busy(AppPaths(*(tmp_path / d for d in ("config", "log", "data", "state"))))
    sup.paths.server_log.parent.mkdir(parents=True)
    sup.paths.server_log.write_text("")
    due = run_ticks(monitor, clock, 1)  # idle; the server log is read from here on
    with open(sup.paths.server_log, "a") as log:  # a load fails for lack of memory as a user's generation starts
        log.write(
            "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 4096.00 MiB on device 0: "
            "cudaMalloc failed: out of memory\n"
        )
    for _ in range(4):  # the generation runs: the runner works between the checks
        cpu.seconds += 3.0
        clock.now = due
        due = monitor.tick()
        assert monitor.snapshot().busy is not None
    assert [e.kind for e in monitor.history.events()].count("oom") == 1  # the step is decided...
    assert sup.restarts == []  # ...but nobody's generation is cut off for it
    clock.now = due
    monitor.tick()  # the generation is over
    assert sup.restarts == ["out of memory: smaller context"]


def test_a_leak_restart_waits_while_someone_generates():
    monitor, sup, clock, cpu = make_busy()
    due = run_ticks(monitor, clock, 1)
    upkeep = monitor.duties.after_tick
    asks = iter([True])  # the leak alert is raised once, with alerts.leak_restart on

    def after_tick(*args, **kwargs):
        return replace(upkeep(*args, **kwargs), leak_restart=next(asks, False))

    monitor.duties.after_tick = after_tick
    for _ in range(3):
        cpu.seconds += 3.0
        clock.now = due
        due = monitor.tick()
    assert sup.restarts == []
    clock.now = due
    monitor.tick()
    assert sup.restarts == ["memory leak detected"]


# --------------------------------------------------------------------------- after a wake


GIB = 2**30


def memory_sample(rss_bytes: int) -> ResourceSample:
    return ResourceSample(
        taken_at=0.0,
        server_pid=1,
        tree_pids=(1,),
        tree_rss_bytes=rss_bytes,
        tree_cpu_percent=1.0,
        tree_gpu_memory_bytes=None,
        ram_total_bytes=16 * GIB,
        ram_used_bytes=8 * GIB,
        cpu_percent=5.0,
        gpu_available=False,
        gpus=(),
        disk_free_bytes=None,
        disk_total_bytes=None,
    )


class FakeSampler:
    """Ollama's process tree holding ``rss_bytes`` of memory."""

    def __init__(self, rss_bytes: int) -> None:
        self.rss_bytes = rss_bytes

    def sample(self, server_pid, descendants=None):
        return memory_sample(self.rss_bytes)


def memory_alerts(monitor):
    return [e.data["state"] for e in monitor.history.events() if e.kind == "alert" and e.data["kind"] == "memory"]


def test_what_looked_wrong_right_after_a_wake_is_checked_again_soon_and_then_alerted():
    monitor, sup, clock = make([OK] * 4)  # memory_mb limit 6144
    monitor.sampler = FakeSampler(7 * GIB)
    monitor.tick()  # the first high reading waits for a second one
    clock.now += 3600  # the laptop slept; memory is still high after waking
    due = monitor.tick()
    assert due == clock.now + RECHECK_SECONDS  # not the 30 s interval: the alert engine asked to look again
    assert memory_alerts(monitor) == []  # nothing is raised from the first look after a wake
    clock.now = due
    assert monitor.tick() == clock.now + 30
    assert memory_alerts(monitor) == ["raised"]


def test_a_wake_with_nothing_wrong_keeps_the_interval():
    monitor, sup, clock = make([OK] * 2)
    monitor.sampler = FakeSampler(1 * GIB)
    monitor.tick()
    clock.now += 3600
    assert monitor.tick() == clock.now + 30


# --------------------------------------------------------------------------- settings saved on the dashboard


def test_a_longer_interval_saved_on_the_settings_page_is_taken_on_the_monitor_thread_and_alerts_still_fire(
    tmp_path,
):
    from starlette.testclient import TestClient

    from tray.dashboard.routes import Dashboard, mount_dashboard
    from tray.web.status_api import build_app

    config_path = tmp_path / "config.toml"
    config_path.write_text("health_check_interval = 30\n")
    monitor, sup, clock = make([OK] * 10)
    monitor.sampler = FakeSampler(1 * GIB)
    taken_on = []
    use_settings = monitor._use_settings

    def recording(config):
        taken_on.append(threading.current_thread().name)
        return use_settings(config)

    monitor._use_settings = recording
    dashboard = Dashboard(monitor, monitor.history, "token", config_path=config_path, env={})
    app = mount_dashboard(build_app(monitor, monitor.history, "token"), dashboard)
    client = TestClient(app, base_url="http://127.0.0.1:11436", client=("127.0.0.1", 50123))
    monitor.start()  # checks once at once, then waits for the next check or a command
    try:
        answer = client.post(
            "/api/settings",
            json={"values": {"health_check_interval": 300}},
            headers={"Authorization": "Bearer token"},
        ).json()
    finally:
        monitor.stop()
        dashboard.close()
    assert answer["applies"]["now"] == ["health_check_interval"]
    assert taken_on == ["monitor"]
    assert monitor.config.health_check_interval == 300 and sup.config.health_check_interval == 300
    # Ollama's memory climbs past the limit; checks now come 300 s apart, which is no sleep of the machine:
    # the second high reading confirms the alert, with no re-probe in between.
    monitor.sampler = FakeSampler(7 * GIB)
    clock.now += 300
    dues = []
    for _ in range(3):
        dues.append(monitor.tick())
        clock.now = dues[-1]
    assert dues == [1600.0, 1900.0, 2200.0]
    assert [e.kind for e in monitor.history.events()].count("resume") == 0
    assert memory_alerts(monitor) == ["raised"]


def test_a_running_monitor_is_not_given_a_command_only_key_the_settings_page_was_sent(tmp_path):
    from starlette.testclient import TestClient

    from tray.dashboard.routes import Dashboard, mount_dashboard
    from tray.web.status_api import build_app

    config_path = tmp_path / "config.toml"
    config_path.write_text("health_check_interval = 30\n")
    monitor, sup, _ = make([OK] * 10)
    before = (monitor.config, sup.config)
    dashboard = Dashboard(monitor, monitor.history, "token", config_path=config_path, env={})
    app = mount_dashboard(build_app(monitor, monitor.history, "token"), dashboard)
    client = TestClient(app, base_url="http://127.0.0.1:11436", client=("127.0.0.1", 50123))
    monitor.start()
    try:
        answer = client.post(
            "/api/settings",
            json={"values": {"ollama_server.expose": True, "ollama_server.keep_alive": "1h"}},
            headers={"Authorization": "Bearer token"},
        )
        monitor.request("check").result(timeout=10)  # anything handed to the monitor's thread is taken by now
    finally:
        monitor.stop()
        dashboard.close()
    assert answer.status_code == 403
    assert answer.json()["error"].endswith(f"--config {config_path} config set ollama_server.expose true")
    assert (monitor.config, sup.config) == before
    assert config_path.read_text() == "health_check_interval = 30\n"


def test_new_settings_rebuild_what_derives_from_them():
    monitor, sup, clock = make([OK])
    changed = Config(
        **{
            **monitor.config.__dict__,
            "auto_restart_attempts": 5,
            "stuck_runner_timeout": 45,
            "health_check_interval": 120,
            "alerts": AlertSettings(memory_mb=1024),
        }
    )
    future = monitor.apply_settings(changed)
    assert not future.done()  # queued for the monitor thread
    monitor._drain_commands()
    assert future.result(0) == "settings in use"
    assert (monitor.config, sup.config, monitor.models.config, monitor.duties.config) == (changed,) * 4
    assert monitor.policy.max_attempts == 5 and monitor.snapshot().restart_attempts_max == 5
    assert monitor.busy_tracker.stuck_after == 45
    assert monitor.duties.alerts.thresholds.memory_mb == 1024
    assert monitor.duties.alerts.interval_seconds == 120 + 3 * 5


@pytest.mark.process
def test_a_unit_stuck_restarting_is_given_up_on_once_with_the_command_that_shows_why(monkeypatch):
    monitor, sup, clock = make([REFUSED] * 40, startup_timeout=20, auto_build_model=False)
    unit = SystemdService("ollama.service")
    sup.external, sup.managed_by = unit, "systemd"
    # systemd's view: restarting, and "active" for a moment each time the server starts and exits again
    states = itertools.cycle(["activating", "active", "activating"])
    monkeypatch.setattr("tray.service.monitor.systemd_active_state", lambda service: next(states))
    journal = ["Started ollama.service.", "Error: mkdir /srv/models: permission denied", "ollama.service: Main …"]
    monkeypatch.setattr("tray.service.monitor.read_journal", lambda service, lines: journal)

    run_ticks(monitor, clock, 10)  # 18 s: systemd is restarting it, as it does after a crash
    assert monitor.state is MonitorState.RUNNING
    assert not [e for e in monitor.history.events() if e.kind == "gave_up"]

    due = run_ticks(monitor, clock, 20)  # well past the startup timeout: stuck in a restart loop
    given_up = [e for e in monitor.history.events() if e.kind == "gave_up"]
    assert [e.message for e in given_up] == [
        "Ollama does not answer and the systemd service ollama.service has been restarting for 22 s: it keeps "
        "exiting as it starts (Error: mkdir /srv/models: permission denied); "
        "see why with `journalctl -u ollama.service -n 50`"
    ]
    status = monitor.snapshot()
    assert (status.state, status.last_error, status.cloud_active) == (MonitorState.FAILED, given_up[0].message, True)
    assert due == clock.now + 30  # watched at the normal interval, not every 2 s
    assert sup.restarts == []  # a restart of ours would only join systemd's loop

    sup.client.probes = [OK]
    run_ticks(monitor, clock, 1)  # the unit came up after all
    assert (monitor.state, monitor.last_error) == (MonitorState.RUNNING, None)


def test_an_active_unit_whose_watched_server_refuses_is_restarted(monkeypatch):
    monitor, sup, clock = make([REFUSED])
    sup.external, sup.managed_by = SystemdService("ollama.service"), "systemd"
    sup.server = ProcessRef.of(psutil.Process())  # alive: not a server systemd just started
    monkeypatch.setattr("tray.service.monitor.systemd_active_state", lambda service: "active")
    monitor.tick()
    assert sup.restarts == ["down"]


# --------------------------------------------------------------------------- supervision never stops silently


class ExplodingClient(FakeClient):
    """Raises from the health probe while ``failures`` lasts: a bug in a check, not an answer of Ollama."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0

    def probe_api(self, timeout: float) -> tuple[ProbeResult, set[str] | None]:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ZeroDivisionError("float division by zero")
        return super().probe_api(timeout)


def test_an_exception_in_a_check_is_an_error_event_and_the_checks_go_on():
    monitor, sup, clock = make([], auto_build_model=False)
    sup.client = ExplodingClient(failures=2)
    errors = threading.Semaphore(0)
    monitor.history.subscribe(lambda event: event.kind == "error" and errors.release())
    monitor.start()
    try:
        assert errors.acquire(timeout=10)  # the first check failed and said so
        assert monitor._thread.is_alive()
        assert monitor.snapshot().last_error == (
            "the health check failed (ZeroDivisionError: float division by zero); checking again in 30 s"
        )
        checked = threading.Event()
        monitor.subscribe(lambda status: status.health is Health.HEALTHY and checked.set())
        for _ in range(2):  # the failing check again (no second event), then a good one
            clock.now += 30
            monitor._wake.set()
            wait_until_calls(sup.client, sup.client.calls + 1)
        assert checked.wait(10)
        status = monitor.snapshot()
        assert status.supervising and status.last_error is None
    finally:
        monitor.stop()
    events = monitor.history.events()
    assert [event.kind for event in events].count("error") == 1
    assert "monitor stopped" in [event.message for event in events]


def wait_until_calls(client: ExplodingClient, calls: int) -> None:
    for _ in range(1000):
        if client.calls >= calls:
            return
        threading.Event().wait(0.01)
    pytest.fail(f"the monitor did not check again ({client.calls} checks, wanted {calls})")


def test_a_monitor_whose_loop_ended_says_it_no_longer_supervises():
    monitor, sup, clock = make([OK])
    monitor.tick()
    assert monitor.snapshot().health is Health.HEALTHY

    def broken_loop() -> None:
        raise SystemExit("the loop was torn down")  # nothing inside the loop catches this

    monitor._run = broken_loop
    seen = []
    monitor.subscribe(seen.append)
    thread = threading.Thread(target=monitor.run, name="monitor")
    monitor._thread = thread
    thread.start()
    thread.join(10)
    status = monitor.snapshot()
    assert (status.supervising, status.health) == (False, Health.UNKNOWN)
    assert status.last_error == "supervision stopped: SystemExit: the loop was torn down"
    assert status.to_json()["supervising"] is False
    assert [e.message for e in monitor.history.events() if e.kind == "error"] == [status.last_error]


def test_a_monitor_thread_that_died_unseen_is_not_reported_as_supervising():
    monitor, sup, clock = make([OK])
    monitor.tick()
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    monitor._thread = thread
    status = monitor.snapshot()
    assert (status.supervising, status.health) == (False, Health.UNKNOWN)
    assert status.last_error == "supervision stopped: the monitor thread ended"


# --- the active model ----------------------------------------------------------------------------


def test_a_switch_saves_the_choice_preloads_with_the_keep_alive_and_leaves_the_modelfile_model_to_the_keeper(
    tmp_path,
):
    config_file = tmp_path / "config.toml"
    config_file.write_text("# mine\nhealth_probe = 'inference'\n")
    server = OllamaServerSettings(keep_alive="1h")
    monitor, sup, clock = make([], ollama_model="llama3", ollama_server=server, source=str(config_file))
    sup.client.installed = ["llama3:latest", "mistral:latest"]
    monitor.tick()
    future = monitor.use_model("Mistral")
    monitor._drain_commands()
    assert future.result(0) == "Using mistral:latest"
    wait_until(lambda: sup.client.preloaded, 5, what="the preload")
    assert sup.client.preloaded == [("mistral:latest", "1h")]
    assert 'active_model = "mistral:latest"' in config_file.read_text() and "# mine" in config_file.read_text()
    status = monitor.snapshot()
    assert (status.model, status.modelfile_model, status.model_loaded) == ("mistral:latest", "llama3", "mistral:latest")
    assert monitor.models.config.ollama_model == "llama3"  # the keeper still keeps the Modelfile model
    assert monitor.modelfile_model_present is True

    refused = monitor.use_model("tinyllama")
    monitor._drain_commands()
    with pytest.raises(ModelChoiceError, match=r"^model tinyllama is not installed: run `ollama-manager model pull"):
        refused.result(0)
    assert monitor.model_in_use == "mistral:latest"

    back = monitor.use_model("llama3:latest")  # the Modelfile model by its full name
    monitor._drain_commands()
    assert back.result(0) == "Using llama3 (the Modelfile model)"
    assert monitor.active_model == "" and 'active_model = ""' in config_file.read_text()


def test_an_active_model_deleted_elsewhere_falls_back_with_one_event(tmp_path):
    config_file = tmp_path / "config.toml"
    history = History(None)
    monitor, sup, clock = make([], ollama_model="llama3", active_model="mistral:latest", source=str(config_file))
    monitor.history = history
    sup.client.installed = ["llama3:latest", "mistral:latest"]
    run_ticks(monitor, clock, 2)
    assert monitor.snapshot().model == "mistral:latest"
    sup.client.installed = ["llama3:latest"]
    run_ticks(monitor, clock, 4)
    assert monitor.snapshot().model == "llama3"
    missing = [e for e in history.events() if e.kind == EventKind.MODEL_MISSING]
    assert [e.message for e in missing] == [
        "the active model mistral:latest is no longer installed; using the Modelfile model llama3 again"
    ]
    assert not config_file.exists()  # ticks outside the running loop (a one-shot `status`) save nothing


def test_a_choice_saved_on_the_settings_page_switches_at_once():
    monitor, sup, clock = make([], ollama_model="llama3")
    sup.client.installed = ["llama3:latest", "mistral:latest"]
    monitor.apply_settings(replace(monitor.config, active_model="mistral:latest"))
    monitor._drain_commands()
    assert monitor.snapshot().model == "mistral:latest"
    wait_until(lambda: sup.client.preloaded, 5, what="the preload")
    assert sup.client.preloaded == [("mistral:latest", None)]  # no keep_alive set: the server's own


def test_the_oom_ladder_rebuilds_only_while_the_modelfile_model_is_active():
    monitor, sup, clock = make([], ollama_model="llama3", auto_build_model=True)
    sup.client.installed = ["llama3:latest", "mistral:latest"]
    effects = monitor.duties.oom_effects
    assert effects is not None
    assert (effects.situation().model, effects.situation().builds_model) == ("llama3", True)
    monitor.use_model("mistral")
    monitor._drain_commands()
    assert (effects.situation().model, effects.situation().builds_model) == ("mistral:latest", False)


@pytest.mark.parametrize(
    ("platform", "how"),
    [
        ("darwin", "launchctl setenv OLLAMA_CONTEXT_LENGTH 2048, then quit and reopen Ollama"),
        ("win32", "setx OLLAMA_CONTEXT_LENGTH 2048, then quit and reopen Ollama"),
    ],
)
def test_the_oom_ladder_tells_how_to_set_the_apps_variables_on_its_os(platform: str, how: str) -> None:
    monitor, sup, _clock = make([], auto_build_model=False)  # the model's own PARAMETER would come first
    sup.platform, sup.managed_by = platform, "ollama-app"
    effects = monitor.duties.oom_effects
    assert effects is not None
    text = describe_move(
        LadderMove.DOWN, OomStep.SMALLER_CONTEXT, OomSettings(), OomSettings(num_ctx=2048), effects.situation()
    )
    assert text.message == (
        "Ollama ran out of memory. The Ollama app keeps its own settings: to use a context window of 2048 tokens, "
        f"set OLLAMA_CONTEXT_LENGTH=2048 in the server's environment ({how})"
    )


@pytest.mark.parametrize(("platform", "place"), [("linux", Place.SERVER_ENV), ("darwin", Place.SUGGESTION)])
def test_the_oom_ladder_turns_the_gpu_off_by_variables_only_where_they_exist(platform: str, place: Place) -> None:
    monitor, sup, _clock = make([], auto_build_model=False)
    sup.platform = platform
    effects = monitor.duties.oom_effects
    assert effects is not None
    assert route("num_gpu", 0, effects.situation()) is place  # macOS: Metal, which no variable turns off
