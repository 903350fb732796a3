"""Sizes and durations written for people, one way wherever the app shows them (CLI, tray, dashboard, events).

Sizes follow Ollama's ``format.HumanBytes`` (decimal units, as ``ollama list``
and ``ollama pull`` print them), so a model's size reads the same in the
manager as in Ollama's own commands.
"""

from __future__ import annotations

import math

MIB = 1024 * 1024
GIB = 1024 * MIB
_SIZE_UNITS = (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3))


def human_bytes(size: float) -> str:
    """Decimal sizes the way Ollama prints them (``format.HumanBytes``): one decimal below ten, none from ten up
    or when whole.

    >>> human_bytes(4_661_224_676), human_bytes(26_000_000_000), human_bytes(4_000_000_000), human_bytes(999)
    ('4.7 GB', '26 GB', '4 GB', '999 B')
    >>> human_bytes(1_500), human_bytes(0), human_bytes(35_123_456.7)
    ('1.5 KB', '0 B', '35 MB')
    """
    whole = int(size)
    for unit, scale in _SIZE_UNITS:
        if whole >= scale:
            value = whole / scale
            if value >= 10 or value == math.trunc(value):
                return f"{math.trunc(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{whole} B"


def human_memory(size: float) -> str:
    """Memory in binary units, as the OS counts it, written GB/MB as users expect and without a trailing ``.0``.

    >>> human_memory(6144 * MIB), human_memory(7.25 * GIB), human_memory(300 * MIB), human_memory(0)
    ('6 GB', '7.2 GB', '300 MB', '0 MB')
    """
    if abs(size) >= GIB:
        return f"{size / GIB:.1f}".removesuffix(".0") + " GB"
    return f"{size / MIB:.0f} MB"


def binary_size(size: int) -> str:
    """A byte count as a limit is written: whole MiB or KiB when it is one, else bytes.

    >>> binary_size(32 * 1024 * 1024), binary_size(64 * 1024), binary_size(1000)
    ('32 MiB', '64 KiB', '1000 bytes')
    """
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def format_duration(seconds: float) -> str:
    """A short, rounded duration: ``12 s``, ``5 min``, ``2 h 5 min``.

    >>> format_duration(0.3), format_duration(60), format_duration(299), format_duration(7500)
    ('1 s', '1 min', '5 min', '2 h 5 min')
    """
    whole_seconds = max(1, math.ceil(seconds))
    if whole_seconds < 60:
        return f"{whole_seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def format_age(seconds: float) -> str:
    """How long ago something happened: ``5 min ago``; ``just now`` under a second.

    >>> format_age(300.0), format_age(0.4)
    ('5 min ago', 'just now')
    """
    return "just now" if seconds < 1 else f"{format_duration(seconds)} ago"


def format_latency(milliseconds: float) -> str:
    """``245 ms`` below a second, ``7.2 s`` above.

    >>> format_latency(245), format_latency(7240)
    ('245 ms', '7.2 s')
    """
    if milliseconds < 1000:
        return f"{round(milliseconds)} ms"
    return f"{milliseconds / 1000:.1f} s"
