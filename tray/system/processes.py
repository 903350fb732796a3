"""Finding, launching, identifying and stopping Ollama processes.

Only processes identified as the Ollama serving the configured port, or the
runners such a server spawned, are ever signalled. A foreign process on the
port is reported, never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from tray.atomic import private_dir, private_file
from tray.core.text import plain_line
from tray.errors import SupervisorError
from tray.settings.hosts import OllamaHost, parse_ollama_host
from tray.system.console_break import console_break

log = logging.getLogger(__name__)

INSTALL_URL = "https://ollama.com/download"
RUNNER_NAMES = {"llama-server", "llama-server.exe", "ollama_llama_server", "ollama_llama_server.exe"}
OLLAMA_NAMES = {"ollama", "ollama.exe"}

# Windows process creation flags and window state (subprocess defines them only on Windows).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NEW_CONSOLE = 0x00000010
CREATE_NO_WINDOW = 0x08000000
STARTF_USESHOWWINDOW = 0x00000001
SW_HIDE = 0


class OllamaNotInstalled(SupervisorError):
    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or f"Ollama is not installed: get it from {INSTALL_URL}")


# --------------------------------------------------------------------------- discovery


def ollama_home(env: Mapping[str, str], platform: str = sys.platform) -> Path:
    """The home folder Ollama keeps ``.ollama`` in: Go's ``os.UserHomeDir``.

    That is ``%USERPROFILE%`` on Windows, where ``$HOME`` (set by Git Bash, MSYS or
    Cygwin) may point elsewhere, and ``$HOME`` on every other OS.

    >>> str(ollama_home({"HOME": "/c/Users/ada/msys", "USERPROFILE": "/c/Users/ada"}, "win32"))
    '/c/Users/ada'
    >>> str(ollama_home({"HOME": "/home/ada", "USERPROFILE": "/x"}, "linux"))
    '/home/ada'
    """
    first, second = ("USERPROFILE", "HOME") if platform == "win32" else ("HOME", "USERPROFILE")
    return Path(env.get(first) or env.get(second) or Path.home())


def standard_locations(platform: str, env: Mapping[str, str]) -> list[Path]:
    """Where each OS's official installers put the ollama executable."""
    home = ollama_home(env, platform)
    if platform == "darwin":
        return [
            Path("/Applications/Ollama.app/Contents/Resources/ollama"),
            home / "Applications/Ollama.app/Contents/Resources/ollama",
            Path("/opt/homebrew/bin/ollama"),
            Path("/usr/local/bin/ollama"),
        ]
    if platform == "win32":
        local = Path(env.get("LOCALAPPDATA") or home / "AppData/Local")
        program_files = Path(env.get("ProgramFiles") or "C:/Program Files")
        return [local / "Programs/Ollama/ollama.exe", program_files / "Ollama/ollama.exe"]
    return [Path("/usr/local/bin/ollama"), Path("/usr/bin/ollama"), Path("/bin/ollama"), Path("/snap/bin/ollama")]


def find_ollama_binary(
    configured: str = "", env: Mapping[str, str] | None = None, platform: str = sys.platform
) -> Path:
    """The ollama executable: the configured path, else PATH, else the OS's install locations."""
    env = os.environ if env is None else env
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise OllamaNotInstalled(f"ollama_binary {path} does not exist: install Ollama from {INSTALL_URL}")
        return path
    found = shutil.which("ollama", path=env.get("PATH", ""))
    if found:
        return Path(found)
    for candidate in standard_locations(platform, env):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise OllamaNotInstalled()


# --------------------------------------------------------------------------- launching


@dataclass(frozen=True)
class LaunchPlan:
    argv: list[str]
    env: dict[str, str]
    via_app: bool = False  # the official app starts (and then supervises) the server
    creationflags: int = 0
    new_session: bool = True
    hidden_window: bool = False  # Windows: its new console starts hidden


