"""Stop a Windows console process the way Ollama's app stops its server: Ctrl+Break on its console.

A console control event reaches only processes attached to the sender's console, and
``ollama serve`` runs on a console of its own (hidden, in its own process group), so
``os.kill(pid, CTRL_BREAK_EVENT)`` never reaches it. Ollama's app
(``app/server/server_windows.go``, ``terminate``) attaches to the server's console first:
``AttachConsole(pid)``, ``SetConsoleCtrlHandler(NULL, TRUE)``,
``GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pid)``; the server takes the event as an
interrupt, stops its runners and exits 0.

``AttachConsole`` fails in a process that already has a console (the command line does),
and detaching from our own console would cut off its output. So the sequence runs in a
helper without any console: the manager's own executable, started with
``DETACHED_PROCESS`` and ``--console-break PID`` (:func:`helper_command`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

HELPER_FLAG = "--console-break"
CTRL_BREAK_EVENT = 1
DETACHED_PROCESS = 0x00000008
HELPER_TIMEOUT_S = 15.0


class ConsoleBreakError(Exception):
    """One step of the sequence failed; ``str()`` names the step and the Windows error."""


class ConsoleApi(Protocol):
    """The kernel32 console functions the sequence calls (each returns non-zero on success)."""

    def AttachConsole(self, pid: int) -> int: ...

    def SetConsoleCtrlHandler(self, handler: object, add: bool) -> int: ...

    def GenerateConsoleCtrlEvent(self, event: int, process_group: int) -> int: ...

    def FreeConsole(self) -> int: ...

    def last_error(self) -> int: ...


def send_console_break(pid: int, api: ConsoleApi) -> None:
    """Attach to ``pid``'s console, ignore Ctrl+C ourselves, send Ctrl+Break to its process group, detach.

    ``pid`` must lead its process group, as a serve started with ``CREATE_NEW_PROCESS_GROUP`` does.
    """
    if not api.AttachConsole(pid):
        raise ConsoleBreakError(f"AttachConsole({pid}) failed with Windows error {api.last_error()}")
    try:
        if not api.SetConsoleCtrlHandler(None, True):
            raise ConsoleBreakError(f"SetConsoleCtrlHandler failed with Windows error {api.last_error()}")
        if not api.GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pid):
            raise ConsoleBreakError(f"GenerateConsoleCtrlEvent({pid}) failed with Windows error {api.last_error()}")
    finally:
        api.FreeConsole()


class Kernel32Console:
    """:class:`ConsoleApi` on the real ``kernel32.dll`` (Windows only)."""

    def __init__(self) -> None:
        import ctypes
        from ctypes import wintypes

        self._ctypes: Any = ctypes
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined,unused-ignore]
        kernel32.AttachConsole.argtypes = [wintypes.DWORD]
        kernel32.SetConsoleCtrlHandler.argtypes = [ctypes.c_void_p, wintypes.BOOL]
        kernel32.GenerateConsoleCtrlEvent.argtypes = [wintypes.DWORD, wintypes.DWORD]
        self._kernel32 = kernel32

    def AttachConsole(self, pid: int) -> int:
        return int(self._kernel32.AttachConsole(pid))

    def SetConsoleCtrlHandler(self, handler: object, add: bool) -> int:
        return int(self._kernel32.SetConsoleCtrlHandler(handler, add))

    def GenerateConsoleCtrlEvent(self, event: int, process_group: int) -> int:
        return int(self._kernel32.GenerateConsoleCtrlEvent(event, process_group))

    def FreeConsole(self) -> int:
        return int(self._kernel32.FreeConsole())

    def last_error(self) -> int:
        return int(self._ctypes.get_last_error())


def helper_command(pid: int, *, executable: str | None = None, frozen: bool | None = None) -> list[str]:
    """The helper's argv: the bundle's own executable, or this Python running the ``tray`` package.

    >>> helper_command(4242, executable="C:/om/ollama-manager.exe", frozen=True)
    ['C:/om/ollama-manager.exe', '--console-break', '4242']
    >>> helper_command(4242, executable="C:/py/python.exe", frozen=False)
    ['C:/py/python.exe', '-m', 'tray', '--console-break', '4242']
    """
    executable = executable or sys.executable
    frozen = bool(getattr(sys, "frozen", False)) if frozen is None else frozen
    prefix = [executable] if frozen else [executable, "-m", "tray"]
    return [*prefix, HELPER_FLAG, str(pid)]


Run = Callable[..., "subprocess.CompletedProcess[str]"]


def console_break(pid: int, run: Run = subprocess.run) -> str | None:
    """Send Ctrl+Break to ``pid`` through the console-less helper; None when sent, else why not (one line)."""
    try:
        done = run(
            helper_command(pid),
            capture_output=True,
            text=True,
            timeout=HELPER_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            creationflags=DETACHED_PROCESS,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the console-break helper could not run: {exc}"
    if done.returncode == 0:
        return None
    lines = (done.stderr or "").strip().splitlines()
    return lines[-1] if lines else f"the console-break helper exited with status {done.returncode}"


def main(argv: Sequence[str], api: ConsoleApi | None = None) -> int:
    """``--console-break PID``: the helper's entry point; 0 when the event was sent."""
    try:
        pid = int(argv[0])
    except (IndexError, ValueError):
        _say(f"usage: {HELPER_FLAG} PID")
        return 2
    try:
        send_console_break(pid, api or Kernel32Console())
    except (ConsoleBreakError, OSError) as exc:
        _say(str(exc))
        return 1
    return 0


def _say(text: str) -> None:
    if sys.stderr is not None:  # a windowed bundle has no stderr
        print(text, file=sys.stderr)
