"""The Linux tray icon as a StatusNotifierItem with a ``com.canonical.dbusmenu`` menu, over jeepney.

This is the protocol of KDE Plasma, GNOME's AppIndicator extension, XFCE,
Cinnamon, MATE, Budgie, LXQt and the Wayland bars: the app owns a bus name,
exports ``/StatusNotifierItem`` (icon pixels, tooltip, the menu's path) and
``/MenuBar`` (the menu), and registers with ``org.kde.StatusNotifierWatcher``;
the panel's host draws the icon and the menu itself. It is pure Python over
jeepney, so ``pip install`` needs no compiler or GObject headers and
PyInstaller bundles it like any other module.

:class:`StatusNotifierIcon` has the surface of pystray's ``Icon`` that
:class:`~tray.ui.app.TrayApp` uses (``icon``, ``title``, ``update_menu()``,
``visible``, ``run(setup)``, ``stop()``), but renders the menu model
(:func:`tray.ui.menu.build_menu`) directly through :mod:`tray.ui.dbusmenu`.
Its D-Bus work runs on the thread that calls :meth:`~StatusNotifierIcon.run`;
a receiver thread only queues what arrives. Icon, tooltip and menu changes
are announced with signals as they happen (``NewIcon``, ``NewToolTip``,
``LayoutUpdated``, ``ItemsPropertiesUpdated``); hosts never need to poll.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import struct
import threading
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

from jeepney import (
    DBusAddress,
    HeaderFields,
    MatchRule,
    Message,
    MessageFlag,
    MessageType,
    new_error,
    new_method_call,
    new_method_return,
    new_signal,
)
from jeepney.io.threading import DBusConnection, ReceiveStopped, open_dbus_connection
from PIL import Image

from tray.system.autostart import APP_DISPLAY_NAME
from tray.ui.backend import StatusNotifierError
from tray.ui.dbusmenu import LAYOUT_SIGNATURE, Layout, MenuIds, build_layout, layout_change
from tray.ui.menu import MenuEntry

log = logging.getLogger(__name__)

WATCHER_NAME = "org.kde.StatusNotifierWatcher"
WATCHER_PATH = "/StatusNotifierWatcher"
ITEM_INTERFACE = "org.kde.StatusNotifierItem"
ITEM_PATH = "/StatusNotifierItem"
MENU_INTERFACE = "com.canonical.dbusmenu"
MENU_PATH = "/MenuBar"
PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"
INTROSPECTABLE_INTERFACE = "org.freedesktop.DBus.Introspectable"
PEER_INTERFACE = "org.freedesktop.DBus.Peer"
BUS_DAEMON = DBusAddress("/org/freedesktop/DBus", "org.freedesktop.DBus", "org.freedesktop.DBus")

PIXMAP_SIZES = (16, 22, 24, 32, 48, 64)
CALL_TIMEOUT_S = 5.0
DBUSMENU_VERSION = 3
REQUEST_NAME_DO_NOT_QUEUE = 4
REQUEST_NAME_PRIMARY_OWNER = 1

ERROR_UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
ERROR_UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"
ERROR_UNKNOWN_PROPERTY = "org.freedesktop.DBus.Error.UnknownProperty"
ERROR_INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
ERROR_READ_ONLY = "org.freedesktop.DBus.Error.PropertyReadOnly"

Variant = tuple[str, Any]
Pixmap = tuple[int, int, bytes]

_STANDARD_INTERFACES = f""" <interface name="{PROPERTIES_INTERFACE}">
  <method name="Get">
   <arg type="s" direction="in"/><arg type="s" direction="in"/><arg type="v" direction="out"/>
  </method>
  <method name="GetAll"><arg type="s" direction="in"/><arg type="a{{sv}}" direction="out"/></method>
 </interface>
 <interface name="{INTROSPECTABLE_INTERFACE}">
  <method name="Introspect"><arg type="s" direction="out"/></method>
 </interface>
