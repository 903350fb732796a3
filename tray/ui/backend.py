"""Which tray backend shows the icon: chosen at start, and again whenever the desktop's tray hosts change.

macOS and Windows always use pystray's own backend. On Linux:

- a StatusNotifierItem (:mod:`tray.ui.sni`) when ``org.kde.StatusNotifierWatcher``
  is on the session bus: KDE, GNOME with the AppIndicator extension, XFCE,
  Cinnamon, MATE, Budgie, LXQt, Wayland bars; the host draws a real menu;
- else pystray's xorg backend when an XEmbed system tray owns
  ``_NET_SYSTEM_TRAY_S<n>``; it has no menu, so a click opens the dashboard
  (or restarts Ollama while it is down);
- else, with a session bus, the item waits on the bus for a host (the app
  often starts at login before the panel) for the ``tray_host_wait`` setting;
  with neither a bus nor an X tray the app says there is no tray.

:func:`choose_backend` and :func:`next_step` decide; the probes and
:class:`HostWatch`, which follows the watcher's bus name and the X tray
selection as events (no polling), feed them. ``PYSTRAY_BACKEND`` set by the
user still forces a pystray backend, as pystray documents.
"""

from __future__ import annotations

import enum
import logging
import os
import select
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from tray.core.text import error_line
from tray.system.host import platform_name

log = logging.getLogger(__name__)

FALLBACK_SETTLE_S = 5.0  # how long an XEmbed tray must be there without a watcher before it takes the icon
NO_TRAY_HINT = "run `ollama-manager monitor` instead"

TrayVerdict = tuple[bool, str]


class StatusNotifierError(RuntimeError):
    """The session bus refused or lost the StatusNotifierItem (:mod:`tray.ui.sni`); ``str()`` is one line.

    Here, not in :mod:`tray.ui.sni`, so the CLI can catch it without loading the item's code.
    """


class TrayBackend(enum.StrEnum):
    """What draws the icon."""

    STATUS_NOTIFIER = "sni"  # tray.ui.sni over jeepney
    XEMBED = "xembed"  # pystray's xorg backend
    PYSTRAY = "pystray"  # pystray's own pick: macOS, Windows, or the one PYSTRAY_BACKEND names


@dataclass(frozen=True)
class TrayHosts:
    """The tray hosts a Linux session offers right now."""

    bus_address: str | None  # None: no session bus this app can reach
    watcher: bool
    bus_reason: str
    x_tray: bool
    x_reason: str


@dataclass(frozen=True)
class TrayChoice:
    """The backend to use (None: no tray) and why; ``waiting`` when no host is there yet."""

    backend: TrayBackend | None
    reason: str
    waiting: bool = False
    bus_address: str | None = None


def choose_backend(hosts: TrayHosts) -> TrayChoice:
    """SNI when a watcher is on the bus, else XEmbed when an X tray exists, else SNI waiting on a bus, else none.

    >>> hosts = TrayHosts("unix:path=/b", False, "no StatusNotifier host on the session bus", True, "tray on :1")
    >>> choose_backend(hosts).backend
    <TrayBackend.XEMBED: 'xembed'>
    >>> choose_backend(TrayHosts(None, False, "no session bus", False, "no display")).reason
    'no display'
    """
    if hosts.watcher:
        return TrayChoice(TrayBackend.STATUS_NOTIFIER, hosts.bus_reason, bus_address=hosts.bus_address)
    if hosts.x_tray:
        return TrayChoice(TrayBackend.XEMBED, hosts.x_reason, bus_address=hosts.bus_address)
    if hosts.bus_address is not None:
        return TrayChoice(
            TrayBackend.STATUS_NOTIFIER,
            f"{hosts.bus_reason} and {hosts.x_reason}; the icon waits on the session bus for one",
            waiting=True,
            bus_address=hosts.bus_address,
        )
    return TrayChoice(None, hosts.x_reason)


