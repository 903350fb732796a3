"""Stand-in for Ollama's desktop app (``Ollama.app`` / ``ollama app.exe``), on POSIX, standard library only.

It supervises ``ollama serve`` the way the app does (app/server/server.go, app/cmd/app/app.go,
app/logrotate, app/store), with the macOS app's file layout under ``$HOME``:

- at start it rotates ``~/.ollama/logs/server.log`` (``server-1.log`` … ``server-5.log``) and stops
  the serve named by ``~/Library/Application Support/Ollama/ollama.pid`` (interrupt, 5 s, kill);
- it runs ``ollama serve`` (the ``ollama`` beside its own executable, else on PATH) **after a fixed
  1 s delay**, output appended to ``server.log``, writes the pid file, waits, and respawns it
  1 s after every exit, forever;
- the serve's environment is the app's own plus the settings in
  ``~/Library/Application Support/Ollama/db.sqlite`` (table ``settings``): ``expose`` →
  ``OLLAMA_HOST=0.0.0.0``, ``browser`` → ``OLLAMA_ORIGINS=*``, ``models`` → ``OLLAMA_MODELS`` (only
  when that folder exists), ``context_length`` > 0 → ``OLLAMA_CONTEXT_LENGTH``;
- on the first exit with status 1 it assumes a port conflict and reaps the other ``ollama serve``
  processes, SIGTERM, then SIGKILL where that fails;
- SIGTERM or SIGINT quit it: the serve gets an interrupt, 5 s, then a kill, and the app exits 0;
- SIGHUP stands for a change in its Settings window: the server restarts as ``Restart`` does it
  (stop, rotate the log, start after 1 s).

Where it differs: its reaping, which on a real Mac hits every ``ollama serve`` of the machine, only
touches serves of the ``ollama`` it runs itself, so a test never reaps another test's servers; it
finds them by their arguments (``ps -axww``) rather than by name; and a serve run as
``python3 …/ollama serve`` counts as ``ollama serve``.

Events (``$OLLAMA_STANDIN_EVENTS``): ``app_start``, ``app_serve_start``, ``app_serve_exit``,
``app_reap``, ``app_exit``.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import standin_common as common
from standin_common import append_event

RESTART_DELAY_S = 1.0
STOP_GRACE_S = 5.0
MAX_LOG_FILES = 5
APP_PROCESS_NAME = "Ollama"


def support_dir() -> str:
    return os.path.join(os.path.expanduser("~"), "Library", "Application Support", "Ollama")


def server_log_path() -> str:
    return os.path.join(os.path.expanduser("~"), ".ollama", "logs", "server.log")


def app_log_path() -> str:
    return os.path.join(os.path.expanduser("~"), ".ollama", "logs", "app.log")


def pid_file() -> str:
    return os.path.join(support_dir(), "ollama.pid")


def db_path() -> str:
    return os.path.join(support_dir(), "db.sqlite")


def rotate(filename: str) -> None:
    """``logrotate.Rotate``: ``x.log`` → ``x-1.log`` → … → ``x-5.log``, the oldest dropped."""
    if not os.path.exists(filename):
        return
    stem, dot, extension = filename.rpartition(".")
    for index in range(MAX_LOG_FILES, 0, -1):
        older = "%s-%d.%s" % (stem, index, extension)
        newer = filename if index == 1 else "%s-%d.%s" % (stem, index - 1, extension)
        if os.path.exists(newer):
            if os.path.exists(older):
                try:
                    os.remove(older)
                except OSError:
                    continue
            try:
                os.rename(newer, older)
            except OSError:
                pass


def read_settings() -> Dict[str, Any]:
    """The app's settings row; defaults when the database does not exist yet."""
    settings: Dict[str, Any] = {"expose": False, "browser": False, "models": "", "context_length": 0}
    if not os.path.exists(db_path()):
        return settings
    try:
        with sqlite3.connect(db_path()) as connection:
            query = "SELECT expose, browser, models, context_length FROM settings WHERE id = 1"
            row = connection.execute(query).fetchone()
    except sqlite3.Error:
        return settings
    if row is not None:
        settings.update(expose=bool(row[0]), browser=bool(row[1]), models=row[2] or "", context_length=int(row[3] or 0))
    return settings