"""

INTROSPECTION = {
    "/": """<node><node name="StatusNotifierItem"/><node name="MenuBar"/></node>""",
    ITEM_PATH: f"""<node>
 <interface name="{ITEM_INTERFACE}">
  <property name="Category" type="s" access="read"/>
  <property name="Id" type="s" access="read"/>
  <property name="Title" type="s" access="read"/>
  <property name="Status" type="s" access="read"/>
  <property name="WindowId" type="i" access="read"/>
  <property name="IconThemePath" type="s" access="read"/>
  <property name="IconName" type="s" access="read"/>
  <property name="IconPixmap" type="a(iiay)" access="read"/>
  <property name="OverlayIconName" type="s" access="read"/>
  <property name="OverlayIconPixmap" type="a(iiay)" access="read"/>
  <property name="AttentionIconName" type="s" access="read"/>
  <property name="AttentionIconPixmap" type="a(iiay)" access="read"/>
  <property name="AttentionMovieName" type="s" access="read"/>
  <property name="ToolTip" type="(sa(iiay)ss)" access="read"/>
  <property name="ItemIsMenu" type="b" access="read"/>
  <property name="Menu" type="o" access="read"/>
  <method name="ContextMenu"><arg name="x" type="i" direction="in"/><arg name="y" type="i" direction="in"/></method>
  <method name="Activate"><arg name="x" type="i" direction="in"/><arg name="y" type="i" direction="in"/></method>
  <method name="SecondaryActivate">
   <arg name="x" type="i" direction="in"/><arg name="y" type="i" direction="in"/>
  </method>
  <method name="Scroll">
   <arg name="delta" type="i" direction="in"/><arg name="orientation" type="s" direction="in"/>
  </method>
  <signal name="NewTitle"/>
  <signal name="NewIcon"/>
  <signal name="NewAttentionIcon"/>
  <signal name="NewOverlayIcon"/>
  <signal name="NewToolTip"/>
  <signal name="NewStatus"><arg name="status" type="s"/></signal>
 </interface>
{_STANDARD_INTERFACES}</node>""",
    MENU_PATH: f"""<node>
 <interface name="{MENU_INTERFACE}">
  <property name="Version" type="u" access="read"/>
  <property name="TextDirection" type="s" access="read"/>
  <property name="Status" type="s" access="read"/>
  <property name="IconThemePath" type="as" access="read"/>
  <method name="GetLayout">
   <arg type="i" name="parentId" direction="in"/><arg type="i" name="recursionDepth" direction="in"/>
   <arg type="as" name="propertyNames" direction="in"/>
   <arg type="u" name="revision" direction="out"/><arg type="{LAYOUT_SIGNATURE}" name="layout" direction="out"/>
  </method>
  <method name="GetGroupProperties">
   <arg type="ai" name="ids" direction="in"/><arg type="as" name="propertyNames" direction="in"/>
   <arg type="a(ia{{sv}})" name="properties" direction="out"/>
  </method>
  <method name="GetProperty">
   <arg type="i" name="id" direction="in"/><arg type="s" name="name" direction="in"/>
   <arg type="v" name="value" direction="out"/>
  </method>
  <method name="Event">
   <arg type="i" name="id" direction="in"/><arg type="s" name="eventId" direction="in"/>
   <arg type="v" name="data" direction="in"/><arg type="u" name="timestamp" direction="in"/>
  </method>
  <method name="EventGroup">
   <arg type="a(isvu)" name="events" direction="in"/><arg type="ai" name="idErrors" direction="out"/>
  </method>
  <method name="AboutToShow">
   <arg type="i" name="id" direction="in"/><arg type="b" name="needUpdate" direction="out"/>
  </method>
  <method name="AboutToShowGroup">
   <arg type="ai" name="ids" direction="in"/>
   <arg type="ai" name="updatesNeeded" direction="out"/><arg type="ai" name="idErrors" direction="out"/>
  </method>
  <signal name="ItemsPropertiesUpdated">
   <arg type="a(ia{{sv}})" name="updatedProps"/><arg type="a(ias)" name="removedProps"/>
  </signal>
  <signal name="LayoutUpdated"><arg type="u" name="revision"/><arg type="i" name="parent"/></signal>
  <signal name="ItemActivationRequested"><arg type="i" name="id"/><arg type="u" name="timestamp"/></signal>
 </interface>
{_STANDARD_INTERFACES}</node>""",
}


# --- pure helpers ---------------------------------------------------------------


def argb32_pixmaps(image: Image.Image, sizes: Sequence[int] = PIXMAP_SIZES) -> list[Pixmap]:
    """``IconPixmap``'s ``a(iiay)``: the image at each size, as ARGB32 in network byte order.

    The image's own size is always there; sizes above it are left out (hosts
    scale down well, up badly).

    >>> argb32_pixmaps(Image.new("RGBA", (1, 1), (10, 20, 30, 255)), [1])
    [(1, 1, b'\\xff\\n\\x14\\x1e')]
    """
    rgba = image.convert("RGBA")
    pixmaps = []
    for size in sorted({s for s in sizes if s <= max(rgba.size)} | {max(rgba.size)}):
        scaled = rgba if rgba.size == (size, size) else rgba.resize((size, size), Image.Resampling.LANCZOS)
        red, green, blue, alpha = scaled.split()
        pixmaps.append((size, size, Image.merge("RGBA", (alpha, red, green, blue)).tobytes()))
    return pixmaps


def tooltip_description(text: str) -> str:
    """The tooltip text as the description, escaped: hosts such as KDE read it as markup.

    >>> tooltip_description("Down <restarting> & retrying")
    'Down &lt;restarting&gt; &amp; retrying'
    """
    return escape(text, quote=False)


def watcher_rule() -> MatchRule:
    """Signals that the StatusNotifier watcher appeared, moved or went away."""
    rule = MatchRule(
        type="signal",
        sender=BUS_DAEMON.bus_name,
        interface=BUS_DAEMON.interface,
        member="NameOwnerChanged",
        path=BUS_DAEMON.object_path,
    )
    rule.add_arg_condition(0, WATCHER_NAME)
    return rule


def watcher_on_bus(address: str, timeout: float = CALL_TIMEOUT_S) -> bool:
    """Whether ``org.kde.StatusNotifierWatcher`` has an owner on the bus at ``address``.

    Raises OSError, TimeoutError or StatusNotifierError when the bus cannot be asked.
    """
    from jeepney.io.blocking import open_dbus_connection as open_blocking

    try:
        with open_blocking(address, auth_timeout=timeout) as connection:
            reply = connection.send_and_get_reply(
                new_method_call(BUS_DAEMON, "NameHasOwner", "s", (WATCHER_NAME,)), timeout=timeout
            )
    except (RuntimeError, ValueError, KeyError) as exc:  # jeepney's address and auth errors
        raise StatusNotifierError(f"cannot use the session bus at {address}: {exc}") from None
    if reply.header.message_type is MessageType.error:
        raise StatusNotifierError(f"the session bus answered NameHasOwner with {reply.body}")
    return bool(reply.body[0])


# --- the item -------------------------------------------------------------------

_STOP = object()
_name_counter = itertools.count(1)


class BusClosed:
    """The session bus connection ended under the item."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class StatusNotifierIcon:
    """A tray icon on the session bus: StatusNotifierItem + dbusmenu, registered with the watcher.

    ``menu`` returns the entries to show; ``on_action`` runs an entry's action
    id when a host reports a click on it; ``on_activate`` runs on a plain
    (primary) click on the icon. Both run on the thread inside :meth:`run`,
    after the host got its reply.
    """

    HAS_MENU = True
    HAS_DEFAULT_ACTION = True

    def __init__(
        self,
        name: str,
        icon: Image.Image,
        title: str,
        *,
        menu: Callable[[], Sequence[MenuEntry]],
        on_action: Callable[[str], None],
        on_activate: Callable[[], None],
        bus_address: str,
    ) -> None:
        self.name = name
        self.bus_address = bus_address
        self.bus_name = f"org.kde.StatusNotifierItem-{os.getpid()}-{next(_name_counter)}"
        self._menu = menu
        self._on_action = on_action
        self._on_activate = on_activate
        self._lock = threading.RLock()
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: dict[int, Callable[[Message], None]] = {}
        self._connection: DBusConnection | None = None
        self._receiver: threading.Thread | None = None
        self._image = icon
        self._pixmaps = argb32_pixmaps(icon)
        self._title = title
        self._ids = MenuIds()
        self._layout = build_layout(list(menu()), self._ids)
        self._revision = 1
        self._visible = False
        self._exported = False
        self._owns_name = False
        self._watcher: str | None = None  # the watcher's unique name while it is on the bus
        self._registered_with: str | None = None

    # --- pystray's Icon surface -------------------------------------------------------

    @property
    def icon(self) -> Image.Image:
        """The image shown."""
        return self._image

    @icon.setter
    def icon(self, image: Image.Image) -> None:
        pixmaps = argb32_pixmaps(image)
        with self._lock:
            self._image, self._pixmaps = image, pixmaps
            self._emit(ITEM_PATH, ITEM_INTERFACE, "NewIcon")

    @property
    def title(self) -> str:
        """The tooltip text."""
        return self._title

    @title.setter
    def title(self, text: str) -> None:
        with self._lock:
            if text == self._title:
                return  # hosts re-read every property on NewToolTip, pixmaps included
            self._title = text
            self._emit(ITEM_PATH, ITEM_INTERFACE, "NewToolTip")

    @property
    def visible(self) -> bool:
        """Whether the item is on the bus for hosts to show."""
        return self._visible

    @visible.setter
    def visible(self, value: bool) -> None:
        self._events.put(self._show if value else self._hide)

    def update_menu(self) -> None:
        """Rebuild the menu from the model and tell hosts what changed."""
        with self._lock:
            new = build_layout(list(self._menu()), self._ids)
            change = layout_change(self._layout, new)
            self._layout = new
            if change.layout_changed:
                self._revision += 1
                self._emit(MENU_PATH, MENU_INTERFACE, "LayoutUpdated", "ui", (self._revision, 0))
            elif not change.empty:
                self._emit(
                    MENU_PATH,
                    MENU_INTERFACE,
                    "ItemsPropertiesUpdated",
                    "a(ia{sv})a(ias)",
                    (list(change.updated), [(item, list(names)) for item, names in change.removed]),
                )

    def run(self, setup: Callable[[StatusNotifierIcon], None] | None = None) -> None:
        """Put the item on the bus and serve hosts until :meth:`stop`.

        ``setup(icon)`` runs on another thread once the item is exported, as
        in pystray; it must set ``visible`` to register the item.
        """
        self._connect()
        threading.Thread(target=setup or _show_icon, args=(self,), name="sni-setup", daemon=True).start()
        lost: BusClosed | None = None
        try:
            while True:
                event = self._events.get()
                if event is _STOP:
                    break
                if isinstance(event, BusClosed):
                    lost = event
                    break
                if isinstance(event, Message):
                    self._dispatch(event)
                else:
                    event()
        finally:
            self._disconnect()
        if lost is not None:
            raise StatusNotifierError(f"the session bus connection closed: {lost.error}")

    def stop(self) -> None:
        """End :meth:`run`; the bus name goes away with the connection and hosts drop the icon."""
        self._events.put(_STOP)

    # --- state for hosts ----------------------------------------------------------------

    @property
    def registered_with(self) -> str | None:
        """The unique bus name of the watcher that accepted the item, if any."""
        return self._registered_with

    def item_properties(self) -> dict[str, Variant]:
        """Every ``org.kde.StatusNotifierItem`` property as hosts read it."""
        with self._lock:
            pixmaps, title = list(self._pixmaps), self._title
        return {
            "Category": ("s", "SystemServices"),
            "Id": ("s", self.name),
            "Title": ("s", APP_DISPLAY_NAME),
            "Status": ("s", "Active"),
            "WindowId": ("i", 0),
            "IconThemePath": ("s", ""),
            "IconName": ("s", ""),
            "IconPixmap": ("a(iiay)", pixmaps),
            "OverlayIconName": ("s", ""),
            "OverlayIconPixmap": ("a(iiay)", []),
            "AttentionIconName": ("s", ""),
            "AttentionIconPixmap": ("a(iiay)", []),
            "AttentionMovieName": ("s", ""),
            "ToolTip": ("(sa(iiay)ss)", ("", [], APP_DISPLAY_NAME, tooltip_description(title))),
            "ItemIsMenu": ("b", False),
            "Menu": ("o", MENU_PATH),
        }

    @staticmethod
    def menu_properties() -> dict[str, Variant]:
        """Every ``com.canonical.dbusmenu`` property."""
        return {
            "Version": ("u", DBUSMENU_VERSION),
            "TextDirection": ("s", "ltr"),
            "Status": ("s", "normal"),
            "IconThemePath": ("as", []),
        }

    def layout(self) -> tuple[int, Layout]:
        """The menu's current revision and layout."""
        with self._lock:
            return self._revision, self._layout

    # --- connection -------------------------------------------------------------------

    def _connect(self) -> None:
        try:
            connection = open_dbus_connection(self.bus_address)
        except (OSError, RuntimeError, ValueError, KeyError, TimeoutError) as exc:
            raise StatusNotifierError(f"cannot connect to the session bus at {self.bus_address}: {exc}") from None
        self._connection = connection
        try:
            self._call_now(new_method_call(BUS_DAEMON, "AddMatch", "s", (watcher_rule().serialise(),)))
            watcher = self._call_now(new_method_call(BUS_DAEMON, "NameHasOwner", "s", (WATCHER_NAME,)))
            if watcher.body[0]:
                owner = self._call_now(new_method_call(BUS_DAEMON, "GetNameOwner", "s", (WATCHER_NAME,)))
                self._watcher = str(owner.body[0])
        except BaseException:
            connection.close()
            self._connection = None
            raise
        with self._lock:
            self._exported = True
        self._receiver = threading.Thread(target=self._receive, name="sni-receiver", daemon=True)
        self._receiver.start()

    def _disconnect(self) -> None:
        with self._lock:
            self._exported = False
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
        if self._receiver is not None:
            self._receiver.join(timeout=5)
        self._owns_name = False
        self._registered_with = None

    def _receive(self) -> None:
        connection = self._connection
        assert connection is not None
        try:
            while True:
                self._events.put(connection.receive())
        except ReceiveStopped:
            pass
        except (OSError, ValueError) as exc:  # ConnectionResetError, a closed socket
            self._events.put(BusClosed(exc))

    def _call_now(self, message: Message, timeout: float = CALL_TIMEOUT_S) -> Message:
        """Send a call and wait for its reply; only before the receiver thread starts."""
        connection = self._connection
        assert connection is not None and self._receiver is None
        serial = next(connection.outgoing_serial)
        connection.send(message, serial=serial)
        while True:
            try:
                reply = connection.receive(timeout=timeout)
            except TimeoutError:
                member = message.header.fields.get(HeaderFields.member)
                raise StatusNotifierError(f"the session bus did not answer {member} within {timeout:g} s") from None
            if reply.header.fields.get(HeaderFields.reply_serial) != serial:
                self._events.put(reply)  # handled once the loop runs
                continue
            if reply.header.message_type is MessageType.error:
                member = message.header.fields.get(HeaderFields.member)
                raise StatusNotifierError(f"the session bus refused {member}: {_error_text(reply)}")
            return reply

    def _call(self, message: Message, on_reply: Callable[[Message], None]) -> None:
        """Send a call from the loop thread; ``on_reply`` runs there when the reply comes."""
        connection = self._connection
        if connection is None:
            return
        serial = next(connection.outgoing_serial)
        self._pending[serial] = on_reply
        connection.send(message, serial=serial)

    def _send(self, message: Message) -> None:
        connection = self._connection
        if connection is not None:
            try:
                connection.send(message)
            except OSError as exc:
                log.warning("cannot send to the session bus: %s", exc)

    def _emit(self, path: str, interface: str, member: str, signature: str | None = None, body: tuple = ()) -> None:
        with self._lock:
            if not self._exported or not self._owns_name:
                return
            self._send(new_signal(DBusAddress(path, interface=interface), member, signature, body))

    # --- the name and the watcher ---------------------------------------------------------

    def _show(self) -> None:
        self._visible = True
        if self._owns_name:
            self._register()
            return

        def acquired(reply: Message) -> None:
            if reply.header.message_type is MessageType.error or reply.body[0] != REQUEST_NAME_PRIMARY_OWNER:
                log.error("cannot own %s on the session bus: %s", self.bus_name, _error_text(reply))
                return
            with self._lock:
                self._owns_name = True
            self._register()

        self._call(
            new_method_call(BUS_DAEMON, "RequestName", "su", (self.bus_name, REQUEST_NAME_DO_NOT_QUEUE)), acquired
        )

    def _hide(self) -> None:
        self._visible = False
        if not self._owns_name:
            return
        with self._lock:
            self._owns_name = False
        self._registered_with = None
        self._call(new_method_call(BUS_DAEMON, "ReleaseName", "s", (self.bus_name,)), lambda reply: None)

    def _register(self) -> None:
        watcher = self._watcher
        if watcher is None or not self._owns_name:
            return
        address = DBusAddress(WATCHER_PATH, watcher, WATCHER_NAME)

        def registered(reply: Message) -> None:
            if reply.header.message_type is MessageType.error:
                log.warning("the StatusNotifier watcher refused the tray icon: %s", _error_text(reply))
                return
            self._registered_with = watcher
            log.info("tray icon registered with the StatusNotifier watcher (%s)", watcher)

        self._call(new_method_call(address, "RegisterStatusNotifierItem", "s", (self.bus_name,)), registered)

    def _on_watcher_changed(self, new_owner: str) -> None:
        self._watcher = new_owner or None
        self._registered_with = None
        if new_owner:
            log.info("a StatusNotifier watcher appeared (%s); registering the tray icon", new_owner)
            if self._visible:
                self._register()
        else:
            log.info("the StatusNotifier watcher left the session bus; waiting for it to come back")

    # --- incoming messages ------------------------------------------------------------------

    def _dispatch(self, message: Message) -> None:
        kind = message.header.message_type
        fields = message.header.fields
        if kind in (MessageType.method_return, MessageType.error):
            on_reply = self._pending.pop(fields.get(HeaderFields.reply_serial, -1), None)
            if on_reply is not None:
                on_reply(message)
            return
        if kind is MessageType.signal:
            if fields.get(HeaderFields.member) == "NameOwnerChanged" and message.body[0] == WATCHER_NAME:
                self._on_watcher_changed(message.body[2])
            return
        if kind is MessageType.method_call:
            self._answer(message)

    def _answer(self, call: Message) -> None:
        fields = call.header.fields
        path = fields.get(HeaderFields.path, "")
        interface = fields.get(HeaderFields.interface)
        member = fields.get(HeaderFields.member, "")
        after: Callable[[], None] | None = None
        try:
            reply, after = self._handle(call, path, interface, member)
        except _CallError as error:
            reply = new_error(call, error.name, "s", (error.message,))
        except Exception as exc:  # a host's call must never take the tray down
            log.exception("answering %s.%s on %s failed", interface, member, path)
            reply = new_error(call, "org.freedesktop.DBus.Error.Failed", "s", (str(exc),))
        if not call.header.flags & MessageFlag.no_reply_expected:
            try:
                self._send(reply)
            except (TypeError, ValueError, struct.error) as exc:  # a reply that does not fit its signature
                log.error("cannot send the answer to %s.%s on %s: %s", interface, member, path, exc)
                self._send(new_error(call, "org.freedesktop.DBus.Error.Failed", "s", (str(exc),)))
        if after is not None:
            after()

    def _handle(
        self, call: Message, path: str, interface: str | None, member: str
    ) -> tuple[Message, Callable[[], None] | None]:
        body = call.body
        if interface == PEER_INTERFACE and member == "Ping":
            return new_method_return(call), None
        if interface in (INTROSPECTABLE_INTERFACE, None) and member == "Introspect":
            if path not in INTROSPECTION:
                raise _CallError(ERROR_UNKNOWN_OBJECT, f"no object at {path}")
            return new_method_return(call, "s", (INTROSPECTION[path],)), None
        if path == ITEM_PATH:
            return self._handle_item(call, interface, member, body)
        if path == MENU_PATH:
            return self._handle_menu(call, interface, member, body)
        raise _CallError(ERROR_UNKNOWN_OBJECT, f"no object at {path}")

    def _handle_properties(
        self, call: Message, member: str, body: tuple, own: str, values: dict[str, Variant]
    ) -> Message:
        if member == "GetAll":
            return new_method_return(call, "a{sv}", (values if body[0] in (own, "") else {},))
        if member == "Get":
            if body[0] not in (own, "") or body[1] not in values:
                raise _CallError(ERROR_UNKNOWN_PROPERTY, f"no property {body[0]}.{body[1]}")
            return new_method_return(call, "v", (values[body[1]],))
        if member == "Set":
            raise _CallError(ERROR_READ_ONLY, "the properties are read-only")
        raise _CallError(ERROR_UNKNOWN_METHOD, f"no method {PROPERTIES_INTERFACE}.{member}")

    def _handle_item(
        self, call: Message, interface: str | None, member: str, body: tuple
    ) -> tuple[Message, Callable[[], None] | None]:
        if interface == PROPERTIES_INTERFACE:
            return self._handle_properties(call, member, body, ITEM_INTERFACE, self.item_properties()), None
        if interface not in (ITEM_INTERFACE, None):
            raise _CallError(ERROR_UNKNOWN_METHOD, f"no interface {interface} on {ITEM_PATH}")
        if member == "Activate":
            return new_method_return(call), self._on_activate
        if member in ("SecondaryActivate", "ContextMenu", "Scroll"):
            return new_method_return(call), None  # the host shows the menu from the Menu property
        raise _CallError(ERROR_UNKNOWN_METHOD, f"no method {ITEM_INTERFACE}.{member}")

    def _handle_menu(
        self, call: Message, interface: str | None, member: str, body: tuple
    ) -> tuple[Message, Callable[[], None] | None]:
        if interface == PROPERTIES_INTERFACE:
            return self._handle_properties(call, member, body, MENU_INTERFACE, self.menu_properties()), None
        if interface not in (MENU_INTERFACE, None):
            raise _CallError(ERROR_UNKNOWN_METHOD, f"no interface {interface} on {MENU_PATH}")
        revision, layout = self.layout()
        if member == "GetLayout":
            parent, depth, names = body
            if parent not in layout.nodes:
                raise _CallError(ERROR_INVALID_ARGS, f"no menu item {parent}")
            return new_method_return(call, f"u{LAYOUT_SIGNATURE}", (revision, layout.tree(parent, depth, names))), None
        if member == "GetGroupProperties":
            ids, names = body
            return new_method_return(call, "a(ia{sv})", (layout.group_properties(ids, names),)), None
        if member == "GetProperty":
            item, name = body
            properties = layout.nodes[item].properties if item in layout.nodes else {}
            if name not in properties:
                raise _CallError(ERROR_INVALID_ARGS, f"menu item {item} has no property {name}")
            return new_method_return(call, "v", (properties[name],)), None
        if member == "Event":
            item, event_id, _data, _timestamp = body
            if item not in layout.nodes:
                raise _CallError(ERROR_INVALID_ARGS, f"no menu item {item}")
            return new_method_return(call), self._clicks(layout, [(item, event_id)])
        if member == "EventGroup":
            (events,) = body
            unknown = [item for item, *_rest in events if item not in layout.nodes]
            if events and len(unknown) == len(events):
                raise _CallError(ERROR_INVALID_ARGS, f"no menu items {unknown}")
            known = [(item, event_id) for item, event_id, *_rest in events if item in layout.nodes]
            return new_method_return(call, "ai", (unknown,)), self._clicks(layout, known)
        if member == "AboutToShow":
            (item,) = body
            if item not in layout.nodes:
                raise _CallError(ERROR_INVALID_ARGS, f"no menu item {item}")
            return new_method_return(call, "b", (False,)), None  # the layout is always current
        if member == "AboutToShowGroup":
            (items,) = body
            unknown = [item for item in items if item not in layout.nodes]
            return new_method_return(call, "aiai", ([], unknown)), None
        raise _CallError(ERROR_UNKNOWN_METHOD, f"no method {MENU_INTERFACE}.{member}")

    def _clicks(self, layout: Layout, events: Sequence[tuple[int, str]]) -> Callable[[], None] | None:
        actions = [
            node.action
            for item, event_id in events
            if event_id == "clicked" and (node := layout.nodes[item]).action is not None and node.enabled
        ]
        if not actions:
            return None

        def run() -> None:
            for action in actions:
                self._on_action(action)

        return run


class _CallError(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


def _error_text(reply: Message) -> str:
    name = reply.header.fields.get(HeaderFields.error_name, "")
    detail = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
    return f"{name}: {detail}" if detail else str(name or reply.body)


def _show_icon(icon: StatusNotifierIcon) -> None:
    icon.visible = True


class StatusNotifierBackend:
    """Makes :class:`StatusNotifierIcon` objects for a :class:`~tray.ui.app.TrayApp` on one session bus."""

    name = "sni"

    def __init__(self, bus_address: str) -> None:
        self.bus_address = bus_address

    def create_icon(self, app: Any, name: str, image: Image.Image, title: str) -> StatusNotifierIcon:
        """A new item showing ``image`` and ``title``, rendering ``app``'s menu."""
        return StatusNotifierIcon(
            name,
            image,
            title,
            menu=lambda: app.entries,
            on_action=app.run_action,
            on_activate=app.on_click,
            bus_address=self.bus_address,
        )
