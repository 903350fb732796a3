"""macOS: ``open``, no runtime folder of its own (the state folder serves), no NVIDIA driver."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from tray.system.host import Spawn, spawn_detached


class DarwinHost:
    def open_command(self, path: str) -> list[str]:
        return ["open", path]

    def open_path(self, path: str, spawn: Spawn) -> None:
        spawn_detached(self.open_command(path), spawn)

    def runtime_root(self, env: Mapping[str, str]) -> Path | None:
        return None

    def signal_ends_wait(self) -> bool:
        return True

    def nvml_library_present(
        self, environ: Mapping[str, str], exists: Callable[[str], bool], load: Callable[[str], object]
    ) -> bool:
        """Apple GPUs only since macOS 10.14: never."""
        return False
