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

import base64
import html
import logging
import os
import subprocess
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tray.core.text import error_line, one_line
from tray.system.registry import RegistryValues, WinregKey

log = logging.getLogger(__name__)

APP_NAME = "Ollama Manager"
EXPIRE_MS = 10_000
COMMAND_TIMEOUT_S = 15.0
DBUS_TIMEOUT_S = 5.0

# The AppUserModelID toasts are shown under: Windows drops toasts of an app id it does not know, so
# it is registered under HKCU (Software\Classes\AppUserModelId\<id>) with the name and icon to show.
WINDOWS_APP_ID = "io.github.ollama-manager"
APP_ID_KEY = rf"Software\Classes\AppUserModelId\{WINDOWS_APP_ID}"
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


# --- Command lines (pure) ---------------------------------------------------


def body_markup(text: str) -> str:
    """Plain text as a freedesktop notification body, which servers read as a subset of HTML.

    >>> body_markup("model 'a<b>' & <i>x</i>")
    "model 'a&lt;b&gt;' &amp; &lt;i&gt;x&lt;/i&gt;"
    """
    return html.escape(text, quote=False)


def notify_send_command(title: str, message: str, app_name: str = APP_NAME, expire_ms: int = EXPIRE_MS) -> list[str]:
    """The ``notify-send`` argv; ``--`` keeps a title starting with ``-`` from reading as an option.

    >>> notify_send_command("Ollama down", "Not responding")
    ['notify-send', '--app-name=Ollama Manager', '--expire-time=10000', '--', 'Ollama down', 'Not responding']
    """
    return ["notify-send", f"--app-name={app_name}", f"--expire-time={expire_ms}", "--", title, message]


def applescript_quote(text: str) -> str:
    r"""An AppleScript string literal.

    >>> print(applescript_quote('say "hi" \\ bye'))
    "say \"hi\" \\ bye"
    """
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")
    return f'"{escaped}"'


def osascript_command(title: str, message: str, app_name: str = APP_NAME) -> list[str]:
    """The ``osascript`` argv: the app name as title, the alert title as subtitle."""
    script = (
        f"display notification {applescript_quote(message)} "
        f"with title {applescript_quote(app_name)} subtitle {applescript_quote(title)}"
    )
    return ["osascript", "-e", script]


_POWERSHELL_SINGLE_QUOTES = ("'", "\u2018", "\u2019", "\u201a", "\u201b")


def powershell_quote(text: str) -> str:
    """A PowerShell single-quoted literal; PowerShell also treats the typographic single quotes as quotes.

    >>> print(powershell_quote("it's"))
    'it''s'
    """
    for quote in _POWERSHELL_SINGLE_QUOTES:
        text = text.replace(quote, quote * 2)
    return f"'{text}'"


def powershell_toast_script(title: str, message: str, app_id: str = WINDOWS_APP_ID) -> str:
    """PowerShell that shows a toast under ``app_id``; any failure ends it with a non-zero status."""
    t, m, i = (powershell_quote(v) for v in (title, message, app_id))
    return "\n".join(
        [
            "$ErrorActionPreference = 'Stop'",
            "[Windows.UI.Notifications.ToastNotificationManager, Windows.UI.Notifications,"
            " ContentType = WindowsRuntime] | Out-Null",
            "$xml = [Windows.UI.Notifications.ToastNotificationManager]::GetTemplateContent("
            "[Windows.UI.Notifications.ToastTemplateType]::ToastText02)",
            "$lines = $xml.GetElementsByTagName('text')",
            f"$lines.Item(0).AppendChild($xml.CreateTextNode({t})) | Out-Null",
            f"$lines.Item(1).AppendChild($xml.CreateTextNode({m})) | Out-Null",
            "$toast = [Windows.UI.Notifications.ToastNotification]::new($xml)",
            f"[Windows.UI.Notifications.ToastNotificationManager]::CreateToastNotifier({i}).Show($toast)",
        ]
    )


def app_id_values(app_name: str = APP_NAME, icon: str = "") -> dict[str, str]:
    """The values that register the toasts' app id (Windows' "AppUserModelId" registry key).

    >>> app_id_values("Ollama Manager", "C:/om/icon.png")
    {'DisplayName': 'Ollama Manager', 'IconUri': 'C:/om/icon.png'}
    """
    values = {"DisplayName": app_name}
    if icon:
        values["IconUri"] = icon
    return values


def register_app_id(registry: RegistryValues, app_name: str = APP_NAME, icon: str = "") -> None:
    """Write the app id's values where they differ (HKCU, no privileges needed)."""
    for name, data in app_id_values(app_name, icon).items():
        if registry.get(name) != data:
            registry.set(name, data)