def launch_plan(
    binary: Path | None,
    host: OllamaHost,
    *,
    platform: str = sys.platform,
    app_command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> LaunchPlan:
    """How to start Ollama on this OS (pure): through the app's ``app_command``, else ``ollama serve``.

    Whether the app may start it is :func:`tray.system.ollama_app.choose_start`'s call: the app
    serves ``127.0.0.1:11434`` from its own environment, never from ours.

    On Windows the serve gets a console of its own, hidden, in its own process group, as
    Ollama's app starts it: a console control event (Ctrl+Break) can then stop it alone.
    """
    child_env = dict(os.environ if env is None else env)
    child_env["OLLAMA_HOST"] = host.bind_value
    if app_command is not None:
        flags = CREATE_NO_WINDOW if platform == "win32" else 0
        new_session = platform != "win32"
        return LaunchPlan(list(app_command), child_env, via_app=True, creationflags=flags, new_session=new_session)
    if binary is None:
        raise OllamaNotInstalled()
    if platform == "win32":
        return LaunchPlan(
            [str(binary), "serve"],
            child_env,
            creationflags=CREATE_NEW_CONSOLE | CREATE_NEW_PROCESS_GROUP,
            new_session=False,
            hidden_window=True,
        )
    return LaunchPlan([str(binary), "serve"], child_env)


def _hidden_window() -> Any:
    """Windows ``STARTUPINFO`` that starts the new console's window hidden (Go's ``HideWindow``)."""
    info = subprocess.STARTUPINFO()  # type: ignore[attr-defined,unused-ignore]
    info.dwFlags |= STARTF_USESHOWWINDOW
    info.wShowWindow = SW_HIDE
    return info


def spawn(plan: LaunchPlan, log_path: Path) -> subprocess.Popen[bytes]:
    """Start the plan detached from us, output appended to ``log_path`` (or discarded)."""
    stdout: int | IO[bytes] = subprocess.DEVNULL
    log_file = None
    try:
        private_dir(log_path.parent)
        private_file(log_path)
        log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        stdout = log_file
    except OSError as exc:
        log.warning("server log %s is not writable (%s); discarding Ollama's output", log_path, exc)
    try:
        return subprocess.Popen(
            plan.argv,
            env=plan.env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=plan.new_session,
            creationflags=plan.creationflags,
            startupinfo=_hidden_window() if plan.hidden_window and sys.platform == "win32" else None,
            close_fds=True,
        )
    finally:
        if log_file is not None:
            log_file.close()


# --------------------------------------------------------------------------- identification


def _basename(arg: str) -> str:
    return arg.replace("\\", "/").rsplit("/", 1)[-1].lower()


INTERPRETERS = ("python", "sh", "bash", "dash", "zsh")


def _ollama_subcommand(cmdline: list[str]) -> str | None:
    """'serve', 'runner', ... when the command line runs an ollama executable.

    The executable may be a script run by an interpreter (a wrapper script
    installed as ``ollama``), which puts it second on the command line.
    """
    if not cmdline:
        return None
    index = 0
    if _basename(cmdline[0]) not in OLLAMA_NAMES:
        if not _basename(cmdline[0]).startswith(INTERPRETERS) or len(cmdline) < 2:
            return None
        if _basename(cmdline[1]) not in OLLAMA_NAMES:
            return None
        index = 1
    return cmdline[index + 1] if index + 1 < len(cmdline) else ""


def is_server_cmdline(cmdline: list[str]) -> bool:
    """An ``ollama serve`` (or its alias ``start``)."""
    return _ollama_subcommand(cmdline) in ("serve", "start")


def is_runner_cmdline(cmdline: list[str]) -> bool:
    """A model runner: ``ollama runner`` (<= v0.2x) or ``llama-server`` / ``ollama_llama_server``."""
    if cmdline and _basename(cmdline[0]) in RUNNER_NAMES:
        return True
    return _ollama_subcommand(cmdline) == "runner"


def runner_model_path(cmdline: list[str]) -> str | None:
    for flag in ("--model", "-m"):
        if flag in cmdline:
            index = cmdline.index(flag)
            if index + 1 < len(cmdline):
                return cmdline[index + 1]
    return None


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


@dataclass(frozen=True)
class Listener:
    """Who listens on a TCP port, as far as this user can tell.

    ``uid`` owns the listening socket (Linux tells everyone: ``/proc/net/tcp``);
    ``pid`` is None where the OS hides which process holds it (another user's).
    """

    port: int
    uid: int | None = None
    pid: int | None = None
    inode: int | None = None


_TCP_LISTEN = "0A"


def parse_proc_net_tcp(text: str, port: int) -> list[tuple[int, int]]:
    r"""(uid, socket inode) of each socket listening on ``port`` in a ``/proc/net/tcp{,6}`` table.

    >>> table = (
    ...     "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    ...     "   0: 0100007F:2CAA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   996        0 48213 1\n"
    ...     "   1: 0100007F:2CAA 0100007F:9C40 01 00000000:00000000 00:00000000 00000000   996        0 48300 1\n"
    ... )
    >>> parse_proc_net_tcp(table, 11434)
    [(996, 48213)]
    """
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _TCP_LISTEN:
            continue
        try:
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            uid, inode = int(fields[7]), int(fields[9])
        except (IndexError, ValueError):
            continue
        if local_port == port:
            found.append((uid, inode))
    return found


def _pid_of_socket(inode: int, uid: int, proc: Path) -> int | None:
    """The process holding socket ``inode``, among those of ``uid`` whose fds this user may read."""
    target = f"socket:[{inode}]"
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) == target:
                    return int(entry.name)
        except OSError:  # gone, or not ours to read
            continue
    return None