@dataclass(frozen=True)
class HostStep:
    """What :class:`HostWatch` does after looking at the hosts."""

    switch_to: TrayBackend | None = None
    give_up: bool = False
    recheck_in: float | None = None  # look again after this many seconds, even without an event


def next_step(
    current: TrayBackend,
    watcher: bool,
    x_tray: bool,
    *,
    since_start: float,
    x_tray_alone_for: float,
    host_seen: bool,
    wait_s: float,
    settle_s: float = FALLBACK_SETTLE_S,
) -> HostStep:
    """The move for the hosts seen now.

    A watcher always wins: its host draws a real menu. An XEmbed tray takes
    the icon from a StatusNotifierItem only once it has been there without a
    watcher for ``settle_s`` (a panel that is starting or restarting often
    claims the X tray a moment before its watcher appears).
    ``x_tray_alone_for`` is how long that has been so. With no host at all,
    a tray that never saw one gives up after ``wait_s``; one that had a host
    waits for it to come back.

    >>> sni, xembed = TrayBackend.STATUS_NOTIFIER, TrayBackend.XEMBED
    >>> next_step(xembed, True, True, since_start=9, x_tray_alone_for=0, host_seen=True, wait_s=30)
    HostStep(switch_to=<TrayBackend.STATUS_NOTIFIER: 'sni'>, give_up=False, recheck_in=None)
    >>> next_step(sni, False, True, since_start=9, x_tray_alone_for=2, host_seen=True, wait_s=30)
    HostStep(switch_to=None, give_up=False, recheck_in=3.0)
    >>> next_step(sni, False, False, since_start=31, x_tray_alone_for=0, host_seen=False, wait_s=30)
    HostStep(switch_to=None, give_up=True, recheck_in=None)
    """
    if watcher:
        return HostStep(switch_to=None if current is TrayBackend.STATUS_NOTIFIER else TrayBackend.STATUS_NOTIFIER)
    if x_tray:
        if current is TrayBackend.XEMBED:
            return HostStep()
        if x_tray_alone_for >= settle_s:
            return HostStep(switch_to=TrayBackend.XEMBED)
        return HostStep(recheck_in=settle_s - x_tray_alone_for)
    if host_seen:
        return HostStep()
    if since_start >= wait_s:
        return HostStep(give_up=True)
    return HostStep(recheck_in=wait_s - since_start)


# --- probes -----------------------------------------------------------------------


def x_tray_owner(display: str) -> TrayVerdict:
    """Whether an XEmbed system tray owns ``_NET_SYSTEM_TRAY_S<screen>`` on ``display``."""
    try:
        from Xlib import X
        from Xlib import display as xdisplay
        from Xlib.error import DisplayError
    except ImportError:
        return False, "python-xlib is not installed"
    try:
        connection = xdisplay.Display(display)
    except (DisplayError, OSError) as exc:
        return False, f"cannot open X display {display}: {error_line(exc, headline=True)}"
    try:
        selection = f"_NET_SYSTEM_TRAY_S{connection.get_default_screen()}"
        owner = connection.get_selection_owner(connection.intern_atom(selection))
    finally:
        connection.close()
    if owner == X.NONE:
        return False, f"nothing owns {selection} on X display {display}"
    return True, f"system tray found on X display {display}"


def x_tray_verdict(env: Mapping[str, str], probe_x: Callable[[str], TrayVerdict] = x_tray_owner) -> TrayVerdict:
    """The XEmbed tray on ``$DISPLAY``, or why there is none."""
    display = env.get("DISPLAY", "")
    if not display:
        if env.get("WAYLAND_DISPLAY"):
            return False, "Wayland desktop without X11 (DISPLAY is not set)"
        return False, "no graphical display (DISPLAY is not set)"
    return probe_x(display)


