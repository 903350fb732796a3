"""The menu model (pure) and the pystray adapter driven by a fake controller and a fake icon."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from tray.core.actions import blocked_actions
from tray.core.health import BusySource, Health
from tray.core.status import (
    Activity,
    ActivityKind,
    BusyStatus,
    InstalledModelStatus,
    LoadedModelStatus,
    MonitorState,
    Status,
    make_status,
)
from tray.core.status_text import processor_split
from tray.core.units import human_bytes
from tray.ui.app import TrayApp, open_command, open_path
from tray.ui.icon import IconState, draw_icon
from tray.ui.menu import (
    MenuEntry,
    build_menu,
    default_action,
    find_entry,
)

SETTINGS = {"notifications": True, "autostart": False, "stop_ollama_on_quit": False}
LLAMA3 = LoadedModelStatus("llama3:latest", 4_661_224_676, 0)
SPLIT = LoadedModelStatus("uncensored-llama3:latest", 5_000_000_000, 2_600_000_000)


def status(**overrides: Any) -> Status:
    """A healthy running server, changed by ``overrides``."""
    return make_status(**overrides)


def rows(entries: list[MenuEntry]) -> list[tuple[object, ...]]:
    """(label, action, enabled, checked, default) per entry; "---" for separators."""
    return [
        ("---",) if entry.separator else (entry.label, entry.action, entry.enabled, entry.checked, entry.default)
        for entry in entries
    ]


def enabled_actions(entries: list[MenuEntry]) -> set[str]:
    return {entry.action for entry in entries if entry.action and entry.enabled}


# --- the menu model -------------------------------------------------------------


def test_menu_for_a_healthy_server() -> None:
    entries = build_menu(status(loaded_models=(LLAMA3,)), SETTINGS, set())
    assert rows(entries) == [
        ("Ollama: healthy · 245 ms", None, False, None, False),
        ("Model: uncensored-llama3", None, True, None, False),
        ("llama3:latest 4.7 GB · 100% CPU", None, False, None, False),
        ("Unload models", "unload", True, None, False),
        ("---",),
        ("Stop Ollama", "stop", True, None, False),
        ("Restart Ollama", "restart", True, None, False),
        ("Rebuild model", "rebuild", True, None, False),
        ("Open dashboard", "open_dashboard", True, None, False),
        ("Open logs", "open_logs", True, None, False),
        ("---",),
        ("Start at login", "toggle_autostart", True, False, False),
        ("Notifications", "toggle_notifications", True, True, False),
        ("---",),
        ("Quit", "quit", True, None, False),
    ]


def test_the_status_line_says_what_ollama_is_busy_with() -> None:
    busy = BusyStatus("llama3:latest", 1, 0, 95.0, 0.4, BusySource.GATEWAY, stuck=False)
    entries = build_menu(status(busy=busy, loaded_models=(LLAMA3,)), SETTINGS, set())
    assert entries[0].label == "Ollama: healthy · 245 ms · busy: generating on llama3:latest for 2 min"
    assert enabled_actions(entries) >= {"unload", "stop", "restart"}  # busy blocks nothing


def test_loaded_models_show_size_and_processor_split() -> None:
    entries = build_menu(status(loaded_models=(LLAMA3, SPLIT)), SETTINGS, set())
    assert [entry.label for entry in entries[2:4]] == [
        "llama3:latest 4.7 GB · 100% CPU",
        "uncensored-llama3:latest 5 GB · 48%/52% CPU/GPU",
    ]
    assert [entry.key for entry in entries[2:4]] == ["loaded:0", "loaded:1"]


def test_no_loaded_models_disables_unload() -> None:
    entries = build_menu(status(), SETTINGS, set())
    assert rows(entries)[2:4] == [
        ("No models in memory", None, False, None, False),
        ("Unload models", "unload", False, None, False),
    ]


def test_stopped_server_offers_start_only() -> None:
    stopped = status(state=MonitorState.STOPPED, ollama_running=False, health=Health.DOWN, latency_ms=None)
    entries = build_menu(stopped, SETTINGS, set())
    assert rows(entries)[0] == ("Stopped", None, False, None, False)
    assert find_entry(entries, "stop") is None
    assert enabled_actions(entries) == {
        "start",
        "open_dashboard",
        "open_logs",
        "toggle_autostart",
        "toggle_notifications",
        "quit",
    }
    assert default_action(entries) is None


def test_gave_up_server_offers_start_and_click_to_restart() -> None:
    failed = status(state=MonitorState.FAILED, ollama_running=False, health=Health.DOWN, latency_ms=None)
    entries = build_menu(failed, SETTINGS, set())
    assert enabled_actions(entries) >= {"start", "restart"}
    assert "rebuild" not in enabled_actions(entries)
    assert default_action(entries) == "restart"


def test_plain_click_restarts_only_when_down() -> None:
    for health, expected in [
        (Health.HEALTHY, None),
        (Health.UNHEALTHY, None),
        (Health.UNKNOWN, None),
        (Health.DOWN, "restart"),
    ]:
        assert default_action(build_menu(status(health=health), SETTINGS, set())) == expected


def test_running_restart_disables_every_server_action() -> None:
    entries = build_menu(status(health=Health.DOWN, loaded_models=(LLAMA3,)), SETTINGS, {"restart"})
    assert enabled_actions(entries) == {
        "open_dashboard",
        "open_logs",
        "toggle_autostart",
        "toggle_notifications",
        "quit",
    }
    # No plain-click restart while one is already running.
    assert default_action(entries) is None


@pytest.mark.parametrize("running", ["start", "stop", "restart", "rebuild", "unload"])
def test_each_server_action_blocks_all_of_them(running: str) -> None:
    assert blocked_actions(status(), {running}) == {"start", "stop", "restart", "rebuild", "unload"}


def test_opening_logs_blocks_nothing() -> None:
    assert blocked_actions(status(), {"open_logs"}) == frozenset()


@pytest.mark.parametrize("kind", list(ActivityKind))
def test_monitor_activity_blocks_server_actions(kind: ActivityKind) -> None:
    busy = status(activity=Activity(kind), loaded_models=(LLAMA3,))
    entries = build_menu(busy, SETTINGS, set())
    assert enabled_actions(entries) == {
        "open_dashboard",
        "open_logs",
        "toggle_autostart",
        "toggle_notifications",
        "quit",
    }


def test_stopping_disables_stop_restart_and_rebuild() -> None:
    entries = build_menu(status(activity=Activity(ActivityKind.STOP, "Stopping Ollama")), SETTINGS, set())
    assert find_entry(entries, "stop") is not None
    assert {"stop", "restart", "rebuild"}.isdisjoint(enabled_actions(entries))


def test_restarting_server_still_offers_stop() -> None:
    restarting = status(state=MonitorState.RESTARTING, ollama_running=False, health=Health.DOWN)
    entries = build_menu(restarting, SETTINGS, set())
    assert {"stop", "restart"} <= enabled_actions(entries)
    assert find_entry(entries, "start") is None


def test_checkboxes_follow_settings() -> None:
    entries = build_menu(status(), {"notifications": False, "autostart": True}, set())
    assert find_entry(entries, "toggle_autostart").checked is True  # type: ignore[union-attr]
    assert find_entry(entries, "toggle_notifications").checked is False  # type: ignore[union-attr]


def test_last_error_is_shown_while_in_trouble() -> None:
    down = status(health=Health.DOWN, latency_ms=None, last_error='Post "http://127.0.0.1:11434/api/chat": EOF\nmore')
    entries = build_menu(down, SETTINGS, set())
    assert rows(entries)[:2] == [
        ("Ollama: down", None, False, None, False),
        ('Last error: Post "http://127.0.0.1:11434/api/chat": EOF', None, False, None, False),
    ]


def test_last_error_is_cut_to_one_short_line() -> None:
    failed = status(state=MonitorState.FAILED, health=Health.DOWN, last_error="x" * 200)
    label = build_menu(failed, SETTINGS, set())[1].label
    assert label == "Last error: " + "x" * 67 + "…"
    assert len(label) == 80


def test_old_error_is_hidden_once_healthy() -> None:
    entries = build_menu(status(last_error="connection refused"), SETTINGS, set())
    assert find_entry(entries, "error") is None


def test_status_line_shows_a_pending_action() -> None:
    entries = build_menu(status(), SETTINGS, {"rebuild"})
    assert entries[0].label == "Rebuilding model…"


def test_status_line_shows_progress() -> None:
    building = status(activity=Activity(ActivityKind.BUILD, "Building model", 0.45))
    assert build_menu(building, SETTINGS, set())[0].label == "Building model 45 %"


def test_menu_before_anything_is_known() -> None:
    entries = build_menu(Status(), {}, set())
    assert [entry.label for entry in entries if not entry.separator] == [
        "Starting Ollama…",
        "Model: none",
        "No models in memory",
        "Unload models",
        "Stop Ollama",
        "Restart Ollama",
        "Rebuild model",
        "Open dashboard",
        "Open logs",
        "Start at login",
        "Notifications",
        "Quit",
    ]


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 KB"),
        (1500, "1.5 KB"),
        (4_661_224_676, "4.7 GB"),
        (5_000_000_000, "5 GB"),
        (9_960_000_000, "10.0 GB"),
        (13_500_000_000, "13 GB"),
        (140_000_000_000, "140 GB"),
        (1_200_000_000_000, "1.2 TB"),
    ],
)
def test_human_bytes_matches_ollama(size: int, expected: str) -> None:
    assert human_bytes(size) == expected


@pytest.mark.parametrize(
    ("size", "size_vram", "expected"),
    [
        (100, 0, "100% CPU"),
        (100, 100, "100% GPU"),
        (100, 52, "48%/52% CPU/GPU"),
        (1000, 505, "50%/50% CPU/GPU"),  # 49.5 % CPU rounds half away from zero, like Go
        (100, 150, "Unknown"),
        (0, 10, "Unknown"),
    ],
)
def test_processor_split_matches_ollama_ps(size: int, size_vram: int, expected: str) -> None:
    assert processor_split(size, size_vram) == expected


# --- the pystray adapter ----------------------------------------------------------


@pytest.fixture(scope="module")
def pystray_module() -> Any:
    """pystray's Menu and MenuItem; the dummy backend keeps the import off any display."""
    if "pystray" not in sys.modules:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PYSTRAY_BACKEND", "dummy")
            import pystray  # noqa: F401
    return sys.modules["pystray"]


