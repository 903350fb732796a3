"""What Linux and macOS share: a desktop opener program run detached, and signals that end a wait."""

from __future__ import annotations

from tray.system.host import Spawn, spawn_detached


class PosixHost:
    """A POSIX desktop: ``opener PATH`` shows a file or folder; SIGINT/SIGTERM interrupt a blocking wait."""

    opener = "xdg-open"

    def open_command(self, path: str) -> list[str]:
        return [self.opener, path]

    def open_path(self, path: str, spawn: Spawn) -> None:
        spawn_detached(self.open_command(path), spawn)

    def signal_ends_wait(self) -> bool:
        """A signal interrupts a wait without a timeout, so the handler's ``set()`` ends it."""
        return True

    def gpu_off_by_env(self) -> bool:
        """CUDA, ROCm and Vulkan each read a variable that hides their devices."""
        return True
