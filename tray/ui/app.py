"""The tray adapter: renders the status as icon, tooltip and menu, and runs menu actions.

The tray holds no policy. It reads the latest status and the settings
from a :class:`Controller`, renders them through :mod:`tray.ui.icon` and
:mod:`tray.ui.menu`, and hands every action back to the controller, which runs
it off the UI thread. The icon itself comes from a backend
(:mod:`tray.ui.backend` picks one): pystray, or the StatusNotifierItem of
:mod:`tray.ui.sni`. pystray is imported lazily: importing it without a display
raises, and :func:`tray.ui.backend.tray_available` must be able to say why first.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import subprocess
import threading
from collections.abc import Callable
from typing import Any, Protocol

from PIL import Image

from tray import APP_NAME
from tray.core.actions import REBUILD, RESTART, START, STOP, UNLOAD
from tray.core.status import Status
from tray.core.text import error_line, first_line
from tray.system.host import host_for
from tray.ui.icon import IconState, draw_icon, icon_state, latin1_text, tooltip
from tray.ui.menu import (
    ACTION_LABELS,
    OPEN_DASHBOARD,
    OPEN_LOGS,
    QUIT,
    TOGGLE_AUTOSTART,
    TOGGLE_NOTIFICATIONS,
    USE_MODELFILE_MODEL,
    MenuEntry,
    build_menu,
    click_action,
    find_entry,
    model_of_action,
    use_model_action,
)

log = logging.getLogger(__name__)

SETTING_FOR_TOGGLE = {TOGGLE_AUTOSTART: "autostart", TOGGLE_NOTIFICATIONS: "notifications"}


class Controller(Protocol):
    """What the tray needs from the rest of the app."""

    def snapshot(self) -> Status:
        """The latest status."""
        ...

    def subscribe(self, callback: Callable[[Status], None]) -> Callable[[], None]:
        """Call ``callback`` (from a background thread) on every status change; return an unsubscribe function."""
        ...

    def request(self, action: str) -> concurrent.futures.Future[str]:
        """Run ``start``/``stop``/``restart``/``rebuild``/``unload`` off the UI thread.

        The future's result is a one-line message; an exception means failure.
        """
        ...

    def use_model(self, name: str) -> concurrent.futures.Future[str]:
        """Make ``name`` the active model ("" : the Modelfile model) off the UI thread; the result is one line."""
        ...

    def settings(self) -> dict[str, bool]:
        """``{"notifications": bool, "autostart": bool, "stop_ollama_on_quit": bool}``."""
        ...

    def set_setting(self, key: str, value: bool) -> None:
        """Change and persist one boolean setting."""
        ...

    def log_paths(self) -> list[str]:
        """Folders or files that "Open logs" may open, most useful first."""
        ...

    def open_dashboard(self) -> None:
        """Open the dashboard in the default browser; an exception's text is one line."""
        ...

    def notify(self, title: str, message: str) -> None:
        """Show a desktop notification (the controller honours the setting)."""
        ...


def open_command(path: str, platform: str | None = None) -> list[str] | None:
    """The command that shows ``path`` in the desktop's file manager or viewer (None on Windows)."""
    return host_for(platform).open_command(path)


def open_path(
    path: str,
    *,
    platform: str | None = None,
    spawn: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
) -> None:
    """Open a file or folder with the desktop's default application, detached.

    No shell is involved; the opener is detached from this process
    (``start_new_session``) and reaped by a daemon thread. Raises ``OSError``
    when the opener cannot be started.
    """
    host_for(platform).open_path(path, spawn)


def pick_log_path(paths: list[str], exists: Callable[[str], bool] = os.path.exists) -> str | None:
    """The first path that exists, else None."""
    return next((path for path in paths if exists(path)), None)


