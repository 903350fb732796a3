"""Other supervisors that already respawn Ollama: restart through them, never fight them.

- Linux: the installer's systemd ``ollama.service`` (``Restart=always``).
- macOS / Windows: the official Ollama desktop app, which restarts ``serve``
  one second after it exits.

Killing a server one of these owns only makes it respawn (a kill/respawn
ping-pong), so the manager asks the owner instead. The command lines are
built by pure methods and checked exactly in tests.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from tray.system.processes import ProcessRef


@dataclass(frozen=True)
class CommandResult:
    ok: bool
    message: str  # what to tell the user when not ok


def run_command(argv: list[str], timeout: float = 30.0) -> CommandResult:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return CommandResult(False, f"{argv[0]}: {exc}")
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip().splitlines()
        return CommandResult(False, output[-1] if output else f"{argv[0]} exited with status {done.returncode}")
    return CommandResult(True, "")


@dataclass(frozen=True)
class SystemdService:
    """Ollama run by systemd; ``user`` for a ``systemctl --user`` unit."""

    unit: str = "ollama.service"
    user: bool = False
    name: str = "systemd"

    def _systemctl(self, verb: str) -> list[str]:
        argv = ["systemctl"]
        if self.user:
            argv.append("--user")
        return [*argv, "--no-ask-password", verb, self.unit]

    def restart_command(self) -> list[str]:
        return self._systemctl("restart")

    def stop_command(self) -> list[str]:
        return self._systemctl("stop")

    def start_command(self) -> list[str]:
        return self._systemctl("start")

    def manual_command(self, verb: str) -> str:
        """The one command the user can run when we are not permitted to."""
        short = self.unit.removesuffix(".service")
        return f"systemctl --user {verb} {short}" if self.user else f"sudo systemctl {verb} {short}"

    def describe(self) -> str:
        return f"the systemd service {self.unit}"


@dataclass(frozen=True)
class OllamaApp:
    """The official desktop app, which owns (and respawns) ``ollama serve``."""

    app_path: Path
    app_pid: int
    platform: str = sys.platform
    name: str = "ollama-app"

    def quit_command(self) -> list[str]:
        if self.platform == "darwin":
            return ["osascript", "-e", 'tell application "Ollama" to quit']
        return ["taskkill", "/PID", str(self.app_pid), "/T"]

    def start_command(self) -> list[str]:
        if self.platform == "darwin":
            return ["open", "-j", "-a", str(self.app_path), "--args", "--fast-startup"]
        return [str(self.app_path), "--hide", "--fast-startup"]

    def manual_command(self, verb: str) -> str:
        return "quit Ollama from its menu, then open it again" if verb == "restart" else f"{verb} Ollama from its menu"

    def describe(self) -> str:
        return "the Ollama app"


ExternalSupervisor = SystemdService | OllamaApp


def systemd_unit_from_cgroup(cgroup_text: str) -> SystemdService | None:
    """Parse /proc/<pid>/cgroup: is this process inside an ``ollama*.service`` unit?

    >>> systemd_unit_from_cgroup("0::/system.slice/ollama.service\\n")
    SystemdService(unit='ollama.service', user=False, name='systemd')
    >>> systemd_unit_from_cgroup("0::/user.slice/user-1000.slice/user@1000.service/app.slice/ollama.service\\n").user
    True
    >>> systemd_unit_from_cgroup("0::/user.slice/user-1000.slice/session-2.scope\\n") is None
    True
    """
    for line in cgroup_text.splitlines():
        path = line.rsplit(":", 1)[-1]
        parts = [p for p in path.split("/") if p]
        if not parts:
            continue
        leaf = parts[-1]
        if leaf.startswith("ollama") and leaf.endswith(".service"):
            user = any(p.startswith("user@") and p.endswith(".service") for p in parts[:-1])
            return SystemdService(unit=leaf, user=user)
    return None


def _is_app_process(proc: psutil.Process, platform: str) -> Path | None:
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        exe = proc.exe()
        if platform == "darwin" and "/Ollama.app/Contents/MacOS/" in exe:
            return Path(exe.split("/Contents/MacOS/")[0])
        if platform == "win32" and Path(exe).name.lower() == "ollama app.exe":
            return Path(exe)
    return None


def detect_supervisor(server: ProcessRef, platform: str = sys.platform) -> ExternalSupervisor | None:
    """Who, besides us, would respawn this server."""
    proc = server.get()
    if proc is None:
        return None
    if platform.startswith("linux"):
        try:
            cgroup = Path(f"/proc/{proc.pid}/cgroup").read_text()
        except OSError:
            return None
        return systemd_unit_from_cgroup(cgroup)
    if platform in ("darwin", "win32"):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            for parent in proc.parents():
                app = _is_app_process(parent, platform)
                if app is not None:
                    return OllamaApp(app, parent.pid, platform)
    return None


def app_running(app: OllamaApp) -> bool:
    """Is the official app still running (a user who quit it has stopped Ollama on purpose)."""
    try:
        proc = psutil.Process(app.app_pid)
        return _is_app_process(proc, app.platform) is not None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def systemd_active_state(service: SystemdService) -> str:
    """'active', 'inactive' (stopped on purpose), 'failed', 'activating', ... or 'unknown'."""
    argv = ["systemctl"] + (["--user"] if service.user else []) + ["show", "-p", "ActiveState", "--value", service.unit]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"
