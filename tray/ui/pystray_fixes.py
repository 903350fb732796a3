"""Workarounds for bugs of pystray's xorg (XEmbed) backend, each reaching into its private internals.

They were written against pystray 0.19.5 (the latest release; pyproject.toml asks for at
least that) and are applied only to that version: :func:`fix_xorg_icon` skips them, with one
warning, for any other. A release that renames what they patch must not break the tray,
and a release that fixes the bugs must not be patched again; the tray's X tests show which
it is when pystray is upgraded. No upper bound is pinned, so a fixed pystray can be installed.

Other backends are left alone: each function returns at once for an icon that is not
``pystray._xorg``'s.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

PATCHED_PYSTRAY = "0.19.5"  # the pystray release these workarounds were written and tested against
_warned_versions: set[str | None] = set()  # each skipped version is reported once


def pystray_version() -> str | None:
    """The installed pystray's version (a bundle carries its metadata); None when it cannot be told."""
    try:
        return importlib.metadata.version("pystray")
    except importlib.metadata.PackageNotFoundError:
        return None


def fix_xorg_icon(icon: Any, version: str | None = None) -> bool:
    """Apply every workaround to pystray's xorg ``icon`` when pystray is the version they were written for.

    ``version``: the installed pystray's (default: read from its metadata). True when applied.
    """
    if type(icon).__module__ != "pystray._xorg":
        return False
    version = pystray_version() if version is None else version
    if version != PATCHED_PYSTRAY:
        if version not in _warned_versions:
            _warned_versions.add(version)
            log.warning(
                "pystray %s is not %s, which the tray's xorg workarounds were written for: they are skipped "
                "(clicks on the icon and updates from other threads work as pystray itself makes them)",
                version or "of an unknown version",
                PATCHED_PYSTRAY,
            )
        return False
    accept_xorg_clicks(icon)
    send_xorg_requests_on_own_connection(icon)
    log_xorg_tray_loss_in_one_line(icon)
    return True


def accept_xorg_clicks(icon: Any) -> None:
    """Let pystray's xorg icon window receive mouse clicks.

    pystray 0.19.5 creates the XEmbed window without ``ButtonPressMask``, so a
    click never reaches its default action (pystray issue #151). Other
    backends are left alone.
    """
    if type(icon).__module__ != "pystray._xorg":
        return
    window, display = getattr(icon, "_window", None), getattr(icon, "_display", None)
    if window is None or display is None:
        return
    from Xlib import X

    window.change_attributes(event_mask=X.ExposureMask | X.StructureNotifyMask | X.ButtonPressMask)
    display.flush()


def send_xorg_requests_on_own_connection(icon: Any) -> None:
    """Make pystray's xorg icon safe to update from other threads.

    pystray 0.19.5 runs ``icon.icon = ...``, ``icon.title = ...``,
    ``visible`` and ``stop()`` by sending a ClientMessage to its own window
    on the icon's X connection from the calling thread, while the event loop
    uses that connection on the main thread. python-xlib 0.33 cannot share a
    connection that way: a thread that flushes while input is pending returns
    without waking a thread waiting for a reply, so the event loop blocks for
    good in ``get_geometry()`` and every later update waits on it (the icon
    freezes; ~5 % of launches under Xvfb). A second connection carries those
    messages instead; the event loop still receives them on its own.
    """
    if type(icon).__module__ != "pystray._xorg":
        return
    from Xlib import X
    from Xlib import display as xdisplay
    from Xlib.protocol import event

    sender = xdisplay.Display(icon._display.get_display_name())
    send_lock = threading.Lock()
    send_on_loop_thread = icon._send_message

    def send_message(window: Any, client_type: int, l0: int = 0, l1: int = 0, l2: int = 0, l3: int = 0) -> None:
        loop = getattr(icon, "_thread", None)
        if loop is not None and threading.current_thread().ident == loop.ident:
            send_on_loop_thread(window, client_type, l0, l1, l2, l3)
            return
        message = event.ClientMessage(
            window=window.id, client_type=client_type, data=(32, (X.CurrentTime, l0, l1, l2, l3))
        )
        with send_lock:
            sender.create_resource_object("window", window.id).send_event(message, event_mask=X.NoEventMask)
            sender.flush()

    icon._send_message = send_message


class _TrayLossInOneLine(logging.Filter):
    """Turns pystray's "Failed to dock icon" traceback into one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Failed to dock icon" and record.exc_info:
            record.msg = "the XEmbed system tray went away; the icon waits for the tray hosts to change"
            record.args = None
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_TRAY_LOSS_FILTER = _TrayLossInOneLine()


def log_xorg_tray_loss_in_one_line(icon: Any) -> None:
    """Keep pystray's xorg backend from logging a traceback when the XEmbed tray goes away.

    pystray 0.19.5 logs "Failed to dock icon" with the AssertionError of its
    own docking check when the tray window is destroyed (a panel that quits or
    restarts): an expected event, which :class:`~tray.ui.backend.HostWatch`
    answers, not a bug.
    """
    if type(icon).__module__ == "pystray._xorg":
        logger = logging.getLogger("pystray._base")
        if _TRAY_LOSS_FILTER not in logger.filters:
            logger.addFilter(_TRAY_LOSS_FILTER)
