"""Progress of long model operations (pull, hash, upload, create, verify) and how to show it.

Producers call a :data:`ProgressCallback` with :class:`ProgressEvent` values.
:class:`ProgressRenderer` is one such callback: it draws a one-line bar on a
terminal and writes sparse plain lines to a log or pipe. Deciding *when* to
write a plain line (:func:`plain_line_due`) and *what* to write
(:func:`format_bar`, :func:`format_plain_line`) is pure; only the renderer
touches the stream and the clock.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from tray.core.text import plain_line
from tray.core.units import human_bytes


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long operation.

    ``phase`` names the operation ("pulling", "hashing", "uploading",
    "creating", "verifying", ...); ``detail`` says what it works on (a digest, a
    file name, a status text from Ollama). ``completed``/``total`` are bytes (or
    other units) when the step is measurable, else ``None``.
    """

    phase: str
    detail: str = ""
    completed: int | None = None
    total: int | None = None

    @property
    def fraction(self) -> float | None:
        """Share done in [0, 1], or ``None`` when the step is not measurable."""
        if self.total is None or self.total <= 0 or self.completed is None:
            return None
        return min(1.0, max(0.0, self.completed / self.total))


ProgressCallback = Callable[[ProgressEvent], None]

_PULL_DIGEST_RE = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
DETAIL_MAX_CHARS = 80


