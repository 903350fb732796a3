"""macOS: ``open``, no runtime folder of its own (the state folder serves), no NVIDIA driver, Metal (no GPU-off
variable)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from tray.system.host_posix import PosixHost


class DarwinHost(PosixHost):
    opener = "open"

    def runtime_root(self, env: Mapping[str, str]) -> Path | None:
        return None

    def nvml_library_present(
        self, environ: Mapping[str, str], exists: Callable[[str], bool], load: Callable[[str], object]
    ) -> bool:
        """Apple GPUs only since macOS 10.14: never."""
        return False

    def gpu_off_by_env(self) -> bool:
        """Ollama runs on Metal, which no variable turns off."""
        return False
