"""The tray as a StatusNotifierItem in a real SNI host: Debian's xfce4-panel under Xvfb, on a private session bus.

``python -m tray`` supervises the stand-in Ollama on a desktop of Xvfb +
openbox + xfce4-panel, whose status tray owns ``org.kde.StatusNotifierWatcher``
and draws registered items and their dbusmenu. What the tests check is what a
user and any SNI host see: the panel's pixels (screenshots, OCR of the popup
menu after a real right click) and the item's D-Bus interface
(:mod:`sni_host`: properties, ``GetLayout``, ``Event``/``EventGroup``, and the
signals that announce every change).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from standin.harness import StandinEnv
from tests.support.manager import DEFAULT_INTERVAL, Manager, in_thread, quietest_wakeups
from tray.ui.icon import IconState

pytestmark = [pytest.mark.process, pytest.mark.slow]

from tests.support.screen_text import changed_box, find_line, read_lines, tesseract_missing  # noqa: E402
from tests.support.sni_host import HostError, ItemRef, MenuItemView, SniHost  # noqa: E402
from tests.support.tray_driver import (  # noqa: E402
    BrowserLog,
    NotificationLog,
    TrayProcess,
    docked_icons,
    icon_state_of,
    imported_modules,
    tray_env,
    wait_for,
    wait_for_icon_state,
)
from tests.support.tray_fixtures import app_log, browser, manager, notifications, wait_healthy  # noqa: E402, F401
from tests.support.xdesktop import XDesktop, XfceDesktop, missing_xfce_tools  # noqa: E402

MISSING = missing_xfce_tools() + (["tesseract"] if tesseract_missing() else [])
if MISSING:
    pytest.skip(
        f"needs {', '.join(MISSING)} (apt-get install -y xvfb openbox xfce4-panel dbus-x11 xdotool imagemagick "
        "tesseract-ocr)",
        allow_module_level=True,
    )

GREEN, RED = IconState.HEALTHY, IconState.DOWN
NOT_OLLAMA_TAGS = {"path": "/api/tags", "status": 200, "error": "not an Ollama answer"}
DESIGN_CARD_ITEMS = ["Stop Ollama", "Restart Ollama", "Rebuild model", "Open logs", "Start at login", "Quit"]


@pytest.fixture(scope="module")
def desktop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XfceDesktop]:
    with XfceDesktop(tmp_path_factory.mktemp("xfce")) as running:
        yield running


class Trays:
    """Every ``python -m tray`` a test starts; all stopped and checked for tracebacks afterwards."""

    def __init__(self, manager: Manager, notifications: NotificationLog, browser: BrowserLog, tmp_path: Path) -> None:
        self.manager, self.notifications, self.browser, self.tmp_path = manager, notifications, browser, tmp_path
        self.started: list[TrayProcess] = []

    def start(self, desktop: XDesktop, name: str = "tray") -> TrayProcess:
        assert desktop.bus is not None
        env = tray_env(
            self.manager.env, desktop.display, self.notifications, bus_address=desktop.bus.address, browser=self.browser
        )
        tray = TrayProcess(env, self.tmp_path, name).start()
        self.started.append(tray)
        return tray

    def stop_all(self) -> None:
        for tray in self.started:
            tray.stop()
        for tray in self.started:
            assert "Traceback" not in tray.output(), tray.output()
        assert "Traceback" not in app_log(self.manager)


@pytest.fixture
def trays(manager: Manager, notifications: NotificationLog, browser: BrowserLog, tmp_path: Path) -> Iterator[Trays]:
    started = Trays(manager, notifications, browser, tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
def host(desktop: XfceDesktop) -> Iterator[SniHost]:
    # The previous test's item must be gone from the panel, or its pixels would count for this one.
    assert desktop.bus is not None
    with SniHost(desktop.bus.address) as connection:
        wait_for(lambda: connection.registered_items() == [], 10, "the last test's item to leave the watcher")
        # A pointer left where the last right click put it would hover the new item into showing its tooltip
        # over the panel, where the next right click looks for the icon.
        park_pointer(desktop)
        yield connection


def shown_state(desktop: XDesktop, tmp_path: Path, state: IconState, timeout: float = 15) -> Any:
    """Wait until the panel shows ``state``; return that screenshot."""
    image, _seen = wait_for_icon_state(
        lambda: desktop.screenshot(tmp_path / "screen.png"), desktop.tray_box, lambda s: s is state, timeout, f"{state}"
    )
    return image


def pixmap_state(host: SniHost, item: ItemRef) -> IconState | None:
    """The state the item's ``IconPixmap`` shows, as a host would draw it."""
    icon = host.icon(item)
    return icon_state_of(icon.convert("RGB"), (0, 0, icon.width, icon.height))