def write_settings(**values: Any) -> None:
    """Store settings as the app's Settings window does (creates the database with the app's schema)."""
    os.makedirs(support_dir(), exist_ok=True)
    with sqlite3.connect(db_path()) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS settings (id INTEGER PRIMARY KEY CHECK (id = 1),"
            " device_id TEXT NOT NULL DEFAULT '', has_completed_first_run BOOLEAN NOT NULL DEFAULT 0,"
            " expose BOOLEAN NOT NULL DEFAULT 0, survey BOOLEAN NOT NULL DEFAULT TRUE,"
            " browser BOOLEAN NOT NULL DEFAULT 0, models TEXT NOT NULL DEFAULT '',"
            " context_length INTEGER NOT NULL DEFAULT 0, schema_version INTEGER NOT NULL DEFAULT 14)"
        )
        connection.execute("INSERT OR IGNORE INTO settings (id) VALUES (1)")
        for key, value in values.items():
            connection.execute("UPDATE settings SET %s = ? WHERE id = 1" % key, (value,))


def serve_environment() -> Dict[str, str]:
    """``Server.cmd``: the app's environment with its settings merged in."""
    env = dict(os.environ)
    settings = read_settings()
    if settings["expose"]:
        env["OLLAMA_HOST"] = "0.0.0.0"
    if settings["browser"]:
        env["OLLAMA_ORIGINS"] = "*"
    if settings["models"]:
        if os.path.exists(settings["models"]):
            env["OLLAMA_MODELS"] = settings["models"]
        else:
            log("WARN", "models path not accessible, using default", path=settings["models"])
    if settings["context_length"] > 0:
        env["OLLAMA_CONTEXT_LENGTH"] = str(settings["context_length"])
    env["OLLAMA_NO_CLOUD"] = "0"
    return env


def resolve_ollama() -> str:
    """``resolvePath("ollama")``: beside the app's executable first, else on PATH."""
    invoked = os.path.dirname(os.path.abspath(sys.argv[0]))
    beside = os.path.join(invoked, "ollama")
    if os.path.isfile(beside):
        return beside
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(directory, "ollama")
        if directory and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return "ollama"


_log_lock = threading.Lock()


def log(level: str, msg: str, **attrs: Any) -> None:
    """A line of the app's own log (``app.log``)."""
    line = common.slog_line(level, "server.go:1", msg, attrs.items())
    with _log_lock:
        try:
            with open(app_log_path(), "a") as handle:
                handle.write(line + "\n")
        except OSError:
            pass


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def stop_pid(pid: int, reap: Optional[subprocess.Popen] = None) -> None:  # type: ignore[type-arg]
    """``stop``: interrupt, poll for 5 s, then kill."""
    try:
        os.kill(pid, signal.SIGINT)
    except OSError:
        return
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        if reap is not None and reap.poll() is not None:
            return
        if reap is None and not alive(pid):
            return
        time.sleep(0.01)
    log("WARN", "timeout waiting for graceful shutdown; killing", pid=pid)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    if reap is not None:
        reap.wait()


def is_serve_args(args: List[str]) -> bool:
    """``ollamaServeArgs``, also accepting ``python3 …/ollama serve`` (the stand-in is a script)."""
    if len(args) >= 2 and os.path.basename(args[0]).startswith("python"):
        args = args[1:]
    if len(args) < 2 or os.path.basename(args[0].strip('"')) not in ("ollama", "ollama.exe"):
        return False
    for raw in args[1:]:
        arg = raw.strip('"')
        if arg.startswith("-"):
            continue
        return arg in ("serve", "start")
    return False


def serve_executable(args: List[str]) -> str:
    """The ``ollama`` a serve's arguments run (after ``python3`` for the script)."""
    if len(args) >= 2 and os.path.basename(args[0]).startswith("python"):
        return args[1]
    return args[0] if args else ""


def reap_servers(own_child: int) -> List[int]:
    """``reapServers``: SIGTERM every other ``ollama serve`` (SIGKILL where that fails).

    The app lists ``pgrep -x ollama`` and reads each one's ``ps -o args=``; the stand-in's serve is
    named after its interpreter on macOS, so the stand-in lists every process's arguments instead
    (``ps -axww``: never cut to ``$COLUMNS``). Only serves of the ``ollama`` this app runs are
    reaped, so a test never reaps another test's servers.
    """
    ours = os.path.abspath(resolve_ollama())
    try:
        listing = subprocess.run(
            ["ps", "-axww", "-o", "pid=,args="], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    reaped = []
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) < 2 or not fields[0].isdigit():
            continue
        pid, args = int(fields[0]), fields[1:]
        if pid in (os.getpid(), own_child) or not is_serve_args(args):
            continue
        if os.path.abspath(serve_executable(args)) != ours:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError as error:
                log("WARN", "failed to stop external ollama process", pid=pid, err=str(error))
                continue
        log("INFO", "stopped external ollama process", pid=pid)
        reaped.append(pid)
    return reaped


