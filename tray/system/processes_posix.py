"""Launching and stopping Ollama on POSIX (Linux, macOS): a new session, SIGTERM, SIGKILL.

The OS modules :mod:`tray.system.processes_linux` and :mod:`tray.system.processes_darwin`
add where each OS's installers put the ``ollama`` executable.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from tray.system.processes import LaunchPlan


class PosixProcesses:
    """What Linux and macOS share: Go's home is ``$HOME``; a child gets a session of its own; signals stop it."""

    def home(self, env: Mapping[str, str]) -> Path:
        """``$HOME``, else ``%USERPROFILE%`` (Go's ``os.UserHomeDir``), else this user's home."""
        return Path(env.get("HOME") or env.get("USERPROFILE") or Path.home())

    def install_locations(self, env: Mapping[str, str]) -> list[Path]:
        """Where this OS's installers put the ollama executable."""
        raise NotImplementedError

    def serve_plan(self, binary: Path, env: dict[str, str]) -> LaunchPlan:
        """``ollama serve`` in a session of its own."""
        return LaunchPlan([str(binary), "serve"], env)

    def app_plan(self, command: Sequence[str], env: dict[str, str]) -> LaunchPlan:
        """The Ollama app's start command, in a session of its own."""
        return LaunchPlan(list(command), env, via_app=True)

    def startupinfo(self, plan: LaunchPlan) -> Any:
        """No window state to set on POSIX."""
        return None

    def polite_stop(self, proc: psutil.Process) -> str | None:
        """SIGTERM, and SIGCONT for a stopped process, which acts on SIGTERM only once continued."""
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if proc.status() == psutil.STATUS_STOPPED:
                proc.send_signal(signal.SIGCONT)
        return None

    def hard_kill(self, proc: psutil.Process) -> None:
        """SIGKILL."""
        proc.kill()
