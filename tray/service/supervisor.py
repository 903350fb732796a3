"""Side effects of supervision: find, adopt, start, stop and restart one Ollama server.

Decisions (when to restart, how long to wait) live in :mod:`tray.core`; this
class carries them out. Its methods block, so the monitor calls them from
its own thread and the CLI calls them directly when no monitor runs.

Errors, as a tree::

    SupervisorError
    ├── OllamaNotInstalled      (tray.system.processes; never retried)
    ├── PortInUse               another program holds the port; never retried, never killed
    ├── StartFailed             exited at once or did not answer in time; retried with backoff
    └── NotPermitted            another supervisor owns Ollama and refused us; the message says
                                the one command the user can run
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from tray.errors import SupervisorError
from tray.history import EventKind, History
from tray.models.store import default_models_dir
from tray.ollama.client import OllamaClient
from tray.settings.config import Config
from tray.settings.server import customizes_server, server_env
from tray.system.atomic import write_atomically
from tray.system.ollama_app import (
    AppFinder,
    AppGone,
    OllamaApp,
    StartRoute,
    app_finder_for,
    app_models_dir,
    app_owning,
    app_server_port,
    app_starts_at_login,
    choose_start,
    needs_own_server,
    quit_app,
    restart_app_server,
    running_app,
)
from tray.system.owners import ExternalSupervisor, SystemdService, detect_supervisor, run_command
from tray.system.paths import AppPaths
from tray.system.processes import (
    OllamaNotInstalled,
    ProcessRef,
    StopOutcome,
    describe_process,
    find_ollama_binary,
    kill_runners,
    launch_plan,
    listening_pid,
    ollama_home,
    orphaned_runners,
    runners_of,
    server_on_port,
    spawn,
    terminate,
)

log = logging.getLogger(__name__)

READY_POLL_SECONDS = 0.1
APP_QUIT_GRACE_SECONDS = 10.0  # the app stops its own serve first (interrupt, 5 s, kill)


class PortInUse(SupervisorError):
    pass


class StartFailed(SupervisorError):
    retryable = True


class NotPermitted(SupervisorError):
    pass


@dataclass(frozen=True)
class StartOutcome:
    started: bool  # False: an Ollama was already answering and was adopted
    pid: int | None
    managed_by: str
    seconds: float = 0.0

    def describe(self, url: str) -> str:
        how = "started" if self.started else "already running"
        pid = f", pid {self.pid}" if self.pid else ""
        owner = "" if self.managed_by in ("manager", "external") else f", managed by {self.managed_by}"
        return f"Ollama is running at {url} ({how}{pid}{owner})"


def tail_lines(path: Path, count: int = 20, max_bytes: int = 16384) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return []
    return [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()][-count:]


class UserStop:
    """The user's stop, remembered until they start Ollama again (or the machine reboots)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def set(self) -> None:
        try:
            write_atomically(self.path, json.dumps({"time": time.time(), "boot_time": psutil.boot_time()}).encode())
        except OSError as exc:
            log.warning("could not remember the user's stop in %s: %s", self.path, exc)

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not clear %s: %s", self.path, exc)

    def is_set(self) -> bool:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return False
        return abs(float(data.get("boot_time", 0)) - psutil.boot_time()) < 2