class ServerSupervisor:
    """``server.Server.Run``: one serve at a time, respawned 1 s after it exits."""

    def __init__(self) -> None:
        self.quit = threading.Event()
        self.restart_requested = threading.Event()
        self.child: Optional[subprocess.Popen] = None  # type: ignore[type-arg]
        self.lock = threading.Lock()

    def cleanup(self) -> None:
        """Stop the serve a previous app left behind (its pid file)."""
        try:
            with open(pid_file()) as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError):
            return
        try:
            os.remove(pid_file())
        except OSError:
            pass
        if alive(pid):
            log("INFO", "detected previous ollama process, cleaning up", pid=pid)
            stop_pid(pid)

    def run(self) -> None:
        """Run generations of serves until quit; each generation rotates the log first."""
        while not self.quit.is_set():
            self.restart_requested.clear()
            self._run_once()

    def _run_once(self) -> None:
        os.makedirs(os.path.dirname(server_log_path()), exist_ok=True)
        rotate(server_log_path())
        log_file = open(server_log_path(), "ab")  # noqa: SIM115 - each serve started below writes to it
        self.cleanup()
        reaped = False
        try:
            while not self.quit.is_set() and not self.restart_requested.is_set():
                if self._interrupted_wait(RESTART_DELAY_S):
                    return
                with self.lock:
                    if self.quit.is_set() or self.restart_requested.is_set():
                        return
                    self.child = subprocess.Popen(
                        [resolve_ollama(), "serve"],
                        env=serve_environment(),
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=log_file,
                    )
                    child = self.child
                try:
                    os.makedirs(support_dir(), exist_ok=True)
                    with open(pid_file(), "w") as handle:
                        handle.write(str(child.pid))
                except OSError as error:
                    log("WARN", "failed to write pid file", file=pid_file(), err=str(error))
                append_event(
                    {
                        "event": "app_serve_start",
                        "pid": child.pid,
                        "app_pid": os.getpid(),
                        "create_time": common.process_create_time(child.pid),
                        "time": time.time(),
                    }
                )
                code = child.wait()
                append_event({"event": "app_serve_exit", "pid": child.pid, "code": code, "time": time.time()})
                with self.lock:
                    self.child = None
                if code == 1 and not reaped and not self.quit.is_set():
                    reaped = True
                    pids = reap_servers(child.pid)
                    append_event({"event": "app_reap", "pids": pids, "time": time.time()})
                    continue
                if code != 0:
                    log("ERROR", "ollama exited", err="exit status %d" % code)
        finally:
            log_file.close()

    def _interrupted_wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.quit.is_set() or self.restart_requested.is_set():
                return True
            time.sleep(0.02)
        return False

    def stop_child(self) -> None:
        with self.lock:
            child = self.child
        if child is not None and child.poll() is None:
            stop_pid(child.pid, reap=child)


def main(argv: List[str]) -> int:
    for arg in argv:
        if arg == "serve":
            sys.stderr.write("serve command not supported, use ollama\n")
            return 1
        if arg in ("version", "-v", "--version"):
            sys.stdout.write(common.VERSION + "\n")
            return 0
    common.set_process_name(APP_PROCESS_NAME)
    os.makedirs(os.path.dirname(app_log_path()), exist_ok=True)
    rotate(app_log_path())
    log("INFO", "starting Ollama", app=os.path.abspath(sys.argv[0]), version=common.VERSION)
    append_event(
        {
            "event": "app_start",
            "pid": os.getpid(),
            "create_time": common.process_create_time(os.getpid()),
            "args": argv,
            "time": time.time(),
        }
    )
    supervisor = ServerSupervisor()
    received: List[int] = []

    def on_quit(number: int, _frame: Any) -> None:
        received.append(number)
        supervisor.quit.set()
        log("INFO", "received SIGINT or SIGTERM signal, shutting down")

    def on_settings_changed(_number: int, _frame: Any) -> None:
        supervisor.restart_requested.set()

    signal.signal(signal.SIGTERM, on_quit)
    signal.signal(signal.SIGINT, on_quit)
    signal.signal(signal.SIGHUP, on_settings_changed)
    worker = threading.Thread(target=supervisor.run, name="ollama-server", daemon=True)
    worker.start()
    while worker.is_alive():
        if supervisor.quit.is_set() or supervisor.restart_requested.is_set():
            supervisor.stop_child()
        worker.join(0.05)
    log("INFO", "shutting down ollama server")
    quit_signal = received[0] if received else None
    append_event({"event": "app_exit", "pid": os.getpid(), "signal": quit_signal, "time": time.time()})
    return 0
