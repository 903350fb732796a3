"""The session bus as a StatusNotifier host sees it: registered items, their properties and their dbusmenu.

Tests drive the tray's menu the way KDE or xfce4-panel do, over D-Bus and
nothing else::

    with SniHost(desktop.bus.address) as host:
        item = host.wait_for_item(timeout=20)            # registered with the watcher
        revision, menu = host.layout(item)                # GetLayout(0, -1, [])
        restart = menu.find("Restart Ollama")             # labels, enabled, toggle state, children
        host.click(item, restart.id)                      # Event(id, "clicked", ...), as KDE sends it
        host.click(item, restart.id, group=True)          # EventGroup([...]), as xfce4-panel sends it
        with host.signals(item) as signals:               # LayoutUpdated, ItemsPropertiesUpdated, NewIcon, ...
            ...
            signals.wait_for("NewIcon", timeout=10)

Everything here is a plain jeepney client on the test's private bus.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from jeepney import DBusAddress, HeaderFields, MatchRule, Message, MessageType, new_method_call
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from PIL import Image

WATCHER = DBusAddress("/StatusNotifierWatcher", "org.kde.StatusNotifierWatcher", "org.kde.StatusNotifierWatcher")
BUS_DAEMON = DBusAddress("/org/freedesktop/DBus", "org.freedesktop.DBus", "org.freedesktop.DBus")
ITEM_INTERFACE = "org.kde.StatusNotifierItem"
MENU_INTERFACE = "com.canonical.dbusmenu"
PROPERTIES = "org.freedesktop.DBus.Properties"
DEFAULT_ITEM_PATH = "/StatusNotifierItem"
CALL_TIMEOUT = 10.0


class HostError(AssertionError):
    """The item answered a call with an error, or did not answer."""


@dataclass(frozen=True)
class ItemRef:
    """Where a registered item lives: its bus name and object path."""

    bus_name: str
    path: str = DEFAULT_ITEM_PATH

    def address(self, interface: str = ITEM_INTERFACE) -> DBusAddress:
        """The item object with ``interface``."""
        return DBusAddress(self.path, self.bus_name, interface)


def parse_registration(entry: str) -> ItemRef:
    """An entry of the watcher's ``RegisteredStatusNotifierItems``, in any of the forms watchers use.

    >>> parse_registration("org.kde.StatusNotifierItem-4-1/StatusNotifierItem")
    ItemRef(bus_name='org.kde.StatusNotifierItem-4-1', path='/StatusNotifierItem')
    >>> parse_registration("org.kde.StatusNotifierItem-4-1")
    ItemRef(bus_name='org.kde.StatusNotifierItem-4-1', path='/StatusNotifierItem')
    >>> parse_registration(":1.17/org/ayatana/NotificationItem/x")
    ItemRef(bus_name=':1.17', path='/org/ayatana/NotificationItem/x')
    """
    name, slash, path = entry.partition("/")
    return ItemRef(name, "/" + path if slash else DEFAULT_ITEM_PATH)


def unescape_label(label: str) -> str:
    """A dbusmenu label as shown: ``__`` is an underscore, a single ``_`` marks the mnemonic.

    >>> unescape_label("my__model"), unescape_label("_Quit")
    ('my_model', 'Quit')
    """
    return label.replace("__", "\0").replace("_", "").replace("\0", "_")


@dataclass(frozen=True)
class MenuItemView:
    """One dbusmenu item as a host reads it (absent properties at their documented defaults)."""

    id: int
    label: str = ""
    enabled: bool = True
    visible: bool = True
    type: str = "standard"
    toggle_type: str = ""
    toggle_state: int = -1
    children_display: str = ""
    children: tuple[MenuItemView, ...] = field(default=())

    @classmethod
    def from_layout(cls, node: tuple[int, dict[str, tuple[str, Any]], list[tuple[str, Any]]]) -> MenuItemView:
        """From GetLayout's ``(ia{sv}av)``."""
        item_id, properties, children = node
        values = {name: value for name, (_signature, value) in properties.items()}
        return cls(
            id=item_id,
            label=unescape_label(values.get("label", "")),
            enabled=values.get("enabled", True),
            visible=values.get("visible", True),
            type=values.get("type", "standard"),
            toggle_type=values.get("toggle-type", ""),
            toggle_state=values.get("toggle-state", -1),
            children_display=values.get("children-display", ""),
            children=tuple(cls.from_layout(child) for _signature, child in children),
        )

    def walk(self) -> Iterator[MenuItemView]:
        """This item's descendants, depth first (not the item itself)."""
        for child in self.children:
            yield child
            yield from child.walk()

    def find(self, label: str) -> MenuItemView:
        """The descendant labelled ``label``; AssertionError when there is none."""
        for item in self.walk():
            if item.label == label:
                return item
        raise AssertionError(f"no menu item {label!r} in {self.labels()}")

    def labels(self) -> list[str]:
        """Every label, "---" for separators, in order."""
        return ["---" if item.type == "separator" else item.label for item in self.walk()]

    @property
    def checked(self) -> bool | None:
        """For a checkmark or radio item, whether it is ticked; None for other items."""
        return None if self.toggle_type not in ("checkmark", "radio") else self.toggle_state == 1


