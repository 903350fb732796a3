"""Ollama's Windows app (``ollama app.exe``): its files, how it is told to quit, and its Startup shortcut."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from tray.system.ollama_app import AppLayout, ConsoleBreak, ControlStep, InstalledAppFinder, Run, RunCommand
from tray.system.processes import ollama_home

STARTUP_SHORTCUT = "Ollama.lnk"
STARTUP_APPROVED_KEY = r"Software\Microsoft\Windows\CurrentVersion\Explorer\StartupApproved\StartupFolder"
WINDOWS_APP_EXE = "ollama app.exe"


def _local_app_data(env: Mapping[str, str]) -> Path:
    return Path(env.get("LOCALAPPDATA") or ollama_home(env, "win32") / "AppData" / "Local")


def windows_layout(env: Mapping[str, str]) -> AppLayout:
    """``%LOCALAPPDATA%\\Ollama\\server.log`` and ``db.sqlite``, the Startup folder's ``Ollama.lnk``."""
    local = _local_app_data(env)
    roaming = Path(env.get("APPDATA") or ollama_home(env, "win32") / "AppData" / "Roaming")
    return AppLayout(
        "win32",
        server_log=local / "Ollama" / "server.log",
        settings_db=local / "Ollama" / "db.sqlite",
        login_item=roaming / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup" / STARTUP_SHORTCUT,
    )


def windows_start_command(executable: Path) -> list[str]:
    """``ollama app.exe --hide --fast-startup``, as Ollama's CLI starts it (cmd/start_windows.go)."""
    return [str(executable), "--hide", "--fast-startup"]


@dataclass(frozen=True)
class WindowsAppFinder(InstalledAppFinder):
    """``%LOCALAPPDATA%\\Programs\\Ollama\\ollama app.exe``; the app is any ``ollama app.exe``."""

    @classmethod
    def for_env(cls, env: Mapping[str, str]) -> WindowsAppFinder:
        return cls(windows_layout(env), (_local_app_data(env) / "Programs" / "Ollama" / WINDOWS_APP_EXE,))

    def start_command_for(self, app: Path) -> list[str]:
        return windows_start_command(app)

    def is_app(self, proc: psutil.Process) -> bool:
        return Path(proc.exe()).name.lower() == WINDOWS_APP_EXE


def startup_approved_disables(data: bytes | None) -> bool:
    """Whether Task Manager switched a startup entry off (first byte odd: ``03 00 …``; on: ``02 00 …``).

    >>> [startup_approved_disables(data) for data in (bytes([3, 0, 0, 0]), bytes([2, 0]), None)]
    [True, False, False]
    """
    return bool(data) and data[0] & 1 == 1  # type: ignore[index]


def read_startup_approved(name: str) -> bytes | None:
    """Task Manager's switch for a Startup-folder entry (HKCU ``…\\StartupApproved\\StartupFolder``)."""
    import winreg  # type: ignore[import-not-found,unused-ignore]

    try:
        with winreg.OpenKey(winreg.HKEY_CURRENT_USER, STARTUP_APPROVED_KEY) as key:  # type: ignore[attr-defined,unused-ignore]
            data, _kind = winreg.QueryValueEx(key, name)  # type: ignore[attr-defined,unused-ignore]
    except OSError:
        return None
    return bytes(data) if isinstance(data, (bytes, bytearray)) else None


class WindowsApp:
    """The Windows app: it quits on WM_CLOSE (``taskkill`` without /F) and stops its serve with Ctrl+Break."""

    def layout(self, env: Mapping[str, str]) -> AppLayout:
        return windows_layout(env)

    def finder(self, env: Mapping[str, str]) -> WindowsAppFinder:
        return WindowsAppFinder.for_env(env)

    def quit_steps(self, pid: int) -> list[ControlStep]:
        """``taskkill /PID`` without /F posts WM_CLOSE to the app's tray window."""
        return [RunCommand(("taskkill", "/PID", str(pid)))]

    def force_quit_steps(self, pid: int, tree: Sequence[int]) -> list[ControlStep]:
        """``taskkill /F /T`` ends the app with everything it started, as its installer does."""
        return [RunCommand(("taskkill", "/F", "/T", "/PID", str(pid)))]

    def env_setter(self) -> tuple[str, ...]:
        """``setx``: a user environment variable, which the app passes on once relaunched (Ollama's FAQ)."""
        return ("setx",)

    def server_stop_steps(self, serve_pid: int) -> list[ControlStep]:
        return [ConsoleBreak(serve_pid)]

    def server_kill_steps(self, serve_pid: int, runners: Sequence[int]) -> list[ControlStep]:
        return [RunCommand(("taskkill", "/F", "/T", "/PID", str(serve_pid)))]

    def starts_at_login(
        self,
        layout: AppLayout,
        *,
        run: Run,
        uid: int | None,
        startup_approved: Callable[[str], bytes | None] | None,
    ) -> bool:
        """The Startup folder's shortcut exists and Task Manager has not switched it off."""
        read = read_startup_approved if startup_approved is None else startup_approved
        return layout.login_item.exists() and not startup_approved_disables(read(STARTUP_SHORTCUT))