def _lone_server_of(uid: int) -> int | None:
    """The one ``ollama serve`` process ``uid`` runs, when there is exactly one (the table is world-readable)."""
    found = []
    for proc in psutil.process_iter(["pid", "uids", "cmdline"]):
        uids = proc.info.get("uids")
        if uids is not None and uids.real == uid and is_server_cmdline(proc.info.get("cmdline") or []):
            found.append(int(proc.info["pid"]))
    return found[0] if len(found) == 1 else None


PROC = Path("/proc")  # Linux's process and socket tables; absent elsewhere


def find_listener(port: int, proc: Path | None = None) -> Listener | None:
    """The listener of TCP ``port``: its socket's owner from ``/proc/net/tcp{,6}`` (Linux), its process where visible.

    The process comes from ``/proc/<pid>/fd`` where this user may read it, else
    from the process table when the socket's owner runs exactly one ``ollama serve``.
    Without ``/proc`` (macOS, Windows) it comes from ``psutil.net_connections``, which
    on macOS is refused unless root: then the user's own ``ollama serve`` on the port
    is found from the process table (:func:`own_server_on_port`).
    """
    proc = PROC if proc is None else proc
    tables = [proc / "net" / "tcp", proc / "net" / "tcp6"]
    if not any(table.exists() for table in tables):
        pid = _psutil_listening_pid(port)
        if pid is None:
            own = own_server_on_port(port)
            pid = own.pid if own is not None else None
        return Listener(port, pid=pid) if pid else None
    for table in tables:
        try:
            sockets = parse_proc_net_tcp(table.read_text(), port)
        except OSError:
            continue
        for uid, inode in sockets:
            pid = _pid_of_socket(inode, uid, proc) or _lone_server_of(uid)
            return Listener(port, uid, pid, inode)
    return None


def _psutil_listening_pid(port: int) -> int | None:
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return int(conn.pid)
    return None


def listening_pid(port: int) -> int | None:
    """PID of the process listening on TCP ``port``, where the OS lets us see it."""
    listener = find_listener(port)
    return listener.pid if listener else None


def describe_process(pid: int | None) -> str:
    if pid is None:
        return "another program"
    try:
        proc = psutil.Process(pid)
        name = proc.name()
        cmdline = _cmdline(proc)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return f"process {pid}"
    # Another program's name and arguments are its own choice: shown as one plain line, bounded.
    name = plain_line(name, 40)
    shown = plain_line(" ".join(cmdline[:3]), 120) if cmdline else name
    return f"{name} (pid {pid}: {shown})" if shown != name else f"{name} (pid {pid})"