class Supervisor:
    """One Ollama server at the configured address."""

    def __init__(
        self,
        config: Config,
        paths: AppPaths,
        history: History,
        *,
        env: Mapping[str, str] | None = None,
        platform: str = sys.platform,
        app_finder: AppFinder | None = None,
    ) -> None:
        """``app_finder``: how this OS's Ollama app is recognised (default: the OS's own; none on Linux)."""
        self.config = config
        self.paths = paths
        self.history = history
        self.env = dict(os.environ if env is None else env)
        self.platform = platform
        self.host = config.host
        self.client = OllamaClient(self.host.url)
        server_settings_env = server_env(config.ollama_server, self.env)
        # Where a server of the manager's own (or one started by hand) keeps its models: Go's home, as Ollama's.
        self.own_models_dir = default_models_dir(server_settings_env, home=ollama_home(self.env, platform))
        self.app_finder = app_finder if app_finder is not None else app_finder_for(platform, self.env)
        self.user_stop = UserStop(paths.user_stop_file)
        self._exit_listeners: list[Callable[[int], None]] = []  # called from a watcher thread
        self._listeners_lock = threading.Lock()  # not _lock: a stop or start holds that for long

        self.server: ProcessRef | None = None
        self.external: ExternalSupervisor | None = None
        self.popen: subprocess.Popen[bytes] | None = None
        self.runners: set[ProcessRef] = set()
        self.expected_exit = False
        # Variables set on top of the [ollama_server] settings at the next start (the out-of-memory
        # ladder's OLLAMA_CONTEXT_LENGTH or GPU-off variables), and those the running server got.
        self.env_overlay: dict[str, str] = {}
        self.started_overlay: dict[str, str] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ what is there

    @property
    def managed_by(self) -> str:
        if self.external is not None:
            return self.external.name
        if self.popen is not None:
            return "manager"
        return "external" if self.server is not None else "none"

    @property
    def models_dir(self) -> Path:
        """Where the running server keeps its models: the Ollama app's own when it runs the server."""
        owner = self.external
        if isinstance(owner, OllamaApp):
            runners = [ref.get() for ref in self.runners]
            cmdlines = []
            for proc in runners:
                with contextlib.suppress(psutil.Error):
                    if proc is not None:
                        cmdlines.append(proc.cmdline())
            return app_models_dir(self.server, owner.layout, self.env, cmdlines)
        return self.own_models_dir

    @property
    def server_log(self) -> Path:
        """The log the running server writes: the Ollama app's ``server.log`` when the app runs it."""
        owner = self.external
        if isinstance(owner, OllamaApp):
            return owner.layout.server_log
        return self.paths.server_log

    @property
    def overlay_pending(self) -> bool:
        """The server this app started runs with another overlay than the next start would give it."""
        return self.managed_by == "manager" and self.started_overlay != self.env_overlay

    @property
    def pid(self) -> int | None:
        return self.server.pid if self.server else (self.popen.pid if self.popen else None)

    def answers(self) -> bool | None:
        return self.client.answers_as_ollama()

    def adopt(self) -> None:
        """Take note of the Ollama answering on our port (ours or not) and who supervises it."""
        with self._lock:
            ref = server_on_port(self.host.port)
            if ref is None and self.popen is not None and self.popen.poll() is None:
                ref = ProcessRef.of(psutil.Process(self.popen.pid))  # the OS hides the listener; it is our child
            if ref != self.server:
                self.server = ref
                self.external = self._owner_of(ref) if ref else None
                if self.popen is not None and (ref is None or ref.pid != self.popen.pid):
                    self.popen = None  # what answers is not the process we started
            self.track_runners()

    def _owner_of(self, server: ProcessRef) -> ExternalSupervisor | None:
        systemd = detect_supervisor(server, self.platform)
        if systemd is not None or self.app_finder is None:
            return systemd
        return app_owning(server, self.app_finder)

    def track_runners(self) -> None:
        """Remember the server's runners, so they can be reaped if the server dies with kill -9."""
        if self.server is not None:
            live = set(runners_of(self.server))
            self.runners = {r for r in self.runners | live if r.alive()}

    def subscribe_exit(self, callback: Callable[[int], None]) -> None:
        """Call ``callback`` (from a watcher thread) with the status of a server this app started that exits unasked."""
        with self._listeners_lock:
            self._exit_listeners.append(callback)

    def forget_server(self) -> None:
        """The server was stopped through its owner (the Ollama app, systemctl): nothing is there to watch."""
        with self._lock:
            self.external = None
            self.server = None

    def set_env_overlay(self, env: Mapping[str, str]) -> None:
        """Variables to set on top of the ``[ollama_server]`` settings at the next start (the OOM ladder's)."""
        with self._lock:
            self.env_overlay = dict(env)

    def reconfigure(self, config: Config) -> None:
        """Use new settings from the next start, stop or wait on (the address and models folder stay)."""
        with self._lock:
            self.config = config

    def take_exit(self) -> int | None:
        """Exit status of the server this app started if it died unasked; reported once."""
        with self._lock:
            if self.popen is None or self.expected_exit:
                return None
            code = self.popen.poll()
            if code is None:
                return None
            self.popen = None
            self.server = None
            return code

    # ------------------------------------------------------------------ starting

    def _check_port_free(self) -> None:
        answer = self.client.answers_as_ollama()
        pid = listening_pid(self.host.port)
        if answer is False and server_on_port(self.host.port) is not None:
            raise StartFailed(
                f"Ollama (pid {pid}) holds port {self.host.port} but does not answer: run `ollama-manager restart`"
            )
        if answer is False or (answer is None and pid is not None):
            raise PortInUse(
                f"port {self.host.port} is in use by {describe_process(pid)}, which is not Ollama: "
                f"stop it or set ollama_host to another port"
            )

    def start(self, reason: str = "start") -> StartOutcome:
        """Adopt a running Ollama, or launch one and wait for it to answer."""
        with self._lock:
            begun = time.monotonic()
            if self.client.answers_as_ollama():
                self.adopt()
                self.history.record(EventKind.ADOPT, f"Ollama already running (pid {self.pid}); watching it")
                self._note_settings_not_in_effect()
                return StartOutcome(False, self.pid, self.managed_by)
            self._check_port_free()
            binary: Path | None
            server_settings = self.config.ollama_server
            overlay = dict(self.env_overlay)
            # The Ollama app starts its server with its own environment: it cannot honour these settings.
            customized = customizes_server(server_settings) or bool(overlay)
            route, app_command = self._start_route(customized)
            if route is StartRoute.WAIT_FOR_APP:
                return self._wait_for_app_server(reason, begun)
            try:
                binary = find_ollama_binary(self.config.ollama_binary, self.env, self.platform)
            except OllamaNotInstalled:
                if app_command is None:
                    raise
                binary = None
            plan = launch_plan(binary, self.host, platform=self.platform, app_command=app_command, env=self.env)
            plan = replace(plan, env={**server_env(server_settings, plan.env), **overlay})
            self._rotate_server_log()
            log.info("starting Ollama: %s", " ".join(plan.argv))
            try:
                popen = spawn(plan, self.paths.server_log)
            except OSError as exc:
                raise StartFailed(f"could not run {plan.argv[0]}: {exc.strerror or exc}") from None
            self.expected_exit = False
            if not plan.via_app:
                self.popen = popen
                self.started_overlay = overlay
                self._watch(popen)
            self._wait_ready(popen, plan.via_app)
            self.server = None
            self.adopt()
            outcome = StartOutcome(True, self.pid, self.managed_by, time.monotonic() - begun)
            self.history.record(
                EventKind.START, f"Ollama started (pid {self.pid}) in {outcome.seconds:.1f} s", {"reason": reason}
            )
            return outcome

    def _start_route(self, customized: bool) -> tuple[StartRoute, list[str] | None]:
        """Whether the Ollama app starts the server, runs it already, or the manager runs its own.

        The app is bypassed only while it is not running, and never quit for it; when it will
        take the port back at the next login (its login item), the user is told.
        """
        finder = self.app_finder
        own = needs_own_server(self.host, customized)
        app_command = finder.start_command() if finder is not None else None
        running = running_app(finder) if finder is not None else None
        login_item = False
        if finder is not None and app_command is not None and own and running is None:
            login_item = app_starts_at_login(finder.layout)
        choice = choose_start(
            own_server=own,
            port=self.host.port,
            installed=app_command is not None,
            running=running is not None,
            login_item=login_item,
            app_port=app_server_port(running),
        )
        if choice.warning:
            log.warning("%s", choice.warning)
            self._record_warning(choice.warning, choice.route)
        return choice.route, app_command if choice.route is StartRoute.VIA_APP else None

    def _note_settings_not_in_effect(self) -> None:
        """The Ollama app runs the server (it takes its port back when it starts): say which settings are lost."""
        owner = self.external
        customized = customizes_server(self.config.ollama_server) or bool(self.env_overlay)
        if not isinstance(owner, OllamaApp) or not needs_own_server(self.host, customized):
            return
        port = self.host.port
        choice = choose_start(own_server=True, port=port, installed=True, running=True, login_item=False, app_port=port)
        self._record_warning(choice.warning, choice.route)

    def _record_warning(self, warning: str, route: StartRoute) -> None:
        self.history.record(EventKind.EXTERNAL, warning[0].upper() + warning[1:], {"kind": str(route)})

    def _wait_for_app_server(self, reason: str, begun: float) -> StartOutcome:
        """The Ollama app runs: its server answers again within a second or two of any exit."""
        deadline = begun + self.config.startup_timeout
        while not self.client.answers_as_ollama(timeout=1.0):
            if time.monotonic() > deadline:
                log_path = self.app_finder.layout.server_log if self.app_finder else self.paths.server_log
                raise StartFailed(
                    f"the Ollama app is running but its server does not answer at {self.host.url} within "
                    f"{self.config.startup_timeout:g} s: see {log_path}, or quit the app from its menu and open it "
                    "again"
                )
            time.sleep(READY_POLL_SECONDS)
        self.server = None
        self.adopt()
        self.history.record(
            EventKind.ADOPT, f"Ollama is run by the Ollama app (pid {self.pid}); watching it", {"reason": reason}
        )
        return StartOutcome(False, self.pid, self.managed_by, time.monotonic() - begun)

    def _wait_ready(self, popen: subprocess.Popen[bytes], via_app: bool) -> None:
        deadline = time.monotonic() + self.config.startup_timeout
        while time.monotonic() < deadline:
            if self.client.answers_as_ollama(timeout=1.0):
                return
            code = popen.poll()
            if code is not None and not via_app:
                self.popen = None
                lines = tail_lines(self.paths.server_log, 5)
                why = lines[-1] if lines else f"exit status {code}"
                if "address already in use" in why or "Only one usage of each socket address" in why:
                    raise PortInUse(f"port {self.host.port} is already in use: {why}")
                raise StartFailed(f"Ollama exited at once (status {code}): {why}")
            time.sleep(READY_POLL_SECONDS)
        raise StartFailed(f"Ollama did not answer within {self.config.startup_timeout:g} s")

    def _watch(self, popen: subprocess.Popen[bytes]) -> None:
        """Notice the exit of a server we started at once, not at the next health check."""

        def wait() -> None:
            code = popen.wait()
            if not self.expected_exit and self.popen is popen:
                with self._listeners_lock:
                    listeners = list(self._exit_listeners)
                for listener in listeners:
                    listener(code)  # the monitor then collects it with take_exit()

        threading.Thread(target=wait, name=f"ollama-{popen.pid}-watch", daemon=True).start()

    def _rotate_server_log(self, max_bytes: int = 10 * 1024 * 1024) -> None:
        path = self.paths.server_log
        try:
            if path.stat().st_size > max_bytes:
                os.replace(path, path.with_name(path.name + ".1"))
        except OSError:
            pass

    # ------------------------------------------------------------------ stopping

    def stop(self, reason: str = "stop") -> StopOutcome:
        """Stop the server (through its own supervisor when it has one) and reap its runners."""
        with self._lock:
            if self.server is None and self.popen is None:
                self.adopt()
            self.expected_exit = True
            if self.external is not None:
                outcome = self._stop_external(self.external)
            else:
                outcome = self._stop_process()
            outcome.runners_reaped = self.reap_runners()
            self.history.record(
                EventKind.STOP,
                f"Ollama stopped ({outcome.how()})",
                {"reason": reason, "killed": outcome.killed, "runners_reaped": outcome.runners_reaped},
            )
            self.server = None
            self.popen = None
            return outcome

    def _stop_process(self) -> StopOutcome:
        self.track_runners()
        refs = [self.server] if self.server else []
        if self.popen is not None and not refs:
            try:
                refs = [ProcessRef.of(psutil.Process(self.popen.pid))]
            except psutil.NoSuchProcess:
                refs = []
        outcome = terminate(refs, self.config.stop_timeout)
        if self.popen is not None:
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        return outcome

    def _stop_external(self, owner: ExternalSupervisor) -> StopOutcome:
        if isinstance(owner, SystemdService):
            result = run_command(owner.stop_command())
            if not result.ok:
                raise NotPermitted(
                    f"Ollama runs as {owner.describe()} and could not be stopped ({result.message}): "
                    f"run `{owner.manual_command('stop')}`"
                )
            outcome = StopOutcome()
        else:
            self.track_runners()
            quit_ = quit_app(owner, self.config.stop_timeout + APP_QUIT_GRACE_SECONDS)
            outcome = StopOutcome(graceful=quit_.graceful, killed=quit_.killed, hard_kill_reason=quit_.detail)
        self._wait_gone(self.config.stop_timeout + 10)
        return outcome

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client.answers_as_ollama(timeout=1.0) is None:
                return True
            time.sleep(READY_POLL_SECONDS)
        return False

    def reap_runners(self) -> list[int]:
        """Kill the runners a dead server left behind, holding RAM/VRAM."""
        leftovers = {r for r in self.runners if r.alive()} | set(orphaned_runners(self.models_dir))
        self.runners = set()
        if not leftovers:
            return []
        pids = kill_runners(leftovers)
        log.info("reaped orphaned runners %s", pids)
        return pids

    # ------------------------------------------------------------------ restarting

    def restart(self, reason: str) -> StartOutcome:
        """Stop and start again; through the owning supervisor when there is one."""
        with self._lock:
            if self.server is None and self.popen is None:
                self.adopt()  # whatever Ollama is on the port, answering or hung
            owner = self.external
            if owner is not None:
                return self._restart_external(owner, reason)
            if self.server is not None or self.popen is not None:
                self.stop(reason=reason)
            else:
                self.reap_runners()
            if self.client.answers_as_ollama():
                # Something respawned the server behind our back: do not fight it.
                self.adopt()
                self.history.record(
                    EventKind.EXTERNAL,
                    f"Ollama was restarted by another program (pid {self.pid}); watching it instead of managing it",
                )
                return StartOutcome(False, self.pid, self.managed_by)
            return self.start(reason=reason)

    def _restart_external(self, owner: ExternalSupervisor, reason: str) -> StartOutcome:
        begun = time.monotonic()
        self.track_runners()
        done = ""
        if isinstance(owner, SystemdService):
            result = run_command(owner.restart_command())
            if not result.ok:
                raise NotPermitted(
                    f"Ollama runs as {owner.describe()}, which this user may not restart ({result.message}): "
                    f"run `{owner.manual_command('restart')}`"
                )
        else:
            try:
                respawn = restart_app_server(owner, self.config.stop_timeout, self.config.startup_timeout)
            except AppGone:
                raise StartFailed(
                    "the Ollama app quit while its server was restarting: open Ollama again, "
                    "or run `ollama-manager start`"
                ) from None
            except TimeoutError as exc:
                raise StartFailed(f"{exc}: quit Ollama from its menu and open it again") from None
            old = f"its server (pid {respawn.old.pid}) " if respawn.old else "its server "
            how = "ended" if respawn.graceful else f"was killed ({respawn.detail})"
            done = f": {old}{how}, and the app started pid {respawn.new.pid}"
            self.reap_runners()
        deadline = time.monotonic() + self.config.startup_timeout
        while not self.client.answers_as_ollama(timeout=1.0):
            if time.monotonic() > deadline:
                raise StartFailed(
                    f"Ollama did not answer within {self.config.startup_timeout:g} s after restarting {owner.describe()}"
                )
            time.sleep(READY_POLL_SECONDS)
        self.server = None
        self.adopt()
        self.history.record(EventKind.RESTART, f"Ollama restarted through {owner.describe()}{done}", {"reason": reason})
        return StartOutcome(True, self.pid, self.managed_by, time.monotonic() - begun)

    def close(self) -> None:
        self.client.close()
