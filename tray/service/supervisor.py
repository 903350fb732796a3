"""Side effects of supervision: find, adopt, start, stop and restart one Ollama server.

Decisions (when to restart, how long to wait) live in :mod:`tray.core`; this
class carries them out. Its methods block, so the monitor calls them from
its own thread and the CLI calls them directly when no monitor runs.

Errors, as a tree::

    SupervisorError
    ├── OllamaNotInstalled      (tray.system.processes; never retried)
    ├── PortInUse               another program holds the port; never retried, never killed
    ├── StartFailed             exited at once or did not answer in time; retried with backoff
    ├── NotPermitted            another supervisor owns Ollama and refused us, or the server is another
    │                           account's and may not be signalled; the message says the one command
    │                           the user can run
    └── Untrusted               what answers on the port is another user's: never used, never signalled
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from tray.atomic import write_atomically
from tray.errors import SupervisorError
from tray.history import EventKind, History
from tray.models.store import default_models_dir, listed_in, models_dir_from_log, models_dir_of_runner
from tray.ollama.client import OllamaClient
from tray.settings.config import Config
from tray.settings.server import customizes_server, server_env, without_secrets
from tray.system.ollama_app import (
    AppFinder,
    AppGone,
    OllamaApp,
    StartRoute,
    app_finder_for,
    app_model_location,
    app_owning,
    app_server_port,
    app_starts_at_login,
    choose_start,
    needs_own_server,
    quit_app,
    restart_app_server,
    running_app,
)
from tray.system.owners import (
    CommandResult,
    ExternalSupervisor,
    SystemdService,
    Trust,
    current_uid,
    detect_supervisor,
    installed_ollama_unit,
    judge_owner,
    read_journal,
    run_command,
    unit_state,
    user_name,
)
from tray.system.paths import AppPaths
from tray.system.processes import (
    Listener,
    OllamaNotInstalled,
    ProcessRef,
    StopOutcome,
    describe_process,
    find_listener,
    find_ollama_binary,
    is_server_cmdline,
    kill_runners,
    launch_plan,
    listening_pid,
    ollama_home,
    runner_model_path,
    runners_of,
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


class Untrusted(SupervisorError):
    pass


OWNER_TIMEOUT = 30.0  # seconds for systemctl when it may not ask
INTERACTIVE_TIMEOUT = 120.0  # when polkit may ask the user for a password


def systemctl_reason(message: str, verb: str, unit: str) -> str:
    """systemctl's refusal without its ``Failed to VERB UNIT:`` prefix.

    >>> systemctl_reason("Failed to restart ollama.service: Access denied", "restart", "ollama.service")
    'Access denied'
    """
    return message.removeprefix(f"Failed to {verb} {unit}: ").strip()


@dataclass(frozen=True)
class StartOutcome:
    started: bool  # False: an Ollama was already answering and was adopted
    pid: int | None
    managed_by: str
    seconds: float = 0.0

    unit: str | None = None  # the systemd unit, when systemd runs it

    def describe(self, url: str) -> str:
        how = "started" if self.started else "already running"
        pid = f", pid {self.pid}" if self.pid else ""
        owner = "" if self.managed_by in ("manager", "external") else f", managed by {self.managed_by}"
        if self.unit:
            owner += f" ({self.unit})"
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


def _process_name(ref: ProcessRef) -> str:
    proc = ref.get()
    try:
        return proc.name() if proc is not None else "gone"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"


def reaped_words(names: Mapping[int, str]) -> str:
    """``reaped 1 orphaned runner (pid 12: llama-server)``; empty when none were.

    >>> reaped_words({12: "llama-server", 13: "llama-server"})
    'reaped 2 orphaned runners (pid 12: llama-server, pid 13: llama-server)'
    """
    if not names:
        return ""
    plural = "s" if len(names) != 1 else ""
    listed = ", ".join(f"pid {pid}: {name}" for pid, name in sorted(names.items()))
    return f"reaped {len(names)} orphaned runner{plural} ({listed})"


def stop_message(outcome: StopOutcome, reaped: Mapping[int, str]) -> str:
    """What the user is told after a stop: how it stopped when it took a kill, and the runners reaped.

    >>> stop_message(StopOutcome(), {12: "llama-server"})
    'Ollama stopped; reaped 1 orphaned runner (pid 12: llama-server)'
    """
    words = reaped_words(reaped)
    return outcome.message() + (f"; {words}" if words else "")


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
        # Where a server this app starts keeps its models (Go's home folder, as Ollama's); models_dir is the
        # running server's, learned when it is adopted.
        self.configured_models_dir = default_models_dir(server_settings_env, home=ollama_home(self.env, platform))
        self.models_dir = self.configured_models_dir
        self.store_source = "the manager's settings"  # how models_dir was learned
        self.app_finder = app_finder if app_finder is not None else app_finder_for(platform, self.env)
        self.user_stop = UserStop(paths.user_stop_file)
        self._exit_listeners: list[Callable[[int], None]] = []  # called from a watcher thread
        self._listeners_lock = threading.Lock()  # not _lock: a stop or start holds that for long

        self.server: ProcessRef | None = None
        self.external: ExternalSupervisor | None = None
        self.owner_uid: int | None = None  # the account that runs the server
        self.refused: str | None = None  # why what answers on the port is not used (another user's)
        self._store_of: ProcessRef | None = None  # the server models_dir was learned from
        self.popen: subprocess.Popen[bytes] | None = None
        self.runners: set[ProcessRef] = set()
        self.reaped_names: dict[int, str] = {}  # pid -> what it was, of the runners reaped last
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
        """Take note of the Ollama answering on our port (ours or not), who runs it and who supervises it.

        A server another user runs, or a system account no systemd unit runs it
        for, is not adopted: :attr:`refused` says why, and it is never signalled.
        """
        with self._lock:
            listener = find_listener(self.host.port)
            ref = self._server_process(listener.pid if listener else None, listener.uid if listener else None)
            if ref is None and self.popen is not None and self.popen.poll() is None:
                ref = ProcessRef.of(psutil.Process(self.popen.pid))  # the OS hides the listener; it is our child
            if ref != self.server:
                self.server = ref
                self.external = self._owner_of(ref) if ref else None
                if self.popen is not None and (ref is None or ref.pid != self.popen.pid):
                    self.popen = None  # what answers is not the process we started
            self.owner_uid = listener.uid if listener and listener.uid is not None else self._uid_of(ref)
            self.refused = self._judge(listener)
            if self.refused is not None:
                self.server, self.external, self.popen = None, None, None
                self.runners = set()
                return
            self.track_runners()
            if self.server is not None and self.server != self._store_of:
                self._store_of = self.server
                self.models_dir, self.store_source = self._learn_store()

    def _server_process(self, pid: int | None, uid: int | None) -> ProcessRef | None:
        """The ``ollama serve`` holding the port: the listener's pid, else the MainPID of the unit run as its owner."""
        if pid is None and uid is not None and self.platform.startswith("linux"):
            unit = installed_ollama_unit()
            if unit is not None and unit.main_pid and self._uid_of_pid(unit.main_pid) == uid:
                pid = unit.main_pid
        if pid is None:
            return None
        try:
            proc = psutil.Process(pid)
            if is_server_cmdline(proc.cmdline()):
                return ProcessRef.of(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
        return None

    @staticmethod
    def _uid_of_pid(pid: int) -> int | None:
        try:
            return int(psutil.Process(pid).uids().real)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, AttributeError):
            return None

    def _uid_of(self, ref: ProcessRef | None) -> int | None:
        return self._uid_of_pid(ref.pid) if ref is not None else None

    def _judge(self, listener: Listener | None) -> str | None:
        """Why the listener may not be used, or None when it may (the user's, root's, or its unit's account)."""
        uid = self.owner_uid
        if uid is None or listener is None:
            return None
        unit_uid = None
        if isinstance(self.external, SystemdService):
            unit_uid = unit_state(self.external).account_uid()
        trust = judge_owner(uid, current_uid(), unit_uid)
        if trust.trusted:
            return None
        what = describe_process(listener.pid) if listener.pid else "a process"
        whose = (
            f"{user_name(uid)}, another user"
            if trust is Trust.OTHER_USER
            else f"{user_name(uid)}, a system account no systemd unit runs it for"
        )
        return (
            f"port {self.host.port} is held by {what}, run by {whose}: the manager does not use it "
            "and sends no prompt there; stop it or set ollama_host to another port"
        )

    def _learn_store(self) -> tuple[Path, str]:
        """Where the running server keeps its models, and how that was learned.

        A server this app started uses the configured store. Otherwise, in order:
        its unit's ``Environment=OLLAMA_MODELS``, its own environment (readable
        when it is this user's), a runner's ``--model`` path, the Ollama app's
        "Model location" when the app runs it, its log's ``server config`` line,
        its account's ``~/.ollama/models``; each checked against the digests
        ``/api/tags`` lists where the store can be read.
        """
        if self.popen is not None and self.server is not None and self.server.pid == self.popen.pid:
            return self.configured_models_dir, "the manager's settings"
        candidates: list[tuple[Path, str]] = []
        unit = unit_state(self.external) if isinstance(self.external, SystemdService) else None
        if unit is not None and unit.models_dir:
            candidates.append((Path(unit.models_dir), f"the Environment= of {unit.service.unit}"))
        environ = self._server_environ()
        if environ is not None and environ.get("OLLAMA_MODELS", "").strip().strip("\"'"):
            candidates.append((Path(environ["OLLAMA_MODELS"].strip().strip("\"'")), "the server's environment"))
        for runner in self.runners:
            proc = runner.get()
            model = runner_model_path(proc.cmdline()) if proc is not None else None
            store = models_dir_of_runner(model) if model else None
            if store is not None:
                candidates.append((store, "a runner's --model path"))
        if isinstance(self.external, OllamaApp):
            location = app_model_location(self.external.layout)
            if location is not None:
                candidates.append((location, "the Ollama app's Model location"))
        log_lines = read_journal(self.external) if isinstance(self.external, SystemdService) else None
        from_log = models_dir_from_log(log_lines or [])
        if from_log is not None:
            candidates.append((from_log, "the server log's config line"))
        home = self._owner_home(environ)
        if home is not None:
            candidates.append((home / ".ollama" / "models", f"the home of {user_name(self.owner_uid)}"))
        if not candidates:
            return self.configured_models_dir, "the manager's settings"
        tags = self.client.tags()
        for path, source in candidates:
            if tags and listed_in(path, tags) is True:
                return path, f"{source}, matching /api/tags"
        return candidates[0]

    def _server_environ(self) -> dict[str, str] | None:
        proc = self.server.get() if self.server is not None else None
        try:
            return dict(proc.environ()) if proc is not None else None
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            return None

    def _owner_home(self, environ: dict[str, str] | None) -> Path | None:
        """The home of the server's account: Go's ``os.UserHomeDir`` of its environment, else its passwd entry."""
        if environ is not None and (environ.get("HOME") or environ.get("USERPROFILE")):
            return ollama_home(environ, self.platform)
        if self.owner_uid is None:
            return None
        try:
            import pwd

            return Path(pwd.getpwuid(self.owner_uid).pw_dir)
        except (ImportError, KeyError):
            return None

    @property
    def owner(self) -> str | None:
        """The name of the account that runs the server."""
        return user_name(self.owner_uid) if self.owner_uid is not None and self.server is not None else None

    @property
    def unit(self) -> str | None:
        return self.external.unit if isinstance(self.external, SystemdService) else None

    def systemd_owner(self) -> SystemdService | None:
        """The unit that runs Ollama, or is installed to (then the manager never starts a serve of its own)."""
        if isinstance(self.external, SystemdService):
            return self.external
        if self.popen is not None or not self.platform.startswith("linux"):
            return None
        installed = installed_ollama_unit()
        return installed.service if installed is not None else None

    def _owner_of(self, server: ProcessRef) -> ExternalSupervisor | None:
        systemd = detect_supervisor(server, self.platform)
        if systemd is not None or self.app_finder is None:
            return systemd
        return app_owning(server, self.app_finder)

    def track_runners(self, descendants: Sequence[psutil.Process] | None = None) -> None:
        """Remember the server's runners, so they can be reaped if the server dies with kill -9.

        ``descendants``: the server's, when the caller looked them up already (:func:`descendants_of`).
        """
        if self.server is not None:
            live = set(runners_of(self.server, descendants))
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
        if answer is False and self._server_process(pid, None) is not None:
            raise StartFailed(
                f"Ollama (pid {pid}) holds port {self.host.port} but does not answer: run `ollama-manager restart`"
            )
        if answer is False or (answer is None and pid is not None):
            raise PortInUse(
                f"port {self.host.port} is in use by {describe_process(pid)}, which is not Ollama: "
                f"stop it or set ollama_host to another port"
            )

    def start(self, reason: str = "start", interactive: bool = False) -> StartOutcome:
        """Adopt a running Ollama, start the installed unit, or launch one; then wait for it to answer.

        ``interactive``: a user's own action, for which polkit may ask for a password.
        """
        with self._lock:
            begun = time.monotonic()
            if self.client.answers_as_ollama():
                self.adopt()
                if self.refused is not None:
                    raise Untrusted(self.refused)
                self.history.record(EventKind.ADOPT, f"Ollama already running (pid {self.pid}); watching it")
                self._note_settings_not_in_effect()
                return self._outcome(False)
            service = self.systemd_owner()
        if service is not None:
            return self.through_owner("start", service, reason, interactive)
        with self._lock:
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
            server_environment = {**server_env(server_settings, plan.env), **overlay}
            plan = replace(plan, env=without_secrets(server_environment, [self.config.cloud.key_env]))
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
            outcome = self._outcome(True, time.monotonic() - begun)
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
        log_path = self.app_finder.layout.server_log if self.app_finder else self.paths.server_log
        self._wait_answering(
            failure=f"the Ollama app is running but its server does not answer at {self.host.url} within "
            f"{self.config.startup_timeout:g} s: see {log_path}, or quit the app from its menu and open it again",
            begun=begun,
        )
        self.server = None
        self.adopt()
        self.history.record(
            EventKind.ADOPT, f"Ollama is run by the Ollama app (pid {self.pid}); watching it", {"reason": reason}
        )
        return self._outcome(False, time.monotonic() - begun)

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

    def stop(self, reason: str = "stop", interactive: bool = False) -> StopOutcome:
        """Stop the server (through its own supervisor when it has one) and reap its runners."""
        with self._lock:
            if self.server is None and self.popen is None:
                self.adopt()
            if self.refused is not None:
                raise Untrusted(f"nothing was stopped: {self.refused}")
            if self.server is None and self.popen is None:
                self._refuse_foreign_stop()
            owner = self.external
        outcome: StopOutcome | None = None
        if isinstance(owner, SystemdService):
            outcome = self._stop_external(owner, interactive)  # no lock held: polkit may ask the user
        with self._lock:
            self.expected_exit = True
            if outcome is None:
                outcome = self._stop_external(owner, interactive) if owner is not None else self._stop_process()
            outcome.runners_reaped = self.reap_runners()
            reaped = reaped_words(self.reaped_names)
            self.history.record(
                EventKind.STOP,
                f"Ollama stopped ({outcome.how()})" + (f"; {reaped}" if reaped else ""),
                {"reason": reason, "killed": outcome.killed, "runners_reaped": outcome.runners_reaped},
            )
            self.server = None
            self.popen = None
            return outcome

    def _refuse_foreign_stop(self) -> None:
        """A program that is not Ollama on the port is never signalled, and a stop must not claim it stopped."""
        listener = find_listener(self.host.port)
        answer = self.client.answers_as_ollama(timeout=1.0)
        if answer is not False and (answer is True or listener is None):
            return
        pid = listener.pid if listener else None
        holder = describe_process(pid)
        if listener is not None and listener.uid is not None:
            holder += f", run by {user_name(listener.uid)}"
        raise PortInUse(
            f"nothing was stopped: port {self.host.port} is held by {holder}, which is not Ollama; "
            "the manager leaves it alone"
        )

    def _stop_process(self) -> StopOutcome:
        self.track_runners()
        refs = [self.server] if self.server else []
        self._check_may_signal()
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

    def _check_may_signal(self) -> None:
        """A server another account runs (root's, say) cannot be signalled: say the command that can."""
        if self.server is None or self.owner_uid is None or self.owner_uid == current_uid() or current_uid() == 0:
            return
        state = "does not answer" if self.client.answers_as_ollama(timeout=1.0) is not True else "runs"
        raise NotPermitted(
            f"Ollama (pid {self.server.pid}, run by {user_name(self.owner_uid)}) {state}, and this user may not "
            f"stop it: run `sudo kill {self.server.pid}`"
        )

    def _stop_external(self, owner: ExternalSupervisor, interactive: bool = False) -> StopOutcome:
        if isinstance(owner, SystemdService):
            result = self._systemctl(owner, "stop", interactive)
            if not result.ok:
                raise NotPermitted(
                    f"Ollama runs as {owner.describe()}, which this user may not stop "
                    f"({systemctl_reason(result.message, 'stop', owner.unit)}): run `{owner.manual_command('stop')}`"
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
        """Kill the runners a dead server left behind, holding RAM/VRAM.

        Only runners recorded as children of the server while it was alive are
        candidates (never a process found by its model path alone: the user's
        own llama-server may use the same blobs), and only once that server is gone.
        """
        server_alive = self.server is not None and self.server.alive()
        leftovers = set() if server_alive else {r for r in self.runners if r.alive()}
        self.runners = set()
        self.reaped_names = {}
        if not leftovers:
            return []
        names = {ref.pid: _process_name(ref) for ref in leftovers}
        pids = kill_runners(leftovers)
        self.reaped_names = {pid: names[pid] for pid in pids}
        log.info("reaped orphaned runners %s", pids)
        return pids

    # ------------------------------------------------------------------ restarting

    def restart(self, reason: str, interactive: bool = False) -> StartOutcome:
        """Stop and start again; through the owning supervisor when there is one (or the installed unit)."""
        with self._lock:
            if self.server is None and self.popen is None:
                self.adopt()  # whatever Ollama is on the port, answering or hung
            if self.refused is not None:
                raise Untrusted(self.refused)
            owner: ExternalSupervisor | None = self.external or self.systemd_owner()
        if isinstance(owner, SystemdService):
            return self.through_owner("restart", owner, reason, interactive)
        with self._lock:
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
                return self._outcome(False)
            return self.start(reason=reason, interactive=interactive)

    def _systemctl(self, service: SystemdService, verb: str, interactive: bool) -> CommandResult:
        argv = {"start": service.start_command, "stop": service.stop_command, "restart": service.restart_command}[verb](
            interactive
        )
        log.info("asking systemd: %s", " ".join(argv))
        return run_command(argv, INTERACTIVE_TIMEOUT if interactive else OWNER_TIMEOUT, interactive=interactive)

    def through_owner(self, verb: str, service: SystemdService, reason: str, interactive: bool = False) -> StartOutcome:
        """Start or restart Ollama through its systemd unit, never beside it.

        Holds no lock while systemctl runs (polkit may wait for the user), so
        the monitor goes on checking meanwhile.
        """
        begun = time.monotonic()
        with self._lock:
            pid, owner_uid = self.pid, self.owner_uid
            self.track_runners()
        result = self._systemctl(service, verb, interactive)
        if not result.ok:
            why = systemctl_reason(result.message, verb, service.unit)
            command = service.manual_command(verb)
            if verb == "start":
                raise NotPermitted(
                    f"Ollama is installed as {service.describe()}, which this user may not start ({why}): "
                    f"run `{command}`"
                )
            state = self._true_state(pid)
            who = f", run by {user_name(owner_uid)}" if owner_uid is not None else ""
            subject = f"Ollama (pid {pid}, {service.describe()}{who})" if pid else f"Ollama ({service.describe()})"
            raise NotPermitted(f"{subject} {state}; this user may not {verb} it ({why}): run `{command}`")
        self._wait_answering(f"{verb}ing {service.describe()}")
        with self._lock:
            self.server = None
            self.adopt()
            self.reap_runners()
            self.track_runners()
            done = "started" if verb == "start" else "restarted"
            self.history.record(EventKind(verb), f"Ollama {done} through {service.describe()}", {"reason": reason})
            return self._outcome(True, time.monotonic() - begun)

    def _wait_answering(self, after: str = "", *, failure: str = "", begun: float | None = None) -> None:
        """Wait for Ollama to answer once its owner started it; StartFailed after the startup timeout.

        The error says what was done (``after``), unless ``failure`` is the whole message; the timeout counts
        from ``begun`` when given (a monotonic time), else from now.
        """
        deadline = (time.monotonic() if begun is None else begun) + self.config.startup_timeout
        while not self.client.answers_as_ollama(timeout=1.0):
            if time.monotonic() > deadline:
                raise StartFailed(
                    failure or f"Ollama did not answer within {self.config.startup_timeout:g} s after {after}"
                )
            time.sleep(READY_POLL_SECONDS)

    def _true_state(self, pid: int | None) -> str:
        """What the server is doing, for a message that must say it: hung, stopped, or not running."""
        answer = self.client.answers_as_ollama(timeout=1.0)
        if answer:
            return "runs"
        if pid is None:
            return "is not running"
        try:
            stopped = psutil.Process(pid).status() == psutil.STATUS_STOPPED
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return "is not running"
        return "is stopped (SIGSTOP) and does not answer" if stopped else "does not answer"

    def _outcome(self, started: bool, seconds: float = 0.0) -> StartOutcome:
        return StartOutcome(started, self.pid, self.managed_by, seconds, self.unit)

    def _restart_external(self, owner: ExternalSupervisor, reason: str) -> StartOutcome:
        """Restart the Ollama app's server: end it as the app does, and await the one the app starts 1 s later."""
        assert isinstance(owner, OllamaApp)
        begun = time.monotonic()
        self.track_runners()
        try:
            respawn = restart_app_server(owner, self.config.stop_timeout, self.config.startup_timeout)
        except AppGone:
            raise StartFailed(
                "the Ollama app quit while its server was restarting: open Ollama again, or run `ollama-manager start`"
            ) from None
        except TimeoutError as exc:
            raise StartFailed(f"{exc}: quit Ollama from its menu and open it again") from None
        old = f"its server (pid {respawn.old.pid}) " if respawn.old else "its server "
        how = "ended" if respawn.graceful else f"was killed ({respawn.detail})"
        done = f": {old}{how}, and the app started pid {respawn.new.pid}"
        self.reap_runners()
        self._wait_answering(f"restarting {owner.describe()}")
        self.server = None
        self.adopt()
        self.history.record(EventKind.RESTART, f"Ollama restarted through {owner.describe()}{done}", {"reason": reason})
        return self._outcome(True, time.monotonic() - begun)

    def close(self) -> None:
        self.client.close()
