"""Native desktop notifications, with a fallback per OS and rate limiting.

:class:`Notifier` tries each channel in turn until one delivers:

- Linux: plyer (only through its D-Bus backend), the
  ``org.freedesktop.Notifications.Notify`` D-Bus call (through ``jeepney``,
  pure Python), then the ``notify-send`` command;
- macOS: plyer (when its backend can report), then
  ``osascript -e 'display notification ...'``;
- Windows: a toast under the app's own identity (the AppUserModelID
  ``io.github.ollama-manager``, registered under HKCU with the app's name),
  then plyer's tray balloon.

A channel counts as delivered only when it can tell: plyer's ``notify-send``
backend ignores the command's exit status and its Windows balloon runs on a
thread of its own, so they never pass for a success ahead of a channel that
reports failures. The balloon stays as Windows' last resort, whose delivery is
logged as unconfirmed.

A notification is never worth crashing for: every failure is logged and
:meth:`Notifier.notify` returns False instead of raising.
"""

from __future__ import annotations

import logging
import subprocess
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tray.core.text import error_line, one_line
from tray.system.host import platform_name

log = logging.getLogger(__name__)

APP_NAME = "Ollama Manager"
EXPIRE_MS = 10_000
COMMAND_TIMEOUT_S = 15.0
DBUS_TIMEOUT_S = 5.0

# plyer backends whose notify() fails when nothing was delivered (the others ignore errors or run detached).
CONFIRMING_PLYER_BACKENDS = frozenset({"NotifyDbus"})

Clock = Callable[[], float]
Send = Callable[[str, str], None]


class NotificationError(Exception):
    """A notification method failed; ``str()`` is one line for the log."""


@dataclass(frozen=True)
class Channel:
    """One way to show a notification; ``send(title, message)`` raises on failure.

    ``confirms``: a send that returns was delivered; False for a last resort that cannot tell.
    """

    name: str
    send: Send
    confirms: bool = True


@dataclass(frozen=True)
class Delivery:
    channel: str
    confirmed: bool


# --- Delivery (side effects) ------------------------------------------------


