"""Logging that can never stop supervision, and following a server's log.

A rotating file in the platform log dir; when the dir cannot be created or
a write fails (full disk, read-only home), the failure is counted and the
line is kept in an in-memory ring instead.

:class:`ServerLogTail` follows the log of the server that runs, wherever it is:
a file another program writes and rotates (:class:`LogTail`: the Ollama app's
``server.log``, the manager's own file) or a systemd unit's journal
(:class:`JournalTail`).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tray.atomic import private_dir, private_file
from tray.system.owners import SystemdService, journal_command, journal_refused

log = logging.getLogger(__name__)

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

    def close(self) -> None:
        """Nothing to release: each read opens the file anew."""


class JournalTail:
    """New messages of a systemd unit, from ``journalctl -u UNIT -f`` (where the server's stderr goes).

    The journal refuses users outside ``systemd-journal``/``adm``: ``on_refused``
    is then called once, from the reader thread.
    """

    def __init__(self, service: SystemdService, on_refused: Callable[[], None]) -> None:
        self.service = service
        self.on_refused = on_refused
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._refused = False
        try:
            self._process: subprocess.Popen[str] | None = subprocess.Popen(
                journal_command(service, follow=True, lines=0),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
        except OSError as exc:
            log.warning("cannot follow the journal of %s: %s", service.unit, exc.strerror or exc)
            self._process = None
            return
        threading.Thread(target=self._read_out, name="journal-tail", daemon=True).start()
        threading.Thread(target=self._read_err, name="journal-tail-err", daemon=True).start()

    def _read_out(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\n"))

    def _read_err(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            if not self._refused and journal_refused(line, self.service.user):
                self._refused = True
                self.on_refused()

    def new_lines(self) -> list[str]:
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()


class ServerLogTail:
    """New lines of the running server's log, wherever it is.

    A server run by a systemd unit logs to the unit's journal (:meth:`follow` names
    the unit); any other writes a file, ``file`` (a callable when it changes with the
    server's owner: the Ollama app's ``server.log``, the manager's own file), followed
    across its rotations. ``on_journal_refused`` is called once per unit whose journal
    this user may not read.
    """

    def __init__(
        self,
        file: Path | Callable[[], Path | None],
        on_journal_refused: Callable[[SystemdService], None] = lambda _unit: None,
    ) -> None:
        self.unit: SystemdService | None = None
        self._on_journal_refused = on_journal_refused
        self._file_source = file
        self._file = LogTail(file)
        self._journal: JournalTail | None = None

    def follow(self, unit: SystemdService | None) -> None:
        """Read ``unit``'s journal from now on; None: the server's file, from its end."""
        if unit == self.unit:
            return
        self.close()
        self.unit = unit
        if unit is not None:
            self._journal = JournalTail(unit, lambda: self._on_journal_refused(unit))
        else:
            self._file = LogTail(self._file_source)

    def new_lines(self) -> list[str]:
        return self._journal.new_lines() if self._journal is not None else self._file.new_lines()

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
