"""Where Ollama's Linux installers put ``ollama`` (install.sh, distribution packages, the snap)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tray.system.processes_posix import PosixProcesses

LINUX_LOCATIONS = (
    Path("/usr/local/bin/ollama"),
    Path("/usr/bin/ollama"),
    Path("/bin/ollama"),
    Path("/snap/bin/ollama"),
)


class LinuxProcesses(PosixProcesses):
    """Linux: install.sh's ``/usr/local/bin``, the packages' ``/usr/bin``, the snap."""

    def install_locations(self, env: Mapping[str, str]) -> list[Path]:
        return list(LINUX_LOCATIONS)