class FakeIcon:
    """Records what the adapter does to pystray's Icon; ``run`` plays a script."""

    script: ClassVar[list[Callable[[FakeIcon], None]]] = []

    def __init__(self, name: str, icon: Any = None, title: str = "", menu: Any = None) -> None:
        self.name = name
        self._icon = icon
        self.title = title
        self.menu = menu
        self.visible = False
        self.icon_changes = 0
        self.menu_updates = 0
        self.stopped = False
        self.ran_on: threading.Thread | None = None

    @property
    def icon(self) -> Any:
        return self._icon

    @icon.setter
    def icon(self, value: Any) -> None:
        self._icon = value
        self.icon_changes += 1

    def update_menu(self) -> None:
        self.menu_updates += 1

    def stop(self) -> None:
        self.stopped = True

    def run(self, setup: Callable[[FakeIcon], None]) -> None:
        self.ran_on = threading.current_thread()
        setup(self)
        for step in self.script:
            step(self)
            if self.stopped:
                return

    def click(self) -> None:
        """A plain left click, as pystray's backends dispatch it."""
        self.menu(self)

    def item(self, text: str) -> Any:
        return next(item for item in self.menu if item.text == text)

    def texts(self) -> list[str]:
        return [item.text for item in self.menu]


class RecordingFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """A future that remembers the timeout it was waited with."""

    waited_with: float | None = None

    def result(self, timeout: float | None = None) -> Any:
        self.waited_with = timeout
        return super().result(timeout)


