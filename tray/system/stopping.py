"""A foreground command's main thread: asleep until SIGINT/SIGTERM (or another thread) asks it to stop."""

from __future__ import annotations

import signal
import threading

from tray.system.host import host_for

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT set (call on the main thread)."""
    stop = threading.Event()
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda *_: stop.set())
    return stop


def sleep_until(stop: threading.Event, platform: str | None = None) -> None:
    """Block until ``stop`` is set, without waking in between where the OS lets a signal end the wait.

    On POSIX a signal interrupts a wait without a timeout, so the handler's
    ``set()`` ends it. On Windows, before Python 3.14, such a wait cannot be
    interrupted by Ctrl+C: there it looks once a second.
    """
    if not host_for(platform).signal_ends_wait():
        while not stop.wait(1.0):
            pass
        return
    stop.wait()
