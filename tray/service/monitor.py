"""The monitor: one background thread that owns the health-check loop.

It probes Ollama every ``health_check_interval`` seconds (sooner while
something is wrong): first the server's HTTP layer, then the inference probe
where :func:`~tray.core.health.choose_inference_probe` allows it. It measures
what Ollama is busy with (the gateway's requests, the runners' CPU time, a
probe left waiting), lets :mod:`tray.core.health` classify it, asks the
restart policy what to do, carries it out through the supervisor
(:class:`~tray.service.ports.SupervisorPort`), and publishes a
:class:`~tray.core.status.Status` to subscribers (tray, dashboard, gateway, status API).
Other threads never touch processes or the monitor's state: they queue an
action with :meth:`Monitor.request`, or new settings with
:meth:`Monitor.apply_settings`, and get a Future back. One exception: a
user's start, stop or restart of a systemd unit runs ``systemctl`` on a
thread of its own (polkit may ask for a password), and its outcome is handed
back to the monitor thread.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from tray.core.alerts import AlertKind
from tray.core.health import (
    DOWN_FACTOR,
    Busy,
    BusyEvidence,
    BusyTracker,
    Failure,
    GatewayActivity,
    Health,
    InferenceProbe,
    ProbeChoice,
    ProbeResult,
    TimeoutCounter,
    choose_inference_probe,
    classify,
    is_dead,
    runner_cpu_since,
)
from tray.core.names import same_model
from tray.core.restart import RestartPolicy, Verdict
from tray.core.status import (
    Activity,
    ActivityKind,
    BusyStatus,
    InstalledModelStatus,
    LoadedModelStatus,
    ModelInfo,
    ModelLoading,
    MonitorState,
    Status,
)
from tray.history import EventKind, History
from tray.models.keeper import JOBS as MODEL_JOBS
from tray.models.keeper import ModelKeeper
from tray.ollama.client import keep_alive_value
from tray.service.ports import GatewayFeed, SupervisorPort
from tray.service.supervisor import NotPermitted, SupervisorError, stop_message
from tray.service.upkeep import DaemonDuties, OomEffects
from tray.settings.config import Config, ConfigError
from tray.settings.server import systemd_dropin
from tray.settings.store import set_config_value
from tray.system.ollama_app import OllamaApp
from tray.system.owners import (
    SystemdService,
    read_journal,
    stuck_unit_line,
    systemd_active_state,
)
from tray.system.processes import ProcessRef, cpu_seconds, descendants_of
from tray.system.resources import ResourceSample, ResourceSampler

log = logging.getLogger(__name__)

RECHECK_SECONDS = 2.0  # probe cadence while something is wrong
WAKE_GAP_FACTOR = 3.0  # a tick gap this many intervals long means the machine slept
ACTIONS = ("start", "stop", "restart", "unload", "check", *MODEL_JOBS)
OWNER_ACTIONS = ("start", "stop", "restart")  # through systemd when a unit runs Ollama
ACTION_TEXT = {
    ActivityKind.START: "Starting Ollama",
    ActivityKind.STOP: "Stopping Ollama",
    ActivityKind.RESTART: "Restarting Ollama",
}

STOPPED_PROBE = ProbeResult(False, 0.0, "api", Failure.REFUSED, "stopped by the user")

LOAD_TICK_SECONDS = 1.0  # how often the elapsed time of a preload is published

Subscriber = Callable[[Status], None]
CpuReader = Callable[[Iterable[ProcessRef]], dict[ProcessRef, float | None]]
DescendantsReader = Callable[[ProcessRef], list[psutil.Process] | None]


@dataclass(frozen=True)
class UseModel:
    """The user's choice of the active model; ``name`` empty: the Modelfile model."""

    name: str


class ModelChoiceError(ValueError):
    """A model that cannot become the active one; ``str()`` is one line naming the command that helps."""


def not_installed_line(name: str) -> str:
    """The one line for a model that is not installed, with the command that installs it.

    >>> not_installed_line("mistral")
    'model mistral is not installed: run `ollama-manager model pull mistral`'
    """
    return f"model {name} is not installed: run `ollama-manager model pull {name}`"


