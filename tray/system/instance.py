"""Only one monitor or tray per user: a lock file the OS releases when the process dies."""

from __future__ import annotations

import json
from pathlib import Path

import filelock


class AlreadyRunning(Exception):
    pass


class SingleInstance:
    def __init__(self, lock_path: Path, monitor_file: Path) -> None:
        self.lock_path = lock_path
        self.monitor_file = monitor_file
        self._lock = filelock.FileLock(str(lock_path))

    def acquire(self) -> None:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise AlreadyRunning(f"Ollama Manager is already running{self._holder()}") from None

    def _holder(self) -> str:
        try:
            pid = json.loads(self.monitor_file.read_text())["pid"]
        except (OSError, ValueError, KeyError, TypeError):
            return ""
        return f" (pid {pid})"

    def release(self) -> None:
        self._lock.release()
