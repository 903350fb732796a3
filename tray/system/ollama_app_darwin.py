"""Ollama's macOS app (``Ollama.app``): its files, how it is told to quit, and its login item."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from tray.system.ollama_app import AppLayout, ControlStep, InstalledAppFinder, Run, SendSignal
from tray.system.processes import ollama_home

LAUNCH_AGENT_LABEL = "com.ollama.ollama"
MAC_EXECUTABLE_DIR = "/Ollama.app/Contents/MacOS/"
SIGKILL = getattr(signal, "SIGKILL", 9)


def mac_layout(env: Mapping[str, str]) -> AppLayout:
    """``~/.ollama/logs/server.log``, ``~/Library/Application Support/Ollama/db.sqlite``, its LaunchAgent."""
    home = ollama_home(env, "darwin")
    support = home / "Library" / "Application Support" / "Ollama"
    return AppLayout(
        "darwin",
        server_log=home / ".ollama" / "logs" / "server.log",
        settings_db=support / "db.sqlite",
        login_item=home / "Library" / "LaunchAgents" / f"{LAUNCH_AGENT_LABEL}.plist",
    )


def mac_start_command(bundle: Path) -> list[str]:
    """``open -j -a`` (hidden), as Ollama's CLI opens the app (cmd/start_darwin.go)."""
    return ["open", "-j", "-a", str(bundle), "--args", "--fast-startup"]


@dataclass(frozen=True)
class MacAppFinder(InstalledAppFinder):
    """``Ollama.app`` in /Applications or ~/Applications; the app is its ``Contents/MacOS/Ollama``."""

    @classmethod
    def for_env(cls, env: Mapping[str, str]) -> MacAppFinder:
        home = ollama_home(env, "darwin")
        return cls(mac_layout(env), (Path("/Applications/Ollama.app"), home / "Applications" / "Ollama.app"))

    def start_command_for(self, app: Path) -> list[str]:
        return mac_start_command(app)

    def is_app(self, proc: psutil.Process) -> bool:
        return MAC_EXECUTABLE_DIR in proc.exe()


def launchctl_print_command(uid: int) -> list[str]:
    return ["launchctl", "print", f"gui/{uid}/{LAUNCH_AGENT_LABEL}"]


def launchctl_disabled_command(uid: int) -> list[str]:
    return ["launchctl", "print-disabled", f"gui/{uid}"]


def launchctl_disables(output: str, label: str = LAUNCH_AGENT_LABEL) -> bool:
    """Whether ``launchctl print-disabled`` lists ``label`` as disabled (``=> disabled``; older: ``=> true``).

    >>> launchctl_disables('disabled services = {\\n\\t"com.ollama.ollama" => disabled\\n}')
    True
    >>> launchctl_disables('\\t"com.ollama.ollama" => enabled\\n\\t"x" => true')
    False
    """
    for line in output.splitlines():
        name, arrow, state = line.strip().partition("=>")
        if arrow and name.strip().strip('"') == label:
            return state.strip() in ("disabled", "true")
    return False


class DarwinApp:
    """The macOS app: it quits on SIGTERM and stops its serve with a signal too."""

    def layout(self, env: Mapping[str, str]) -> AppLayout:
        return mac_layout(env)

    def finder(self, env: Mapping[str, str]) -> MacAppFinder:
        return MacAppFinder.for_env(env)

    def quit_steps(self, pid: int) -> list[ControlStep]:
        """SIGTERM: ``tell application "Ollama" to quit`` is cancelled since v0.12.10."""
        return [SendSignal(pid, signal.SIGTERM)]

    def force_quit_steps(self, pid: int, tree: Sequence[int]) -> list[ControlStep]:
        """SIGKILL the app and what it ran, which a killed app leaves behind."""
        return [SendSignal(each, SIGKILL) for each in (pid, *tree)]

    def env_setter(self) -> tuple[str, ...]:
        """``launchctl setenv``: the variable reaches apps that launchd starts from then on (Ollama's FAQ)."""
        return ("launchctl", "setenv")

    def server_stop_steps(self, serve_pid: int) -> list[ControlStep]:
        return [SendSignal(serve_pid, signal.SIGTERM)]

    def server_kill_steps(self, serve_pid: int, runners: Sequence[int]) -> list[ControlStep]:
        return [SendSignal(each, SIGKILL) for each in (serve_pid, *runners)]

    def starts_at_login(
        self,
        layout: AppLayout,
        *,
        run: Run,
        uid: int | None,
        startup_approved: Callable[[str], bytes | None] | None,
    ) -> bool:
        """Not switched off in ``launchctl print-disabled``, and a LaunchAgent plist or a loaded service."""
        uid = os.getuid() if uid is None and hasattr(os, "getuid") else (uid or 0)
        code, output = run(launchctl_disabled_command(uid))
        if code == 0 and launchctl_disables(output):
            return False
        if layout.login_item.exists():
            return True
        code, _output = run(launchctl_print_command(uid))
        return code == 0