class FakeController:
    """A scripted controller; futures are resolved by the test."""

    def __init__(self, initial: Status, settings: dict[str, bool] | None = None) -> None:
        self.status = initial
        self.current_settings = dict(SETTINGS if settings is None else settings)
        self.requests: list[str] = []
        self.futures: dict[str, concurrent.futures.Future[str]] = {}
        self.notifications: list[tuple[str, str]] = []
        self.subscribers: list[Callable[[Status], None]] = []
        self.paths: list[str] = []
        self.fail_request: Exception | None = None
        self.fail_setting: Exception | None = None
        self.dashboards_opened = 0
        self.fail_dashboard: Exception | None = None

    def snapshot(self) -> Status:
        return self.status

    def subscribe(self, callback: Callable[[Status], None]) -> Callable[[], None]:
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)

    def request(self, action: str) -> concurrent.futures.Future[str]:
        self.requests.append(action)
        if self.fail_request is not None:
            raise self.fail_request
        future = RecordingFuture()
        self.futures[action] = future
        return future

    def use_model(self, name: str) -> concurrent.futures.Future[str]:
        return self.request(f"use {name}")

    def settings(self) -> dict[str, bool]:
        return dict(self.current_settings)

    def set_setting(self, key: str, value: bool) -> None:
        if self.fail_setting is not None:
            raise self.fail_setting
        self.current_settings[key] = value

    def log_paths(self) -> list[str]:
        return list(self.paths)

    def open_dashboard(self) -> None:
        if self.fail_dashboard is not None:
            raise self.fail_dashboard
        self.dashboards_opened += 1

    def notify(self, title: str, message: str) -> None:
        self.notifications.append((title, message))

    def publish(self, new_status: Status) -> None:
        self.status = new_status
        for callback in list(self.subscribers):
            callback(new_status)


@pytest.fixture
def make_app(pystray_module: Any) -> Callable[..., tuple[TrayApp, FakeController, FakeIcon]]:
    def make(initial: Status | None = None, **kwargs: Any) -> tuple[TrayApp, FakeController, FakeIcon]:
        settings = kwargs.pop("settings", None)
        icon_class = kwargs.pop("icon_class", FakeIcon)
        controller = FakeController(status() if initial is None else initial, settings)
        backend = SimpleNamespace(Icon=icon_class, Menu=pystray_module.Menu, MenuItem=pystray_module.MenuItem)
        FakeIcon.script = kwargs.pop("script", [])
        app = TrayApp(controller, backend=backend, **kwargs)
        return app, controller, app.icon

    return make


