"""The StatusNotifierItem and its dbusmenu on a private session bus, without a panel: what hosts may ask of it.

A fake watcher (a plain jeepney service owning ``org.kde.StatusNotifierWatcher``)
records registrations, so appearing, leaving and coming back are exercised here
quickly; the real host (xfce4-panel) is in ``test_tray_sni.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from jeepney import DBusAddress, HeaderFields, MessageType, new_method_call, new_method_return
from jeepney.io.threading import ReceiveStopped, open_dbus_connection
from PIL import Image

from tests.support.sni_host import HostError, ItemRef, SniHost, image_from_pixmap
from tests.support.tray_driver import wait_for
from tests.support.xdesktop import SessionBus, missing_tools
from tray.core.status import MonitorState, make_status
from tray.ui import sni as sni_module
from tray.ui.icon import IconState, draw_icon
from tray.ui.menu import MenuEntry, build_menu
from tray.ui.sni import StatusNotifierIcon, argb32_pixmaps, watcher_on_bus

if missing_tools(("dbus-daemon",)):
    pytest.skip("needs dbus-daemon (apt-get install -y dbus)", allow_module_level=True)

SETTINGS = {"notifications": True, "autostart": False, "stop_ollama_on_quit": False}
HEALTHY = make_status(latency_ms=5, model="m")
STOPPED = replace(HEALTHY, state=MonitorState.STOPPED, ollama_running=False)


def test_pixmaps_are_argb32_in_network_byte_order_at_every_size() -> None:
    image = draw_icon(IconState.DOWN, 64)
    pixmaps = argb32_pixmaps(image)
    assert [(w, h) for w, h, _ in pixmaps] == [(16, 16), (22, 22), (24, 24), (32, 32), (48, 48), (64, 64)]
    width, height, data = pixmaps[-1]
    assert len(data) == 64 * 64 * 4
    centre = (32 * 64 + 20) * 4  # inside the red badge, left of the cross
    assert tuple(data[centre : centre + 4]) == (255, *IconState.DOWN.rgb)
    assert image_from_pixmap(width, height, data).tobytes() == image.convert("RGBA").tobytes()
    assert [(w, h) for w, h, _ in argb32_pixmaps(Image.new("RGBA", (20, 20)))] == [(16, 16), (20, 20)]


class FakeWatcher:
    """``org.kde.StatusNotifierWatcher`` on its own connection, recording RegisterStatusNotifierItem calls."""

    def __init__(self, address: str) -> None:
        self.connection = open_dbus_connection(address)
        self.registered: list[str] = []
        bus = DBusAddress("/org/freedesktop/DBus", "org.freedesktop.DBus", "org.freedesktop.DBus")
        self.connection.send(new_method_call(bus, "RequestName", "su", ("org.kde.StatusNotifierWatcher", 4)))
        wait_for(lambda: watcher_on_bus(address), 5, "the fake watcher's name")
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            while True:
                message = self.connection.receive()
                if message.header.message_type is MessageType.method_call:
                    if message.header.fields.get(HeaderFields.member) == "RegisterStatusNotifierItem":
                        self.registered.append(message.body[0])
                    self.connection.send(new_method_return(message))
        except (ReceiveStopped, OSError, ValueError):
            return

    def close(self) -> None:
        self.connection.close()
        self._thread.join(timeout=5)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[SessionBus]:
    session = SessionBus(tmp_path, {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    session.start()
    try:
        yield session
    finally:
        session.stop()


class Running:
    """A StatusNotifierIcon served on a thread, with the actions and clicks it reported."""

    def __init__(self, address: str, entries: list[MenuEntry]) -> None:
        self.entries = entries
        self.actions: list[str] = []
        self.activations = 0
        self.icon = StatusNotifierIcon(
            "ollama-manager",
            draw_icon(IconState.HEALTHY, 64),
            "Ollama: healthy",
            menu=lambda: self.entries,
            on_action=self.actions.append,
            on_activate=self._activated,
            bus_address=address,
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _activated(self) -> None:
        self.activations += 1

    def _run(self) -> None:
        try:
            self.icon.run()
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    @property
    def item(self) -> ItemRef:
        return ItemRef(self.icon.bus_name)

    def stop(self) -> None:
        self.icon.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        assert self.error is None, self.error


@pytest.fixture
def running(bus: SessionBus) -> Iterator[Running]:
    served = Running(bus.address, build_menu(HEALTHY, SETTINGS, set()))
    try:
        with SniHost(bus.address) as host:
            wait_for(lambda: host.owner(served.icon.bus_name), 10, "the item's bus name")
        yield served
    finally:
        served.stop()


@pytest.mark.process
def test_properties_introspection_and_errors_as_hosts_see_them(bus: SessionBus, running: Running) -> None:
    with SniHost(bus.address) as host:
        item = running.item
        properties = host.properties(item)
        assert properties["Menu"] == "/MenuBar"
        assert host.tooltip(item) == ("Ollama Manager", "Ollama: healthy")
        (value,) = host.call(
            item.address("org.freedesktop.DBus.Properties"), "Get", "ss", ("org.kde.StatusNotifierItem", "Category")
        )
        assert value == ("s", "SystemServices")
        menu_props = host.call(
            DBusAddress("/MenuBar", item.bus_name, "org.freedesktop.DBus.Properties"),
            "GetAll",
            "s",
            ("com.canonical.dbusmenu",),
        )[0]
        assert menu_props["Version"] == ("u", 3)
        with pytest.raises(HostError, match="PropertyReadOnly"):
            host.call(
                item.address("org.freedesktop.DBus.Properties"),
                "Set",
                "ssv",
                ("org.kde.StatusNotifierItem", "Title", ("s", "x")),
            )
        with pytest.raises(HostError, match="UnknownProperty"):
            host.call(
                item.address("org.freedesktop.DBus.Properties"), "Get", "ss", ("org.kde.StatusNotifierItem", "Nope")
            )
        (xml,) = host.call(DBusAddress("/MenuBar", item.bus_name, "org.freedesktop.DBus.Introspectable"), "Introspect")
        assert '<method name="EventGroup">' in xml
        with pytest.raises(HostError, match="UnknownObject"):
            host.call(DBusAddress("/Elsewhere", item.bus_name, "org.freedesktop.DBus.Introspectable"), "Introspect")
        with pytest.raises(HostError, match="UnknownMethod"):
            host.call(item.address(), "Explode")
        host.call(DBusAddress("/", item.bus_name, "org.freedesktop.DBus.Peer"), "Ping")
        with pytest.raises(HostError, match="InvalidArgs"):
            host.call(host.menu_address(item), "GetLayout", "iias", (4242, -1, []))


@pytest.mark.process
def test_clicks_run_enabled_actions_only_and_activate_reaches_the_app(bus: SessionBus, running: Running) -> None:
    with SniHost(bus.address) as host:
        item = running.item
        menu = host.layout(item)[1]
        status_line = menu.children[0]
        assert status_line.enabled is False
        host.click(item, status_line.id)  # an information line: nothing to run
        host.click(item, menu.find("Unload models").id)  # disabled: no models loaded
        assert host.click(item, menu.find("Restart Ollama").id, group=True) == []
        menu_address = host.menu_address(item)
        unknown = host.call(
            menu_address,
            "EventGroup",
            "a(isvu)",
            ([(menu.find("Quit").id, "hovered", ("i", 0), 0), (777, "clicked", ("i", 0), 0)],),
        )[0]
        assert unknown == [777]
        host.activate(item)
        wait_for(lambda: running.actions == ["restart"] and running.activations == 1, 5, "the click and activation")


@pytest.mark.process
def test_the_item_registers_when_a_watcher_appears_and_again_after_it_restarts(
    bus: SessionBus, running: Running
) -> None:
    assert running.icon.registered_with is None
    assert watcher_on_bus(bus.address) is False
    first = FakeWatcher(bus.address)
    try:
        wait_for(lambda: first.registered == [running.icon.bus_name], 10, "a registration with the first watcher")
    finally:
        first.close()
    wait_for(lambda: not watcher_on_bus(bus.address), 10, "the watcher to leave")
    second = FakeWatcher(bus.address)
    try:
        wait_for(lambda: second.registered == [running.icon.bus_name], 10, "a registration with the next watcher")
        assert watcher_on_bus(bus.address) is True
    finally:
        second.close()


@pytest.mark.process
def test_menu_updates_are_signalled_and_unchanged_menus_say_nothing(bus: SessionBus, running: Running) -> None:
    with SniHost(bus.address) as host:
        item = running.item
        revision, menu = host.layout(item)
        with host.signals(item) as signals:
            running.entries = build_menu(HEALTHY, {**SETTINGS, "autostart": True}, set())
            running.icon.update_menu()
            updated = signals.wait_for("ItemsPropertiesUpdated", 5)
            assert updated.body == ([(menu.find("Start at login").id, {"toggle-state": ("i", 1)})], [])
            running.icon.update_menu()  # nothing changed: no signal
            running.entries = build_menu(STOPPED, SETTINGS, set())
            running.icon.update_menu()
            layout_updated = signals.wait_for("LayoutUpdated", 5)
            assert signals.members() == []  # nothing between the two changes
            running.icon.icon = draw_icon(IconState.DOWN, 64)
            signals.wait_for("NewIcon", 5)
            running.icon.title = "Ollama: down"
            signals.wait_for("NewToolTip", 5)
            running.icon.title = "Ollama: down"  # the same text: no signal
            running.icon.update_menu()
            running.entries = build_menu(STOPPED, SETTINGS, {"start"})
            running.icon.update_menu()
            signals.wait_for("ItemsPropertiesUpdated", 5)
            assert signals.members() == []  # no NewToolTip for the unchanged text
        assert layout_updated.body == (revision + 1, 0)
        menu = host.layout(item)[1]
        assert (menu.children[0].label, menu.find("Start Ollama").enabled) == ("Stopped", False)  # a start is under way
        assert host.tooltip(item)[1] == "Ollama: down"


@pytest.mark.process
def test_a_lost_bus_ends_run_with_one_line(tmp_path: Path) -> None:
    session = SessionBus(tmp_path, {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    session.start()
    served = Running(session.address, build_menu(HEALTHY, SETTINGS, set()))
    try:
        with SniHost(session.address) as host:
            wait_for(lambda: host.owner(served.icon.bus_name), 10, "the item's bus name")
    finally:
        session.stop()
    served.thread.join(timeout=10)
    assert not served.thread.is_alive()
    assert type(served.error).__name__ == "StatusNotifierError"
    assert str(served.error).startswith("the session bus connection closed: ")


def test_no_bus_at_the_address_is_one_line(tmp_path: Path) -> None:
    icon: Any = StatusNotifierIcon(
        "x",
        draw_icon(IconState.HEALTHY, 16),
        "t",
        menu=list,
        on_action=print,
        on_activate=print,
        bus_address=f"unix:path={tmp_path / 'nothing'}",
    )
    with pytest.raises(sni_module.StatusNotifierError, match=r"^cannot connect to the session bus at unix:path="):
        icon.run()