def image_from_pixmap(width: int, height: int, data: bytes) -> Image.Image:
    """An RGBA image from an ARGB32 pixmap in network byte order (``IconPixmap``)."""
    argb = Image.frombytes("RGBA", (width, height), bytes(data))
    alpha, red, green, blue = argb.split()
    return Image.merge("RGBA", (red, green, blue, alpha))


class SniHost:
    """A jeepney connection to a session bus, asking what a StatusNotifier host asks."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.connection: DBusConnection = open_dbus_connection(address)

    def __enter__(self) -> SniHost:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()

    def call(self, address: DBusAddress, method: str, signature: str | None = None, body: tuple = ()) -> tuple:
        """A method call's reply body; HostError for an error reply."""
        reply = self.connection.send_and_get_reply(
            new_method_call(address, method, signature, body), timeout=CALL_TIMEOUT
        )
        if reply.header.message_type is MessageType.error:
            raise HostError(f"{method}: {reply.header.fields.get(HeaderFields.error_name)} {reply.body}")
        return tuple(reply.body)

    # --- the watcher ----------------------------------------------------------------

    def registered_items(self) -> list[ItemRef]:
        """The items the watcher lists (empty when there is no watcher)."""
        try:
            (value,) = self.call(
                WATCHER.with_interface(PROPERTIES), "Get", "ss", (WATCHER.interface, "RegisteredStatusNotifierItems")
            )
        except HostError:
            return []
        return [parse_registration(entry) for entry in value[1]]

    def wait_for_item(self, timeout: float, exclude: tuple[ItemRef, ...] = ()) -> ItemRef:
        """The first registered item not in ``exclude``, waiting up to ``timeout`` s for one."""
        deadline = time.monotonic() + timeout
        while True:
            items = [item for item in self.registered_items() if item not in exclude]
            if items:
                return items[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no StatusNotifierItem registered within {timeout:g} s")
            time.sleep(0.05)

    def owner(self, bus_name: str) -> str | None:
        """The unique name owning ``bus_name``, or None."""
        (has_owner,) = self.call(BUS_DAEMON, "NameHasOwner", "s", (bus_name,))
        if not has_owner:
            return None
        return str(self.call(BUS_DAEMON, "GetNameOwner", "s", (bus_name,))[0])

    def names(self) -> list[str]:
        """Every name on the bus."""
        return list(self.call(BUS_DAEMON, "ListNames")[0])

    # --- the item ---------------------------------------------------------------------

    def properties(self, item: ItemRef) -> dict[str, Any]:
        """Every ``org.kde.StatusNotifierItem`` property, unwrapped from its variant."""
        (values,) = self.call(item.address(PROPERTIES), "GetAll", "s", (ITEM_INTERFACE,))
        return {name: value for name, (_signature, value) in values.items()}

    def icon(self, item: ItemRef) -> Image.Image:
        """The largest pixmap of ``IconPixmap`` as an RGBA image."""
        pixmaps = self.properties(item)["IconPixmap"]
        width, height, data = max(pixmaps, key=lambda pixmap: pixmap[0] * pixmap[1])
        return image_from_pixmap(width, height, data)

    def tooltip(self, item: ItemRef) -> tuple[str, str]:
        """``ToolTip``'s title and description."""
        _icon_name, _pixmaps, title, description = self.properties(item)["ToolTip"]
        return title, description

    def activate(self, item: ItemRef, x: int = 0, y: int = 0) -> None:
        """A primary click on the icon."""
        self.call(item.address(), "Activate", "ii", (x, y))

    # --- the menu ---------------------------------------------------------------------

    def menu_address(self, item: ItemRef) -> DBusAddress:
        """The item's dbusmenu object (its ``Menu`` property)."""
        return DBusAddress(self.properties(item)["Menu"], item.bus_name, MENU_INTERFACE)

    def layout(self, item: ItemRef, parent: int = 0, depth: int = -1) -> tuple[int, MenuItemView]:
        """``GetLayout``: the revision and the menu from ``parent`` down ``depth`` levels."""
        revision, node = self.call(self.menu_address(item), "GetLayout", "iias", (parent, depth, []))
        return revision, MenuItemView.from_layout(node)

    def click(self, item: ItemRef, item_id: int, *, group: bool = False) -> list[int]:
        """Send ``clicked`` for ``item_id``: ``Event`` (KDE), or ``EventGroup`` (libdbusmenu-gtk) with ``group``.

        Returns the ids the item reported unknown (always empty for ``Event``).
        """
        menu = self.menu_address(item)
        timestamp = int(time.time()) & 0xFFFFFFFF
        if group:
            (unknown,) = self.call(menu, "EventGroup", "a(isvu)", ([(item_id, "clicked", ("i", 0), timestamp)],))
            return list(unknown)
        self.call(menu, "Event", "isvu", (item_id, "clicked", ("i", 0), timestamp))
        return []

    def about_to_show(self, item: ItemRef, item_id: int = 0) -> bool:
        """``AboutToShow``: whether the item asks for a fresh layout first."""
        return bool(self.call(self.menu_address(item), "AboutToShow", "i", (item_id,))[0])

    def about_to_show_group(self, item: ItemRef, ids: list[int]) -> tuple[list[int], list[int]]:
        """``AboutToShowGroup``: (ids needing an update, unknown ids)."""
        updates, unknown = self.call(self.menu_address(item), "AboutToShowGroup", "ai", (ids,))
        return list(updates), list(unknown)

    @contextmanager
    def signals(self, item: ItemRef) -> Iterator[SignalLog]:
        """Record the item's and its menu's signals while the block runs, on a connection of their own."""
        owner = self.owner(item.bus_name)
        assert owner is not None, f"{item.bus_name} is not on the bus"
        recorder = SignalLog(self.address, owner)
        try:
            yield recorder
        finally:
            recorder.close()


class SignalLog:
    """Signals from one sender, as they arrive."""

    def __init__(self, address: str, sender: str) -> None:
        self.connection = open_dbus_connection(address)
        self.sender = sender
        self.seen: deque[Message] = deque()
        for interface in (ITEM_INTERFACE, MENU_INTERFACE):
            rule = MatchRule(type="signal", sender=sender, interface=interface)
            reply = self.connection.send_and_get_reply(
                new_method_call(BUS_DAEMON, "AddMatch", "s", (rule.serialise(),)), timeout=CALL_TIMEOUT
            )
            assert reply.header.message_type is MessageType.method_return, reply.body
        self._filter = self.connection.filter(MatchRule(type="signal", sender=sender), queue=self.seen)

    def close(self) -> None:
        """Stop recording."""
        self._filter.close()
        self.connection.close()

    def wait_for(self, member: str, timeout: float) -> Message:
        """The next recorded signal named ``member`` (waiting up to ``timeout`` s); earlier others are kept."""
        deadline = time.monotonic() + timeout
        while True:
            for message in list(self.seen):
                if message.header.fields.get(HeaderFields.member) == member:
                    self.seen.remove(message)
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {member} signal within {timeout:g} s; got {self.members()}")
            try:
                self.connection.recv_messages(timeout=remaining)
            except TimeoutError:
                pass

    def members(self) -> list[str]:
        """The names of the signals recorded and not yet taken."""
        return [str(message.header.fields.get(HeaderFields.member)) for message in self.seen]