def same_image(first: Any, second: Any) -> bool:
    return first.size == second.size and first.tobytes() == second.tobytes()


def test_initial_icon_title_and_menu(make_app: Callable[..., Any]) -> None:
    app, _controller, icon = make_app(status(loaded_models=(LLAMA3,)))
    assert icon.name == "ollama-manager"
    assert same_image(icon.icon, draw_icon(IconState.HEALTHY, 64))
    assert icon.title == "Ollama: healthy · 245 ms · uncensored-llama3"
    assert icon.texts() == [
        "Ollama: healthy · 245 ms",
        "Model: uncensored-llama3",
        "llama3:latest 4.7 GB · 100% CPU",
        "Unload models",
        "- - - -",
        "Stop Ollama",
        "Restart Ollama",
        "Rebuild model",
        "Open dashboard",
        "Open logs",
        "- - - -",
        "Start at login",
        "Notifications",
        "- - - -",
        "Quit",
    ]
    assert icon.item("Notifications").checked is True
    assert icon.item("Start at login").checked is False
    assert icon.item("Quit").checked is None
    assert icon.item("Model: uncensored-llama3").submenu is not None


def test_status_change_updates_icon_title_and_the_same_menu_items(make_app: Callable[..., Any]) -> None:
    app, controller, icon = make_app()
    status_item = icon.item("Ollama: healthy · 245 ms")
    restart_item = icon.item("Restart Ollama")
    assert restart_item.default is False
    app.on_status(status(health=Health.DOWN, latency_ms=None, next_retry_in=300.0))
    assert same_image(icon.icon, draw_icon(IconState.DOWN, 64))
    assert icon.title == "Down — retrying in 5 min"
    # Items built before the change read the new state through their callables.
    assert status_item.text == "Down — retrying in 5 min"
    assert restart_item.default is True


def test_cloud_fallback_adds_the_cloud_mark(make_app: Callable[..., Any]) -> None:
    app, controller, icon = make_app()
    app.on_status(status(state=MonitorState.FAILED, health=Health.DOWN, ollama_running=False, cloud_active=True))
    assert same_image(icon.icon, draw_icon(IconState.DOWN, 64, cloud=True))
    assert icon.title == "Down — gave up after 3 restart attempts · cloud fallback active"


def test_icon_image_is_only_replaced_when_the_state_changes(make_app: Callable[..., Any]) -> None:
    app, controller, icon = make_app()
    app.on_status(status(latency_ms=300))
    app.on_status(status(latency_ms=310))
    assert icon.icon_changes == 0
    assert icon.title == "Ollama: healthy · 310 ms · uncensored-llama3"
    app.on_status(status(health=Health.UNHEALTHY, latency_ms=7000))
    assert icon.icon_changes == 1


def test_restart_item_runs_the_request_and_reports_success(make_app: Callable[..., Any]) -> None:
    app, controller, icon = make_app()
    icon.item("Restart Ollama")(icon)
    assert controller.requests == ["restart"]
    assert app.running_actions == {"restart"}
    assert icon.title == "Restarting Ollama…"
    assert icon.item("Restart Ollama").enabled is False
    assert icon.item("Stop Ollama").enabled is False
    assert icon.item("Open logs").enabled is True
    controller.futures["restart"].set_result("Ollama restarted in 3.2 s\n(pid 4242)")
    assert controller.notifications == [("Restart Ollama", "Ollama restarted in 3.2 s")]
    assert app.running_actions == frozenset()
    assert icon.item("Restart Ollama").enabled is True
    assert icon.title == "Ollama: healthy · 245 ms · uncensored-llama3"


def test_failed_request_notifies_one_line(make_app: Callable[..., Any]) -> None:
    app, controller, icon = make_app()
    app.on_rebuild()
    controller.futures["rebuild"].set_exception(RuntimeError("\nmodelfile not found: /x/uncensored.Modelfile\ntrace"))
    assert controller.notifications == [("Rebuild model failed", "modelfile not found: /x/uncensored.Modelfile")]
    assert app.running_actions == frozenset()


def test_failure_without_a_message_names_the_error(make_app: Callable[..., Any]) -> None:
    app, controller, _icon = make_app()
    app.on_restart()
    controller.futures["restart"].set_exception(TimeoutError())
    assert controller.notifications == [("Restart Ollama failed", "TimeoutError")]