@dataclass(frozen=True)
class ProcessRef:
    """A process pinned by its start time, so a reused PID is never signalled."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, proc: psutil.Process) -> ProcessRef:
        return cls(proc.pid, proc.create_time())

    def get(self) -> psutil.Process | None:
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.01:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None

    def alive(self) -> bool:
        return self.get() is not None


def username_of(proc: psutil.Process) -> str | None:
    """Who runs ``proc``; None when the OS does not say."""
    try:
        return proc.username()
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError):
        return None


def _listens_on(proc: psutil.Process, port: int) -> bool:
    """Whether ``proc`` listens on TCP ``port``: its own sockets, else (hidden) the port its OLLAMA_HOST names."""
    try:
        connections = proc.net_connections(kind="tcp")
    except psutil.AccessDenied:
        try:
            return parse_ollama_host(proc.environ().get("OLLAMA_HOST")).port == port
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            return False
    except (psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections)


def own_server_on_port(port: int) -> ProcessRef | None:
    """The user's own ``ollama serve`` listening on ``port``, found from the process table.

    For when the OS hides who listens on the port: on macOS ``psutil.net_connections()``
    raises AccessDenied unless root, yet a process's own sockets, command line and
    environment are readable by the user who runs it (the Ollama app's server, a
    Homebrew service, a serve started in a terminal).
    """
    me = username_of(psutil.Process())
    for proc in psutil.process_iter(["cmdline", "username"]):
        if me is None or proc.info.get("username") != me or not is_server_cmdline(proc.info.get("cmdline") or []):
            continue
        if _listens_on(proc, port):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                return ProcessRef.of(proc)
    return None


def server_on_port(port: int) -> ProcessRef | None:
    """The ollama server process listening on ``port``, if that is what listens there."""
    pid = listening_pid(port)
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        if is_server_cmdline(_cmdline(proc)):
            return ProcessRef.of(proc)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return None


def descendants_of(server: ProcessRef) -> list[psutil.Process] | None:
    """Every process under ``server`` (a look at the whole process table); None when it is gone or hidden."""
    proc = server.get()
    if proc is None:
        return None
    try:
        return proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def runners_of(server: ProcessRef, descendants: Sequence[psutil.Process] | None = None) -> list[ProcessRef]:
    """The runners under ``server``; ``descendants`` when already looked up (:func:`descendants_of`)."""
    children = descendants if descendants is not None else descendants_of(server)
    refs: list[ProcessRef] = []
    for child in children or ():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if is_runner_cmdline(_cmdline(child)):
                refs.append(ProcessRef.of(child))
    return refs


def cpu_seconds(refs: Iterable[ProcessRef]) -> dict[ProcessRef, float | None]:
    """User + system CPU seconds of each live process; None where the OS does not tell.

    Linux shows every user's times (``/proc/<pid>/stat``); macOS hides other
    users' processes. A process that is gone is left out.
    """
    times: dict[ProcessRef, float | None] = {}
    for ref in refs:
        try:
            proc = psutil.Process(ref.pid)
            if abs(proc.create_time() - ref.create_time) > 0.01:
                continue
            used = proc.cpu_times()
            times[ref] = float(used.user + used.system)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except psutil.AccessDenied:
            times[ref] = None
    return times


# --------------------------------------------------------------------------- stopping


@dataclass
class StopOutcome:
    found: bool = True  # there was a live process to stop
    graceful: bool = True  # exited on the polite signal
    killed: list[int] = field(default_factory=list)  # PIDs that needed a hard kill
    runners_reaped: list[int] = field(default_factory=list)
    seconds: float = 0.0
    hard_kill_reason: str = ""  # why the polite way did not do it

    def how(self) -> str:
        """How it stopped, for "Ollama stopped (…)".

        >>> StopOutcome(graceful=False, killed=[7], hard_kill_reason="it did not exit within 5 s").how()
        'killed: it did not exit within 5 s'
        """
        if not self.found:
            return "it was not running"
        if self.graceful:
            return "gracefully"
        return f"killed: {self.hard_kill_reason}" if self.hard_kill_reason else "killed"

    def message(self) -> str:
        """What the user is told: a stop that took a kill says so."""
        return "Ollama stopped" if self.graceful else f"Ollama stopped ({self.how()})"


def hard_kill_command(pid: int) -> list[str]:
    """Windows: end ``pid`` and every process it started, as Ollama's installer ends Ollama.

    >>> hard_kill_command(42)
    ['taskkill', '/F', '/T', '/PID', '42']
    """
    return ["taskkill", "/F", "/T", "/PID", str(pid)]


def polite_stop(proc: psutil.Process, platform: str = sys.platform) -> str | None:
    """Ask ``proc`` to exit; None when asked, else why it could not be asked (one line).

    POSIX: SIGTERM (and SIGCONT for a stopped process). Windows: Ctrl+Break on the
    process's own console, the way Ollama's app stops its server
    (:mod:`tray.system.console_break`); a console event sent from another console never arrives.
    """
    if platform == "win32":
        return console_break(proc.pid)
    proc.send_signal(signal.SIGTERM)
    # A stopped (SIGSTOP) process only acts on SIGTERM once continued.
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        if proc.status() == psutil.STATUS_STOPPED:
            proc.send_signal(signal.SIGCONT)
    return None


def hard_kill(proc: psutil.Process, platform: str = sys.platform) -> None:
    """SIGKILL; on Windows ``taskkill /F /T``, which ends the runners with their server."""
    if platform == "win32":
        try:
            done = subprocess.run(
                hard_kill_command(proc.pid),
                capture_output=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
                creationflags=CREATE_NO_WINDOW,
                check=False,
            )
            if done.returncode == 0:
                return
        except (OSError, subprocess.TimeoutExpired):
            pass
    proc.kill()


def _exited(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except psutil.AccessDenied:
        return False


def wait_exited(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` s for each process to exit; those still running.

    A process that exited but whose parent has not reaped it yet (a zombie: an
    orphan waits for init to collect it) has exited: psutil alone would wait
    for it until the timeout and count it as alive.
    """
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while alive:
        _, alive = psutil.wait_procs(alive, timeout=max(0.0, min(0.05, deadline - time.monotonic())))
        alive = [proc for proc in alive if not _exited(proc)]
        if time.monotonic() >= deadline:
            break
    return alive