def session_bus_address(env: Mapping[str, str], exists: Callable[[str], bool] | None = None) -> str | None:
    """Where the session bus listens: ``DBUS_SESSION_BUS_ADDRESS``, else ``$XDG_RUNTIME_DIR/bus``.

    ``None`` when neither names a bus this client can reach (a ``disabled:``
    or non-Unix address included).

    >>> session_bus_address({"DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus"})
    'unix:path=/run/user/1000/bus'
    >>> session_bus_address({"DBUS_SESSION_BUS_ADDRESS": "disabled:"}) is None
    True
    >>> session_bus_address({"XDG_RUNTIME_DIR": "/run/user/1000"}, exists=lambda path: True)
    'unix:path=/run/user/1000/bus'
    """
    address = env.get("DBUS_SESSION_BUS_ADDRESS", "")
    if address:
        transports = [part.split(":", 1)[0] for part in address.split(";") if part]
        return address if "unix" in transports else None
    runtime_dir = env.get("XDG_RUNTIME_DIR", "")
    if not runtime_dir:
        return None
    socket_path = os.path.join(runtime_dir, "bus")
    if not (exists or _is_socket)(socket_path):
        return None
    return f"unix:path={socket_path}"


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def watcher_verdict(
    env: Mapping[str, str], probe_watcher: Callable[[str], bool] | None = None
) -> tuple[str | None, bool, str]:
    """``(bus address or None, watcher present, reason)`` for the session bus in ``env``."""
    address = session_bus_address(env)
    if address is None:
        return None, False, "no D-Bus session bus"  # and the StatusNotifierItem's code (and jeepney) stay unloaded
    from tray.ui.sni import watcher_on_bus

    try:
        present = (probe_watcher or watcher_on_bus)(address)
    except (OSError, TimeoutError, StatusNotifierError) as exc:
        return None, False, f"cannot reach the D-Bus session bus ({error_line(exc, headline=True)})"
    if present:
        return address, True, "StatusNotifier host found on the session bus"
    return address, False, "no StatusNotifier host on the session bus"


def probe_hosts(
    env: Mapping[str, str],
    *,
    probe_watcher: Callable[[str], bool] | None = None,
    probe_x: Callable[[str], TrayVerdict] = x_tray_owner,
) -> TrayHosts:
    """Ask the session bus and the X server which tray hosts exist."""
    address, watcher, bus_reason = watcher_verdict(env, probe_watcher)
    x_tray, x_reason = x_tray_verdict(env, probe_x)
    return TrayHosts(address, watcher, bus_reason, x_tray, x_reason)


def choose_tray(
    env: Mapping[str, str] | None = None,
    platform: str | None = None,
    *,
    probe_watcher: Callable[[str], bool] | None = None,
    probe_x: Callable[[str], TrayVerdict] = x_tray_owner,
) -> TrayChoice:
    """The backend for this session, and why: pystray on macOS and Windows, a probe of the hosts elsewhere."""
    env = os.environ if env is None else env
    platform = platform_name(platform)
    if platform == "darwin":
        return TrayChoice(TrayBackend.PYSTRAY, "macOS menu bar")
    if platform == "win32":
        return TrayChoice(TrayBackend.PYSTRAY, "Windows notification area")
    forced = env.get("PYSTRAY_BACKEND", "")
    if forced == "dummy":
        return TrayChoice(None, "PYSTRAY_BACKEND=dummy shows no icon")
    if forced == "appindicator":
        address, watcher, reason = watcher_verdict(env, probe_watcher)
        return TrayChoice(TrayBackend.PYSTRAY if watcher else None, reason, bus_address=address)
    if forced:
        present, reason = x_tray_verdict(env, probe_x)
        return TrayChoice(TrayBackend.PYSTRAY if present else None, reason)
    return choose_backend(probe_hosts(env, probe_watcher=probe_watcher, probe_x=probe_x))


def tray_available(
    env: Mapping[str, str] | None = None,
    platform: str | None = None,
    *,
    probe_watcher: Callable[[str], bool] | None = None,
    probe_x: Callable[[str], TrayVerdict] = x_tray_owner,
) -> TrayVerdict:
    """Whether a tray icon can be shown here (or waited for), and why (or why not)."""
    choice = choose_tray(env, platform, probe_watcher=probe_watcher, probe_x=probe_x)
    return choice.backend is not None, choice.reason