def test_cancelled_request_is_reported(make_app: Callable[..., Any]) -> None:
    app, controller, _icon = make_app()
    app.on_stop()
    controller.futures["stop"].cancel()
    assert controller.notifications == [("Stop Ollama failed", "cancelled")]
    assert app.running_actions == frozenset()


def test_request_that_raises_at_once_is_reported(make_app: Callable[..., Any]) -> None:
    app, controller, _icon = make_app()
    controller.fail_request = RuntimeError("supervisor is shutting down")
    app.on_restart()
    assert controller.notifications == [("Restart Ollama failed", "supervisor is shutting down")]
    assert app.running_actions == frozenset()


def test_second_click_while_running_is_ignored(make_app: Callable[..., Any]) -> None:
    app, controller, _icon = make_app()
    app.on_restart()
    app.on_restart()
    app.on_stop()
    assert controller.requests == ["restart"]


def test_action_not_in_the_menu_is_ignored(make_app: Callable[..., Any]) -> None:
    app, controller, _icon = make_app(status(state=MonitorState.STOPPED, ollama_running=False, health=Health.DOWN))
    app.on_restart()  # disabled while stopped
    app.on_stop()  # not offered while stopped
    app.on_unload()  # nothing loaded
    assert controller.requests == []
    app.on_start()
    assert controller.requests == ["start"]


def test_plain_click_restarts_when_down(make_app: Callable[..., Any]) -> None:
    app, controller, icon = make_app()
    icon.click()
    assert controller.requests == []
    app.on_status(status(health=Health.DOWN, latency_ms=None))
    icon.click()
    assert controller.requests == ["restart"]


def test_toggles_flip_settings_and_checkmarks(make_app: Callable[..., Any]) -> None:
    app, controller, icon = make_app()
    icon.item("Start at login")(icon)
    assert controller.current_settings["autostart"] is True
    assert icon.item("Start at login").checked is True
    app.on_toggle_notifications()
    assert controller.current_settings["notifications"] is False
    assert icon.item("Notifications").checked is False


def test_failed_toggle_notifies_and_keeps_the_checkmark(make_app: Callable[..., Any]) -> None:
    app, controller, icon = make_app()
    controller.fail_setting = PermissionError(13, "Permission denied", "/home/u/.config/autostart/x.desktop")
    app.on_toggle_autostart()
    assert controller.notifications == [
        ("Start at login failed", "[Errno 13] Permission denied: '/home/u/.config/autostart/x.desktop'")
    ]
    assert icon.item("Start at login").checked is False


def test_open_logs_opens_the_first_existing_path(make_app: Callable[..., Any], tmp_path: Path) -> None:
    opened: list[str] = []
    app, controller, _icon = make_app(opener=opened.append)
    controller.paths = [str(tmp_path / "missing"), str(tmp_path)]
    app.on_open_logs()
    assert opened == [str(tmp_path)]
    assert controller.notifications == []


def test_open_logs_without_logs_says_so(make_app: Callable[..., Any], tmp_path: Path) -> None:
    opened: list[str] = []
    app, controller, _icon = make_app(opener=opened.append)
    controller.paths = [str(tmp_path / "log")]
    app.on_open_logs()
    assert opened == []
    assert controller.notifications == [("Open logs", f"No logs yet in {tmp_path / 'log'}")]


def test_open_logs_failure_is_one_line(make_app: Callable[..., Any], tmp_path: Path) -> None:
    def opener(path: str) -> None:
        raise FileNotFoundError(2, "No such file or directory", "xdg-open")

    app, controller, _icon = make_app(opener=opener)
    controller.paths = [str(tmp_path)]
    app.on_open_logs()
    assert controller.notifications == [
        ("Open logs failed", f"Cannot open {tmp_path}: [Errno 2] No such file or directory: 'xdg-open'")
    ]


def test_quit_stops_the_icon_and_leaves_ollama_alone(make_app: Callable[..., Any]) -> None:
    app, controller, icon = make_app()
    icon.item("Quit")(icon)
    assert icon.stopped is True
    assert controller.requests == []


def test_quit_stops_ollama_when_asked_and_run_waits_for_it(make_app: Callable[..., Any]) -> None:
    def quit_then_finish_stop(icon: FakeIcon) -> None:
        app.on_quit()
        controller.futures["stop"].set_result("Ollama stopped")

    settings = dict(SETTINGS, stop_ollama_on_quit=True)
    app, controller, icon = make_app(settings=settings, script=[quit_then_finish_stop], quit_stop_timeout=12.5)
    app.run()
    assert controller.requests == ["stop"]
    assert icon.stopped is True
    assert controller.futures["stop"].waited_with == 12.5  # type: ignore[attr-defined]


