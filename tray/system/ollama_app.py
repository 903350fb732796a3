"""Ollama's desktop app (macOS, Windows): found, read and controlled the way it really behaves.

What the app does (Ollama's ``app/cmd/app``, ``app/server``, ``app/logrotate``, ``app/store``):

- it (``Ollama.app/Contents/MacOS/Ollama``, ``ollama app.exe``) runs ``ollama serve`` as its
  child 1 s after it starts, and again 1 s after every exit, forever;
- macOS: it quits on SIGTERM or SIGINT; ``tell application "Ollama" to quit`` is cancelled
  since v0.12.10 (``applicationShouldTerminate:`` answers ``NSTerminateCancel``);
- Windows: it quits when its tray window gets ``WM_CLOSE``, which ``taskkill /PID`` without
  ``/F`` posts; its installer ends it with ``taskkill /F /T``;
- both stop their serve with an interrupt (SIGINT; on Windows Ctrl+Break on the serve's own
  console), 5 s, then a kill;
- the serve's output goes to ``~/.ollama/logs/server.log`` (macOS) or
  ``%LOCALAPPDATA%\\Ollama\\server.log`` (Windows), rotated to ``server-1.log`` … whenever the
  app (re)starts its server;
- its settings live in ``db.sqlite`` (table ``settings``): "Model location" (``models``) becomes
  the serve's ``OLLAMA_MODELS`` when that folder exists, "Expose Ollama to the network"
  (``expose``) its ``OLLAMA_HOST=0.0.0.0``; the caller's own environment never reaches the serve;
- it starts at login: macOS LaunchAgent ``com.ollama.ollama`` (SMAppService, or the older
  ``~/Library/LaunchAgents/com.ollama.ollama.plist``), Windows ``Startup\\Ollama.lnk``; started
  while another serve holds its port, it reaps every other ``ollama serve``.

An :class:`AppFinder` says how one OS's app is recognised (installed, running, which process);
:class:`OllamaApp` is a running app as the owner of a server, with its control steps built by
pure methods and carried out by :func:`quit_app` and :func:`restart_app_server`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import psutil

from tray.settings.hosts import DEFAULT_PORT, OllamaHost, parse_ollama_host
from tray.system.console_break import console_break
from tray.system.host import platform_name
from tray.system.owners import run_command
from tray.system.processes import (
    ProcessRef,
    is_server_cmdline,
    runners_of,
    username_of,
)

log = logging.getLogger(__name__)

APP_STOP_GRACE_S = 5.0  # the app's own interrupt → kill delay for its serve
POLL_S = 0.05


# --------------------------------------------------------------------------- where its files are


@dataclass(frozen=True)
class AppLayout:
    """Where one OS's app keeps its files."""

    platform: str  # whose conventions: "darwin" or "win32"
    server_log: Path
    settings_db: Path
    login_item: Path  # the file whose presence makes the app start at login (older macOS apps; Windows)

    @property
    def log_dir(self) -> Path:
        return self.server_log.parent


def app_layout(platform: str | None, env: Mapping[str, str]) -> AppLayout | None:
    """The app's files on ``platform``; None where Ollama has no desktop app (Linux).

    >>> app_layout("darwin", {"HOME": "/Users/ada"}).server_log.as_posix()
    '/Users/ada/.ollama/logs/server.log'
    >>> app_layout("win32", {"LOCALAPPDATA": "C:/Users/ada/AppData/Local"}).server_log.as_posix()
    'C:/Users/ada/AppData/Local/Ollama/server.log'
    """
    system = app_os_for(platform)
    return None if system is None else system.layout(env)


# --------------------------------------------------------------------------- control steps (pure values)


@dataclass(frozen=True)
class SendSignal:
    pid: int
    signal: int


@dataclass(frozen=True)
class RunCommand:
    argv: tuple[str, ...]


@dataclass(frozen=True)
class ConsoleBreak:
    """Ctrl+Break on the console of ``pid`` (:mod:`tray.system.console_break`)."""

    pid: int


ControlStep = SendSignal | RunCommand | ConsoleBreak


def perform(step: ControlStep) -> str | None:
    """Carry out one step; None when done, else why not (one line)."""
    if isinstance(step, SendSignal):
        try:
            os.kill(step.pid, step.signal)
        except ProcessLookupError:
            return None  # already gone: what the step wanted
        except OSError as exc:
            return f"signal {step.signal} to pid {step.pid}: {exc.strerror or exc}"
        return None
    if isinstance(step, ConsoleBreak):
        return console_break(step.pid)
    result = run_command(list(step.argv))
    return None if result.ok else result.message


Perform = Callable[[ControlStep], "str | None"]


# --------------------------------------------------------------------------- the running app