def flat(menu: MenuItemView) -> dict[str, MenuItemView]:
    return {item.label: item for item in menu.walk() if item.type != "separator"}


def started_item(host: SniHost, tray: TrayProcess) -> ItemRef:
    """The tray's item once the watcher lists it; it carries the tray's PID in its bus name."""
    item = host.wait_for_item(timeout=30)
    assert item.bus_name.startswith(f"org.kde.StatusNotifierItem-{tray.pid}-"), item
    return item


def start_green_item(trays: Trays, desktop: XfceDesktop, host: SniHost, manager: Manager) -> ItemRef:
    """A tray whose registered item shows green over a healthy stand-in."""
    item = started_item(host, trays.start(desktop))
    wait_healthy(manager, 30)
    wait_for(lambda: pixmap_state(host, item) is GREEN, 15, "a green IconPixmap")
    return item


def right_click_menu(desktop: XfceDesktop, tmp_path: Path, name: str) -> tuple[Any, list[Any]]:
    """Right-click the icon with xdotool; return the screenshot with the menu open and its text lines.

    The pointer first leaves the panel: resting on the icon (where an earlier click left it) it raises the
    icon's tooltip over the panel, which would hide the icon and move the click off it.
    """
    park_pointer(desktop)

    def only_the_icon_drawn() -> Any:
        shot = desktop.screenshot(tmp_path / f"{name}-before.png")
        left, _top, right, _bottom = panel_drawn_box(shot, desktop)
        return shot if right - left <= desktop.tray_box[3] - desktop.tray_box[1] else None

    before = wait_for(only_the_icon_drawn, 10, "the panel to show the icon alone once the pointer left it")
    top = desktop.tray_box[1]
    x, y = panel_icon_centre(before, desktop)
    subprocess.run(["xdotool", "mousemove", str(x), str(y), "click", "3"], env=desktop.env, check=True, timeout=10)
    above_panel = (0, 0, desktop.width, top)

    def menu_shown() -> tuple[Any, Any] | None:
        shot = desktop.screenshot(tmp_path / f"{name}.png")
        box = changed_box(before, shot, above_panel)
        return (shot, box) if box is not None and box[3] - box[1] > 200 else None

    shot, box = wait_for(menu_shown, 10, "the popup menu")
    time.sleep(0.3)  # let the menu finish drawing before reading it
    shot = desktop.screenshot(tmp_path / f"{name}.png")
    return shot, read_lines(shot, box)


def panel_icon_centre(image: Any, desktop: XDesktop) -> tuple[int, int]:
    """The centre of the coloured badge in the panel."""
    left, top, right, bottom = panel_drawn_box(image, desktop)
    return (left + right) // 2, (top + bottom) // 2


