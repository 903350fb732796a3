"""Logging that can never stop supervision.

A rotating file in the platform log dir; when the dir cannot be created or
a write fails (full disk, read-only home), the failure is counted and the
line is kept in an in-memory ring instead.
"""

from __future__ import annotations

import logging
import logging.handlers
from collections import deque
from pathlib import Path
from typing import Any

from tray.system.atomic import private_dir, private_file

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class SafeRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating file handler that swallows (and counts) its own write errors."""

    def __init__(self, path: Path, ring: RingHandler, *, max_bytes: int = 0, backup_count: int = 0) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8", delay=True)
        self.ring = ring
        self.failures = 0

    def _open(self) -> Any:
        """The log file, created for the user alone (0600), also after each rotation."""
        private_file(Path(self.baseFilename))
        return super()._open()

    def handleError(self, record: logging.LogRecord) -> None:
        self.failures += 1
        if self.stream is not None:
            try:
                self.stream.close()
            except OSError:
                pass
            self.stream = None  # reopened on the next record


class RingHandler(logging.Handler):
    """The last lines in memory: always available, whatever the disk does."""

    def __init__(self, capacity: int = 500) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - formatting a bad record must not raise into the caller
            pass


def setup_logging(log_file: Path | None, level: int = logging.INFO, stderr: bool = False) -> RingHandler:
    root = logging.getLogger()
    root.setLevel(level)
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    formatter = logging.Formatter(FORMAT)
    ring = RingHandler()
    ring.setFormatter(formatter)
    root.addHandler(ring)
    if log_file is not None:
        try:
            private_dir(log_file.parent)
            handler: logging.Handler = SafeRotatingFileHandler(log_file, ring, max_bytes=2_000_000, backup_count=3)
            handler.setFormatter(formatter)
            root.addHandler(handler)
        except OSError:
            pass  # the ring still has every line
    if stderr:
        console = logging.StreamHandler()
        console.setFormatter(formatter)
        root.addHandler(console)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return ring