def terminate(refs: Iterable[ProcessRef], timeout: float, platform: str = sys.platform) -> StopOutcome:
    """Ask politely, wait ``timeout`` seconds, then kill what is left; one that cannot be asked is killed at once."""
    started = time.monotonic()
    outcome = StopOutcome()
    procs = [p for p in (ref.get() for ref in refs) if p is not None]
    outcome.found = bool(procs)
    asked: list[psutil.Process] = []
    unasked: list[psutil.Process] = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            reason = polite_stop(proc, platform)
            if reason is None:
                asked.append(proc)
            else:
                log.warning("could not ask Ollama (pid %s) to stop: %s", proc.pid, reason)
                unasked.append(proc)
                outcome.hard_kill_reason = reason
    alive = wait_exited(asked, timeout)
    if alive:
        outcome.hard_kill_reason = f"it did not exit within {timeout:g} s"
    leftovers = unasked + list(alive)
    if leftovers:
        outcome.graceful = False
        for proc in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                hard_kill(proc, platform)
                outcome.killed.append(proc.pid)
        wait_exited(leftovers, 5)
    outcome.seconds = time.monotonic() - started
    return outcome


def kill_runners(refs: Iterable[ProcessRef]) -> list[int]:
    """SIGKILL runners (they hold no state worth a graceful exit) and wait for them."""
    procs = [p for p in (ref.get() for ref in refs) if p is not None]
    killed = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.kill()
            killed.append(proc)
    psutil.wait_procs(killed, timeout=5)
    return [p.pid for p in killed]
