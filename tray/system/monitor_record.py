"""``monitor.json``: where the running monitor (or tray) serves its status API, and proof that it is still that one.

The file outlives a monitor that was killed. Its pid may then belong to another
program, which may even listen on the recorded port: before the API token is sent
there (or an answer trusted), the record is checked against the live system — the
pid's start time, its command line, and who listens on the port.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from tray.atomic import write_atomically
from tray.system.processes import find_listener

MANAGER_NAMES = {"ollama-manager", "ollama-manager.exe", "ollama manager", "ollama manager.exe"}
START_TIME_TOLERANCE = 0.01  # seconds: psutil's create_time is read from the same clock each time


@dataclass(frozen=True)
class MonitorRecord:
    pid: int
    port: int
    started: float | None  # the pid's create_time when the record was written (None: an older record)


@dataclass(frozen=True)
class ProcessFacts:
    """What the system says now about the recorded pid and port."""

    alive: bool
    started: float | None = None
    cmdline: tuple[str, ...] = ()
    listener_pid: int | None = None
    listener_uid: int | None = None
    port_listened: bool = False


def _basename(arg: str) -> str:
    return arg.replace("\\", "/").rsplit("/", 1)[-1].lower()


def is_manager_cmdline(cmdline: tuple[str, ...] | list[str]) -> bool:
    """The manager's own command line: its console script or bundle, or ``python -m tray``.

    >>> is_manager_cmdline(["/usr/bin/python3", "/home/ada/.local/bin/ollama-manager", "monitor"])
    True
    >>> is_manager_cmdline(["/opt/om/ollama-manager", "monitor"])
    True
    >>> is_manager_cmdline(["C:/Program Files/Ollama Manager/Ollama Manager.exe"])
    True
    >>> is_manager_cmdline(["/usr/bin/python3.11", "-m", "tray", "monitor"])
    True
    >>> is_manager_cmdline(["pythonw.exe", "-m", "tray"])
    True
    >>> is_manager_cmdline(["/usr/bin/python3", "-m", "http.server", "11436"])
    False
    >>> is_manager_cmdline(["/usr/bin/python3", "-c", "import tray"])
    False
    >>> is_manager_cmdline([])
    False
    """
    if not cmdline:
        return False
    if _basename(cmdline[0]) in MANAGER_NAMES:
        return True
    if not _basename(cmdline[0]).startswith("python") or len(cmdline) < 2:
        return False
    if _basename(cmdline[1]) in MANAGER_NAMES:  # a console script run by its interpreter (its shebang line)
        return True
    return len(cmdline) >= 3 and cmdline[1] == "-m" and cmdline[2] == "tray"


def record_problem(record: MonitorRecord, facts: ProcessFacts) -> str | None:
    """Why ``record`` does not describe the running monitor; None when it does.

    >>> record = MonitorRecord(pid=1234, port=11436, started=100.0)
    >>> ours = ProcessFacts(True, 100.0, ("ollama-manager", "monitor"), listener_pid=1234, port_listened=True)
    >>> record_problem(record, ours) is None
    True
    >>> record_problem(record, ProcessFacts(False))
    'pid 1234 has exited'
    >>> record_problem(record, ProcessFacts(True, 250.0, ("ollama-manager",), 1234, port_listened=True))
    'pid 1234 is another program'
    >>> record_problem(record, ProcessFacts(True, 100.0, ("python3", "-m", "http.server"), 1234, port_listened=True))
    'pid 1234 is another program'
    >>> record_problem(record, ProcessFacts(True, 100.0, ("ollama-manager",), 999, port_listened=True))
    'port 11436 is held by another program (pid 999)'
    >>> record_problem(record, ProcessFacts(True, 100.0, ("ollama-manager",), None, 1001, port_listened=True))
    "port 11436 is held by another user's program (uid 1001)"
    >>> record_problem(record, ProcessFacts(True, 100.0, ("ollama-manager",)))
    'nothing listens on port 11436'
    >>> record_problem(MonitorRecord(1234, 11436, None), ours)
    'it records no start time for pid 1234'
    """
    pid, port = record.pid, record.port
    if not facts.alive:
        return f"pid {pid} has exited"
    if record.started is None:
        return f"it records no start time for pid {pid}"
    if facts.started is None or abs(facts.started - record.started) > START_TIME_TOLERANCE:
        return f"pid {pid} is another program"
    if not is_manager_cmdline(facts.cmdline):
        return f"pid {pid} is another program"
    if not facts.port_listened:
        return f"nothing listens on port {port}"
    if facts.listener_pid == pid:
        return None
    if facts.listener_pid is not None:
        return f"port {port} is held by another program (pid {facts.listener_pid})"
    if facts.listener_uid is not None and facts.listener_uid != _own_uid():
        return f"port {port} is held by another user's program (uid {facts.listener_uid})"
    return f"port {port} is held by a program this user cannot see"


def _own_uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def read_record(path: Path) -> MonitorRecord | None:
    """The record in ``path``; None when there is none or it cannot be read."""
    try:
        info = json.loads(path.read_text())
        started = info.get("started")
        return MonitorRecord(int(info["pid"]), int(info["port"]), None if started is None else float(started))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_record(path: Path, pid: int, port: int) -> None:
    """Record that ``pid`` serves the status API on ``port``, with the pid's start time (0600)."""
    started = psutil.Process(pid).create_time()
    write_atomically(path, json.dumps({"pid": pid, "port": port, "started": started}).encode("utf-8"), mode=0o600)


def observe(record: MonitorRecord) -> ProcessFacts:
    """What the system says now about ``record``'s pid and port."""
    try:
        proc = psutil.Process(record.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return ProcessFacts(False)
        started = proc.create_time()
        try:
            cmdline = tuple(proc.cmdline())
        except psutil.AccessDenied:
            cmdline = ()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return ProcessFacts(False)
    except psutil.AccessDenied:
        return ProcessFacts(True)
    # While the pid listens on 127.0.0.1:port (or every address) no other user can bind 127.0.0.1:port, so
    # the link's connection reaches it. Its own sockets are visible on every OS (macOS refuses the whole table).
    if _listens_for_loopback(proc, record.port):
        return ProcessFacts(True, started, cmdline, record.pid, port_listened=True)
    listener = find_listener(record.port)  # who holds the port instead, for the one line
    if listener is None:
        return ProcessFacts(True, started, cmdline)
    return ProcessFacts(True, started, cmdline, listener.pid, listener.uid, port_listened=True)


LOOPBACK_REACHING = {"127.0.0.1", "0.0.0.0", "::", "::ffff:127.0.0.1"}


def _listens_for_loopback(proc: psutil.Process, port: int) -> bool:
    try:
        connections = proc.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return False
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.laddr.ip in LOOPBACK_REACHING
        for c in connections
    )


def verified_record(path: Path) -> tuple[MonitorRecord | None, str | None]:
    """The record of the monitor running now, else why there is none to trust: ``(record, None)`` or ``(None, why)``.

    ``why`` is None too when there is no record at all (no monitor ran, or it stopped cleanly).
    """
    record = read_record(path)
    if record is None:
        return None, None
    problem = record_problem(record, observe(record))
    if problem is not None:
        return None, f"{path.name} is stale: {problem}"
    return record, None
