"""What this OS offers the app itself: opening a file in the desktop, a folder for short-lived private
files, whether a signal ends a blocking wait, where the NVIDIA driver's library lives, whether Ollama's
server variables can turn its GPU off.

One implementation per OS (:mod:`tray.system.host_linux`, :mod:`tray.system.host_darwin`,
:mod:`tray.system.host_windows`); :func:`host_for` picks one. Every input (environment, the
opener's spawn, file checks, the library loader) is a parameter, so each can be exercised on any OS.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

Spawn = Callable[..., "subprocess.Popen[bytes]"]


class HostOS(Protocol):
    """The small facts of one OS that the app's own process depends on."""

    def open_command(self, path: str) -> list[str] | None:
        """The command that shows ``path`` in the desktop's file manager or viewer; None where the OS opens
        it through an API (Windows' ``os.startfile``)."""
        ...

    def open_path(self, path: str, spawn: Spawn) -> None:
        """Open a file or folder with the desktop's default application, detached; OSError when it cannot."""
        ...

    def runtime_root(self, env: Mapping[str, str]) -> Path | None:
        """The user's folder for short-lived private files (``$XDG_RUNTIME_DIR``), None where there is none."""
        ...

    def signal_ends_wait(self) -> bool:
        """Whether SIGINT/SIGTERM end a wait without a timeout (``threading.Event.wait()``)."""
        ...

    def nvml_library_present(
        self, environ: Mapping[str, str], exists: Callable[[str], bool], load: Callable[[str], object]
    ) -> bool:
        """Could NVML's bindings find the driver's library here (where nvidia-ml-py looks for it)?"""
        ...

    def gpu_off_by_env(self) -> bool:
        """Whether variables in Ollama's server environment can hide every GPU (``GPU_OFF_ENV``)."""
        ...


def platform_name(platform: str | None = None) -> str:
    """``platform`` when given, else this OS's ``sys.platform``: the one place the running OS is read.

    Every per-OS factory (``host_for``, ``process_os_for``, ``app_os_for``, ``notify_os_for``,
    ``autostart_for``, ``choose_tray``) picks its implementation by this value.
    """
    return sys.platform if platform is None else platform


def host_for(platform: str | None = None) -> HostOS:
    """The implementation for ``platform`` (a ``sys.platform`` value; default: this OS)."""
    platform = platform_name(platform)
    if platform == "win32":
        from tray.system.host_windows import WindowsHost

        return WindowsHost()
    if platform == "darwin":
        from tray.system.host_darwin import DarwinHost

        return DarwinHost()
    from tray.system.host_linux import LinuxHost

    return LinuxHost()


def spawn_detached(argv: list[str], spawn: Spawn) -> None:
    """Run ``argv`` without a shell, in a session of its own, reaped by a daemon thread."""
    process = spawn(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    threading.Thread(target=process.wait, name="reap-opener", daemon=True).start()
