"""The tray app end to end: ``python -m tray`` docked in a real tray host, supervising the stand-in Ollama.

The desktop is Xvfb + openbox + Debian's tint2 (it claims the XEmbed tray
selection only once a window manager runs) and no session bus, so the app
picks pystray's xorg backend itself. The icon's state is read from root-window screenshots, the docked
icon windows from the X window tree, the server's life from the stand-in's
event log, and the desktop notifications from a recording ``notify-send``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standin.harness import StandinEnv, same_process
from tests.support.manager import DEFAULT_INTERVAL, Manager, quietest_wakeups
from tray.ui.icon import IconState

pytestmark = [pytest.mark.process, pytest.mark.slow]

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
from tests.support.xdesktop import XDesktop, missing_tools  # noqa: E402

MISSING = missing_tools()
if MISSING:
    pytest.skip(
        f"needs {', '.join(MISSING)} (apt-get install -y xvfb openbox tint2 imagemagick)",
        allow_module_level=True,
    )

GREEN, RED, BLUE = IconState.HEALTHY, IconState.DOWN, IconState.BUSY
# Ollama answering GET / but not /api/tags like Ollama: the monitor reports it
# down (a bad answer, not a crash or a hang) and leaves the restart to the user.
NOT_OLLAMA_TAGS = {"path": "/api/tags", "status": 200, "error": "not an Ollama answer"}


@pytest.fixture(scope="module")
def desktop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XDesktop]:
    with XDesktop(tmp_path_factory.mktemp("xdesktop")) as running:
        yield running


@pytest.fixture
def launch(
    desktop: XDesktop, manager: Manager, notifications: NotificationLog, browser: BrowserLog, tmp_path: Path
) -> Iterator[Any]:
    """Start ``python -m tray`` on the shared desktop; every tray started is stopped and checked afterwards."""
    trays: list[TrayProcess] = []
    # The previous test's icon must be gone, or its pixels would count for this one.
    wait_for(lambda: docked_icons(desktop.display) == [], 10, "the last test's icon to leave the panel")

    def start(name: str = "tray") -> TrayProcess:
        env = tray_env(manager.env, desktop.display, notifications, browser=browser)
        tray = TrayProcess(env, tmp_path, name).start()
        trays.append(tray)
        return tray

    yield start
    for tray in trays:
        tray.stop()
    for tray in trays:
        assert "Traceback" not in tray.output(), tray.output()
    assert "Traceback" not in app_log(manager)


def expect_icon(
    desktop: XDesktop,
    tray: TrayProcess,
    manager: Manager,
    tmp_path: Path,
    state: IconState | None,
    timeout: float,
    *,
    leaving: bool = False,
) -> list[IconState | None]:
    """Wait for the panel to show ``state`` (or, with ``leaving``, anything else); return the states seen.

    On a time-out the message says what the tray looked like and what the
    monitor reported, so a frozen icon reads differently from a wrong state.
    """
    wanted = (lambda s: s is not state) if leaving else (lambda s: s is state)
    what = f"the icon to leave {state}" if leaving else f"a {state} icon"
    try:
        _, seen = wait_for_icon_state(
            lambda: desktop.screenshot(tmp_path / "screen.png"), desktop.tray_box, wanted, timeout, what
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\ndocked icons: {docked_icons(desktop.display)}\ntray running: {tray.running()}\n"
            f"status API: {manager.api_status()}\ntray output: {tray.output()[-2000:]}\n"
            f"app log: {app_log(manager)[-2000:]}"
        ) from None
    return seen


def start_green_tray(launch: Any, desktop: XDesktop, manager: Manager, tmp_path: Path) -> tuple[TrayProcess, int]:
    """A tray showing a green icon over a healthy stand-in; returns it and the serve PID."""
    tray = launch()
    expect_icon(desktop, tray, manager, tmp_path, GREEN, 30)
    status = wait_healthy(manager)
    assert status["state"] == "running"
    assert status["managed_by"] == "manager"
    return tray, status["pid"]


def serve_exits(standin: StandinEnv, pid: int) -> list[dict[str, Any]]:
    return [
        {key: event[key] for key in ("pid", "code", "signal") if key in event}
        for event in standin.events()
        if event["event"] == "serve_exit" and event["pid"] == pid
    ]


def serve_create_time(standin: StandinEnv, pid: int) -> float | None:
    return next(e.get("create_time") for e in standin.events() if e["event"] == "serve_start" and e["pid"] == pid)


def test_icon_is_green_turns_red_or_blue_when_ollama_is_killed_and_green_after_the_restart(
    launch: Any,
    desktop: XDesktop,
    manager: Manager,
    standin: StandinEnv,
    notifications: NotificationLog,
    tmp_path: Path,
) -> None:
    tray, first_pid = start_green_tray(launch, desktop, manager, tmp_path)

    # One icon, docked inside tint2's panel; nothing of it floats above the panel.
    icons = docked_icons(desktop.display)
    assert len(icons) == 1
    left, top, right, bottom = icons[0].box
    panel_left, panel_top, panel_right, panel_bottom = desktop.tray_box
    assert panel_left <= left < right <= panel_right and panel_top <= top < bottom <= panel_bottom
    assert (right - left, bottom - top) == (desktop.icon_size, desktop.icon_size)
    healthy = desktop.screenshot(tmp_path / "healthy.png")
    assert icon_state_of(healthy, icons[0].box) is GREEN
    assert icon_state_of(healthy, (0, 0, desktop.width, panel_top)) is None
    # The tooltip is the icon window's name under the xorg backend (set just after the image).
    tooltip = re.compile(r"Ollama: healthy · \d+ ms · uncensored-llama3")
    wait_for(lambda: tooltip.fullmatch(docked_icons(desktop.display)[0].title), 5, "the healthy tooltip")

    os.kill(first_pid, signal.SIGKILL)
    on_the_way_down = expect_icon(desktop, tray, manager, tmp_path, GREEN, 10, leaving=True)
    on_the_way_up = expect_icon(desktop, tray, manager, tmp_path, GREEN, 20)

    assert on_the_way_down[0] is GREEN
    troubled = on_the_way_down[1:] + on_the_way_up[:-1]
    assert troubled, "the icon never left green"
    assert set(troubled) <= {RED, BLUE}, troubled
    status = wait_healthy(manager)
    second_pid = status["pid"]
    assert standin.serve_pids() == [first_pid, second_pid]
    assert status["state"] == "running"
    assert tray.running()
    assert ("Ollama crashed", "Ollama exited unexpectedly (status -9); reaped 0 orphaned runner(s)") in (
        notifications.received()
    )


def test_a_click_on_the_red_icon_runs_the_restart_item_and_restarts_the_running_server(
    launch: Any,
    desktop: XDesktop,
    manager: Manager,
    standin: StandinEnv,
    notifications: NotificationLog,
    tmp_path: Path,
) -> None:
    # How the Restart item is triggered: pystray's xorg backend has no menu of
    # its own (HAS_MENU is False); a left click on the icon runs the menu's
    # default item, and while Ollama is down that is "Restart Ollama", whose
    # action is TrayApp.on_restart, the very callable the item holds on every
    # backend. So a real XTEST click on the docked icon of the real
    # `python -m tray` process goes through the same callback as the menu,
    # without any test-only path in the app. To click while the server is
    # alive and not being restarted by the monitor itself, the stand-in
    # answers /api/tags with something that is not Ollama: health is down
    # (red), but that is neither a crash nor a hang, so only the user restarts.
    tray, first_pid = start_green_tray(launch, desktop, manager, tmp_path)

    standin.set_faults(http_error=NOT_OLLAMA_TAGS)
    expect_icon(desktop, tray, manager, tmp_path, RED, 15)
    status = manager.api_status()
    assert status is not None
    assert (status["health"], status["state"], status["pid"], status["last_error"]) == (
        "down",
        "running",
        first_pid,
        "not an Ollama answer",
    )
    assert standin.serve_pids() == [first_pid]
    wait_for(lambda: [icon.title for icon in docked_icons(desktop.display)] == ["Ollama: down"], 5, "the down tooltip")

    (icon,) = docked_icons(desktop.display)
    desktop.click(*icon.centre)

    new_pids = wait_for(lambda: standin.serve_pids()[1:], 20, "a new ollama serve")
    assert len(new_pids) == 1
    second_pid = new_pids[0]
    restarted = ("Restart Ollama", f"Ollama is running at {standin.base_url} (started, pid {second_pid})")
    wait_for(lambda: restarted in notifications.received(), 10, "the Restart notification")
    # The old server was stopped with SIGTERM (no kill needed) and is gone.
    assert serve_exits(standin, first_pid) == [{"pid": first_pid, "code": 0, "signal": signal.SIGTERM}]
    assert same_process(first_pid, serve_create_time(standin, first_pid)) is None

    standin.clear_faults()
    expect_icon(desktop, tray, manager, tmp_path, GREEN, 15)
    status = wait_healthy(manager)
    assert status["pid"] == second_pid
    assert standin.serve_pids() == [first_pid, second_pid]
    assert tray.running()


def test_a_click_on_the_green_icon_opens_the_dashboard_and_restarts_nothing(
    launch: Any, desktop: XDesktop, manager: Manager, standin: StandinEnv, browser: BrowserLog, tmp_path: Path
) -> None:
    # An XEmbed tray has no menu: a click while healthy opens the dashboard, which has every action.
    tray, first_pid = start_green_tray(launch, desktop, manager, tmp_path)
    (icon,) = docked_icons(desktop.display)
    desktop.click(*icon.centre)
    (url,) = wait_for(browser.opened, 10, "the dashboard in the browser")
    monitor = json.loads((Path(manager.env["XDG_STATE_HOME"]) / "ollama-manager" / "monitor.json").read_text())
    page = Path(manager.env["XDG_STATE_HOME"]) / "ollama-manager" / "open-dashboard.html"  # no XDG_RUNTIME_DIR here
    assert url == page.as_uri()  # a private sign-in page: no secret on the browser's command line
    assert f'action="http://127.0.0.1:{monitor["port"]}/signin"' in page.read_text()
    assert standin.serve_pids() == [first_pid]
    assert tray.running()


def test_a_second_launch_says_who_runs_and_draws_no_second_icon(
    launch: Any,
    desktop: XDesktop,
    manager: Manager,
    standin: StandinEnv,
    notifications: NotificationLog,
    tmp_path: Path,
) -> None:
    first, _ = start_green_tray(launch, desktop, manager, tmp_path)
    second = launch("second")

    icon_counts = []
    while second.running():
        icon_counts.append(len(docked_icons(desktop.display)))
    assert second.stop() == 1
    icon_counts.append(len(docked_icons(desktop.display)))

    message = f"Ollama Manager is already running (pid {first.pid})"
    assert second.output() == f"ollama-manager: {message}\n"
    assert ("Ollama Manager", message) in notifications.received()
    assert set(icon_counts) == {1}
    assert first.running()
    assert len(standin.serve_pids()) == 1  # the second launch started no Ollama of its own
    # The one icon left is the first tray's, still green.
    (icon,) = docked_icons(desktop.display)
    assert icon_state_of(desktop.screenshot(tmp_path / "after.png"), icon.box) is GREEN


def test_a_docked_tray_between_checks_has_no_thread_that_wakes(
    launch: Any, desktop: XDesktop, manager: Manager, tmp_path: Path
) -> None:
    # pystray's X event loop, the host watch, the monitor inside: at most one wakeup in the quietest 3 s
    # of the 12 after Ollama is found healthy, with the next check 30 s away.
    manager.env.update(DEFAULT_INTERVAL)
    tray, _ = start_green_tray(launch, desktop, manager, tmp_path)
    quietest, readings = quietest_wakeups(tray.pid)
    assert tray.running()
    assert quietest <= 1, f"the tray woke {quietest} times in its quietest 3 s: {readings}"


def test_a_docked_tray_without_a_session_bus_loads_no_status_notifier_code(
    launch: Any, desktop: XDesktop, manager: Manager, tmp_path: Path
) -> None:
    # The XEmbed icon needs neither the StatusNotifierItem and its dbusmenu nor jeepney: with no session bus
    # to ask, choosing the backend must not load them (they held half a MiB for nothing).
    manager.env["PYTHONPROFILEIMPORTTIME"] = "1"
    tray, _ = start_green_tray(launch, desktop, manager, tmp_path)
    loaded = imported_modules(tray.output())
    assert {"tray.ui.app", "tray.ui.backend", "pystray._xorg"} <= loaded  # the log names what the tray loaded
    assert {"tray.ui.sni", "tray.ui.dbusmenu", "jeepney"} & loaded == set()


def test_without_a_tray_host_it_says_so_and_offers_the_monitor_command(
    manager: Manager, standin: StandinEnv, notifications: NotificationLog, tmp_path: Path
) -> None:
    screen = XDesktop(tmp_path / "no-tray")
    try:
        screen.start_x_server()
        screen.start_window_manager()  # openbox, but no tint2: nothing owns the tray selection
        done = subprocess.run(
            [sys.executable, "-m", "tray"],
            check=False,
            env=tray_env(manager.env, screen.display, notifications),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
        )
    finally:
        screen.stop()
    message = (
        f"No system tray found (nothing owns _NET_SYSTEM_TRAY_S0 on X display {screen.display}); "
        "run `ollama-manager monitor` instead."
    )
    assert done.returncode == 1
    assert done.stderr == f"ollama-manager: {message}\n"
    assert done.stdout == ""
    assert notifications.received() == [("Ollama Manager", message)]
    # It gave up before starting anything.
    assert standin.serve_pids() == []
    assert not (Path(manager.env["XDG_STATE_HOME"]) / "ollama-manager" / "monitor.json").exists()