def _count(value: object) -> int | None:
    """A non-negative whole count from a JSON number, else ``None`` (bools, text, nan, negatives)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value) if value >= 0 else None


def measured(completed: object, total: object) -> tuple[int | None, int | None]:
    """``(completed, total)`` of a progress line when they make sense, else what can be kept.

    A server's line may lack either number or carry one of another shape; a step
    is measurable only with ``0 <= completed <= total``.

    >>> measured(40, 100)
    (40, 100)
    >>> measured(None, 100)
    (0, 100)
    >>> measured("40", 100), measured(-1, 100), measured(float("nan"), 100)
    ((None, None), (None, None), (None, None))
    >>> measured(150, 100), measured(5, -1), measured(5, None)
    ((None, None), (None, None), (5, None))
    """
    done, size = _count(completed), _count(total)
    if completed is not None and done is None:
        return None, None
    if total is not None and size is None:
        return None, None
    if size is None:
        return done, None
    done = done or 0
    return (done, size) if done <= size else (None, None)


def progress_detail(digest: object, status: object) -> str:
    """What a pull line works on: the short digest, else the status as one plain bounded line.

    >>> progress_detail("sha256:" + "ab" * 32, "pulling abab")
    'sha256:abababababab'
    >>> progress_detail("sha256:xyz", "pulling <b>layer</b>\\n")
    'pulling layer'
    """
    if isinstance(digest, str):
        match = _PULL_DIGEST_RE.match(digest)
        if match:
            return f"sha256:{match.group(1).lower()[:12]}"
    return plain_detail(status)


def plain_detail(text: object) -> str:
    """A server's status text as one line without markup or control characters, at most DETAIL_MAX_CHARS.

    >>> plain_detail("writing\\x1b[31m <i>manifest</i>\\r\\n")
    'writing [31m manifest'
    """
    return plain_line(str(text) if isinstance(text, str) else "", DETAIL_MAX_CHARS)


def no_progress(event: ProgressEvent) -> None:
    """A callback that ignores every event."""


def phase_key(event: ProgressEvent) -> tuple[str, str]:
    """Events with the same key belong to the same step (one bar, one rate)."""
    return (event.phase, event.detail)


def percent_bucket(event: ProgressEvent, step: int = 10) -> int | None:
    """The ``step``-percent bucket an event falls in (0..100/step), or ``None``."""
    fraction = event.fraction
    if fraction is None:
        return None
    return int(fraction * 100) // step


@dataclass
class PlainLineState:
    """What the plain-line writer last wrote; mutated only by the renderer."""

    key: tuple[str, str] | None = None
    bucket: int | None = None
    written_at: float = float("-inf")


def plain_line_due(state: PlainLineState, event: ProgressEvent, now: float, interval: float) -> bool:
    """Whether a non-terminal stream gets a line for ``event``.

    A line is due when a new step starts, when the step crosses into a new 10 %
    bucket, or when ``interval`` seconds passed since the last line of a step
    that still moves; otherwise the event is swallowed.
    """
    if phase_key(event) != state.key:
        return True
    bucket = percent_bucket(event)
    if bucket is not None and state.bucket is not None and bucket > state.bucket:
        return True
    return now - state.written_at >= interval and event.completed is not None


def format_rate(rate: float | None) -> str:
    """``12.3 MB/s``, or an empty string when unknown."""
    return f"{human_bytes(rate)}/s" if rate and rate > 0 else ""


def _label(event: ProgressEvent) -> str:
    """Phase and detail, without saying the phase twice ("pulling pulling manifest")."""
    detail = event.detail.strip()
    if not detail:
        return event.phase
    if detail.split()[0] == event.phase:
        return detail
    return f"{event.phase} {detail}"


def format_plain_line(event: ProgressEvent, rate: float | None) -> str:
    """One log line: ``pulling sha256:6a0746a1ec1a  40% 1.9 GB/4.7 GB 35.0 MB/s``."""
    parts = [_label(event)]
    fraction = event.fraction
    if fraction is not None:
        parts.append(f"{fraction * 100:3.0f}%")
    if event.completed is not None and event.total:
        parts.append(f"{human_bytes(event.completed)}/{human_bytes(event.total)}")
    elif event.completed is not None:
        parts.append(human_bytes(event.completed))
    rate_text = format_rate(rate)
    if rate_text:
        parts.append(rate_text)
    return "  ".join(parts)


def format_bar(event: ProgressEvent, rate: float | None, width: int = 80) -> str:
    """A terminal line at most ``width`` characters wide, with a bar when measurable."""
    label = _label(event)
    fraction = event.fraction
    if fraction is None:
        tail = human_bytes(event.completed) if event.completed is not None else ""
        return f"{label}  {tail}".rstrip()[:width]
    numbers = f"{fraction * 100:3.0f}% {human_bytes(event.completed or 0)}/{human_bytes(event.total or 0)}"
    rate_text = format_rate(rate)
    if rate_text:
        numbers += f" {rate_text}"
    label_width = min(len(label), max(12, width - len(numbers) - 4 - 10))
    bar_width = max(10, min(40, width - label_width - len(numbers) - 4))
    if len(label) > label_width:
        label = label[: label_width - 1] + "…"
    filled = round(fraction * bar_width)
    bar = "█" * filled + " " * (bar_width - filled)
    return f"{label:<{label_width}} ▕{bar}▏ {numbers}"[:width]


@dataclass
class _RateTracker:
    key: tuple[str, str] | None = None
    started_at: float = 0.0
    start_completed: int = 0

    def rate(self, event: ProgressEvent, now: float) -> float | None:
        if phase_key(event) != self.key:
            self.key = phase_key(event)
            self.started_at = now
            self.start_completed = event.completed or 0
            return None
        elapsed = now - self.started_at
        if event.completed is None or elapsed <= 0:
            return None
        return (event.completed - self.start_completed) / elapsed


class ProgressRenderer:
    """A :data:`ProgressCallback` writing to ``stream``.

    On a terminal it redraws one line with a bar; elsewhere it writes a line
    per new step and then at most one per 10 % or per ``interval`` seconds.
    Call :meth:`close` when done so a terminal line ends with a newline.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        is_tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 5.0,
        width: int | None = None,
    ) -> None:
        self._stream = stream
        self._tty = _is_tty(stream) if is_tty is None else is_tty
        self._clock = clock
        self._interval = interval
        self._width = width or max(40, shutil.get_terminal_size((80, 24)).columns - 1)
        self._rates = _RateTracker()
        self._plain = PlainLineState()
        self._bar_open = False
        self._last_key: tuple[str, str] | None = None

    def __call__(self, event: ProgressEvent) -> None:
        now = self._clock()
        rate = self._rates.rate(event, now)
        if self._tty:
            self._draw_bar(event, rate)
        elif plain_line_due(self._plain, event, now, self._interval):
            self._stream.write(format_plain_line(event, rate) + "\n")
            self._stream.flush()
            self._plain = PlainLineState(key=phase_key(event), bucket=percent_bucket(event), written_at=now)

    def _draw_bar(self, event: ProgressEvent, rate: float | None) -> None:
        if self._bar_open and phase_key(event) != self._last_key:
            self._stream.write("\n")
        self._last_key = phase_key(event)
        line = format_bar(event, rate, self._width)
        self._stream.write("\r" + line + "\x1b[K")
        self._stream.flush()
        self._bar_open = True

    def close(self) -> None:
        """End the terminal line, if one is open."""
        if self._bar_open:
            self._stream.write("\n")
            self._stream.flush()
            self._bar_open = False


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
