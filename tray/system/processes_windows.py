"""Launching and stopping Ollama on Windows: a hidden console of its own, Ctrl+Break, ``taskkill /F /T``."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from tray.system.console_break import console_break
from tray.system.processes import LaunchPlan

# Windows process creation flags and window state (subprocess defines them only on Windows).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NEW_CONSOLE = 0x00000010
CREATE_NO_WINDOW = 0x08000000
STARTF_USESHOWWINDOW = 0x00000001
SW_HIDE = 0


def hard_kill_command(pid: int) -> list[str]:
    """End ``pid`` and every process it started, as Ollama's installer ends Ollama.

    >>> hard_kill_command(42)
    ['taskkill', '/F', '/T', '/PID', '42']
    """
    return ["taskkill", "/F", "/T", "/PID", str(pid)]


class WindowsProcesses:
    """Windows: Go's home is ``%USERPROFILE%``; the serve runs in a hidden console of its own."""

    def home(self, env: Mapping[str, str]) -> Path:
        """``%USERPROFILE%``, where ``$HOME`` (set by Git Bash, MSYS or Cygwin) may point elsewhere."""
        return Path(env.get("USERPROFILE") or env.get("HOME") or Path.home())

    def install_locations(self, env: Mapping[str, str]) -> list[Path]:
        """The per-user installer's ``%LOCALAPPDATA%\\Programs\\Ollama``, then Program Files."""
        local = Path(env.get("LOCALAPPDATA") or self.home(env) / "AppData/Local")
        program_files = Path(env.get("ProgramFiles") or "C:/Program Files")
        return [local / "Programs/Ollama/ollama.exe", program_files / "Ollama/ollama.exe"]

    def serve_plan(self, binary: Path, env: dict[str, str]) -> LaunchPlan:
        """A console of its own, hidden, in its own process group, as Ollama's app starts it: a console
        control event (Ctrl+Break) can then stop it alone."""
        return LaunchPlan(
            [str(binary), "serve"],
            env,
            creationflags=CREATE_NEW_CONSOLE | CREATE_NEW_PROCESS_GROUP,
            new_session=False,
            hidden_window=True,
        )

    def app_plan(self, command: Sequence[str], env: dict[str, str]) -> LaunchPlan:
        """The app's start command, without a console window."""
        return LaunchPlan(list(command), env, via_app=True, creationflags=CREATE_NO_WINDOW, new_session=False)

    def startupinfo(self, plan: LaunchPlan) -> Any:
        """``STARTUPINFO`` that starts the new console's window hidden (Go's ``HideWindow``)."""
        if not plan.hidden_window:
            return None
        info = subprocess.STARTUPINFO()  # type: ignore[attr-defined,unused-ignore]
        info.dwFlags |= STARTF_USESHOWWINDOW
        info.wShowWindow = SW_HIDE
        return info

    def polite_stop(self, proc: psutil.Process) -> str | None:
        """Ctrl+Break on the process's own console, the way Ollama's app stops its server
        (:mod:`tray.system.console_break`); a console event sent from another console never arrives."""
        return console_break(proc.pid)

    def hard_kill(self, proc: psutil.Process) -> None:
        """``taskkill /F /T``, which ends the runners with their server; a plain kill when that fails."""
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