class TrayApp:
    """The tray icon, its tooltip and its menu, driven by a :class:`Controller`.

    ``backend`` is either a module-like object with pystray's ``Icon``,
    ``Menu`` and ``MenuItem`` (by default pystray itself, imported on first
    use), or an object whose ``create_icon(app, name, image, title)`` returns
    an icon with the same surface that renders :attr:`entries` itself and
    calls :meth:`run_action` and :meth:`on_click` (:mod:`tray.ui.sni`).
    :meth:`switch_backend` moves the icon to another backend while running.
    The ``on_*`` methods are the exact callables the menu items run.
    """

    def __init__(
        self,
        controller: Controller,
        *,
        backend: Any = None,
        opener: Callable[[str], None] = open_path,
        icon_size: int = 64,
        quit_stop_timeout: float = 30.0,
    ) -> None:
        self._controller = controller
        self._backend = backend if backend is not None else _import_pystray()
        self._next_backend: Any = None
        self._opener = opener
        self._icon_size = icon_size
        self._quit_stop_timeout = quit_stop_timeout
        self._lock = threading.Lock()
        self._render_lock = threading.Lock()
        self._status = controller.snapshot()
        self._running_actions: set[str] = set()
        self._ready = False
        self._dirty = False
        self._stopped = False
        self._images: dict[tuple[IconState, bool], Image.Image] = {}
        self._shown_image_key: tuple[IconState, bool] | None = None
        self._quit_stop: concurrent.futures.Future[str] | None = None
        self._callbacks: dict[str, Callable[[], None]] = {
            START: self.on_start,
            STOP: self.on_stop,
            RESTART: self.on_restart,
            REBUILD: self.on_rebuild,
            UNLOAD: self.on_unload,
            OPEN_DASHBOARD: self.on_open_dashboard,
            OPEN_LOGS: self.on_open_logs,
            TOGGLE_AUTOSTART: self.on_toggle_autostart,
            TOGGLE_NOTIFICATIONS: self.on_toggle_notifications,
            QUIT: self.on_quit,
        }
        self._entries = self._current_menu()
        self._icon = self._new_icon()

    # --- public -------------------------------------------------------------

    @property
    def icon(self) -> Any:
        """The backend's icon object."""
        return self._icon

    @property
    def entries(self) -> list[MenuEntry]:
        """The menu model currently rendered."""
        with self._lock:
            return list(self._entries)

    @property
    def running_actions(self) -> frozenset[str]:
        """Actions started from the menu that have not finished."""
        with self._lock:
            return frozenset(self._running_actions)

    def run(self) -> None:
        """Show the icon and handle its events until Quit; call on the main thread.

        When :meth:`switch_backend` stops the icon, the new backend's icon is
        shown in its place.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("TrayApp.run() must be called on the main thread")
        unsubscribe = self._controller.subscribe(self.on_status)
        try:
            while True:
                self._icon.run(setup=self._on_icon_ready)
                with self._lock:
                    backend, self._next_backend = self._next_backend, None
                    if self._stopped or backend is None:
                        break
                    self._ready = False
                with self._render_lock:
                    self._backend = backend
                    self._icon = self._new_icon()
        finally:
            unsubscribe()
            self._wait_for_quit_stop()

    def switch_backend(self, backend: Any) -> None:
        """Show the icon through ``backend`` instead (any thread); :meth:`run` makes the new icon."""
        with self._lock:
            if self._stopped:
                return
            self._next_backend = backend
            ready = self._ready
        if ready:
            self._icon.stop()  # else the icon stops as soon as it is up (_on_icon_ready)

    def close(self) -> None:
        """Take the icon away and end :meth:`run`, without Quit's "stop Ollama on quit"."""
        with self._lock:
            self._stopped = True
            ready = self._ready
        if ready:
            self._icon.stop()  # else the icon stops as soon as it is up (_on_icon_ready)

    def run_action(self, action: str) -> None:
        """Run the menu action with id ``action``, as its menu item would."""
        callback = self._callback_for(action)
        if callback is None:
            log.info("ignoring unknown menu action %s", action)
            return
        callback()

    def on_click(self) -> None:
        """A plain click on the icon where the menu opens otherwise or not at all (:func:`click_action`)."""
        self.run_action(click_action(self.entries))

    def on_status(self, status: Status) -> None:
        """Take a new status (any thread) and re-render."""
        with self._lock:
            self._status = status
        self.refresh()

    def refresh(self) -> None:
        """Re-render icon, tooltip and menu from the latest status and settings.

        Never blocks on another thread's render: pystray's xorg backend runs
        icon updates on its own thread and waits for them, so a menu callback
        on that thread must not wait for a render in progress elsewhere. The
        thread that is rendering picks the change up instead.
        """
        with self._lock:
            self._dirty = True
        while self._render_lock.acquire(blocking=False):
            try:
                with self._lock:
                    if not self._dirty or self._stopped:
                        return
                    self._dirty = False
                self._render()
            finally:
                self._render_lock.release()

    # --- menu callbacks -------------------------------------------------------

    def on_start(self) -> None:
        """Menu: Start Ollama."""
        self._request(START)

    def on_stop(self) -> None:
        """Menu: Stop Ollama."""
        self._request(STOP)

    def on_restart(self) -> None:
        """Menu: Restart Ollama (also a plain click while Ollama is down)."""
        self._request(RESTART)

    def on_rebuild(self) -> None:
        """Menu: Rebuild model."""
        self._request(REBUILD)

    def on_unload(self) -> None:
        """Menu: Unload models."""
        self._request(UNLOAD)

    def on_use_model(self, name: str) -> None:
        """Menu: Model → an installed model ("" : Use the Modelfile model)."""
        self._request(use_model_action(name) if name else USE_MODELFILE_MODEL)

    def on_open_dashboard(self) -> None:
        """Menu: Open dashboard, in the default browser."""
        try:
            self._controller.open_dashboard()
        except Exception as exc:  # noqa: BLE001 - shown to the user as one line
            self._controller.notify(f"{ACTION_LABELS[OPEN_DASHBOARD]} failed", error_line(exc, headline=True))

    def on_open_logs(self) -> None:
        """Menu: Open logs: the first existing log path, with the desktop's opener."""
        paths = self._controller.log_paths()
        target = pick_log_path(paths)
        if target is None:
            where = paths[0] if paths else "the log folder"
            self._controller.notify(ACTION_LABELS[OPEN_LOGS], f"No logs yet in {where}")
            return
        try:
            self._opener(target)
        except OSError as exc:
            self._controller.notify(
                f"{ACTION_LABELS[OPEN_LOGS]} failed", f"Cannot open {target}: {error_line(exc, headline=True)}"
            )

    def on_toggle_autostart(self) -> None:
        """Menu: Start at login (checkbox)."""
        self._toggle(TOGGLE_AUTOSTART)

    def on_toggle_notifications(self) -> None:
        """Menu: Notifications (checkbox)."""
        self._toggle(TOGGLE_NOTIFICATIONS)

    def on_quit(self) -> None:
        """Menu: Quit; stops Ollama too when the ``stop_ollama_on_quit`` setting is on."""
        if self._controller.settings().get("stop_ollama_on_quit"):
            try:
                self._quit_stop = self._controller.request(STOP)
            except Exception as exc:  # noqa: BLE001 - the icon must still go away
                log.error("cannot stop Ollama on quit: %s", error_line(exc, headline=True))
        with self._lock:
            self._stopped = True
        self._icon.stop()

    # --- internals ----------------------------------------------------------

    def _render(self) -> None:
        entries = self._current_menu()
        with self._lock:
            self._entries = entries
            status, running, ready = self._status, frozenset(self._running_actions), self._ready
            if self._next_backend is not None:
                return  # the icon is being replaced; the new one starts from the latest state
        key = self._image_key(status)
        if key != self._shown_image_key:
            self._icon.icon = self._image(key)
            self._shown_image_key = key
        self._set_title(tooltip(status, running))
        if ready:
            self._icon.update_menu()

    def _current_menu(self) -> list[MenuEntry]:
        settings = self._controller.settings()
        with self._lock:
            return build_menu(self._status, settings, self._running_actions)

    def _image_key(self, status: Status) -> tuple[IconState, bool]:
        return icon_state(status), status.cloud_active

    def _image(self, key: tuple[IconState, bool]) -> Image.Image:
        if key not in self._images:
            self._images[key] = draw_icon(key[0], self._icon_size, cloud=key[1])
        return self._images[key]

    def _new_icon(self) -> Any:
        with self._lock:
            status, running = self._status, frozenset(self._running_actions)
        key = self._image_key(status)
        icon = self._create_icon(self._image(key), tooltip(status, running))
        self._shown_image_key = key
        if type(icon).__module__ == "pystray._xorg":  # the workarounds load only for the icon they patch
            from tray.ui.pystray_fixes import fix_xorg_icon

            fix_xorg_icon(icon)
        return icon

    def _create_icon(self, image: Image.Image, title: str) -> Any:
        create_icon = getattr(self._backend, "create_icon", None)
        if create_icon is not None:
            return create_icon(self, APP_NAME, image, title)
        menu = self._backend.Menu(self._menu_items)
        try:
            return self._backend.Icon(APP_NAME, icon=image, title=title, menu=menu)
        except UnicodeEncodeError:
            # pystray's xorg backend writes the title as a Latin-1 WM_NAME.
            return self._backend.Icon(APP_NAME, icon=image, title=latin1_text(title), menu=menu)

    def _set_title(self, text: str) -> None:
        try:
            self._icon.title = text
        except UnicodeEncodeError:
            # pystray's xorg backend writes the title as a Latin-1 WM_NAME.
            self._icon.title = latin1_text(text)

    def _on_icon_ready(self, icon: Any) -> None:
        with self._render_lock:
            icon.visible = True
        with self._lock:
            self._ready = True
            switching = self._next_backend is not None or self._stopped
        if switching:
            icon.stop()
            return
        self.refresh()

    def _request(self, action: str) -> None:
        settings = self._controller.settings()
        with self._lock:
            entry = find_entry(build_menu(self._status, settings, self._running_actions), action)
            if entry is None or not entry.enabled:
                log.info("ignoring %s: not available now", action)
                return
            self._running_actions.add(action)
        self.refresh()
        try:
            model = model_of_action(action)
            future = self._controller.request(action) if model is None else self._controller.use_model(model)
        except Exception as exc:  # noqa: BLE001 - shown to the user as one line
            self._finish(action, None, exc)
            return
        future.add_done_callback(functools.partial(self._on_request_done, action))

    def _on_request_done(self, action: str, future: concurrent.futures.Future[str]) -> None:
        if future.cancelled():
            self._finish(action, None, concurrent.futures.CancelledError("cancelled"))
            return
        error = future.exception()
        self._finish(action, None if error else future.result(), error)

    def _finish(self, action: str, message: str | None, error: BaseException | None) -> None:
        with self._lock:
            self._running_actions.discard(action)
        self.refresh()
        label = ACTION_LABELS.get(action, "Use model")
        if error is not None:
            log.warning("%s failed: %s", label, error_line(error, headline=True))
            self._controller.notify(f"{label} failed", error_line(error, headline=True))
        else:
            self._controller.notify(label, first_line(message or "", fallback="Done"))

    def _toggle(self, action: str) -> None:
        key = SETTING_FOR_TOGGLE[action]
        value = not self._controller.settings().get(key, False)
        try:
            self._controller.set_setting(key, value)
        except Exception as exc:  # noqa: BLE001 - shown to the user as one line
            self._controller.notify(f"{ACTION_LABELS[action]} failed", error_line(exc, headline=True))
        self.refresh()

    def _wait_for_quit_stop(self) -> None:
        if self._quit_stop is None:
            return
        try:
            self._quit_stop.result(timeout=self._quit_stop_timeout)
        except Exception as exc:  # noqa: BLE001 - the icon must still go away
            log.error("stopping Ollama on quit failed: %s", error_line(exc, headline=True))

    def _callback_for(self, action: str) -> Callable[[], None] | None:
        model = model_of_action(action)
        if model is not None:
            return lambda: self.on_use_model(model)  # pystray calls a callback by its own arity: no partial
        return self._callbacks.get(action)

    def _live_entry(self, key: str, fallback: MenuEntry) -> MenuEntry:
        with self._lock:
            return find_entry(self._entries, key) or fallback

    def _menu_items(self) -> tuple[Any, ...]:
        with self._lock:
            entries = list(self._entries)
        items = tuple(self._menu_item(entry) for entry in entries)
        if getattr(self._backend.Icon, "HAS_MENU", True):
            return items
        # A tray without menus (pystray's xorg backend) runs the first default item on a click.
        click = self._backend.MenuItem(ACTION_LABELS[OPEN_DASHBOARD], self.on_click, default=True, visible=False)
        return (click, *items)

    def _menu_item(self, entry: MenuEntry) -> Any:
        Menu, MenuItem = self._backend.Menu, self._backend.MenuItem
        if entry.separator:
            return Menu.SEPARATOR

        def live(_item: Any = None) -> MenuEntry:
            return self._live_entry(entry.key, entry)

        action: Any = self._callback_for(entry.action) if entry.action else None
        if entry.submenu:
            action = Menu(*(self._menu_item(child) for child in entry.submenu))
        return MenuItem(
            lambda item: live(item).label,
            action,
            checked=(lambda item: live(item).checked) if entry.checked is not None else None,
            radio=entry.radio,
            enabled=lambda item: live(item).enabled,
            default=lambda item: live(item).default,
        )


def _import_pystray() -> Any:
    import pystray

    return pystray
