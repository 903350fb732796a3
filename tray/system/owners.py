"""Other supervisors that already respawn Ollama: restart through them, never fight them.

- Linux: the installer's systemd ``ollama.service`` (``Restart=always``).
- macOS / Windows: the official Ollama desktop app, which restarts ``serve``
  one second after it exits (:mod:`tray.system.ollama_app`).

Killing a server one of these owns only makes it respawn (a kill/respawn
ping-pong), so the manager asks the owner instead. The command lines are
built by pure methods and checked exactly in tests.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from tray.system.processes import ProcessRef

if TYPE_CHECKING:
    from tray.system.ollama_app import OllamaApp


@dataclass(frozen=True)
class CommandResult:
    ok: bool
    message: str  # what to tell the user when not ok


def run_command(argv: list[str], timeout: float = 30.0) -> CommandResult:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
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
        return argv + ["--no-ask-password", verb, self.unit]

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


# Who else respawns a server: systemd here, the desktop app in tray.system.ollama_app (which imports this module).
ExternalSupervisor = Union[SystemdService, "OllamaApp"]


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


def detect_supervisor(server: ProcessRef, platform: str = sys.platform) -> SystemdService | None:
    """Who, besides us, would respawn this server (the Ollama app: :mod:`tray.system.ollama_app`)."""
    proc = server.get()
    if proc is None:
        return None
    if platform.startswith("linux"):
        try:
            cgroup = Path(f"/proc/{proc.pid}/cgroup").read_text()
        except OSError:
            return None
        return systemd_unit_from_cgroup(cgroup)
    return None


def systemd_active_state(service: SystemdService) -> str:
    """'active', 'inactive' (stopped on purpose), 'failed', 'activating', ... or 'unknown'."""
    argv = ["systemctl"] + (["--user"] if service.user else []) + ["show", "-p", "ActiveState", "--value", service.unit]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"