def test_failed_stop_on_quit_still_quits(make_app: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    def quit_then_fail_stop(icon: FakeIcon) -> None:
        app.on_quit()
        controller.futures["stop"].set_exception(RuntimeError("ollama did not exit"))

    settings = dict(SETTINGS, stop_ollama_on_quit=True)
    app, controller, icon = make_app(settings=settings, script=[quit_then_fail_stop])
    app.run()
    assert icon.stopped is True
    assert "stopping Ollama on quit failed: ollama did not exit" in caplog.text


def test_run_subscribes_shows_the_icon_and_unsubscribes(make_app: Callable[..., Any]) -> None:
    seen: dict[str, object] = {}

    def publish_down(icon: FakeIcon) -> None:
        seen["subscribers"] = len(controller.subscribers)
        controller.publish(status(health=Health.DOWN, latency_ms=None))

    app, controller, icon = make_app(script=[publish_down])
    app.run()
    assert icon.ran_on is threading.main_thread()
    assert icon.visible is True
    assert seen["subscribers"] == 1
    assert controller.subscribers == []
    assert same_image(icon.icon, draw_icon(IconState.DOWN, 64))
    assert icon.menu_updates >= 2  # once when shown, once for the new status


def test_menu_is_not_updated_before_the_icon_runs(make_app: Callable[..., Any]) -> None:
    app, controller, icon = make_app()
    app.on_status(status(health=Health.DOWN))
    assert icon.menu_updates == 0


def test_run_refuses_other_threads(make_app: Callable[..., Any]) -> None:
    app, _controller, _icon = make_app()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            app.run()
        except RuntimeError as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=5)
    assert [str(error) for error in errors] == ["TrayApp.run() must be called on the main thread"]


class Latin1Icon(FakeIcon):
    """Like pystray's xorg icon, whose title becomes a Latin-1 window name."""

    @property  # type: ignore[override]
    def title(self) -> str:
        return self._title

    @title.setter
    def title(self, value: str) -> None:
        self._title = value
        value.encode("latin-1")


def test_titles_fall_back_to_latin1_where_the_backend_needs_it(make_app: Callable[..., Any]) -> None:
    app, _controller, icon = make_app(status(state=MonitorState.STARTING, health=Health.UNKNOWN), icon_class=Latin1Icon)
    assert type(icon) is Latin1Icon
    assert icon.title == "Starting Ollama..."
    app.on_status(status(health=Health.DOWN, latency_ms=None, next_retry_in=300.0))
    assert icon.title == "Down - retrying in 5 min"
    app.on_status(status())
    assert icon.title == "Ollama: healthy · 245 ms · uncensored-llama3"


class BlockingIcon(FakeIcon):
    """An icon whose title update waits for the test, like xorg's cross-thread dispatch."""

    block = False
    entered = threading.Event()
    gate = threading.Event()

    @property  # type: ignore[override]
    def title(self) -> str:
        return self._title

    @title.setter
    def title(self, value: str) -> None:
        if self.block:
            self.entered.set()
            assert self.gate.wait(timeout=10)
        self._title = value


def test_menu_callback_never_waits_for_a_render_in_progress(make_app: Callable[..., Any]) -> None:
    app, controller, icon = make_app(icon_class=BlockingIcon)
    icon.block = True
    monitor = threading.Thread(target=app.on_status, args=(status(health=Health.DOWN, latency_ms=None),))
    monitor.start()
    assert icon.entered.wait(timeout=10)  # the monitor thread is now rendering
    ui = threading.Thread(target=app.on_restart)
    ui.start()
    ui.join(timeout=5)
    assert not ui.is_alive(), "the menu callback blocked on the render lock"
    assert controller.requests == ["restart"]
    icon.gate.set()
    monitor.join(timeout=10)
    # The render in progress picked up the newer state on its way out.
    assert icon.title == "Restarting Ollama…"


def test_nothing_is_rendered_after_quit(make_app: Callable[..., Any]) -> None:
    app, _controller, icon = make_app()
    app.on_quit()
    app.on_status(status(health=Health.DOWN, latency_ms=None))
    assert icon.title == "Ollama: healthy · 245 ms · uncensored-llama3"
    assert icon.icon_changes == 0


def test_submenu_entries_become_pystray_submenus(make_app: Callable[..., Any], pystray_module: Any) -> None:
    app, controller, icon = make_app()
    parent = MenuEntry("Loaded models", submenu=(MenuEntry("Restart Ollama", "restart"),), key="loaded")
    item = app._menu_item(parent)
    assert item.text == "Loaded models"
    assert [child.text for child in item.submenu] == ["Restart Ollama"]
    next(iter(item.submenu))(icon)
    assert controller.requests == ["restart"]


# --- opening logs ---------------------------------------------------------------


def test_open_command_per_platform() -> None:
    assert open_command("/l", "linux") == ["xdg-open", "/l"]
    assert open_command("/l", "darwin") == ["open", "/l"]