@dataclass(frozen=True)
class OllamaApp:
    """The running desktop app: the owner of the ``ollama serve`` it spawned and respawns."""

    process: ProcessRef
    executable: Path
    layout: AppLayout
    name: str = "ollama-app"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def platform(self) -> str:
        return self.layout.platform

    def quit_steps(self) -> list[ControlStep]:
        """How the app is asked to quit: SIGTERM (macOS), WM_CLOSE through ``taskkill`` without /F (Windows).

        >>> import signal
        >>> mac = OllamaApp(ProcessRef(42, 0.0), Path("/Applications/Ollama.app"), app_layout("darwin", {"HOME": "/h"}))
        >>> mac.quit_steps() == [SendSignal(42, signal.SIGTERM)]
        True
        """
        return self._os.quit_steps(self.pid)

    def force_quit_steps(self, tree: Sequence[int] = ()) -> list[ControlStep]:
        """Kill the app and, since a killed app leaves them behind, its serve and runners (``tree``)."""
        return self._os.force_quit_steps(self.pid, tree)

    def server_stop_steps(self, serve_pid: int) -> list[ControlStep]:
        """End the app's serve the way the app itself does, so it respawns one 1 s later."""
        return self._os.server_stop_steps(serve_pid)

    def server_kill_steps(self, serve_pid: int, runners: Sequence[int] = ()) -> list[ControlStep]:
        return self._os.server_kill_steps(serve_pid, runners)

    @property
    def _os(self) -> AppOS:
        system = app_os_for(self.platform)
        assert system is not None, f"Ollama has no desktop app on {self.platform}"
        return system

    def alive(self) -> bool:
        return self.process.alive()

    def serve_child(self) -> ProcessRef | None:
        """The ``ollama serve`` the app runs right now."""
        proc = self.process.get()
        if proc is None:
            return None
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            for child in proc.children():
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    if is_server_cmdline(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                        return ProcessRef.of(child)
        return None

    def describe(self) -> str:
        return "the Ollama app"

    def manual_command(self, verb: str) -> str:
        """What the user can do when the manager could not."""
        if verb == "restart":
            return "quit Ollama from its menu, then open it again"
        return f"{verb} Ollama from its menu"


class AppGone(Exception):
    """The app exited while the manager waited for its server."""


@dataclass(frozen=True)
class AppQuit:
    graceful: bool
    killed: list[int] = field(default_factory=list)
    detail: str = ""  # why it had to be killed


@dataclass(frozen=True)
class Respawn:
    old: ProcessRef | None
    new: ProcessRef
    graceful: bool  # the old serve exited on the app's own stop signal
    detail: str = ""


def _wait(condition: Callable[[], bool], timeout: float, clock: Callable[[], float] = time.monotonic) -> bool:
    deadline = clock() + timeout
    while True:
        if condition():
            return True
        if clock() >= deadline:
            return False
        time.sleep(POLL_S)


def _tree(ref: ProcessRef | None) -> list[int]:
    proc = ref.get() if ref else None
    if proc is None:
        return []
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        return [proc.pid] + [child.pid for child in proc.children(recursive=True)]
    return [proc.pid]


def quit_app(app: OllamaApp, timeout: float, act: Perform = perform) -> AppQuit:
    """Ask the app to quit (it stops its serve first) and wait; kill it, and what it ran, after ``timeout`` s."""
    for step in app.quit_steps():
        problem = act(step)
        if problem:
            log.warning("asking the Ollama app to quit: %s", problem)
    if _wait(lambda: not app.alive(), timeout):
        return AppQuit(graceful=True)
    tree = [pid for pid in _tree(app.process) if pid != app.pid]
    for step in app.force_quit_steps(tree):
        act(step)
    _wait(lambda: not app.alive(), 5.0)
    return AppQuit(False, [app.pid, *tree], f"the Ollama app did not quit within {timeout:g} s")


def restart_app_server(app: OllamaApp, stop_timeout: float, respawn_timeout: float, act: Perform = perform) -> Respawn:
    """End the app's serve as the app does, then await the one the app starts 1 s later.

    Raises :class:`AppGone` when the app itself exits, and TimeoutError when it starts no
    new serve within ``respawn_timeout`` seconds.
    """
    old = app.serve_child()
    graceful, detail = True, ""
    if old is not None:
        problem = next((p for p in (act(step) for step in app.server_stop_steps(old.pid)) if p), None)
        if problem is None and _wait(lambda: not old.alive(), stop_timeout):
            pass
        else:
            graceful = False
            detail = problem or f"the app's server did not exit within {stop_timeout:g} s"
            runners = [ref.pid for ref in runners_of(old)]
            for step in app.server_kill_steps(old.pid, runners):
                act(step)
            _wait(lambda: not old.alive(), 5.0)

    def respawned() -> bool:
        if not app.alive():
            raise AppGone("the Ollama app quit")
        new = app.serve_child()
        return new is not None and new != old

    if not _wait(respawned, respawn_timeout):
        raise TimeoutError(f"the Ollama app started no new server within {respawn_timeout:g} s")
    new = app.serve_child()
    assert new is not None
    return Respawn(old, new, graceful, detail)


# --------------------------------------------------------------------------- finding it


class AppFinder(Protocol):
    """How one OS's Ollama app is recognised."""

    @property
    def layout(self) -> AppLayout:
        """Where this app keeps its files."""
        ...

    def installed(self) -> Path | None:
        """The installed app (bundle or executable), if any."""
        ...

    def start_command(self) -> list[str] | None:
        """The argv that opens the installed app hidden; None when it is not installed."""
        ...

    def is_app(self, proc: psutil.Process) -> bool:
        """Whether ``proc`` is this app (raises psutil errors for a vanished or hidden process)."""
        ...


@dataclass(frozen=True)
class InstalledAppFinder:
    """What the per-OS finders share: where the app may be installed, and its layout."""

    layout: AppLayout
    candidates: tuple[Path, ...]

    def installed(self) -> Path | None:
        return next((path for path in self.candidates if path.exists()), None)

    def start_command(self) -> list[str] | None:
        app = self.installed()
        return None if app is None else self.start_command_for(app)

    def start_command_for(self, app: Path) -> list[str]:
        raise NotImplementedError


class AppOS(Protocol):
    """One OS's Ollama app: where it keeps its files, how it is found, told to quit, and started at login."""

    def layout(self, env: Mapping[str, str]) -> AppLayout:
        """Where the app keeps its files for the user of ``env``."""
        ...

    def finder(self, env: Mapping[str, str]) -> AppFinder:
        """How the app is recognised."""
        ...

    def quit_steps(self, pid: int) -> list[ControlStep]:
        """Ask the app ``pid`` to quit."""
        ...

    def force_quit_steps(self, pid: int, tree: Sequence[int]) -> list[ControlStep]:
        """Kill the app ``pid`` and the processes it ran (``tree``)."""
        ...

    def server_stop_steps(self, serve_pid: int) -> list[ControlStep]:
        """End the app's serve the way the app itself does."""
        ...

    def env_setter(self) -> tuple[str, ...]:
        """The command that, followed by a name and a value, sets a variable the app hands its serve once the
        user quits and reopens it (the app passes its own environment on)."""
        ...

    def server_kill_steps(self, serve_pid: int, runners: Sequence[int]) -> list[ControlStep]:
        """Kill the app's serve and its runners."""
        ...

    def starts_at_login(
        self,
        layout: AppLayout,
        *,
        run: Run,
        uid: int | None,
        startup_approved: Callable[[str], bytes | None] | None,
    ) -> bool:
        """Whether the app's login item will start it at the next login."""
        ...


def app_os_for(platform: str | None = None) -> AppOS | None:
    """The Ollama app of ``platform`` (a ``sys.platform`` value; default: this OS); None on Linux, which has none."""
    platform = platform_name(platform)
    if platform == "darwin":
        from tray.system.ollama_app_darwin import DarwinApp

        return DarwinApp()
    if platform == "win32":
        from tray.system.ollama_app_windows import WindowsApp

        return WindowsApp()
    return None


def app_finder_for(platform: str | None = None, env: Mapping[str, str] | None = None) -> AppFinder | None:
    """The finder for this OS's app; None on Linux, where Ollama has no desktop app."""
    system = app_os_for(platform)
    return None if system is None else system.finder(os.environ if env is None else env)


def _as_app(proc: psutil.Process, finder: AppFinder) -> OllamaApp | None:
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        if finder.is_app(proc):
            executable = Path(proc.exe())
            return OllamaApp(ProcessRef.of(proc), executable, finder.layout)
    return None


def app_owning(server: ProcessRef, finder: AppFinder) -> OllamaApp | None:
    """The app whose serve ``server`` is (its parent), if any."""
    proc = server.get()
    if proc is None:
        return None
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        parent = proc.parent()
        if parent is not None:
            return _as_app(parent, finder)
    return None


def running_app(finder: AppFinder) -> OllamaApp | None:
    """The user's running app, found from the process table."""
    me = username_of(psutil.Process())
    for proc in psutil.process_iter(["username"]):
        if me is not None and proc.info.get("username") != me:
            continue
        app = _as_app(proc, finder)
        if app is not None:
            return app
    return None


# --------------------------------------------------------------------------- its settings and models


@dataclass(frozen=True)
class AppSettings:
    models: str = ""  # "Model location"; empty: the default
    expose: bool = False  # "Expose Ollama to the network"


def read_app_settings(db: Path) -> AppSettings:
    """The app's settings row, read-only; defaults when there is no database (or it cannot be read)."""
    if not db.is_file():
        return AppSettings()
    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=2)) as connection:
            row = connection.execute("SELECT models, expose FROM settings WHERE id = 1").fetchone()
    except sqlite3.Error as exc:
        log.debug("cannot read the Ollama app's settings in %s: %s", db, exc)
        return AppSettings()
    if row is None:
        return AppSettings()
    return AppSettings(models=str(row[0] or ""), expose=bool(row[1]))


