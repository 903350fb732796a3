"""Which tray backend the app picks, at start and while the desktop's hosts change (pure decisions and probes)."""

from __future__ import annotations

from typing import Any

import pytest

from tray.ui.backend import (
    StatusNotifierError,
    TrayBackend,
    TrayChoice,
    TrayHosts,
    choose_backend,
    choose_tray,
    next_step,
    no_tray_message,
    session_bus_address,
    tray_available,
)

SNI, XEMBED, PYSTRAY = TrayBackend.STATUS_NOTIFIER, TrayBackend.XEMBED, TrayBackend.PYSTRAY
BUS = "unix:path=/run/user/1000/bus"


def never(*_args: object) -> Any:
    raise AssertionError("probe must not run")


def x_tray(display: str) -> tuple[bool, str]:
    return True, f"system tray found on X display {display}"


def no_x_tray(display: str) -> tuple[bool, str]:
    return False, f"nothing owns _NET_SYSTEM_TRAY_S0 on X display {display}"


# --- at start ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "expected"),
    [("darwin", TrayChoice(PYSTRAY, "macOS menu bar")), ("win32", TrayChoice(PYSTRAY, "Windows notification area"))],
)
def test_macos_and_windows_always_use_pystray(platform: str, expected: TrayChoice) -> None:
    env = {"DBUS_SESSION_BUS_ADDRESS": BUS, "DISPLAY": ":1"}
    assert choose_tray(env, platform, probe_watcher=never, probe_x=never) == expected


def test_a_watcher_on_the_bus_wins_over_an_x_tray() -> None:
    env = {"DBUS_SESSION_BUS_ADDRESS": BUS, "DISPLAY": ":1"}
    choice = choose_tray(env, "linux", probe_watcher=lambda address: address == BUS, probe_x=x_tray)
    assert choice == TrayChoice(SNI, "StatusNotifier host found on the session bus", bus_address=BUS)


def test_without_a_watcher_the_x_tray_takes_the_icon() -> None:
    env = {"DBUS_SESSION_BUS_ADDRESS": BUS, "DISPLAY": ":1"}
    choice = choose_tray(env, "linux", probe_watcher=lambda _address: False, probe_x=x_tray)
    assert choice == TrayChoice(XEMBED, "system tray found on X display :1", bus_address=BUS)


def test_with_a_bus_but_no_host_yet_the_item_waits_on_the_bus() -> None:
    env = {"DBUS_SESSION_BUS_ADDRESS": BUS, "DISPLAY": ":1"}
    choice = choose_tray(env, "linux", probe_watcher=lambda _address: False, probe_x=no_x_tray)
    assert choice == TrayChoice(
        SNI,
        "no StatusNotifier host on the session bus and nothing owns _NET_SYSTEM_TRAY_S0 on X display :1; "
        "the icon waits on the session bus for one",
        waiting=True,
        bus_address=BUS,
    )
    assert tray_available(env, "linux", probe_watcher=lambda _address: False, probe_x=no_x_tray)[0] is True


def test_wayland_with_a_bus_waits_for_a_watcher() -> None:
    env = {"DBUS_SESSION_BUS_ADDRESS": BUS, "WAYLAND_DISPLAY": "wayland-0"}
    choice = choose_tray(env, "linux", probe_watcher=lambda _address: False, probe_x=never)
    assert (choice.backend, choice.waiting) == (SNI, True)
    assert "Wayland desktop without X11 (DISPLAY is not set)" in choice.reason


def test_an_unreachable_bus_leaves_the_x_tray() -> None:
    def refuse(address: str) -> bool:
        raise ConnectionRefusedError(111, "Connection refused")

    env = {"DBUS_SESSION_BUS_ADDRESS": BUS, "DISPLAY": ":4"}
    assert choose_tray(env, "linux", probe_watcher=refuse, probe_x=x_tray) == TrayChoice(
        XEMBED, "system tray found on X display :4"
    )
    assert tray_available(env, "linux", probe_watcher=refuse, probe_x=no_x_tray) == (
        False,
        "nothing owns _NET_SYSTEM_TRAY_S0 on X display :4",
    )


def test_a_bus_that_refuses_the_question_counts_as_no_bus() -> None:
    def broken(address: str) -> bool:
        raise StatusNotifierError("cannot use the session bus at x: Unsupported transport")

    env = {"DBUS_SESSION_BUS_ADDRESS": BUS, "DISPLAY": ":4"}
    assert choose_tray(env, "linux", probe_watcher=broken, probe_x=no_x_tray).backend is None


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({}, "no graphical display (DISPLAY is not set)"),
        ({"WAYLAND_DISPLAY": "wayland-0"}, "Wayland desktop without X11 (DISPLAY is not set)"),
        (
            {"DISPLAY": ":2", "DBUS_SESSION_BUS_ADDRESS": "disabled:"},
            "nothing owns _NET_SYSTEM_TRAY_S0 on X display :2",
        ),
    ],
)
def test_neither_a_bus_nor_an_x_tray_means_no_tray(env: dict[str, str], reason: str) -> None:
    assert tray_available(env, "linux", probe_watcher=never, probe_x=no_x_tray) == (False, reason)