class Monitor:
    """The health-check loop over one :class:`~tray.service.ports.SupervisorPort`.

    ``gateway``: the cloud-fallback gateway when it runs beside the monitor;
    its requests in flight are work in Ollama, its cloud share feeds the
    fallback alert, and its state goes into the status.
    """

    def __init__(
        self,
        supervisor: SupervisorPort,
        config: Config,
        history: History,
        *,
        gateway: GatewayFeed | None = None,
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.supervisor = supervisor
        self.gateway = gateway
        self.config = config
        self.history = history
        self.clock = clock
        self.wall_clock = wall_clock
        self.policy = policy or RestartPolicy(max_attempts=config.auto_restart_attempts, rng=random.Random())
        self.timeouts = TimeoutCounter(threshold=3)
        self.busy_tracker = BusyTracker(stuck_after=config.stuck_runner_seconds)
        self.read_cpu_seconds: CpuReader = cpu_seconds
        self.list_descendants: DescendantsReader = descendants_of
        self._server_tree: tuple[int, list[psutil.Process]] | None = None  # this check's look at the server's tree
        supervisor.subscribe_exit(self._on_server_exit)

        self._subscribers: list[_Mailbox] = []
        self._sub_lock = threading.Lock()
        self._commands: queue.Queue[tuple[str | Config | UseModel, concurrent.futures.Future[str]]] = queue.Queue()
        self._on_loop: queue.Queue[Callable[[], None]] = queue.Queue()  # work handed back to this thread
        self._told: set[str] = set()  # "not permitted" / "refused" messages already notified
        self._last_step_failure: str | None = None  # the error event of a failing check, recorded once
        self._halted: str | None = None  # why the loop ended without being asked to
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

        self.health = Health.UNKNOWN
        self.last_probe: ProbeResult | None = None
        self.last_error: str | None = None
        self.inference_count = 0
        self.model_present = False  # the active model is installed
        self.modelfile_model_present = False
        self.active_model = config.active_model  # empty: the Modelfile model
        self.installed_models: tuple[InstalledModelStatus, ...] = ()
        self._installed_names: set[str] | None = None
        self._loading: tuple[str, float] | None = None  # the model being preloaded, since (monotonic)
        self.state = MonitorState.STARTING
        self.activity: Activity | None = None
        self.next_retry_at: float | None = None
        self._last_tick: tuple[float, float, float] | None = None  # (monotonic end, wall end, next due)
        self.loaded_models: tuple[LoadedModelStatus, ...] = ()
        self.busy: Busy | None = None
        self.evidence: BusyEvidence | None = None  # this tick's, when the HTTP layer answered
        self.probe_choice: ProbeChoice | None = None
        self._cpu_baseline: dict[ProcessRef, float] | None = None
        self.sampler = ResourceSampler(supervisor.models_dir, clock=clock)
        self.sample: ResourceSample | None = None
        self.models = ModelKeeper(
            config,
            supervisor.host.url,
            supervisor.models_dir,
            supervisor.paths.state_dir,
            history,
            self._set_activity,
            clock,
        )
        oom_effects = OomEffects(config, history, supervisor, self.models)
        self.duties = DaemonDuties(
            config,
            history,
            lambda: supervisor.server_log,
            RECHECK_SECONDS,
            oom_effects,
            supervisor.paths.oom_ladder_file,
        )
        self._leak_restart_wanted = False  # until nothing runs on the server
        self._seen_server = supervisor.server
        self._restarting_ourselves = False
        self._unit_busy_since: float | None = None  # since when the server's unit restarts while nothing answers
        self._status = self._build_status()

    # ------------------------------------------------------------------ public, any thread

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Deliver every status change to ``callback`` on a thread of its own.

        A slow or stuck subscriber (a tray redraw waiting on the display) then
        delays only its own updates, never the health checks.
        """
        mailbox = _Mailbox(callback)
        with self._sub_lock:
            self._subscribers.append(mailbox)

        def unsubscribe() -> None:
            with self._sub_lock:
                if mailbox in self._subscribers:
                    self._subscribers.remove(mailbox)
            mailbox.close()

        return unsubscribe

    def snapshot(self) -> Status:
        status = self._status
        thread = self._thread
        if status.supervising and thread is not None and not thread.is_alive() and not self._stopping.is_set():
            # The loop ended without being asked to (killed by something no guard catches).
            return not_supervising(status, self._halted or "supervision stopped: the monitor thread ended")
        return status

    def request(self, action: str) -> concurrent.futures.Future[str]:
        """Queue a user action for the monitor thread; the Future's result is a one-line message."""
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        if action not in ACTIONS:
            future.set_exception(ValueError(f"unknown action {action!r}"))
            return future
        if action in MODEL_JOBS:
            return self.models.request(action)  # builds take minutes: the keeper's own thread
        self._commands.put((action, future))
        self._wake.set()
        return future

    @property
    def model_in_use(self) -> str:
        """The active model: the user's choice, else the Modelfile model."""
        return self.active_model or self.config.ollama_model

    def use_model(self, name: str) -> concurrent.futures.Future[str]:
        """Queue a switch of the active model (``name`` empty: the Modelfile model); the result is one line.

        The choice is saved in the settings file, and the model preloaded with the configured keep-alive.
        """
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._commands.put((UseModel(name.strip()), future))
        self._wake.set()
        return future

    def apply_settings(self, config: Config) -> concurrent.futures.Future[str]:
        """Queue new settings for the monitor thread, which uses them (and what derives from them) from then on.

        The Future's result is a one-line message once they are in use; the
        address and the models folder stay as they were (they need the app restarted).
        """
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._commands.put((config, future))
        self._wake.set()
        return future

    def check_once(self) -> Status:
        """Probe once and return the status, acting on nothing (for a one-shot ``status``)."""
        result = self.probe()
        self._observe(result, self.clock())
        self.state = MonitorState.RUNNING if result.ok or self.supervisor.answers() else MonitorState.STOPPED
        self._publish()
        return self.snapshot()

    def start(self) -> None:
        self.models.start()
        self._thread = threading.Thread(target=self.run, name="monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.models.stop()

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - the thread ends here either way; the status must say so
            # Past the per-step guard: only a failure of the loop itself. Say so rather than show a stale status.
            self._stopped_supervising(exc)

    def _run(self) -> None:
        self.history.record(EventKind.MONITOR, "monitor started")
        next_check = self.clock()
        if self.supervisor.user_stop.is_set():
            self.state = MonitorState.STOPPED
        else:
            self._guarded(self._initial_start)
        while not self._stopping.is_set():
            self._wake.wait(timeout=max(0.0, next_check - self.clock()))
            self._wake.clear()
            if self._stopping.is_set():
                break
            next_check = self._guarded(functools.partial(self._loop_step, next_check))
        self._fail_pending("the monitor is shutting down")
        self.duties.close()
        self.history.record(EventKind.MONITOR, "monitor stopped")

    def _loop_step(self, next_check: float) -> float:
        """Queued commands, a server that exited, and the check when it is due; when the next check is due."""
        ran_command = self._drain_commands()
        code = self.supervisor.take_exit()
        if code is not None:
            self._handle_crash(code)
            next_check = self.clock()
        if ran_command or self.clock() >= next_check:
            next_check = self.tick()
        return next_check

    def _guarded(self, step: Callable[[], float | None]) -> float:
        """Run one step of the loop; an exception in it is an ``error`` event and a later check, never the end.

        The same failure at each check is recorded once, until a check passes again.
        """
        try:
            due = step()
        except Exception as exc:
            log.exception("a health check failed")
            retry = max(self.config.health_check_interval, RECHECK_SECONDS)
            message = f"the health check failed ({type(exc).__name__}: {exc}); checking again in {retry:g} s"
            self.last_error = message
            if message != self._last_step_failure:
                self._last_step_failure = message
                self.history.record(EventKind.ERROR, message)
            self._publish()
            return self.clock() + retry
        self._last_step_failure = None
        return self.clock() if due is None else due

    def _stopped_supervising(self, exc: BaseException) -> None:
        log.error("the monitor stopped: %s", exc, exc_info=exc)
        self._halted = f"supervision stopped: {type(exc).__name__}: {exc}"
        try:
            self.history.record(EventKind.ERROR, self._halted)
        except Exception:  # the status below still says it
            log.exception("could not record that the monitor stopped")
        self._publish()

    def _initial_start(self) -> None:
        try:
            self._set_activity(ActivityKind.START, "Starting Ollama")
            outcome = self.supervisor.start(reason="startup")
            self.history.record(EventKind.HEALTH, outcome.describe(self.supervisor.host.url))
            self.state = MonitorState.RUNNING
        except SupervisorError as exc:
            self._start_error(exc)
        finally:
            self._set_activity(None)

    def tick(self) -> float:
        """One health check and what follows from it; returns when the next check is due."""
        now = self.clock()
        due = self._tick(now, resumed=self._slept(now))
        self._last_tick = (self.clock(), self.wall_clock(), due)
        return due

    def _slept(self, now: float) -> bool:
        """Did the machine sleep since the last check (the check ran far later than planned)?

        A check that itself ran past the next one's due time (a probe waiting
        out its timeout) is not a sleep: lateness counts from when it ended.
        The monotonic clock stops during suspend on some systems, so time the
        wall clock saw and the monotonic clock did not counts as well.
        """
        if self._last_tick is None:
            return False
        ended, ended_wall, due = self._last_tick
        limit = WAKE_GAP_FACTOR * max(self.config.health_check_interval, RECHECK_SECONDS)
        unseen = (self.wall_clock() - ended_wall) - (now - ended)
        return now - max(due, ended) > limit or unseen > limit

    def _tick(self, now: float, resumed: bool) -> float:
        if self.state is MonitorState.STOPPED:
            return self._tick_while_user_stopped(now)
        if resumed:
            self.busy_tracker.reset()  # a gap in the observations breaks any chain of evidence
            self._cpu_baseline = None
        result = self.probe()
        self._observe(result, now)
        self.models.on_tick(now, result.ok, self.modelfile_model_present)
        wants = self.duties.after_tick(
            now,
            str(self.health),
            result,
            self.sample,
            model_status=self.models.status,
            fallback=self.gateway.fallback_usage() if self.gateway else None,
            busy=self.busy,
            busy_known=self.evidence is not None,
        )
        self._leak_restart_wanted = self._leak_restart_wanted or wants.leak_restart
        if self._leak_restart_wanted and self._nothing_running():  # never cut off someone's generation
            self._leak_restart_wanted = False
            return self._restart_if_allowed(now, "memory leak detected")
        if self._frozen_runner_restart_due():
            return self._restart_if_allowed(now, "stuck runner")
        if wants.oom_restart is not None and self._restart_for_oom_ladder(wants.oom_restart):
            return self.clock() + RECHECK_SECONDS
        if result.ok:
            self._unit_busy_since = None
            # After a wake, what looked wrong is checked again soon: that fresh look may raise its alert.
            settled = self.health is Health.HEALTHY and not wants.reprobe
            return now + (self.config.health_check_interval if settled else RECHECK_SECONDS)
        timeout_restart = self.timeouts.observe(result)
        code = self.supervisor.take_exit()
        if code is not None:  # it died during this probe, before the exit watcher woke us
            self._handle_crash(code)
        if not (is_dead(result) or timeout_restart):
            return now + RECHECK_SECONDS
        if resumed:
            # After a sleep, the first failure is re-checked before anything restarts.
            self.history.record(EventKind.RESUME, "machine woke from sleep; re-checking before acting")
            return now + RECHECK_SECONDS
        if self._user_stopped_through_owner():
            return now + self.config.health_check_interval
        owner = self.supervisor.external
        if is_dead(result) and isinstance(owner, SystemdService):
            state = systemd_active_state(owner)
            if state in ("activating", "deactivating") or (state == "active" and self._unit_started_another()):
                return self._wait_for_unit(now, owner, stopping=state == "deactivating")
        self._unit_busy_since = None
        return self._restart_if_allowed(now, "not responding" if timeout_restart else "down")

    def _unit_started_another(self) -> bool:
        """The unit is active, but the server watched is gone: systemd started another one, not answering yet.

        A unit restarting in a loop is "active" for a moment each time its server starts, and exits again.
        """
        server = self.supervisor.server
        return self._unit_busy_since is not None or server is None or not server.alive()

    def _wait_for_unit(self, now: float, owner: SystemdService, stopping: bool) -> float:
        """Leave a unit between a crash and its own restart to systemd, up to the startup timeout.

        Past it the unit is stuck (restarting in a loop, or not finishing a
        stop): given up, said once with the command that shows why, and no
        restart of ours, which would only join the loop.
        """
        if self._unit_busy_since is None:
            self._unit_busy_since = now
        waited = now - self._unit_busy_since
        if waited <= self.config.startup_timeout:
            return now + RECHECK_SECONDS
        if self.state is not MonitorState.FAILED:
            self.policy.give_up_now(now)
            self.state = MonitorState.FAILED
            self.last_error = stuck_unit_line(owner, stopping, round(waited), read_journal(owner, lines=50))
            self.history.record(EventKind.GAVE_UP, self.last_error, {"unit": owner.unit})
            self._publish()
        return now + self.config.health_check_interval

    def _tick_while_user_stopped(self, now: float) -> float:
        if self.supervisor.client.answers_as_ollama():
            # Someone (the user, or their own Ollama app) started it again: that is their word now.
            self.supervisor.user_stop.clear()
            self.supervisor.adopt()
            self.history.record(
                EventKind.ADOPT, f"Ollama was started outside the manager (pid {self.supervisor.pid}); watching it"
            )
            self.state = MonitorState.RUNNING
            self.policy.reset()
            return now
        self.health = Health.DOWN
        self.last_probe = STOPPED_PROBE
        self._publish()
        return now + self.config.health_check_interval

    def _frozen_runner_restart_due(self) -> bool:
        """The stuck-runner rule: restart only once the alert is out and the runner is provably frozen."""
        busy = self.busy
        return bool(busy and busy.frozen and AlertKind.STUCK_RUNNER in self.duties.alerts.active_kinds)

    def _user_stopped_through_owner(self) -> bool:
        """The user quit Ollama through its own app or systemctl: not a crash."""
        owner = self.supervisor.external
        stopped = False
        if isinstance(owner, OllamaApp):
            stopped = not owner.alive()
        elif isinstance(owner, SystemdService):
            stopped = systemd_active_state(owner) == "inactive"
        if stopped and owner is not None:
            self.supervisor.user_stop.set()
            how = f"Ollama was stopped through {owner.describe()}; not restarting it"
            self.history.record(EventKind.USER_STOP, how)
            self.supervisor.forget_server()
            self.state = MonitorState.STOPPED
            self._publish()
        return stopped

    def _restart_if_allowed(self, now: float, reason: str) -> float:
        decision = self.policy.decide(now)
        if decision.verdict is Verdict.GIVE_UP:
            self.state = MonitorState.FAILED
            self.history.record(
                EventKind.GAVE_UP,
                f"Ollama is down after {self.policy.attempts} restart attempts; "
                "using the cloud fallback and retrying rarely",
            )
            decision = self.policy.decide(now)
        if decision.verdict is Verdict.WAIT:
            self.next_retry_at = decision.at
            self._publish()
            return decision.at
        self.next_retry_at = None
        self._restart(now, reason, decision.attempt)
        return self.clock() + RECHECK_SECONDS

    def _restart(self, now: float, reason: str, attempt: int) -> None:
        self.policy.record_attempt(now)
        self.duties.note_restart(now)
        self._restarting_ourselves = True
        self.state = MonitorState.RESTARTING
        of = self.policy.max_attempts
        label = f"Restarting (attempt {attempt} of {of})" if attempt <= of else "Retrying Ollama"
        self._set_activity(ActivityKind.RESTART, label)
        try:
            outcome = self.supervisor.restart(reason=reason)
        except SupervisorError as exc:
            self.last_error = str(exc)
            if isinstance(exc, NotPermitted):
                self._tell_once(EventKind.NOT_PERMITTED, str(exc), {"reason": reason})
            else:
                self.history.record(
                    EventKind.RESTART, f"restart attempt {attempt} failed: {exc}", {"reason": reason, "ok": False}
                )
            if not exc.retryable:
                self.policy.give_up_now(self.clock())
                self.state = MonitorState.FAILED
            else:
                self.state = MonitorState.FAILED if self.policy.attempts >= of else MonitorState.RESTARTING
        else:
            self.timeouts.reset()
            self._forget_work()
            self.last_error = None
            self.state = MonitorState.RUNNING
            self.history.record(
                EventKind.RESTART,
                f"restart attempt {attempt} succeeded in {outcome.seconds:.1f} s (reason: {reason})",
                {"reason": reason, "ok": True, "attempt": attempt},
            )
        finally:
            self._set_activity(None)

    def _restart_for_oom_ladder(self, reason: str) -> bool:
        """Restart a server this app started so the OOM ladder's environment takes effect; True when it did."""
        if not self._nothing_running():
            return False
        self._restarting_ourselves = True
        self._set_activity(ActivityKind.RESTART, "Restarting Ollama with new memory settings")
        try:
            self.supervisor.restart(reason=reason)
        except SupervisorError as exc:
            self.last_error = str(exc)
            self.history.record(EventKind.RESTART, f"restart failed: {exc}", {"reason": reason, "ok": False})
        else:
            self.timeouts.reset()
            self.state = MonitorState.RUNNING
            self.history.record(EventKind.RESTART, f"Ollama restarted ({reason})", {"reason": reason, "ok": True})
        finally:
            self._set_activity(None)
        self.duties.oom_restart_done()
        return True

    def _nothing_running(self) -> bool:
        """Nothing uses the server right now: no model build or check of ours, and no one's generation."""
        return not self.models.busy and self.busy is None

    def _start_error(self, exc: Exception) -> None:
        self.last_error = str(exc)
        self.health = Health.DOWN
        retryable = isinstance(exc, SupervisorError) and exc.retryable
        if not retryable:
            self.policy.give_up_now(self.clock())
        self.state = MonitorState.FAILED if not retryable else MonitorState.RESTARTING
        if isinstance(exc, NotPermitted):
            self._tell_once(EventKind.NOT_PERMITTED, str(exc))
        else:
            self.history.record(EventKind.ERROR, str(exc))
        self._publish()

    def _tell_once(self, kind: EventKind, message: str, data: dict[str, Any] | None = None) -> None:
        """One event (so one notification) per distinct message: a refusal repeated at each retry is not news."""
        if message in self._told:
            return
        self._told.add(message)
        self.history.record(kind, message, data)

    def _on_server_exit(self, code: int) -> None:
        """Called from the watcher thread the moment a server we started exits: wake the loop."""
        self._wake.set()

    def _handle_crash(self, code: int) -> None:
        reaped = self.supervisor.reap_runners()
        self.last_error = f"Ollama exited unexpectedly (status {code})"
        self.history.record(
            EventKind.CRASH,
            f"Ollama exited unexpectedly (status {code}); reaped {len(reaped)} orphaned runner(s)",
            {"code": code, "runners_reaped": reaped},
        )
        self.health = Health.DOWN
        self.last_probe = ProbeResult(False, 0.0, "api", Failure.EXITED, self.last_error)
        self._publish()

    # ------------------------------------------------------------------ probing

    def probe(self) -> ProbeResult:
        """One health check: the HTTP layer, then the inference probe where it can neither queue nor load a model.

        Also gathers this tick's evidence of work in Ollama (:attr:`evidence`).
        """
        client = self.supervisor.client
        down_after = self.config.health_check_timeout * DOWN_FACTOR
        self.evidence = None
        self.probe_choice = None
        self._server_tree = None
        api, names = client.probe_api(timeout=down_after)
        if not api.ok or names is None:
            self._cpu_baseline = None
            return api
        self._note_server()
        if self.supervisor.refused is not None:
            self._cpu_baseline = None
            return ProbeResult(False, api.latency, "api", Failure.UNTRUSTED, self.supervisor.refused)
        self._follow_installed(names)
        model = self.model_in_use
        loaded = client.loaded_models(timeout=down_after)
        if loaded is not None:
            self.loaded_models = tuple(LoadedModelStatus(m.name, m.size, m.size_vram) for m in loaded)
        is_loaded = any(same_model(m.name, model) for m in loaded or ())
        gateway = self._gateway_activity()
        runners_cpu = self._read_runner_cpu()
        runner_cpu = runner_cpu_since(self._cpu_baseline, runners_cpu)
        choice = choose_inference_probe(self.config.health_probe, self.model_present, is_loaded, gateway, runner_cpu)
        self.probe_choice = choice
        result, outcome = api, InferenceProbe.NOT_SENT
        if choice.send:
            self.inference_count += 1
            inference = client.probe_inference(model, timeout=self.config.health_check_timeout)
            result = inference
            if inference.ok:
                outcome = InferenceProbe.ANSWERED
            elif inference.failure in (Failure.TIMEOUT, Failure.REFUSED):
                # Whether the server itself still answers decides between hung or gone, and busy.
                result = client.ping(timeout=down_after)
                if not result.ok:
                    return result
                if inference.failure is Failure.TIMEOUT:  # cancelled: its connection is closed
                    outcome = InferenceProbe.WAITED
                    log.info("the test prompt waited %g s on %s: busy; cancelled", inference.latency, model)
                else:
                    result = replace(inference, failure=Failure.HTTP_ERROR, detail=f"test prompt: {inference.detail}")
            runners_cpu = self._read_runner_cpu()  # after the test prompt, so its work counts for no one
        self._cpu_baseline = {ref: t for ref, t in runners_cpu.items() if t is not None}
        loaded_names = [m.name for m in self.loaded_models]
        self.evidence = BusyEvidence(
            gateway=gateway,
            runner_cpu=runner_cpu,
            runner_model=loaded_names[0] if len(loaded_names) == 1 else None,
            probe=outcome,
            probe_model=model,
        )
        return result

    def _note_server(self) -> None:
        """Learn which process answers (and its runners), so their CPU time can be read.

        The server's process tree is listed once per check (a look at the
        whole process table): the runners and the resource sample both use it.
        """
        server = self.supervisor.server
        if server is None:
            self.supervisor.adopt()
        else:
            descendants = self.list_descendants(server)
            self.supervisor.track_runners(descendants)
            if descendants is not None:
                self._server_tree = (server.pid, descendants)
        self._follow_store()
        refused = self.supervisor.refused
        if refused is not None and refused not in self._told:
            self._told.add(refused)
            self.history.record(
                EventKind.ALERT,
                f"Not using the Ollama on this port: {refused}",
                {"kind": str(AlertKind.UNTRUSTED_SERVER), "state": "raised", "severity": "critical"},
            )

    def _follow_store(self) -> None:
        """Check, clean and measure the store of the server that runs (a systemd server's, not ~/.ollama/models)."""
        store = self.supervisor.models_dir
        if store != self.models.models_dir:
            log.info("Ollama's models are in %s (from %s)", store, self.supervisor.store_source)
            self.models.models_dir = store
            self.sampler.models_dir = store
        unit = self.supervisor.external if isinstance(self.supervisor.external, SystemdService) else None
        self.duties.follow_log(unit)

    def _read_runner_cpu(self) -> dict[ProcessRef, float | None]:
        return self.read_cpu_seconds(list(self.supervisor.runners))

    def _gateway_activity(self) -> GatewayActivity | None:
        """The gateway's requests in flight to Ollama, when a gateway runs."""
        if self.gateway is None:
            return None
        try:
            activity = self.gateway.local_activity()
            return GatewayActivity(dict(activity.in_flight), int(activity.waiting), activity.last_progress)
        except Exception:  # a broken gateway must not stop the health checks
            log.exception("could not read the gateway's activity")
            return None

    def _forget_work(self) -> None:
        """After a restart, nothing of the old server's work is known."""
        self.busy_tracker.reset()
        self.busy = None
        self._cpu_baseline = None

    def _observe(self, result: ProbeResult, now: float) -> None:
        previous = self.health
        self.last_probe = result
        self.health = classify(result, self.config.health_check_timeout)
        self._observe_work(now)
        if result.ok:
            self._note_server_identity(now)
        pid = self.supervisor.pid if result.ok else None
        tree, self._server_tree = self._server_tree, None
        self.sample = self.sampler.sample(pid, tree[1] if tree is not None and tree[0] == pid else None)
        if result.ok:
            if self.health is Health.HEALTHY:
                self.policy.record_healthy(now)
            if self.policy.gave_up:
                self.policy.recovered()
            if self.state in (MonitorState.FAILED, MonitorState.RESTARTING, MonitorState.STARTING):
                self.state = MonitorState.RUNNING
            self.next_retry_at = None
            self.last_error = None if self.health is Health.HEALTHY else self.last_error
        elif result.failure is Failure.UNTRUSTED:
            self.state = MonitorState.REFUSED
            self.last_error = result.detail
        elif self.state is not MonitorState.FAILED or self.last_error is None:
            # Once given up, the error that made it give up says more than "connection refused".
            self.last_error = result.detail or str(result.failure)
            if self.state is MonitorState.REFUSED:
                self.state = MonitorState.FAILED
        if previous is not self.health:
            latency = f"{result.latency * 1000:.0f} ms" if result.ok else (result.detail or str(result.failure))
            self.history.record(EventKind.HEALTH, f"health {previous} -> {self.health} ({latency})")
        self._publish()

    def _observe_work(self, now: float) -> None:
        previous = self.busy
        if self.evidence is None:
            self.busy_tracker.reset()
            self.busy = None
        else:
            self.busy = self.busy_tracker.observe(now, self.evidence)
        if (previous is None) != (self.busy is None):
            log.info("Ollama %s", f"busy ({self.busy.source}) on {self.busy.model}" if self.busy else "idle")

    def _note_server_identity(self, now: float) -> None:
        """A different server process answering, without the manager restarting it, is an unexpected restart."""
        current = self.supervisor.server
        if current is None or current == self._seen_server:
            return
        previous, self._seen_server = self._seen_server, current
        if self._restarting_ourselves or previous is None:
            self._restarting_ourselves = False
            return
        self.duties.note_restart(now)
        self.history.record(
            EventKind.UNEXPECTED_RESTART,
            f"Ollama restarted without the manager asking (pid {previous.pid} -> {current.pid}); uptime reset",
            {"old_pid": previous.pid, "new_pid": current.pid},
        )

    # ------------------------------------------------------------------ commands

    def _drain_commands(self) -> bool:
        """Run what other threads queued; True when an action ran (a check follows it)."""
        ran = False
        while True:
            try:
                self._on_loop.get_nowait()()
                ran = True
                continue
            except queue.Empty:
                pass
            try:
                command, future = self._commands.get_nowait()
            except queue.Empty:
                return ran
            if not future.set_running_or_notify_cancel():
                continue
            if isinstance(command, str) and command in OWNER_ACTIONS and self.supervisor.systemd_owner() is not None:
                ran = True
                self._through_owner(ActivityKind(command), future)
                continue
            try:
                if isinstance(command, Config):
                    future.set_result(self._use_settings(command))
                elif isinstance(command, UseModel):
                    ran = True  # a check follows: the probe and the status name the new model at once
                    future.set_result(self._switch_model(command.name))
                else:
                    ran = True
                    future.set_result(self._run_command(command))
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who shows it as one line
                future.set_exception(exc)

    def _through_owner(self, action: ActivityKind, future: concurrent.futures.Future[str]) -> None:
        """A user's start/stop/restart of Ollama's systemd unit, on a thread of its own.

        polkit may ask the user for a password (with a timeout): the health
        checks go on meanwhile. The outcome is handed back to this thread.
        """
        sup = self.supervisor
        if action in (ActivityKind.START, ActivityKind.RESTART):
            self._restarting_ourselves = True
            sup.user_stop.clear()
            self.policy.reset()
            self.timeouts.reset()
        self._set_activity(action, ACTION_TEXT[action])

        def work() -> None:
            try:
                if action is ActivityKind.STOP:
                    message = stop_message(sup.stop(reason="user", interactive=True), sup.reaped_names)
                elif action is ActivityKind.START:
                    message = sup.start(reason="user", interactive=True).describe(sup.host.url)
                else:
                    message = sup.restart(reason="user", interactive=True).describe(sup.host.url)
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who shows it as one line
                self._on_loop.put(functools.partial(self._owner_action_done, action, future, None, exc))
            else:
                self._on_loop.put(functools.partial(self._owner_action_done, action, future, message, None))
            self._wake.set()

        threading.Thread(target=work, name=f"systemctl-{action}", daemon=True).start()

    def _owner_action_done(
        self,
        action: ActivityKind,
        future: concurrent.futures.Future[str],
        message: str | None,
        error: BaseException | None,
    ) -> None:
        self._set_activity(None)
        if error is not None:
            if isinstance(error, NotPermitted):
                self._tell_once(EventKind.NOT_PERMITTED, str(error))
            future.set_exception(error)
            return
        if action is ActivityKind.STOP:
            self._after_user_stop()
        else:
            self.state = MonitorState.RUNNING
            self.last_error = None
            if action is ActivityKind.RESTART:
                self.history.record(EventKind.RESTART, "Ollama restarted by the user", {"reason": "user", "ok": True})
        assert message is not None
        future.set_result(message)

    def _after_user_stop(self) -> None:
        self.supervisor.user_stop.set()
        self.history.record(EventKind.USER_STOP, "Ollama stopped by the user; it stays stopped until started again")
        self.state = MonitorState.STOPPED
        self.health = Health.DOWN
        self.last_probe = STOPPED_PROBE
        self._publish()

    def _use_settings(self, config: Config) -> str:
        """Use ``config`` from now on, and rebuild what derives from it (the one place that does)."""
        chosen = not same_model(config.active_model, self.config.active_model) and not same_model(
            config.active_model, self.active_model
        )
        self.config = config
        if chosen:  # saved on the settings page: the file has it already
            self._make_active(config.active_model, "settings")
        self.supervisor.reconfigure(config)
        self.policy.max_attempts = config.auto_restart_attempts
        self.busy_tracker.stuck_after = config.stuck_runner_seconds
        self.duties.reconfigure(config)  # the alert limits, and the gap between checks that means a sleep
        self.models.config = config
        self._publish()
        return "settings in use"

    # ------------------------------------------------------------------ the active model

    def _switch_model(self, name: str) -> str:
        """Make ``name`` the active model (empty or the Modelfile model's name: that one), save it, preload it."""
        modelfile_model = self.config.ollama_model
        if not name or same_model(name, modelfile_model):
            chosen = ""
        else:
            installed = self.supervisor.client.installed_models(timeout=self.config.health_check_timeout)
            if installed is None:
                raise ModelChoiceError(
                    f"cannot see which models are installed: Ollama at {self.supervisor.host.url} is not answering"
                )
            listed = next((model.name for model in installed if same_model(model.name, name)), None)
            if listed is None:
                raise ModelChoiceError(not_installed_line(name))
            chosen = listed
        if self.config.source:
            set_config_value(Path(self.config.source), "active_model", chosen)
        self._make_active(chosen, "user")
        shown = chosen or modelfile_model
        return f"Using {shown}" + (" (the Modelfile model)" if not chosen else "")

    def _make_active(self, chosen: str, by: str) -> None:
        previous = self.model_in_use
        self._set_active(chosen)
        current = self.model_in_use
        if not same_model(previous, current):
            self.history.record(
                EventKind.MODEL_SWITCHED, f"active model: {current} (was {previous})", {"model": current, "by": by}
            )
        self._observe_models()
        self._publish()
        self._preload(current)

    def _set_active(self, chosen: str) -> None:
        self.active_model = chosen
        self.config = replace(self.config, active_model=chosen)
        self.models.config = self.config
        self.duties.reconfigure(self.config)  # the OOM ladder acts on the active model

    def _observe_models(self) -> None:
        names = self._installed_names or set()
        self.model_present = _has_model(names, self.model_in_use)
        self.modelfile_model_present = _has_model(names, self.config.ollama_model)

    def _preload(self, model: str) -> None:
        """Load ``model`` with the configured keep-alive, on a thread of its own; its elapsed time goes in the status.

        Nothing is unloaded: Ollama evicts the previous model when it needs the room, and waits for its
        requests to finish first.
        """
        started = self.clock()
        self._loading = (model, started)
        done = threading.Event()
        keep_alive = keep_alive_value(self.config.ollama_server.keep_alive)
        timeout = self.config.model_load_timeout + self.config.health_check_timeout * DOWN_FACTOR
        client = self.supervisor.client

        def load() -> None:
            error = client.preload(model, keep_alive, timeout)
            done.set()
            if self._loading == (model, started):
                self._loading = None
            if error is not None:
                self.history.record(EventKind.MODEL_ERROR, f"could not load {model}: {error}")
            else:
                log.info("%s loaded in %.1f s", model, self.clock() - started)
            self._publish()
            self.request("check")  # the models in memory changed: look now, not at the next check

        def tick() -> None:
            while not done.wait(LOAD_TICK_SECONDS) and self._loading == (model, started):
                self._publish()

        threading.Thread(target=load, name="model-preload", daemon=True).start()
        threading.Thread(target=tick, name="model-preload-clock", daemon=True).start()
        self._publish()

    def _follow_installed(self, names: set[str]) -> None:
        """Track the installed models; fall back to the Modelfile model when the active one was deleted."""
        if names != self._installed_names:
            details = self.supervisor.client.installed_models(timeout=self.config.health_check_timeout)
            if details is not None:
                self.installed_models = tuple(  # by name: a menu's order stays put when a model is pulled again
                    InstalledModelStatus(m.name, m.size, m.parameter_size, m.quantization)
                    for m in sorted(details, key=lambda m: m.name.lower())
                )
                self._installed_names = names
        if self.active_model and not _has_model(names, self.active_model):
            gone = self.active_model
            self._set_active("")
            if self.config.source and self._thread is not None:  # a one-shot `status` changes no settings
                try:
                    set_config_value(Path(self.config.source), "active_model", "")
                except ConfigError as exc:
                    log.warning("could not save the fallback to the Modelfile model: %s", exc)
            self.history.record(
                EventKind.MODEL_MISSING,
                f"the active model {gone} is no longer installed; using the Modelfile model "
                f"{self.config.ollama_model} again",
                {"model": gone, "active": True},
            )
        self._observe_models()

    def _run_command(self, action: str) -> str:
        sup = self.supervisor
        url = sup.host.url
        if action == "check":
            return f"Ollama is {self.health}"
        self._restarting_ourselves = action in ("start", "restart") or self._restarting_ourselves
        if action == "start":
            sup.user_stop.clear()
            self.policy.reset()
            self._set_activity(ActivityKind.START, "Starting Ollama")
            try:
                outcome = sup.start(reason="user")
            finally:
                self._set_activity(None)
            self.state = MonitorState.RUNNING
            return outcome.describe(url)
        if action == "stop":
            self._set_activity(ActivityKind.STOP, "Stopping Ollama")
            try:
                stopped = sup.stop(reason="user")
            finally:
                self._set_activity(None)
            self._after_user_stop()
            return stop_message(stopped, sup.reaped_names)
        if action == "restart":
            sup.user_stop.clear()
            self.policy.reset()
            self.timeouts.reset()
            self._set_activity(ActivityKind.RESTART, "Restarting Ollama")
            try:
                outcome = sup.restart(reason="user")
            finally:
                self._set_activity(None)
            self.state = MonitorState.RUNNING
            self.history.record(EventKind.RESTART, "Ollama restarted by the user", {"reason": "user", "ok": True})
            return outcome.describe(url)
        if action == "unload":
            self._set_activity(ActivityKind.UNLOAD, "Unloading models")
            try:
                errors = [e for m in self.loaded_models if (e := sup.client.unload(m.name))]
            finally:
                self._set_activity(None)
            if errors:
                raise SupervisorError(f"could not unload: {errors[0]}")
            return f"unloaded {len(self.loaded_models)} model(s)"
        raise ValueError(f"unknown action {action!r}")

    def _fail_pending(self, why: str) -> None:
        while True:
            try:
                _, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(SupervisorError(why))

    # ------------------------------------------------------------------ status

    def _set_activity(self, kind: ActivityKind | None, text: str = "", progress: float | None = None) -> None:
        self.activity = None if kind is None else Activity(kind, text, progress)
        self._publish()

    def _build_status(self) -> Status:
        sup = self.supervisor
        probe = self.last_probe
        running = probe is not None and probe.ok
        sample = self.sample
        uptime = int(time.time() - sup.server.create_time) if running and sup.server else 0
        next_retry = None if self.next_retry_at is None else max(0.0, self.next_retry_at - self.clock())
        gateway = self.gateway.snapshot() if self.gateway is not None else None
        loading = self._loading
        return Status(
            ollama_running=running,
            model_loaded=self.model_in_use if running and self.model_present else None,
            latency_ms=int(probe.latency * 1000) if probe is not None and probe.ok else None,
            health=self.health,
            uptime_seconds=uptime,
            inference_count=self.inference_count,
            memory_usage_mb=int(sample.tree_rss_bytes / 2**20) if sample and running else 0,
            gpu_available=bool(sample and sample.gpu_available),
            cpu_usage_percent=round(sample.tree_cpu_percent, 1) if sample and running else 0.0,
            last_error=self.last_error,
            state=self.state,
            managed_by=sup.managed_by,
            pid=sup.pid,
            ollama_host=sup.host.url,
            model=self.model_in_use,
            restart_attempt=self.policy.attempts,
            restart_attempts_max=self.policy.max_attempts,
            next_retry_in=next_retry,
            activity=self.activity,
            busy=BusyStatus.of(self.busy, self.clock()) if self.busy is not None else None,
            # Fallback mode: given up on Ollama, out of memory at the last rung, or the gateway routing to the cloud.
            cloud_active=self.state is MonitorState.FAILED
            or self.duties.oom_wants_cloud
            or bool(gateway and gateway.cloud_active),
            gateway=gateway,
            loaded_models=self.loaded_models,
            model_status=self.models.status,
            model_info=self._model_info(),
            owner=sup.owner,
            unit=sup.unit,
            # [ollama_server] cannot reach a server systemd runs: the drop-in that would.
            server_settings_note=systemd_dropin(self.config.ollama_server, sup.unit) if sup.unit else None,
            modelfile_model=self.config.ollama_model,
            installed_models=self.installed_models,
            model_loading=ModelLoading(loading[0], round(max(0.0, self.clock() - loading[1]), 1)) if loading else None,
        )

    def _model_info(self) -> ModelInfo | None:
        report = self.models.report
        if report is None and self.models.last_verified is None:
            return None
        return ModelInfo(
            size=report.size if report else None,
            parameter_size=report.parameter_size if report else None,
            quantization=report.quantization if report else None,
            last_verified=self.models.last_verified,
        )

    def _publish(self) -> None:
        status = self._build_status()
        self._status = status if self._halted is None else not_supervising(status, self._halted)
        with self._sub_lock:
            subscribers = list(self._subscribers)
        for mailbox in subscribers:
            mailbox.post(self._status)


class _Mailbox:
    """Hands the latest status to one subscriber on its own thread; older undelivered ones are dropped."""

    def __init__(self, callback: Subscriber) -> None:
        self.callback = callback
        self._latest: Status | None = None
        self._closed = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._deliver, name="status-subscriber", daemon=True)
        self._thread.start()

    def post(self, status: Status) -> None:
        with self._ready:
            self._latest = status
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()

    def _deliver(self) -> None:
        while True:
            with self._ready:
                while self._latest is None and not self._closed:
                    self._ready.wait()
                status = self._latest
                if self._closed or status is None:
                    return
                self._latest = None
            try:
                self.callback(status)
            except Exception:  # a broken subscriber must not stop the others
                log.exception("status subscriber failed")


def not_supervising(status: Status, why: str) -> Status:
    """A status for a monitor whose loop no longer runs: nothing is known about Ollama any more."""
    return replace(status, supervising=False, health=Health.UNKNOWN, last_error=why)


def _has_model(names: set[str], model: str) -> bool:
    return any(same_model(n, model) for n in names)
