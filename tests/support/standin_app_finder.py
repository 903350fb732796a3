"""The stand-in Ollama app, recognised through the same finder contract as the real app.

The manager finds the real app by its executable (``Ollama.app/Contents/MacOS/Ollama``,
``ollama app.exe``), which a Linux machine never runs. The stand-in app
(``tests/standin/ollama-app``) keeps the macOS app's files and obeys its signals, so this
finder describes it with the macOS layout under the stand-in's home and recognises it by
its script (this environment's only); everything else (control steps, respawn wait, log, settings) is the manager's
own code for the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

from standin.harness import StandinEnv
from tray.system.ollama_app import AppLayout, app_layout

APP_SCRIPT = "ollama-app"


@dataclass(frozen=True)
class StandinAppFinder:
    layout: AppLayout
    executable: Path

    @classmethod
    def of(cls, standin: StandinEnv) -> StandinAppFinder:
        layout = app_layout("darwin", standin.env)
        assert layout is not None
        return cls(layout, standin.bin_dir / APP_SCRIPT)

    def installed(self) -> Path | None:
        return self.executable if self.executable.exists() else None

    def start_command(self) -> list[str] | None:
        return [str(self.executable), "hidden", "--fast-startup"] if self.executable.exists() else None

    def is_app(self, proc: psutil.Process) -> bool:
        """This environment's stand-in app only: a test never sees another test's app."""
        cmdline = proc.cmdline()
        return len(cmdline) > 1 and Path(cmdline[1]) == self.executable
