"""Windows: ``os.startfile``, no runtime folder, Ctrl+C that cannot end a plain wait (before Python 3.14),
``nvml.dll`` in System32 or the NVSMI folder."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from tray.system.host import Spawn


class WindowsHost:
    def open_command(self, path: str) -> None:
        return None

    def open_path(self, path: str, spawn: Spawn) -> None:
        # typeshed declares os.startfile for Windows only, and mypy checks this file as on Linux
        os.startfile(path)  # type: ignore[attr-defined,unused-ignore]

    def runtime_root(self, env: Mapping[str, str]) -> Path | None:
        return None

    def signal_ends_wait(self) -> bool:
        """Before Python 3.14 a wait without a timeout cannot be interrupted by Ctrl+C."""
        return sys.version_info >= (3, 14)

    def nvml_library_present(
        self, environ: Mapping[str, str], exists: Callable[[str], bool], load: Callable[[str], object]
    ) -> bool:
        candidates = (
            os.path.join(environ.get("WINDIR", "C:/Windows"), "System32/nvml.dll"),
            os.path.join(environ.get("ProgramFiles", "C:/Program Files"), "NVIDIA Corporation/NVSMI/nvml.dll"),
        )
        return any(exists(path) for path in candidates)

    def gpu_off_by_env(self) -> bool:
        """CUDA, ROCm (HIP) and Vulkan each read a variable that hides their devices."""
        return True
