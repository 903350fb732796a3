"""Logging that can never stop supervision, and following a server's log.

A rotating file in the platform log dir; when the dir cannot be created or
a write fails (full disk, read-only home), the failure is counted and the
line is kept in an in-memory ring instead. :class:`LogTail` follows a log
file another program writes and rotates (the server's).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class SafeRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating file handler that swallows (and counts) its own write errors."""

    def __init__(self, path: Path, ring: RingHandler, **kwargs: object) -> None:
        super().__init__(path, encoding="utf-8", delay=True, **kwargs)  # type: ignore[arg-type]
        self.ring = ring
        self.failures = 0

    def handleError(self, record: logging.LogRecord) -> None:
        self.failures += 1
        if self.stream is not None:
            try:
                self.stream.close()
            except OSError:
                pass
            self.stream = None  # type: ignore[assignment]  # reopened on the next record


class RingHandler(logging.Handler):
    """The last lines in memory: always available, whatever the disk does."""

    def __init__(self, capacity: int = 500) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # formatting a bad record must not raise into the caller
            pass


def setup_logging(log_file: Path | None, level: int = logging.INFO, stderr: bool = False) -> RingHandler:
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(FORMAT)
    ring = RingHandler()
    ring.setFormatter(formatter)
    root.addHandler(ring)
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handler: logging.Handler = SafeRotatingFileHandler(log_file, ring, maxBytes=2_000_000, backupCount=3)
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


TAIL_MAX_BYTES = 65536


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


class LogTail:
    """New lines appended to a log file since the last read, across rotations.

    ``path`` may be a callable: the file to follow can change (the server's owner
    changes). A rotated file is renamed away (Ollama's app turns ``server.log`` into
    ``server-1.log`` each time it starts its server; the manager's own log becomes
    ``ollama-server.log.1``) and a new one begins: the lines the old file got after the
    last read are read where it went, then the new file from its start. The first look
    at a file starts at its end; a file that did not exist then is read from its start
    once it appears. At most the last ``max_bytes`` of each read are kept.
    """

    def __init__(self, path: Path | Callable[[], Path | None], max_bytes: int = TAIL_MAX_BYTES) -> None:
        self._path_of: Callable[[], Path | None] = path if callable(path) else (lambda: path)
        self.max_bytes = max_bytes
        self.path: Path | None = None
        self.offset: int | None = None
        self.identity: tuple[int, int] | None = None

    def new_lines(self) -> list[str]:
        path = self._path_of()
        if path != self.path:
            self.path, self.offset, self.identity = path, None, None
        if path is None:
            return []
        identity = _identity(path)
        if identity is None:
            if self.offset is None:
                self.offset = 0  # not there yet: once it appears, everything in it is new
            return []
        lines: list[str] = []
        if self.offset is None:
            self.offset, self.identity = path.stat().st_size, identity
            return []
        if identity != self.identity:
            rotated = self._rotated_to(path) if self.identity is not None else None
            if rotated is not None:
                lines += self._read(rotated, self.offset)
            self.offset, self.identity = 0, identity
        size = path.stat().st_size
        if size < self.offset:  # truncated in place
            self.offset = 0
        lines += self._read(path, self.offset)
        return lines

    def _rotated_to(self, path: Path) -> Path | None:
        """Where the file we followed went: the sibling with its identity."""
        try:
            siblings = [p for p in path.parent.iterdir() if p.name.startswith(path.stem) and p != path]
        except OSError:
            return None
        return next((p for p in siblings if _identity(p) == self.identity), None)

    def _read(self, path: Path, offset: int) -> list[str]:
        try:
            with open(path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                start = max(offset, size - self.max_bytes)
                handle.seek(start)
                data = handle.read(size - start)
        except OSError:
            return []
        if path == self.path:
            self.offset = size
        return data.decode("utf-8", "replace").splitlines()
