"""Events kept in a local SQLite database (WAL) in the data dir.

Each event is committed as it happens, so a crash of the manager loses
nothing already recorded. When the database cannot be opened or written
(full disk, read-only home), events are kept in memory and supervision goes on.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
"""


@dataclass(frozen=True)
class Event:
    time: float  # unix seconds
    kind: str
    message: str
    data: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(self.time, timezone.utc).isoformat(timespec="milliseconds"),
            "kind": self.kind,
            "message": self.message,
        }
        if self.data:
            out["data"] = self.data
        return out


class History:
    """Thread-safe event store; ``path=None`` keeps everything in memory."""

    def __init__(self, path: Path | None, wall_clock: Any = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = wall_clock
        self._memory: deque[Event] = deque(maxlen=1000)
        self._listeners: list[Callable[[Event], None]] = []
        self._db: sqlite3.Connection | None = None
        self.path = path
        if path is not None:
            self._db = self._open(path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection | None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, check_same_thread=False, timeout=5, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            return db
        except (sqlite3.Error, OSError) as exc:
            log.warning("history database %s unavailable (%s); keeping events in memory", path, exc)
            return None

    def record(self, kind: str, message: str, data: dict[str, Any] | None = None) -> Event:
        event = Event(self._clock(), kind, message, data)
        with self._lock:
            self._memory.append(event)
            if self._db is not None:
                try:
                    self._db.execute(
                        "INSERT INTO events(time, kind, message, data) VALUES (?, ?, ?, ?)",
                        (event.time, kind, message, json.dumps(data) if data else None),
                    )
                except sqlite3.Error as exc:
                    log.warning("could not record event in %s: %s", self.path, exc)
            listeners = list(self._listeners)
        log.info("%s: %s", kind, message)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a broken listener must not stop supervision
                log.exception("event listener failed")
        return event

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` with every event recorded from now on (from the recording thread)."""
        with self._lock:
            self._listeners.append(listener)

    def events(self, since: float | None = None, limit: int | None = None) -> list[Event]:
        """Events oldest first (the newest ``limit`` when given)."""
        with self._lock:
            if self._db is None:
                selected = [e for e in self._memory if since is None or e.time >= since]
                return selected[-limit:] if limit else selected
            query = "SELECT time, kind, message, data FROM events"
            args: list[Any] = []
            if since is not None:
                query += " WHERE time >= ?"
                args.append(since)
            query += " ORDER BY id DESC"
            if limit:
                query += " LIMIT ?"
                args.append(limit)
            try:
                rows = self._db.execute(query, args).fetchall()
            except sqlite3.Error as exc:
                log.warning("could not read events from %s: %s", self.path, exc)
                return list(self._memory)
        return [Event(t, k, m, json.loads(d) if d else None) for t, k, m, d in reversed(rows)]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