def panel_drawn_box(image: Any, desktop: XDesktop) -> tuple[int, int, int, int]:
    """The screen box of what is drawn on the panel's background (the badge, and whatever covers the panel)."""
    left, top = desktop.tray_box[:2]
    panel = image.crop(desktop.tray_box).convert("RGB")
    background = panel.getpixel((panel.width - 1, panel.height // 2))
    points = [
        (x, y)
        for y in range(panel.height)
        for x in range(panel.width)
        if sum(abs(a - b) for a, b in zip(panel.getpixel((x, y)), background, strict=True)) > 120
    ]
    assert points, "nothing drawn in the panel"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return left + min(xs), top + min(ys), left + max(xs), top + max(ys)


def park_pointer(desktop: XDesktop) -> None:
    """Move the pointer to the top of the screen, away from the panel."""
    subprocess.run(["xdotool", "mousemove", str(desktop.width // 2), "0"], env=desktop.env, check=True, timeout=10)


def close_menu(desktop: XfceDesktop) -> None:
    subprocess.run(["xdotool", "key", "Escape"], env=desktop.env, check=True, timeout=10)


# --- tests --------------------------------------------------------------------------


def test_icon_registers_green_and_its_menu_carries_the_design_card_actions(
    desktop: XfceDesktop, trays: Trays, host: SniHost, manager: Manager, browser: BrowserLog, tmp_path: Path
) -> None:
    item = start_green_item(trays, desktop, host, manager)
    properties = host.properties(item)
    assert (properties["Id"], properties["Title"], properties["Status"], properties["ItemIsMenu"]) == (
        "ollama-manager",
        "Ollama Manager",
        "Active",
        False,
    )
    assert sorted(w for w, _h, _data in properties["IconPixmap"]) == [16, 22, 24, 32, 48, 64]
    wait_for(
        lambda: re.fullmatch(r"Ollama: healthy · \d+ ms · uncensored-llama3", host.tooltip(item)[1]),
        10,
        "the healthy tooltip",
    )
    # Drawn by the panel in the health colour, and nothing of it floats above the panel.
    screen = shown_state(desktop, tmp_path, GREEN)
    assert icon_state_of(screen, (0, 0, desktop.width, desktop.tray_box[1])) is None
    assert docked_icons(desktop.display) == []  # no XEmbed icon besides it

    revision, menu = host.layout(item)
    items = flat(menu)
    assert re.fullmatch(r"Ollama: healthy · \d+ ms", menu.children[0].label)
    assert [label for label in DESIGN_CARD_ITEMS if label in items] == DESIGN_CARD_ITEMS
    assert [(items[label].enabled, items[label].checked) for label in DESIGN_CARD_ITEMS] == [
        (True, None),  # Stop Ollama: it runs
        (True, None),
        (True, None),  # Rebuild model: the server answers
        (True, None),
        (True, False),  # Start at login: a checkbox, off in a fresh home
        (True, None),
    ]
    assert "Start Ollama" not in items
    assert items["Notifications"].checked is True
    assert (items["No models in memory"].enabled, items["Unload models"].enabled) == (False, False)
    assert menu.labels().count("---") == 4  # three in the menu, one in the Model submenu
    assert host.about_to_show(item, 0) is False
    assert host.about_to_show_group(item, [0, items["Quit"].id, 9999]) == ([], [9999])

    # What a person sees after a right click: every label, read back from the screen.
    _shot, lines = right_click_menu(desktop, tmp_path, "menu")
    close_menu(desktop)
    # The status line's latency changes with every check; the rest must read exactly as GetLayout says.
    top = [child.label for child in menu.children if child.type != "separator"]  # a submenu's items need a hover
    labels = ["Ollama: healthy", *[label for label in top if not label.startswith("Ollama: healthy")]]
    missing = [label for label in labels if find_line(lines, label) is None]
    assert missing == [], f"not on screen: {missing}; read: {[line.text for line in lines]}"
    assert host.layout(item)[0] == revision  # opening the menu changed nothing

    # A plain click while healthy opens the dashboard (a restart is one right click away).
    host.activate(item)
    (url,) = wait_for(browser.opened, 10, "the dashboard in the browser")
    monitor = json.loads((Path(manager.env["XDG_STATE_HOME"]) / "ollama-manager" / "monitor.json").read_text())
    page = Path(manager.env["XDG_STATE_HOME"]) / "ollama-manager" / "open-dashboard.html"  # no XDG_RUNTIME_DIR here
    assert url == page.as_uri()  # a private sign-in page: no secret on the browser's command line
    assert f'action="http://127.0.0.1:{monitor["port"]}/signin"' in page.read_text()


def test_a_statusnotifier_tray_between_checks_has_no_thread_that_wakes(
    desktop: XfceDesktop, trays: Trays, host: SniHost, manager: Manager
) -> None:
    # The bus receiver, the item's event loop, the host watch, the monitor inside: at most one wakeup in
    # the quietest 3 s of the 12 after the icon turned green, with the next check 30 s away.
    manager.env.update(DEFAULT_INTERVAL)
    start_green_item(trays, desktop, host, manager)
    tray = trays.started[-1]
    quietest, readings = quietest_wakeups(tray.pid)
    assert tray.running()
    assert quietest <= 1, f"the tray woke {quietest} times in its quietest 3 s: {readings}"


def test_a_statusnotifier_tray_loads_no_pystray_code(
    desktop: XfceDesktop, trays: Trays, host: SniHost, manager: Manager
) -> None:
    # pystray and the workarounds for its xorg icon are for the XEmbed and pystray backends only.
    manager.env["PYTHONPROFILEIMPORTTIME"] = "1"
    start_green_item(trays, desktop, host, manager)
    loaded = imported_modules(trays.started[-1].output())
    assert {"tray.ui.app", "tray.ui.sni"} <= loaded  # the log names what the tray loaded
    assert {"pystray", "tray.ui.pystray_fixes"} & loaded == set()


def test_restart_clicked_in_the_menu_restarts_ollama(
    desktop: XfceDesktop,
    trays: Trays,
    host: SniHost,
    manager: Manager,
    standin: StandinEnv,
    notifications: NotificationLog,
    tmp_path: Path,
) -> None:
    tray = trays.start(desktop)
    item = started_item(host, tray)
    first_pid = wait_healthy(manager, 30)["pid"]

    # KDE's way: Event(id, "clicked") over D-Bus.
    restart = flat(host.layout(item)[1])["Restart Ollama"]
    assert host.click(item, restart.id) == []
    second_pid = wait_for(lambda: standin.serve_pids()[1:], 30, "a new ollama serve after Event")[0]
    assert second_pid != first_pid
    expected = ("Restart Ollama", f"Ollama is running at {standin.base_url} (started, pid {second_pid})")
    wait_for(lambda: expected in notifications.received(), 15, "the Restart notification")
    wait_for(lambda: wait_healthy(manager, 30)["pid"] == second_pid, 15, f"a healthy status for pid {second_pid}")

    # xfce4-panel's way: a real pointer click on the label in the popup menu, sent as EventGroup.
    shown_state(desktop, tmp_path, GREEN)
    _shot, lines = right_click_menu(desktop, tmp_path, "menu-for-click")
    line = find_line(lines, "Restart Ollama")
    assert line is not None, [line.text for line in lines]
    subprocess.run(
        ["xdotool", "mousemove", str(line.centre[0]), str(line.centre[1]), "click", "1"],
        env=desktop.env,
        check=True,
        timeout=10,
    )
    third_pid = wait_for(lambda: standin.serve_pids()[2:], 30, "a new ollama serve after the pointer click")[0]
    assert standin.serve_pids() == [first_pid, second_pid, third_pid]
    wait_for(lambda: wait_healthy(manager, 30)["pid"] == third_pid, 15, f"a healthy status for pid {third_pid}")

    # Clicks on ids the menu does not have are refused, and restart nothing.
    with pytest.raises(HostError, match="InvalidArgs"):
        host.click(item, 9999)
    with pytest.raises(HostError, match="InvalidArgs"):
        host.click(item, 9999, group=True)
    assert standin.serve_pids() == [first_pid, second_pid, third_pid]


def test_state_changes_reach_the_host_as_signals_and_redraw_icon_and_menu(
    desktop: XfceDesktop, trays: Trays, host: SniHost, manager: Manager, standin: StandinEnv, tmp_path: Path
) -> None:
    item = start_green_item(trays, desktop, host, manager)
    revision, _menu = host.layout(item)

    with host.signals(item) as signals:
        standin.set_faults(http_error=NOT_OLLAMA_TAGS)
        signals.wait_for("NewIcon", 15)
        signals.wait_for("NewToolTip", 15)
        layout_updated = signals.wait_for("LayoutUpdated", 15)  # "Last error: …" joined the menu
    assert layout_updated.body[0] > revision
    assert pixmap_state(host, item) is RED
    assert host.tooltip(item)[1] == "Ollama: down"
    new_revision, menu = host.layout(item)
    assert new_revision == layout_updated.body[0]
    labels = [child.label for child in menu.children]
    assert labels[:2] == ["Ollama: down", "Last error: not an Ollama answer"]
    assert flat(menu)["Restart Ollama"].enabled is True
    shown_state(desktop, tmp_path, RED)

    # Back to healthy, then a model loads: the loaded-models section follows.
    standin.clear_faults()
    shown_state(desktop, tmp_path, GREEN)
    standin.pull("llama3")
    with host.signals(item) as signals:
        with httpx.Client(base_url=standin.base_url, timeout=60, trust_env=False) as client:
            answer = client.post("/api/generate", json={"model": "llama3", "prompt": "hi", "stream": False})
        assert answer.status_code == 200, answer.text
        signals.wait_for("LayoutUpdated", 15)

    def loaded_lines() -> list[str]:
        menu = host.layout(item)[1]
        return [child.label for child in menu.children if child.label.startswith("llama3:latest")]

    # The pull changes the layout too (the Model submenu gains llama3): wait for the section itself.
    loaded = wait_for(loaded_lines, 15, "llama3 in the loaded-models section")
    assert len(loaded) == 1 and loaded[0].endswith("· 100% CPU"), loaded
    menu = host.layout(item)[1]
    assert flat(menu)["Unload models"].enabled is True


@contextlib.contextmanager
def bare_desktop(trays: Trays, workdir: Path) -> Iterator[XfceDesktop]:
    """A desktop of the test's own with a bus, an X server and a window manager, but no tray of either kind yet.

    Afterwards the trays started on it are stopped first, then the desktop.
    """
    screen = XfceDesktop(workdir, height=300, panel_height=80, icon_size=64)
    try:
        screen.start_bus()
        screen.start_x_server()
        screen.start_window_manager()
        yield screen
    finally:
        try:
            trays.stop_all()
            trays.started.clear()
        finally:
            screen.stop()


def item_waiting_on_the_bus(host: SniHost, tray: TrayProcess) -> str:
    """The bus name of the tray's item once it is on the bus (registered or not)."""
    prefix = f"org.kde.StatusNotifierItem-{tray.pid}-"
    found = wait_for(lambda: next((n for n in host.names() if n.startswith(prefix)), None), 30, "the tray's item")
    return str(found)


def test_a_tray_started_before_the_panel_registers_once_the_panel_comes_up(
    trays: Trays, manager: Manager, tmp_path: Path
) -> None:
    with bare_desktop(trays, tmp_path / "late-panel") as screen:
        assert screen.bus is not None
        tray = trays.start(screen)
        with SniHost(screen.bus.address) as host:
            # The item waits on the bus, under its own name, with no watcher to register with.
            item_name = item_waiting_on_the_bus(host, tray)
            assert host.registered_items() == []
            wait_healthy(manager, 30)
            assert tray.running()

            screen.start_panel()
            assert host.wait_for_item(timeout=20) == ItemRef(item_name)
            shown_state(screen, tmp_path, GREEN)

            # The panel restarts: the item registers with the new watcher.
            screen.stop_panel()
            assert tray.running()
            screen.start_panel()
            assert host.wait_for_item(timeout=20) == ItemRef(item_name)
            shown_state(screen, tmp_path, GREEN)


def test_the_icon_moves_from_an_xembed_tray_to_a_statusnotifier_host_that_appears(
    trays: Trays, manager: Manager, tmp_path: Path
) -> None:
    with bare_desktop(trays, tmp_path / "switch") as screen:
        assert screen.bus is not None
        screen.start_tray()  # tint2: an XEmbed tray and no StatusNotifier watcher
        tray = trays.start(screen)
        wait_for(lambda: len(docked_icons(screen.display)) == 1, 30, "the XEmbed icon docked in tint2")
        wait_healthy(manager, 30)
        with SniHost(screen.bus.address) as host:
            assert host.registered_items() == []
            screen.stop_process("tint2")
            screen.start_panel()
            item = host.wait_for_item(timeout=30)
            assert item.bus_name.startswith(f"org.kde.StatusNotifierItem-{tray.pid}-")
            wait_for(lambda: docked_icons(screen.display) == [], 10, "the XEmbed icon to go")
            shown_state(screen, tmp_path, GREEN)
            assert flat(host.layout(item)[1])["Restart Ollama"].enabled is True
        assert tray.running()


def test_an_xembed_tray_that_appears_without_a_watcher_gets_the_icon(
    trays: Trays, manager: Manager, tmp_path: Path
) -> None:
    with bare_desktop(trays, tmp_path / "late-tint2") as screen:
        assert screen.bus is not None
        tray = trays.start(screen)
        with SniHost(screen.bus.address) as host:
            item_waiting_on_the_bus(host, tray)
            screen.start_tray()  # tint2 claims the XEmbed selection; no watcher comes
            # (While tint2 reparents the icon window, the tree walk can meet it twice: wait for one.)
            wait_for(lambda: len(docked_icons(screen.display)) == 1, 30, "the icon docked in tint2")
            assert not any(n.startswith("org.kde.StatusNotifierItem-") for n in host.names())
        wait_healthy(manager, 30)
        shown_state(screen, tmp_path, GREEN)
        assert tray.running()


def test_without_any_tray_host_the_tray_gives_up_after_its_wait_and_says_so(
    trays: Trays, manager: Manager, notifications: NotificationLog, browser: BrowserLog, tmp_path: Path
) -> None:
    with bare_desktop(trays, tmp_path / "nothing") as screen:
        assert screen.bus is not None
        env = tray_env(manager.env, screen.display, notifications, bus_address=screen.bus.address, browser=browser)
        env["OLLAMA_MANAGER_TRAY_HOST_WAIT"] = "1.5"
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "tray"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        waited = time.monotonic() - started
    message = (
        "No system tray found (none appeared within 1.5 s: no StatusNotifier host on the session bus and nothing owns "
        f"_NET_SYSTEM_TRAY_S0 on X display {screen.display}); run `ollama-manager monitor` instead."
    )
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"ollama-manager: {message}\n")
    assert waited >= 1.5
    assert notifications.received()[-1] == ("Ollama Manager", message)


def test_choosing_a_model_in_the_menu_switches_the_probe_status_and_check_mark_without_cutting_an_answer(
    desktop: XfceDesktop, trays: Trays, host: SniHost, manager: Manager, standin: StandinEnv
) -> None:
    manager.env["OLLAMA_MANAGER_OLLAMA_MODEL"] = "llama3"  # the Modelfile model, pulled here rather than built
    item = started_item(host, trays.start(desktop))
    wait_healthy(manager, 30)
    standin.pull("llama3")
    standin.pull("mistral")

    def model_menu() -> MenuItemView:
        return next(child for child in host.layout(item)[1].children if child.label.startswith("Model: "))

    wait_for(lambda: "mistral:latest" in model_menu().labels(), 30, "mistral in the Model submenu")
    choices = model_menu()
    assert choices.children_display == "submenu"
    assert choices.labels() == ["llama3:latest (Modelfile)", "mistral:latest", "---", "Use the Modelfile model"]
    llama3, mistral = choices.find("llama3:latest (Modelfile)"), choices.find("mistral:latest")
    assert (llama3.toggle_type, llama3.checked, mistral.checked) == ("radio", True, False)
    assert choices.find("Use the Modelfile model").enabled is False

    # A long answer on the old model, under way while the user switches.
    standin.set_faults(token_ms=40, tokens=100, load_ms=2000)

    answer = in_thread(lambda: standin.generate("llama3", "go on"))
    wait_for(lambda: standin.runner_pid("llama3:latest"), 30, "llama3 loaded for the long answer")
    assert host.click(item, mistral.id) == []
    wait_for(lambda: host.tooltip(item)[1].startswith("Loading mistral:latest… "), 10, "the loading tooltip")
    wait_for(lambda: (manager.api_status() or {}).get("model") == "mistral:latest", 15, "mistral active")
    choices = wait_for(
        lambda: (menu := model_menu()).find("mistral:latest").checked and menu, 15, "the check mark on mistral"
    )
    assert choices.label == "Model: mistral:latest"
    assert choices.find("llama3:latest (Modelfile)").checked is False
    assert choices.find("Use the Modelfile model").enabled is True
    done = answer()
    assert done["done"] is True and done["eval_count"] == 100  # the old model finished its answer
    standin.clear_faults()

    wait_for(lambda: standin.probes_answered("mistral:latest") >= 2, 30, "the health probe asking mistral")
    wait_for(lambda: re.search(r"· mistral:latest$", host.tooltip(item)[1]), 15, "mistral named in the tooltip")

    # And back, from the same submenu.
    assert host.click(item, choices.find("Use the Modelfile model").id) == []
    wait_for(lambda: model_menu().find("llama3:latest (Modelfile)").checked, 15, "the check mark back on llama3")
    assert model_menu().label == "Model: llama3"

    # From the command line, through the tray's own monitor: the same check mark moves.
    used = manager.run("model", "use", "mistral")
    assert (used.returncode, used.stdout.strip()) == (0, "Using mistral:latest"), used.stderr
    wait_for(lambda: model_menu().find("mistral:latest").checked, 15, "the check mark on mistral after model use")
    assert model_menu().label == "Model: mistral:latest"
