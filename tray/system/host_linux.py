"""Linux (and the other freedesktop systems): ``xdg-open``, ``$XDG_RUNTIME_DIR``, ``libnvidia-ml.so.1``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from tray.system.host_posix import PosixHost


class LinuxHost(PosixHost):
    opener = "xdg-open"

    def runtime_root(self, env: Mapping[str, str]) -> Path | None:
        """``$XDG_RUNTIME_DIR`` when it names an existing absolute folder."""
        runtime = env.get("XDG_RUNTIME_DIR", "")
        if runtime and Path(runtime).is_absolute() and Path(runtime).is_dir():
            return Path(runtime)
        return None

    def nvml_library_present(
        self, environ: Mapping[str, str], exists: Callable[[str], bool], load: Callable[[str], object]
    ) -> bool:
        """The driver's ``libnvidia-ml.so.1`` loads."""
        try:
            load("libnvidia-ml.so.1")
        except OSError:
            return False
        return True