def app_model_location(layout: AppLayout) -> Path | None:
    """The app's "Model location" setting, which it passes to its serve as ``OLLAMA_MODELS`` only when that folder
    exists; None when it is unset or missing (the serve then uses Ollama's default).

    Where the running server really keeps its models is the supervisor's to learn (its environment, a
    runner's ``--model`` path, this setting, its home), as for every other server.
    """
    setting = read_app_settings(layout.settings_db).models
    return Path(setting) if setting and Path(setting).exists() else None


# --------------------------------------------------------------------------- start at login


Run = Callable[[list[str]], "tuple[int, str]"]


def run_capturing(argv: list[str]) -> tuple[int, str]:
    """Exit status and standard output of a short command; -1 when it cannot run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return -1, ""
    return done.returncode, done.stdout


def app_starts_at_login(
    layout: AppLayout,
    *,
    run: Run = run_capturing,
    uid: int | None = None,
    startup_approved: Callable[[str], bytes | None] | None = None,
) -> bool:
    """Whether the app's login item will start it (and its server) at the next login.

    ``run`` runs macOS's ``launchctl``; ``startup_approved`` reads Windows' Task Manager switch.
    """
    system = app_os_for(layout.platform)
    return system is not None and system.starts_at_login(layout, run=run, uid=uid, startup_approved=startup_approved)


# --------------------------------------------------------------------------- how to start (pure)


class StartRoute(StrEnum):
    VIA_APP = "via-app"  # open the app: it starts (and then supervises) its server
    WAIT_FOR_APP = "wait-for-app"  # the app runs: its server comes back by itself, 1 s after it exited
    OWN_SERVER = "own-server"  # the manager runs its own ollama serve


@dataclass(frozen=True)
class StartChoice:
    route: StartRoute
    warning: str = ""  # what the user must know: settings the app cannot honour, a login item that will interfere


def needs_own_server(host: OllamaHost, customized: bool) -> bool:
    """Whether only a serve of the manager's own can give what the settings ask.

    The app serves ``127.0.0.1:11434`` with its own environment: another address, exposure
    (``0.0.0.0``, ``:11434``) or any ``[ollama_server]`` setting needs the manager's serve.
    """
    return customized or host.port != DEFAULT_PORT or host.host not in ("127.0.0.1", "localhost")


def choose_start(
    *, own_server: bool, port: int, installed: bool, running: bool, login_item: bool, app_port: int = DEFAULT_PORT
) -> StartChoice:
    """How to start Ollama when nothing answers, given the app's state. Never quits the user's app.

    ``app_port``: the port the app's server takes (Ollama's default unless the app was started
    with another ``OLLAMA_HOST``).

    >>> choose_start(own_server=True, port=11434, installed=True, running=False, login_item=False).route
    <StartRoute.OWN_SERVER: 'own-server'>
    >>> choose_start(own_server=True, port=11434, installed=True, running=True, login_item=True).route
    <StartRoute.WAIT_FOR_APP: 'wait-for-app'>
    """
    same_port = port == app_port
    if running and same_port:
        warning = (
            f"the Ollama app runs the server on port {app_port} with its own settings, so the [ollama_server] "
            "settings and the address in ollama_host are not in effect: quit the Ollama app from its menu to let "
            "the manager run its own server"
            if own_server
            else ""
        )
        return StartChoice(StartRoute.WAIT_FOR_APP, warning)
    if own_server or not installed:
        warning = ""
        if installed and same_port and login_item:
            warning = (
                f"the Ollama app starts at login and will then take port {app_port} back, stopping the manager's "
                "server and its settings: turn its login item off (macOS: System Settings > General > Login Items; "
                "Windows: Task Manager > Startup apps)"
            )
        return StartChoice(StartRoute.OWN_SERVER, warning)
    return StartChoice(StartRoute.VIA_APP)


def app_server_port(app: OllamaApp | None) -> int:
    """The port the app's server takes: 11434, unless the app itself runs with another ``OLLAMA_HOST``.

    The app hands its own environment to its serve, with ``OLLAMA_HOST=0.0.0.0`` on top when
    it exposes Ollama to the network.
    """
    if app is None or read_app_settings(app.layout.settings_db).expose:
        return DEFAULT_PORT
    proc = app.process.get()
    if proc is None:
        return DEFAULT_PORT
    try:
        return parse_ollama_host(proc.environ().get("OLLAMA_HOST")).port
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return DEFAULT_PORT