def run_command(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT_S, *, creationflags: int = 0) -> None:
    """Run a notification command; NotificationError when it cannot run or exits non-zero.

    ``creationflags``: Windows process creation flags (a console program's window stays hidden).
    """
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            creationflags=creationflags,
        )
    except FileNotFoundError:
        raise NotificationError(f"{argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise NotificationError(f"{argv[0]} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise NotificationError(f"{argv[0]} could not run: {exc.strerror or exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout or "").strip().splitlines()
        reason = f": {detail[-1]}" if detail else ""
        raise NotificationError(f"{argv[0]} exited with status {done.returncode}{reason}")


def plyer_backend() -> object:
    """The backend plyer's notification facade resolves to on this machine (raises when there is none)."""
    from plyer import notification

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "The Python dbus package is not installed": it falls back to notify-send
        object.__getattribute__(notification, "_ensure_obj")()  # plyer's lazy proxy loads its backend
    return object.__getattribute__(notification, "_obj")


def plyer_notify(
    title: str, message: str, app_name: str = APP_NAME, icon: str = "", *, confirmed_only: bool = True
) -> None:
    """plyer's notification; with ``confirmed_only`` it refuses a backend that cannot report a failure."""
    from plyer import notification

    backend = type(plyer_backend()).__name__
    if confirmed_only and backend not in CONFIRMING_PLYER_BACKENDS:
        raise NotificationError(f"plyer's {backend} cannot tell whether it showed anything")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        notification.notify(title=title, message=message, app_name=app_name, app_icon=icon, timeout=EXPIRE_MS // 1000)
    for warning in caught:
        log.debug("plyer: %s", one_line(str(warning.message)))


class NotifyOS(Protocol):
    """One OS's ways to notify: the channels in the order they are tried (those that report failures first)."""

    @property
    def plyer_platform(self) -> str:
        """plyer's name for the OS (plyer.utils.platform): its backend is ``plyer.platforms.<it>.notification``."""
        ...

    def channels(self, app_name: str, icon: str) -> list[Channel]:
        """The channels, first tried first."""
        ...

    def fallbacks(self, which: Callable[[str], str | None], jeepney_present: bool) -> list[str]:
        """The channels besides plyer that could run here, each with where it was found."""
        ...


@dataclass(frozen=True)
class PlyerOnly:
    """An OS this app knows no other way for: plyer alone."""

    plyer_platform: str

    def channels(self, app_name: str, icon: str) -> list[Channel]:
        return [Channel("plyer", lambda t, m: plyer_notify(t, m, app_name, icon))]

    def fallbacks(self, which: Callable[[str], str | None], jeepney_present: bool) -> list[str]:
        return []


def notify_os_for(platform: str | None = None) -> NotifyOS:
    """The notification channels of ``platform`` (a ``sys.platform`` value; default: this OS)."""
    platform = platform_name(platform)
    if platform.startswith("linux") or "bsd" in platform:
        from tray.system.notify_linux import LinuxNotify

        return LinuxNotify()
    if platform == "darwin":
        from tray.system.notify_darwin import DarwinNotify

        return DarwinNotify()
    if platform == "win32":
        from tray.system.notify_windows import WindowsNotify

        return WindowsNotify()
    return PlyerOnly(platform)


def default_channels(platform: str | None = None, app_name: str = APP_NAME, icon: str = "") -> list[Channel]:
    """The channels of ``platform`` (default: this OS) in the order they are tried: those that report failures
    first."""
    return notify_os_for(platform).channels(app_name, icon)


# --- Rate limiting (pure) ---------------------------------------------------


class RateLimiter:
    """At most one notification per key every ``per_key_seconds``, and at most
    ``global_limit`` in any ``global_window_seconds``."""

    def __init__(
        self, per_key_seconds: float = 60.0, global_limit: int = 5, global_window_seconds: float = 60.0
    ) -> None:
        self.per_key_seconds = per_key_seconds
        self.global_limit = global_limit
        self.global_window_seconds = global_window_seconds
        self._last_by_key: dict[str, float] = {}
        self._recent: deque[float] = deque()

    def allow(self, key: str, now: float) -> bool:
        """True (and counted) when a notification for ``key`` may go out at ``now``."""
        while self._recent and now - self._recent[0] >= self.global_window_seconds:
            self._recent.popleft()
        last = self._last_by_key.get(key)
        if last is not None and now - last < self.per_key_seconds:
            return False
        if len(self._recent) >= self.global_limit:
            return False
        self._last_by_key[key] = now
        self._recent.append(now)
        return True


# --- The notifier -----------------------------------------------------------


class Notifier:
    """Shows notifications; switch off with ``enabled = False``.

    Delivery blocks the calling thread for at most a few seconds per
    method tried, so call it from a worker thread, not the UI thread.
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        channels: Sequence[Channel] | None = None,
        limiter: RateLimiter | None = None,
        clock: Clock = time.monotonic,
        app_name: str = APP_NAME,
        icon_path: str = "",
    ) -> None:
        self.enabled = enabled
        self.app_name = app_name
        self.channels = list(channels) if channels is not None else default_channels(app_name=app_name, icon=icon_path)
        self.limiter = limiter if limiter is not None else RateLimiter()
        self._clock = clock

    def notify(self, title: str, message: str, *, key: str | None = None) -> bool:
        """Show a notification; True when a method delivered it and could tell.

        ``key`` groups repeats for the rate limit (default: the title).
        False when switched off, rate-limited, or no method delivered it.
        """
        if not self.enabled:
            log.debug("Notifications are off; not shown: %s", title)
            return False
        if not self.limiter.allow(key if key is not None else title, self._clock()):
            log.info("Notification rate-limited: %s", title)
            return False
        try:
            delivery = self.deliver(title, message)
        except NotificationError:
            log.warning("Notification not shown, no method worked: %s: %s", title, message)
            return False
        return delivery.confirmed

    def deliver(self, title: str, message: str) -> Delivery:
        """Try each channel in turn; NotificationError naming every failure when none delivered."""
        failures = []
        for channel in self.channels:
            try:
                channel.send(title, message)
            except Exception as exc:  # noqa: BLE001 - a failed notification must never propagate
                log.warning("Notification via %s failed: %s", channel.name, error_line(exc))
                failures.append(f"{channel.name}: {error_line(exc)}")
                continue
            if channel.confirms:
                log.debug("Notification shown via %s: %s", channel.name, title)
            else:
                log.info("Notification handed to %s, which cannot tell whether it showed: %s", channel.name, title)
            return Delivery(channel.name, channel.confirms)
        raise NotificationError("; ".join(failures) or "no notification method on this system")