def no_tray_message(reason: str) -> str:
    """The one line the CLI prints when there is no tray."""
    return f"No system tray found ({reason}); {NO_TRAY_HINT}."


# --- backends -----------------------------------------------------------------------


def pystray_backend() -> Any:
    """pystray itself: its Icon, Menu and MenuItem for this platform (or PYSTRAY_BACKEND's pick)."""
    import pystray

    return pystray


def xembed_backend() -> Any:
    """pystray's xorg backend, whatever pystray would pick on its own (appindicator, gtk)."""
    if "pystray" not in sys.modules and "PYSTRAY_BACKEND" not in os.environ:
        os.environ["PYSTRAY_BACKEND"] = "xorg"  # pystray loads one backend on import; skip the GObject ones
        try:
            import pystray
        finally:
            del os.environ["PYSTRAY_BACKEND"]
    import pystray
    from pystray import _xorg

    return SimpleNamespace(Icon=_xorg.Icon, Menu=pystray.Menu, MenuItem=pystray.MenuItem)


def backend_for(kind: TrayBackend, bus_address: str | None = None) -> Any:
    """The object :class:`~tray.ui.app.TrayApp` draws its icon with, for ``kind``."""
    if kind is TrayBackend.STATUS_NOTIFIER:
        from tray.ui.sni import StatusNotifierBackend

        if bus_address is None:
            raise ValueError("the StatusNotifierItem backend needs a session bus address")
        return StatusNotifierBackend(bus_address)
    if kind is TrayBackend.XEMBED:
        return xembed_backend()
    return pystray_backend()


# --- following the hosts while running ------------------------------------------------