def test_open_path_spawns_detached_without_a_shell() -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []

    def spawn(args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return SimpleNamespace(wait=lambda: 0)

    open_path("/var/log/x y", platform="linux", spawn=spawn)
    assert calls == [
        (
            ["xdg-open", "/var/log/x y"],
            {
                "stdin": subprocess.DEVNULL,
                "stdout": subprocess.DEVNULL,
                "stderr": subprocess.DEVNULL,
                "start_new_session": True,
                "close_fds": True,
            },
        )
    ]


@pytest.mark.process
def test_open_path_runs_xdg_open_detached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "opened.json"
    stub = bin_dir / "xdg-open"
    report = "{'argv': sys.argv[1:], 'sid': os.getsid(0), 'pid': os.getpid()}"
    stub.write_text(
        f"#!{sys.executable}\nimport json, os, sys\nopen({str(record)!r}, 'w').write(json.dumps({report}))\n"
    )
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    spawned: list[subprocess.Popen[bytes]] = []

    def spawn(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        process: subprocess.Popen[bytes] = subprocess.Popen(*args, **kwargs)
        spawned.append(process)
        return process

    open_path(str(tmp_path / "logs dir"), platform="linux", spawn=spawn)
    assert spawned[0].wait(timeout=10) == 0
    opened = json.loads(record.read_text())
    assert opened["argv"] == [str(tmp_path / "logs dir")]
    assert opened["sid"] == opened["pid"] != os.getsid(0)


# --- is there a tray? -----------------------------------------------------------


def test_open_dashboard_calls_the_controller_and_reports_a_failure_as_one_line(make_app: Any) -> None:
    app, controller, _icon = make_app()
    app.on_open_dashboard()
    assert controller.dashboards_opened == 1
    controller.fail_dashboard = RuntimeError("Ollama Manager is not running: start it first")
    app.on_open_dashboard()
    assert controller.notifications == [("Open dashboard failed", "Ollama Manager is not running: start it first")]


# --- backends without a menu, backends that render the model, switching -------------


class MenuLessIcon(FakeIcon):
    """Like pystray's xorg icon: no menu of its own, a click runs the first default item."""

    HAS_MENU = False


def test_a_tray_without_menus_opens_the_dashboard_on_a_click_and_restarts_when_down(
    make_app: Callable[..., Any],
) -> None:
    app, controller, icon = make_app(icon_class=MenuLessIcon)
    icon.click()
    assert (controller.dashboards_opened, controller.requests) == (1, [])
    assert icon.texts().count("Open dashboard") == 1  # the click item is not shown
    app.on_status(status(health=Health.DOWN, latency_ms=None))
    icon.click()
    assert (controller.dashboards_opened, controller.requests) == (1, ["restart"])


def test_a_tray_with_menus_keeps_its_plain_click(make_app: Callable[..., Any]) -> None:
    app, controller, icon = make_app()
    icon.click()  # healthy: no default item, nothing runs (the menu is a right click away)
    assert (controller.dashboards_opened, controller.requests) == (0, [])


class EntryIcon:
    """A backend icon that renders the menu model itself, as tray.ui.sni does."""

    script: ClassVar[list[Callable[[EntryIcon], None]]] = []

    def __init__(self, app: TrayApp, name: str, image: Any, title: str) -> None:
        self.app, self.name, self.icon, self.title = app, name, image, title
        self.created_with = (image, title)
        self.visible = False
        self.stopped = False
        self.rendered: list[list[str]] = []

    def update_menu(self) -> None:
        self.rendered.append([entry.label for entry in self.app.entries])

    def run(self, setup: Callable[[Any], None]) -> None:
        setup(self)
        for step in self.script:
            step(self)
            if self.stopped:
                return

    def stop(self) -> None:
        self.stopped = True


def entry_backend(created: list[EntryIcon]) -> Any:
    def create_icon(app: TrayApp, name: str, image: Any, title: str) -> EntryIcon:
        created.append(EntryIcon(app, name, image, title))
        return created[-1]

    return SimpleNamespace(create_icon=create_icon)


def test_a_backend_that_renders_the_model_gets_entries_actions_and_clicks() -> None:
    controller = FakeController(status())
    created: list[EntryIcon] = []
    EntryIcon.script = []
    app = TrayApp(controller, backend=entry_backend(created))
    (icon,) = created
    assert (icon.name, icon.title) == ("ollama-manager", "Ollama: healthy · 245 ms · uncensored-llama3")
    app.run_action("restart")
    assert controller.requests == ["restart"]
    app.on_click()
    assert controller.dashboards_opened == 1
    app.run_action("no-such-action")  # ignored
    assert controller.requests == ["restart"]


def test_switching_backends_stops_the_old_icon_and_shows_the_latest_state_in_the_new_one(
    make_app: Callable[..., Any],
) -> None:
    created: list[EntryIcon] = []

    def switch_after_going_down(icon: FakeIcon) -> None:
        controller.publish(status(health=Health.DOWN, latency_ms=None))
        app.switch_backend(entry_backend(created))

    EntryIcon.script = [lambda icon: controller.publish(status()), lambda icon: icon.app.on_quit()]
    app, controller, first = make_app(script=[switch_after_going_down])
    app.run()
    assert first.stopped is True
    (second,) = created
    assert second.visible is True and second.stopped is True
    # Made from the state at the switch (down), then following the status published after it.
    assert same_image(second.created_with[0], draw_icon(IconState.DOWN, 64))
    assert second.created_with[1] == "Ollama: down"
    assert same_image(second.icon, draw_icon(IconState.HEALTHY, 64))
    assert second.title == "Ollama: healthy · 245 ms · uncensored-llama3"
    assert second.rendered and second.rendered[-1][0] == "Ollama: healthy · 245 ms"
    assert controller.subscribers == []


def test_close_ends_run_without_stopping_ollama(make_app: Callable[..., Any]) -> None:
    settings = dict(SETTINGS, stop_ollama_on_quit=True)
    app, controller, icon = make_app(settings=settings, script=[lambda icon: app.close()])
    app.run()
    assert icon.stopped is True
    assert controller.requests == []


def test_switching_before_the_icon_is_up_waits_for_it(make_app: Callable[..., Any]) -> None:
    created: list[EntryIcon] = []
    EntryIcon.script = [lambda icon: icon.app.on_quit()]
    app, controller, first = make_app()
    app.switch_backend(entry_backend(created))  # the first icon is not running yet
    assert first.stopped is False
    app.run()
    assert first.stopped is True and len(created) == 1 and created[0].stopped is True


# --- the Model submenu --------------------------------------------------------------

INSTALLED = (
    InstalledModelStatus("uncensored-llama3:latest", 4_700_000_000, "8.0B", "Q4_0"),
    InstalledModelStatus("mistral:latest", 4_100_000_000, "7.2B", "Q4_K_M"),
)


def test_the_model_submenu_checks_the_active_model_and_marks_the_modelfile_one() -> None:
    entries = build_menu(status(installed_models=INSTALLED, model="mistral:latest"), SETTINGS, set())
    model = find_entry(entries, "model")
    assert model is not None and model.label == "Model: mistral:latest"
    assert rows(list(model.submenu)) == [
        ("uncensored-llama3:latest (Modelfile)", "use_model:uncensored-llama3:latest", True, False, False),
        ("mistral:latest", "use_model:mistral:latest", True, True, False),
        ("---",),
        ("Use the Modelfile model", "use_modelfile_model", True, None, False),
    ]
    assert all(entry.radio for entry in model.submenu[:2])


def test_the_modelfile_choice_is_off_while_that_model_is_active_and_choices_wait_for_a_switch() -> None:
    active = build_menu(status(installed_models=INSTALLED), SETTINGS, set())
    assert find_entry(active, "use_modelfile_model").enabled is False  # type: ignore[union-attr]
    assert find_entry(active, "use_model:uncensored-llama3:latest").checked is True  # type: ignore[union-attr]
    switching = build_menu(status(installed_models=INSTALLED), SETTINGS, {"use_model:mistral:latest"})
    assert not any(entry.enabled for entry in find_entry(switching, "model").submenu)  # type: ignore[union-attr]
    nothing = build_menu(status(), SETTINGS, set())
    assert next(e.label for e in find_entry(nothing, "model").submenu) == "No models installed"  # type: ignore[union-attr]


def test_choosing_a_model_in_the_pystray_menu_asks_the_controller(make_app: Callable[..., Any]) -> None:
    app, controller, icon = make_app(status(installed_models=INSTALLED))
    submenu = icon.item("Model: uncensored-llama3").submenu
    mistral = next(item for item in submenu if item.text == "mistral:latest")
    assert mistral.radio is True and mistral.checked is False
    mistral(icon)
    assert controller.requests == ["use mistral:latest"]
    assert app.running_actions == {"use_model:mistral:latest"}
    controller.futures["use mistral:latest"].set_result("Using mistral:latest")
    assert controller.notifications == [("Use model", "Using mistral:latest")]
    app.on_status(status(installed_models=INSTALLED, model="mistral:latest"))
    submenu = icon.item("Model: mistral:latest").submenu
    assert next(item for item in submenu if item.text == "mistral:latest").checked is True
    back = next(item for item in submenu if item.text == "Use the Modelfile model")
    back(icon)
    assert controller.requests[-1] == "use "
