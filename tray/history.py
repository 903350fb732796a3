"""Events kept in a local SQLite database (WAL) in the data dir.

Each event is committed as it happens, so a crash of the manager loses
nothing already recorded. When the database cannot be opened or written
(full disk, read-only home), events are kept in memory and supervision goes on.
A damaged database is moved aside and started afresh by the app that writes
it (``repair=True``), with an event saying so; one deleted while the app runs
is started afresh at the next sample. Readers (``events``, ``metrics``) see
``problem`` say why the history is unavailable instead of an empty list.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from tray.atomic import PRIVATE_DIR, owner_only, private_file

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
CREATE TABLE IF NOT EXISTS samples (
    time REAL NOT NULL,
    span REAL NOT NULL DEFAULT 0,  -- 0 for a raw sample, else the seconds one averaged row covers
    health TEXT,
    latency_ms REAL,
    memory_mb REAL,
    cpu_percent REAL,
    ram_used_mb REAL,
    gpu_memory_mb REAL,
    gpu_percent REAL
);
CREATE INDEX IF NOT EXISTS samples_time ON samples(time);
"""

SAMPLE_FIELDS = ("health", "latency_ms", "memory_mb", "cpu_percent", "ram_used_mb", "gpu_memory_mb", "gpu_percent")
NUMERIC_FIELDS = SAMPLE_FIELDS[1:]


class EventKind(StrEnum):
    """The kind of an event in the history (what notifications, metrics and the timeline key on)."""

    MONITOR = "monitor"  # the monitor started or stopped
    HEALTH = "health"  # a change of health, or the first start's outcome
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    ADOPT = "adopt"  # an Ollama started elsewhere is watched
    EXTERNAL = "external"  # another program restarted Ollama: watched, not managed
    NOT_PERMITTED = "not_permitted"  # its owner (systemd, another account) refused this user: the command that works
    USER_STOP = "user_stop"
    CRASH = "crash"
    UNEXPECTED_RESTART = "unexpected_restart"
    GAVE_UP = "gave_up"
    RESUME = "resume"  # the machine woke from sleep
    ERROR = "error"
    ALERT = "alert"
    LOG_ACCESS = "log_access"  # the journal refuses this user Ollama's log: how to get access
    OOM = "oom"  # a move of the out-of-memory ladder
    CLOUD = "cloud"  # the gateway's cloud fallback turned on or off, or kept another user's request from it
    MODEL_MISSING = "model_missing"
    MODEL_CORRUPT = "model_corrupt"
    MODEL_ERROR = "model_error"
    MODEL_UNVERIFIED = "model_unverified"  # the store is another account's and cannot be read: not checked
    MODEL_BUILT = "model_built"
    MODEL_REPAIRED = "model_repaired"
    MODEL_SWITCHED = "model_switched"  # another model became the active one (the user's choice, or a fallback)


@dataclass(frozen=True)
class Retention:
    """How long what is kept, at which resolution."""

    raw_seconds: float = 24 * 3600  # raw samples for a day
    bucket_seconds: float = 600  # then 10-minute averages
    keep_seconds: float = 30 * 24 * 3600  # everything older than 30 days goes
    events_seconds: float = 90 * 24 * 3600


@dataclass(frozen=True)
class Event:
    time: float  # unix seconds
    kind: str  # an EventKind's value (a database written by another version may hold others)
    message: str
    data: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds"),
            "kind": self.kind,
            "message": self.message,
        }
        if self.data:
            out["data"] = self.data
        return out