def test_pystray_backend_set_by_the_user_is_respected() -> None:
    env = {"DISPLAY": ":7", "PYSTRAY_BACKEND": "xorg", "DBUS_SESSION_BUS_ADDRESS": BUS}
    asked: list[str] = []

    def probe_x(display: str) -> tuple[bool, str]:
        asked.append(display)
        return no_x_tray(display)

    assert tray_available(env, "linux", probe_watcher=never, probe_x=probe_x) == (
        False,
        "nothing owns _NET_SYSTEM_TRAY_S0 on X display :7",
    )
    assert asked == [":7"]
    assert choose_tray(env, "linux", probe_watcher=never, probe_x=x_tray).backend is PYSTRAY


def test_forced_appindicator_needs_a_watcher() -> None:
    env = {"WAYLAND_DISPLAY": "wayland-0", "PYSTRAY_BACKEND": "appindicator", "DBUS_SESSION_BUS_ADDRESS": BUS}
    assert tray_available(env, "linux", probe_watcher=lambda _a: False, probe_x=never) == (
        False,
        "no StatusNotifier host on the session bus",
    )
    assert choose_tray(env, "linux", probe_watcher=lambda _a: True, probe_x=never).backend is PYSTRAY


def test_dummy_backend_shows_nothing() -> None:
    env = {"DISPLAY": ":3", "PYSTRAY_BACKEND": "dummy"}
    assert tray_available(env, "linux", probe_watcher=never, probe_x=never) == (
        False,
        "PYSTRAY_BACKEND=dummy shows no icon",
    )


def test_real_probes_without_display_or_bus() -> None:
    assert tray_available({"DBUS_SESSION_BUS_ADDRESS": "disabled:"}, "linux") == (
        False,
        "no graphical display (DISPLAY is not set)",
    )


def test_no_tray_message() -> None:
    assert no_tray_message("no graphical display (DISPLAY is not set)") == (
        "No system tray found (no graphical display (DISPLAY is not set)); run `ollama-manager monitor` instead."
    )


def test_choice_needs_a_bus_to_wait_on() -> None:
    hosts = TrayHosts(None, False, "no D-Bus session bus", False, "no graphical display (DISPLAY is not set)")
    assert choose_backend(hosts) == TrayChoice(None, "no graphical display (DISPLAY is not set)")


# --- the session bus address ---------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "address"),
    [
        ({"DBUS_SESSION_BUS_ADDRESS": "unix:abstract=/tmp/dbus-x,guid=1"}, "unix:abstract=/tmp/dbus-x,guid=1"),
        (
            {"DBUS_SESSION_BUS_ADDRESS": "tcp:host=localhost,port=1;unix:path=/b"},
            "tcp:host=localhost,port=1;unix:path=/b",
        ),
        ({"DBUS_SESSION_BUS_ADDRESS": "tcp:host=localhost,port=1"}, None),
        ({"DBUS_SESSION_BUS_ADDRESS": "disabled:", "XDG_RUNTIME_DIR": "/run/user/1"}, None),
        ({}, None),
    ],
)
def test_session_bus_address(env: dict[str, str], address: str | None) -> None:
    assert session_bus_address(env, exists=lambda _path: True) == address


def test_session_bus_socket_in_the_runtime_dir(tmp_path: Any) -> None:
    import socket

    assert session_bus_address({"XDG_RUNTIME_DIR": str(tmp_path)}) is None
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "bus"))
        assert session_bus_address({"XDG_RUNTIME_DIR": str(tmp_path)}) == f"unix:path={tmp_path / 'bus'}"


# --- while running ------------------------------------------------------------------------


def step(current: TrayBackend, watcher: bool, x: bool, **times: Any) -> Any:
    defaults = {"since_start": 0.0, "x_tray_alone_for": 0.0, "host_seen": True, "wait_s": 30.0, "settle_s": 5.0}
    return next_step(current, watcher, x, **{**defaults, **times})


def test_a_watcher_appearing_moves_an_xembed_icon_to_sni_at_once() -> None:
    assert step(XEMBED, True, True).switch_to is SNI
    assert step(XEMBED, True, False).switch_to is SNI
    assert step(SNI, True, True).switch_to is None


def test_an_xembed_tray_takes_the_icon_only_after_it_stayed_without_a_watcher() -> None:
    waiting = step(SNI, False, True, since_start=60, x_tray_alone_for=1.5)
    assert (waiting.switch_to, waiting.recheck_in) == (None, 3.5)
    assert step(SNI, False, True, x_tray_alone_for=5.0).switch_to is XEMBED
    assert step(XEMBED, False, True, x_tray_alone_for=60).switch_to is None


def test_without_any_host_a_fresh_tray_gives_up_after_the_wait() -> None:
    first = step(SNI, False, False, since_start=10, host_seen=False)
    assert (first.give_up, first.recheck_in) == (False, 20)
    assert step(SNI, False, False, since_start=30, host_seen=False).give_up is True


def test_a_tray_that_had_a_host_waits_for_it_to_return() -> None:
    for current in (SNI, XEMBED):
        result = step(current, False, False, since_start=3600, host_seen=True)
        assert (result.switch_to, result.give_up, result.recheck_in) == (None, False, None)