def powershell_command(title: str, message: str, app_id: str = WINDOWS_APP_ID) -> list[str]:
    """The ``powershell.exe`` argv; the script goes base64 (UTF-16LE) so no quoting survives the command line."""
    script = powershell_toast_script(title, message, app_id)
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    return [
        "powershell.exe",
        "-NoProfile",
        "-NonInteractive",
        "-ExecutionPolicy",
        "Bypass",
        "-WindowStyle",
        "Hidden",
        "-EncodedCommand",
        encoded,
    ]


# --- Delivery (side effects) ------------------------------------------------


def run_command(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT_S) -> None:
    """Run a notification command; NotificationError when it cannot run or exits non-zero."""
    flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            creationflags=flags,
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


def session_bus_address(env: Mapping[str, str] = os.environ) -> str:
    """The D-Bus session bus address: ``$DBUS_SESSION_BUS_ADDRESS``, else the systemd user bus."""
    address = env.get("DBUS_SESSION_BUS_ADDRESS", "")
    if address:
        return address
    runtime_dir = env.get("XDG_RUNTIME_DIR", "")
    if runtime_dir and Path(runtime_dir, "bus").exists():
        return f"unix:path={runtime_dir}/bus"
    raise NotificationError("no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set)")


def dbus_notify(
    title: str,
    message: str,
    app_name: str = APP_NAME,
    icon: str = "",
    bus_address: str | None = None,
    timeout: float = DBUS_TIMEOUT_S,
) -> int:
    """``org.freedesktop.Notifications.Notify`` on the session bus; returns the notification id."""
    try:
        from jeepney import DBusAddress, new_method_call
        from jeepney.io.blocking import open_dbus_connection
        from jeepney.wrappers import DBusErrorResponse, unwrap_msg
    except ImportError:
        raise NotificationError("the jeepney package is not installed") from None
    address = bus_address or session_bus_address()
    target = DBusAddress(
        "/org/freedesktop/Notifications",
        bus_name="org.freedesktop.Notifications",
        interface="org.freedesktop.Notifications",
    )
    call = new_method_call(target, "Notify", "susssasa{sv}i", (app_name, 0, icon, title, message, [], {}, EXPIRE_MS))
    try:
        with open_dbus_connection(bus=address, auth_timeout=timeout) as connection:
            reply = connection.send_and_get_reply(call, timeout=timeout)
        (notification_id,) = unwrap_msg(reply)
    except DBusErrorResponse as exc:
        raise NotificationError(f"D-Bus notification refused: {exc.name}") from None
    except TimeoutError:
        raise NotificationError(f"no answer from the notification service within {timeout:g} s") from None
    except (OSError, RuntimeError, ValueError) as exc:
        raise NotificationError(f"D-Bus session bus unusable: {error_line(exc)}") from None
    return int(notification_id)


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


class WindowsToast:
    """A toast under the app's own AppUserModelID, registered (once) before the first one."""

    def __init__(
        self,
        app_name: str = APP_NAME,
        icon: str = "",
        registry: Callable[[], RegistryValues] = lambda: WinregKey(APP_ID_KEY),
        run: Callable[[Sequence[str]], None] = run_command,
    ) -> None:
        self.app_name = app_name
        self.icon = icon
        self._registry = registry
        self._run = run
        self._registered = False

    def __call__(self, title: str, message: str) -> None:
        if not self._registered:
            try:
                register_app_id(self._registry(), self.app_name, self.icon)
            except OSError as exc:
                raise NotificationError(f"cannot register the notifications' app id: {error_line(exc)}") from None
            self._registered = True
        self._run(powershell_command(title, message))


def default_channels(platform: str = sys.platform, app_name: str = APP_NAME, icon: str = "") -> list[Channel]:
    """The channels in the order they are tried: those that report failures first."""
    plyer = Channel("plyer", lambda t, m: plyer_notify(t, m, app_name, icon))
    if platform.startswith("linux") or "bsd" in platform:
        # Freedesktop servers read the body as markup (GNOME, KDE, dunst, xfce4-notifyd): it goes escaped.
        return [
            Channel("plyer", lambda t, m: plyer_notify(t, body_markup(m), app_name, icon)),
            Channel("dbus", lambda t, m: _ignore_id(dbus_notify(t, body_markup(m), app_name, icon))),
            Channel("notify-send", lambda t, m: run_command(notify_send_command(t, body_markup(m), app_name))),
        ]
    if platform == "darwin":
        return [plyer, Channel("osascript", lambda t, m: run_command(osascript_command(t, m, app_name)))]
    if platform == "win32":

        def balloon_send(t: str, m: str) -> None:
            plyer_notify(t, m, app_name, icon, confirmed_only=False)

        balloon = Channel("plyer", balloon_send, confirms=False)
        return [Channel("toast", WindowsToast(app_name, icon)), balloon]
    return [plyer]


def _ignore_id(_notification_id: int) -> None:
    return None


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
