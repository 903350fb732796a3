"""Where Ollama's macOS installs put ``ollama``: inside the app bundle, or Homebrew's prefix."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tray.system.processes_posix import PosixProcesses

BUNDLED_BINARY = "Applications/Ollama.app/Contents/Resources/ollama"


class DarwinProcesses(PosixProcesses):
    """macOS: the app bundle in /Applications or ~/Applications, then Homebrew (Apple silicon, Intel)."""

    def install_locations(self, env: Mapping[str, str]) -> list[Path]:
        return [
            Path("/") / BUNDLED_BINARY,
            self.home(env) / BUNDLED_BINARY,
            Path("/opt/homebrew/bin/ollama"),
            Path("/usr/local/bin/ollama"),
        ]