class HostWatch:
    """Follows the watcher's bus name and the X tray selection; asks for a switch or gives up.

    Runs in a daemon thread. ``on_switch(backend)`` and ``on_give_up(reason)``
    are called from it. Events come from the session bus (``NameOwnerChanged``
    for the watcher) and the X server (XFixes selection-owner events for
    ``_NET_SYSTEM_TRAY_S<n>``); the only timed wake-ups are the deadlines of
    :func:`next_step`.
    """

    def __init__(
        self,
        choice: TrayChoice,
        env: Mapping[str, str],
        on_switch: Callable[[TrayBackend], None],
        on_give_up: Callable[[str], None],
        *,
        wait_s: float,
        settle_s: float = FALLBACK_SETTLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if choice.backend is None or choice.bus_address is None:
            raise ValueError("HostWatch needs a chosen backend and a session bus")
        self.current = choice.backend
        self.bus_address = choice.bus_address
        self.display = env.get("DISPLAY", "")
        self._on_switch = on_switch
        self._on_give_up = on_give_up
        self._wait_s = wait_s
        self._settle_s = settle_s
        self._clock = clock
        self._stop_read, self._stop_write = os.pipe()
        self._thread: threading.Thread | None = None
        self._bus: Any = None
        self._x: Any = None
        self._selection = 0
        self.watcher = choice.backend is TrayBackend.STATUS_NOTIFIER and not choice.waiting
        self.x_tray = choice.backend is TrayBackend.XEMBED

    def __enter__(self) -> HostWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Connect to the bus and the X server and start following them."""
        self._bus = self._open_bus()
        self._x = self._open_x()
        self.watcher = self._watcher_now()
        self.x_tray = self._x_tray_now()
        self._thread = threading.Thread(target=self._run, name="tray-hosts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following and close the connections."""
        os.write(self._stop_write, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for connection in (self._bus, self._x):
            if connection is not None:
                try:
                    connection.close()
                except Exception:  # noqa: BLE001 - closing a dead connection
                    pass
        os.close(self._stop_read)
        os.close(self._stop_write)

    # --- connections ------------------------------------------------------------------

    def _open_bus(self) -> Any:
        from jeepney import new_method_call
        from jeepney.io.blocking import open_dbus_connection

        from tray.ui.sni import BUS_DAEMON, watcher_rule

        connection = open_dbus_connection(self.bus_address)
        connection.send_and_get_reply(
            new_method_call(BUS_DAEMON, "AddMatch", "s", (watcher_rule().serialise(),)), timeout=5
        )
        return connection

    def _watcher_now(self) -> bool:
        from jeepney import new_method_call

        from tray.ui.sni import BUS_DAEMON, WATCHER_NAME

        reply = self._bus.send_and_get_reply(
            new_method_call(BUS_DAEMON, "NameHasOwner", "s", (WATCHER_NAME,)), timeout=5
        )
        return bool(reply.body[0])

    def _open_x(self) -> Any:
        if not self.display:
            return None
        try:
            from Xlib import display as xdisplay
            from Xlib.ext import xfixes

            connection = xdisplay.Display(self.display)
        except Exception as exc:  # noqa: BLE001 - no X server: follow the bus alone
            log.info("not following the X tray on %s: %s", self.display, error_line(exc, headline=True))
            return None
        if not connection.has_extension(xfixes.extname):
            log.info("X display %s has no XFIXES; not following its system tray", self.display)
            connection.close()
            return None
        connection.xfixes_query_version()
        self._selection = connection.intern_atom(f"_NET_SYSTEM_TRAY_S{connection.get_default_screen()}")
        mask = (
            xfixes.XFixesSetSelectionOwnerNotifyMask
            | xfixes.XFixesSelectionWindowDestroyNotifyMask
            | xfixes.XFixesSelectionClientCloseNotifyMask
        )
        connection.xfixes_select_selection_input(connection.screen().root, self._selection, mask)
        connection.sync()
        return connection

    def _x_tray_now(self) -> bool:
        if self._x is None:
            return False
        from Xlib import X

        return bool(self._x.get_selection_owner(self._selection) != X.NONE)

    # --- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        started = self._clock()
        alone_since: float | None = None  # since when an X tray is there without a watcher
        host_seen = self.watcher or self.x_tray
        try:
            while True:
                now = self._clock()
                host_seen = host_seen or self.watcher or self.x_tray
                if self.x_tray and not self.watcher:
                    alone_since = now if alone_since is None else alone_since
                else:
                    alone_since = None
                step = next_step(
                    self.current,
                    self.watcher,
                    self.x_tray,
                    since_start=now - started,
                    x_tray_alone_for=0.0 if alone_since is None else now - alone_since,
                    host_seen=host_seen,
                    wait_s=self._wait_s,
                    settle_s=self._settle_s,
                )
                if step.give_up:
                    self._on_give_up(f"none appeared within {self._wait_s:g} s: {self._hosts_reason()}")
                    return
                if step.switch_to is not None:
                    log.info("tray hosts changed: moving the icon from %s to %s", self.current, step.switch_to)
                    self.current = step.switch_to
                    self._on_switch(step.switch_to)
                    continue
                sources = [self._stop_read, self._bus.sock] + ([self._x.fileno()] if self._x is not None else [])
                ready, _, _ = select.select(sources, [], [], step.recheck_in)
                if self._stop_read in ready:
                    return
                self._drain_bus()
                self._drain_x()
        except (OSError, ValueError) as exc:  # the bus or the X server went away under us
            log.info("stopped following the tray hosts: %s", error_line(exc, headline=True))

    def _hosts_reason(self) -> str:
        x_reason = x_tray_verdict({"DISPLAY": self.display})[1]
        return f"no StatusNotifier host on the session bus and {x_reason}"

    def _drain_bus(self) -> None:
        from tray.ui.sni import WATCHER_NAME

        while True:
            try:
                message = self._bus.receive(timeout=0)
            except TimeoutError:
                return
            if message.body and len(message.body) == 3 and message.body[0] == WATCHER_NAME:
                self.watcher = bool(message.body[2])

    def _drain_x(self) -> None:
        if self._x is None:
            return
        changed = False
        while self._x.pending_events():
            self._x.next_event()
            changed = True
        if changed:
            self.x_tray = self._x_tray_now()
