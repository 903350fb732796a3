"""Linux (and the other freedesktop systems): ``xdg-open``, ``$XDG_RUNTIME_DIR``, ``libnvidia-ml.so.1``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from tray.system.host import Spawn, spawn_detached


class LinuxHost:
    def open_command(self, path: str) -> list[str]:
        return ["xdg-open", path]

    def open_path(self, path: str, spawn: Spawn) -> None:
        spawn_detached(self.open_command(path), spawn)

    def runtime_root(self, env: Mapping[str, str]) -> Path | None:
        """``$XDG_RUNTIME_DIR`` when it names an existing absolute folder."""
        runtime = env.get("XDG_RUNTIME_DIR", "")
        if runtime and Path(runtime).is_absolute() and Path(runtime).is_dir():
            return Path(runtime)
        return None

    def signal_ends_wait(self) -> bool:
        """A signal interrupts a wait without a timeout, so the handler's ``set()`` ends it."""
        return True

    def nvml_library_present(
        self, environ: Mapping[str, str], exists: Callable[[str], bool], load: Callable[[str], object]
    ) -> bool:
        """The driver's ``libnvidia-ml.so.1`` loads."""
        try:
            load("libnvidia-ml.so.1")
        except OSError:
            return False
        return True