class History:
    """Thread-safe event store; ``path=None`` keeps everything in memory."""

    def __init__(self, path: Path | None, wall_clock: Any = time.time, *, repair: bool = False) -> None:
        self._lock = threading.Lock()
        self._clock = wall_clock
        self._memory: deque[Event] = deque(maxlen=1000)
        self._listeners: list[Callable[[Event], None]] = []
        self._db: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file opened
        self.path = path
        self.repair = repair
        self.problem: str | None = None  # why the database is not in use (events then live in memory only)
        if path is not None:
            self._db = self._open_or_repair(path)

    def _open_or_repair(self, path: Path) -> sqlite3.Connection | None:
        try:
            return self._open(path)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _damaged(exc):
                self._unavailable(path, exc)  # locked, read-only, no such folder: not the file's fault
                return None
            if not self.repair:
                self.problem = f"{path} is damaged ({exc}); Ollama Manager starts it afresh at its next start"
                log.warning("history database %s", self.problem)
                return None
            damage = str(exc)
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.replace(path, aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            db = self._open(path)
        except (sqlite3.Error, OSError) as again:
            self._unavailable(path, again)
            return None
        self._started_afresh(db, f"the history database was damaged ({damage}); moved it to {aside} and started afresh")
        return db

    def _started_afresh(self, db: sqlite3.Connection, message: str) -> None:
        """Say in the new database (and the log) why it is new."""
        log.warning("%s", message)
        now = self._clock()
        self._memory.append(Event(now, str(EventKind.ERROR), message))
        db.execute("INSERT INTO events(time, kind, message) VALUES (?, ?, ?)", (now, str(EventKind.ERROR), message))

    def _unavailable(self, path: Path, exc: BaseException) -> None:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self.problem = f"{path} cannot be used ({reason})"
        log.warning("history database %s; keeping events in memory", self.problem)

    def _open(self, path: Path) -> sqlite3.Connection:
        """The database at ``path``, created when missing and checked; sqlite3.DatabaseError when damaged."""
        try:
            path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
            _private(path)  # SQLite gives its -wal and -shm files the database file's mode
        except OSError as exc:
            raise sqlite3.OperationalError(exc.strerror or str(exc)) from None
        db = sqlite3.connect(path, check_same_thread=False, timeout=5, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            verdict = db.execute("PRAGMA quick_check").fetchone()
            if verdict is None or verdict[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {verdict[0] if verdict else 'no answer'}")
            info = os.stat(path)
        except BaseException:
            db.close()
            raise
        self._identity = (info.st_dev, info.st_ino)
        return db

    def _follow_file(self) -> None:
        """Start afresh when the database file was deleted or replaced under the open connection (lock held)."""
        if self.path is None or self._db is None or self._identity is None:
            return
        try:
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                return
            gone = "replaced"
        except FileNotFoundError:
            gone = "deleted"
        except OSError:
            return
        self._db.close()
        self._db = self._open_or_repair(self.path)
        if self._db is not None:
            self._started_afresh(self._db, f"the history database {self.path} was {gone}; started afresh")

    def record(self, kind: EventKind, message: str, data: dict[str, Any] | None = None) -> Event:
        event = Event(self._clock(), str(kind), message, data)
        with self._lock:
            self._memory.append(event)
            if self._db is not None:
                try:
                    self._db.execute(
                        "INSERT INTO events(time, kind, message, data) VALUES (?, ?, ?, ?)",
                        (event.time, event.kind, message, json.dumps(data) if data else None),
                    )
                except sqlite3.Error as exc:
                    log.warning("could not record event in %s: %s", self.path, exc)
            listeners = list(self._listeners)
        log.info("%s: %s", event.kind, message)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a broken listener must not stop supervision
                log.exception("event listener failed")
        return event

    def subscribe(self, listener: Callable[[Event], None], replay_since: float | None = None) -> None:
        """Call ``listener`` with every event recorded from now on (from the recording thread).

        With ``replay_since``, first call it (here) with the events recorded
        since then: each event reaches it exactly once, however recording and
        subscribing interleave.
        """
        with self._lock:
            past = self._events_locked(replay_since, None) if replay_since is not None else []
            self._listeners.append(listener)
        for event in past:
            listener(event)

    def events(self, since: float | None = None, limit: int | None = None) -> list[Event]:
        """Events oldest first (the newest ``limit`` when given)."""
        with self._lock:
            return self._events_locked(since, limit)

    def _events_locked(self, since: float | None, limit: int | None) -> list[Event]:
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
            self.problem = f"{self.path} cannot be read ({exc})"
            log.warning("could not read events from %s: %s", self.path, exc)
            return list(self._memory)
        return [Event(t, k, m, json.loads(d) if d else None) for t, k, m, d in reversed(rows)]

    def record_sample(self, values: dict[str, Any]) -> None:
        """Store one tick's measurements (keys from SAMPLE_FIELDS; missing ones are NULL)."""
        row = (self._clock(), *(values.get(name) for name in SAMPLE_FIELDS))
        with self._lock:
            self._follow_file()
            if self._db is None:
                return
            try:
                self._db.execute(
                    f"INSERT INTO samples(time, {', '.join(SAMPLE_FIELDS)}) VALUES (?{', ?' * len(SAMPLE_FIELDS)})", row
                )
            except sqlite3.Error as exc:
                log.warning("could not record a sample in %s: %s", self.path, exc)

    def samples(self, since: float | None = None) -> list[dict[str, Any]]:
        """Samples oldest first, raw and averaged rows alike (``span`` tells which)."""
        with self._lock:
            if self._db is None:
                return []
            query = f"SELECT time, span, {', '.join(SAMPLE_FIELDS)} FROM samples"
            args: list[Any] = []
            if since is not None:
                query += " WHERE time >= ?"
                args.append(since)
            try:
                rows = self._db.execute(query + " ORDER BY time", args).fetchall()
            except sqlite3.Error as exc:
                self.problem = f"{self.path} cannot be read ({exc})"
                log.warning("could not read samples from %s: %s", self.path, exc)
                return []
        return [dict(zip(("time", "span", *SAMPLE_FIELDS), row, strict=True)) for row in rows]

    def compact(self, retention: Retention = Retention()) -> None:
        """Average raw samples older than a day into buckets and drop what is past retention."""
        now = self._clock()
        bucket = retention.bucket_seconds
        # Aligned to a bucket boundary, so every bucket is averaged once, whole.
        raw_before = (now - retention.raw_seconds) // bucket * bucket
        averages = ", ".join(f"AVG({name})" for name in NUMERIC_FIELDS)
        with self._lock:
            if self._db is None:
                return
            try:
                self._db.execute("BEGIN")
                self._db.execute(
                    f"""INSERT INTO samples(time, span, health, {", ".join(NUMERIC_FIELDS)})
                        SELECT CAST(time / ? AS INTEGER) * ?, ?,
                               -- the worst health seen in the bucket
                               CASE MAX(CASE health WHEN 'down' THEN 3 WHEN 'unhealthy' THEN 2
                                                    WHEN 'healthy' THEN 1 ELSE 0 END)
                                    WHEN 3 THEN 'down' WHEN 2 THEN 'unhealthy' WHEN 1 THEN 'healthy' END,
                               {averages}
                        FROM samples WHERE span = 0 AND time < ?
                        GROUP BY CAST(time / ? AS INTEGER)""",
                    (bucket, bucket, bucket, raw_before, bucket),
                )
                self._db.execute("DELETE FROM samples WHERE span = 0 AND time < ?", (raw_before,))
                self._db.execute("DELETE FROM samples WHERE time < ?", (now - retention.keep_seconds,))
                self._db.execute("DELETE FROM events WHERE time < ?", (now - retention.events_seconds,))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                log.warning("could not compact %s: %s", self.path, exc)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _damaged(exc: sqlite3.OperationalError) -> bool:
    """Does this error of opening a database say its file is damaged (rather than locked or unreachable)?"""
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


def _private(path: Path) -> None:
    """Create the database file for the user alone (0600), or take group and others' access away, and its
    -wal and -shm files' too."""
    private_file(path, check=True)
    for file in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        owner_only(file)
