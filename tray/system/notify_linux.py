"""Notifications on Linux (and the BSDs): freedesktop servers over D-Bus, then ``notify-send``.

Freedesktop servers read the body as markup (GNOME, KDE, dunst, xfce4-notifyd), so it goes escaped.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from tray.core.text import error_line
from tray.system.notify import (
    APP_NAME,
    DBUS_TIMEOUT_S,
    EXPIRE_MS,
    Channel,
    NotificationError,
    plyer_notify,
    run_command,
)


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


class LinuxNotify:
    """plyer (only through its D-Bus backend), the D-Bus call through jeepney, then ``notify-send``."""

    plyer_platform = "linux"

    def channels(self, app_name: str, icon: str) -> list[Channel]:
        return [
            Channel("plyer", lambda t, m: plyer_notify(t, body_markup(m), app_name, icon)),
            Channel("dbus", lambda t, m: _ignore_id(dbus_notify(t, body_markup(m), app_name, icon))),
            Channel("notify-send", lambda t, m: run_command(notify_send_command(t, body_markup(m), app_name))),
        ]

    def fallbacks(self, which: Callable[[str], str | None], jeepney_present: bool) -> list[str]:
        found = [f"notify-send ({where})"] if (where := which("notify-send")) else []
        return (["D-Bus (jeepney)"] if jeepney_present else []) + found


def _ignore_id(_notification_id: int) -> None:
    return None
