"""Notifications: exact per-OS command lines, rate limiting, and delivery over a real D-Bus session.

The D-Bus tests start a private ``dbus-daemon`` and a small notification server
(``org.freedesktop.Notifications``: Notify, GetCapabilities, GetServerInformation)
that records what it receives.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

import tray.system.notify as notify
import tray.system.notify_linux as notify_linux
from tray.system.notify import (
    APP_NAME,
    Channel,
    NotificationError,
    Notifier,
    RateLimiter,
    default_channels,
    run_command,
)
from tray.system.notify_darwin import applescript_quote, osascript_command
from tray.system.notify_linux import dbus_notify, notify_send_command
from tray.system.notify_windows import powershell_command, powershell_quote, powershell_toast_script

jeepney = pytest.importorskip("jeepney")
from tests.support.fake_registry import FakeRegistry  # noqa: E402
from tests.support.notification_server import NotificationServer  # noqa: E402

# --- Command lines ---------------------------------------------------------------------------------


def test_notify_send_command() -> None:
    assert notify_send_command("-Ollama down", "It stopped; restarting") == [
        "notify-send",
        "--app-name=Ollama Manager",
        "--expire-time=10000",
        "--",
        "-Ollama down",
        "It stopped; restarting",
    ]


def test_osascript_command_escapes_quotes_backslashes_and_newlines() -> None:
    argv = osascript_command('Say "hi"', "C:\\models\nsecond line")
    assert argv == [
        "osascript",
        "-e",
        'display notification "C:\\\\models\\nsecond line" with title "Ollama Manager" subtitle "Say \\"hi\\""',
    ]
    assert applescript_quote("") == '""'


def test_powershell_quote_doubles_every_kind_of_single_quote() -> None:
    assert powershell_quote("it's") == "'it''s'"
    assert powershell_quote("model \u2018x\u2019 gone") == "'model \u2018\u2018x\u2019\u2019 gone'"
    assert powershell_quote('$env:HOME "x"') == "'$env:HOME \"x\"'"  # no expansion inside single quotes


def test_powershell_toast_script_shows_the_toast_under_the_apps_own_id() -> None:
    script = powershell_toast_script("Ollama down", "Model 'x' is gone")
    lines = script.splitlines()
    assert lines[0] == "$ErrorActionPreference = 'Stop'"  # any failure: a non-zero exit, so the next method runs
    assert "$lines.Item(0).AppendChild($xml.CreateTextNode('Ollama down')) | Out-Null" in lines
    assert "$lines.Item(1).AppendChild($xml.CreateTextNode('Model ''x'' is gone')) | Out-Null" in lines
    assert lines[-1] == (
        "[Windows.UI.Notifications.ToastNotificationManager]::CreateToastNotifier('io.github.ollama-manager')"
        ".Show($toast)"
    )
    assert "PowerShell" not in script and "balloon" not in script.lower()


def test_the_toasts_app_id_is_registered_once_with_the_apps_name_and_icon() -> None:
    from tray.system.notify_windows import APP_ID_KEY, WindowsToast

    registry = FakeRegistry()
    opened: list[str] = []
    ran: list[list[str]] = []

    def open_key() -> FakeRegistry:
        opened.append(APP_ID_KEY)
        return registry

    toast = WindowsToast("Ollama Manager", "C:/om/_internal/tray/data/icons/ollama-manager.png", open_key, ran.append)
    toast("Ollama down", "Not responding")
    toast("Ollama healthy", "Back")
    assert APP_ID_KEY == r"Software\Classes\AppUserModelId\io.github.ollama-manager"
    assert opened == [APP_ID_KEY]
    assert registry.values == {
        "DisplayName": "Ollama Manager",
        "IconUri": "C:/om/_internal/tray/data/icons/ollama-manager.png",
    }
    assert ran == [powershell_command("Ollama down", "Not responding"), powershell_command("Ollama healthy", "Back")]


def test_a_toast_that_cannot_register_its_app_id_fails_so_the_balloon_is_tried() -> None:
    from tray.system.notify_windows import WindowsToast

    def no_registry() -> FakeRegistry:
        raise PermissionError(13, "Access is denied")

    balloon = Recorder()
    notifier = Notifier(
        channels=[
            Channel("toast", WindowsToast(registry=no_registry, run=Recorder())),
            Channel("plyer", balloon, confirms=False),
        ],
        clock=Clock(),
    )
    assert notifier.deliver("t", "m") == notify.Delivery("plyer", confirmed=False)
    # Handed to a method that cannot tell: not reported as shown.
    assert notifier.notify("t2", "m") is False
    assert balloon.sent == [("t", "m"), ("t2", "m")]


def test_powershell_command_carries_the_script_encoded() -> None:
    argv = powershell_command('Title "quoted"', "Message")
    assert argv[:-1] == [
        "powershell.exe",
        "-NoProfile",
        "-NonInteractive",
        "-ExecutionPolicy",
        "Bypass",
        "-WindowStyle",
        "Hidden",
        "-EncodedCommand",
    ]
    assert base64.b64decode(argv[-1]).decode("utf-16-le") == powershell_toast_script('Title "quoted"', "Message")


@pytest.mark.parametrize(
    ("platform", "names"),
    [
        ("linux", ["plyer", "dbus", "notify-send"]),
        ("darwin", ["plyer", "osascript"]),
        ("win32", ["toast", "plyer"]),  # plyer's balloon last: it runs on a thread and reports nothing
    ],
)
def test_fallbacks_per_platform(platform: str, names: list[str]) -> None:
    assert [channel.name for channel in default_channels(platform)] == names


# --- Running commands ------------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.skipif(os.name != "posix", reason="runs sh, sleep and true")
def test_run_command_reports_failures_in_one_line() -> None:
    with pytest.raises(NotificationError, match=r"^no-such-notifier-binary not found$"):
        run_command(["no-such-notifier-binary", "x"])
    with pytest.raises(NotificationError, match=r"^sh exited with status 3: second$"):
        run_command(["sh", "-c", "echo first >&2; echo second >&2; exit 3"])
    with pytest.raises(NotificationError, match=r"^sleep did not finish within 0.2 s$"):
        run_command(["sleep", "5"], timeout=0.2)
    run_command(["true"])


# --- Rate limiting and the off switch (fake channel, injected clock) -----------------------------


@dataclass
class Recorder:
    sent: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, title: str, message: str) -> None:
        self.sent.append((title, message))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_per_key() -> None:
    clock, recorder = Clock(), Recorder()
    notifier = Notifier(channels=[Channel("fake", recorder)], clock=clock, limiter=RateLimiter(per_key_seconds=60))
    results = []
    for now in (0.0, 30.0, 59.9, 60.0):
        clock.now = now
        results.append(notifier.notify("Ollama memory high", f"at {now}", key="memory"))
    assert results == [True, False, False, True]
    assert recorder.sent == [("Ollama memory high", "at 0.0"), ("Ollama memory high", "at 60.0")]
    # Without a key the title groups repeats; another key is not held back.
    assert notifier.notify("Ollama down", "x") is True
    assert notifier.notify("Ollama down", "y") is False
    assert notifier.notify("Ollama down", "z", key="health") is True


def test_rate_limit_globally() -> None:
    clock, recorder = Clock(), Recorder()
    limiter = RateLimiter(per_key_seconds=0, global_limit=3, global_window_seconds=60)
    notifier = Notifier(channels=[Channel("fake", recorder)], clock=clock, limiter=limiter)
    results = []
    for now in (0.0, 1.0, 2.0, 3.0, 59.0, 60.0, 61.0, 62.0):
        clock.now = now
        results.append(notifier.notify(f"alert {now}", "m", key=str(now)))
    # 3 per sliding minute: 0, 1, 2 pass; 3 and 59 wait; 60, 61, 62 pass as 0, 1, 2 leave the window.
    assert results == [True, True, True, False, False, True, True, True]
    assert len(recorder.sent) == 6


def test_the_off_switch() -> None:
    recorder = Recorder()
    notifier = Notifier(enabled=False, channels=[Channel("fake", recorder)], clock=Clock())
    assert notifier.notify("Ollama down", "m") is False
    assert recorder.sent == []
    notifier.enabled = True
    assert notifier.notify("Ollama down", "m") is True
    assert recorder.sent == [("Ollama down", "m")]


def test_first_working_method_wins() -> None:
    first, second = Recorder(), Recorder()
    notifier = Notifier(channels=[Channel("a", first), Channel("b", second)], clock=Clock())
    assert notifier.notify("t", "m") is True
    assert (first.sent, second.sent) == ([("t", "m")], [])


def test_failures_are_logged_and_never_raised(caplog) -> None:
    def broken(title: str, message: str) -> None:
        raise RuntimeError("backend\nexploded")

    def refused(title: str, message: str) -> None:
        raise NotificationError("notify-send exited with status 1: no server")

    caplog.set_level(logging.WARNING, logger="tray.system.notify")
    notifier = Notifier(channels=[Channel("plyer", broken), Channel("notify-send", refused)], clock=Clock())
    assert notifier.notify("Ollama down", "Not responding") is False
    assert [r.getMessage() for r in caplog.records] == [
        "Notification via plyer failed: backend exploded",
        "Notification via notify-send failed: notify-send exited with status 1: no server",
        "Notification not shown, no method worked: Ollama down: Not responding",
    ]


# --- A real D-Bus session --------------------------------------------------------------------------


def plyer_without_backend(*args: object, **kwargs: object) -> None:
    raise NotImplementedError("No usable implementation found!")


@pytest.fixture
def notification_server(session_bus: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotificationServer]:
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", session_bus)
    server = NotificationServer(session_bus)
    yield server
    server.close()


@pytest.mark.process
def test_dbus_notify_arrives_with_summary_and_body(notification_server: NotificationServer) -> None:
    assert dbus_notify("Ollama down", "Ollama is not responding (down)") == 1
    assert dbus_notify("Second", "two") == 2
    assert notification_server.notifications(2) == [
        (APP_NAME, 0, "", "Ollama down", "Ollama is not responding (down)", [], {}, 10000),
        (APP_NAME, 0, "", "Second", "two", [], {}, 10000),
    ]


@pytest.mark.process
def test_when_plyer_fails_the_dbus_fallback_delivers(
    notification_server: NotificationServer, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setattr(notify_linux, "plyer_notify", plyer_without_backend)
    caplog.set_level(logging.DEBUG, logger="tray.system.notify")
    notifier = Notifier()  # the real per-OS channels
    assert notifier.notify("Ollama memory high", "Ollama is using 7.2 GB of memory (limit 6 GB)") is True
    (body,) = notification_server.notifications(1)
    assert body[0] == APP_NAME and body[3:5] == ("Ollama memory high", "Ollama is using 7.2 GB of memory (limit 6 GB)")
    assert [r.getMessage() for r in caplog.records] == [
        "Notification via plyer failed: No usable implementation found!",
        "Notification shown via dbus: Ollama memory high",
    ]


@pytest.mark.process
def test_a_body_with_markup_characters_is_shown_as_written(
    notification_server: NotificationServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify_linux, "plyer_notify", plyer_without_backend)
    text = "pull failed: <b>502</b> from a<b & <a href='http://x.invalid'>proxy</a>"
    assert Notifier().notify("Model build failed", text) is True
    (body,) = notification_server.notifications(1)
    assert body[3] == "Model build failed"
    assert body[4] == (
        "pull failed: &lt;b&gt;502&lt;/b&gt; from a&lt;b &amp; &lt;a href='http://x.invalid'&gt;proxy&lt;/a&gt;"
    )


@pytest.mark.process
@pytest.mark.skipif(shutil.which("notify-send") is None, reason="notify-send (libnotify-bin) is not installed")
def test_when_plyer_and_dbus_fail_notify_send_delivers(
    notification_server: NotificationServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(*args: object, **kwargs: object) -> None:
        raise NotificationError("simulated failure")

    monkeypatch.setattr(notify_linux, "plyer_notify", fails)
    monkeypatch.setattr(notify_linux, "dbus_notify", fails)
    assert Notifier().notify("Low disk space", "3 GB free on the models disk (minimum 10 GB)") is True
    (body,) = notification_server.notifications(1)
    app_name, replaces_id, _icon, summary, text, actions, _hints, expire = body
    assert (app_name, replaces_id, summary, text, actions, expire) == (
        APP_NAME,
        0,
        "Low disk space",
        "3 GB free on the models disk (minimum 10 GB)",
        [],
        10000,
    )
    # libnotify asks who the server is before notifying.
    assert ("GetServerInformation", ()) in notification_server.calls


def _plyer_backend_name() -> str:
    """The backend plyer's Linux module picks here, asked the way plyer asks it."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from plyer.platforms.linux.notification import instance

            return type(instance()).__name__
    except Exception:  # noqa: BLE001 - no backend at all
        return "none"


@pytest.mark.process
@pytest.mark.skipif(_plyer_backend_name() != "NotifyDbus", reason="plyer's D-Bus backend needs dbus-python")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux D-Bus session test")
def test_plyer_is_tried_first_and_delivers(notification_server: NotificationServer, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="tray.system.notify")
    assert Notifier().notify("Ollama healthy", "Ollama is healthy again") is True
    (body,) = notification_server.notifications(1)
    assert (body[0], body[3], body[4]) == (APP_NAME, "Ollama healthy", "Ollama is healthy again")
    assert "Notification shown via plyer: Ollama healthy" in [r.getMessage() for r in caplog.records]


def failing_notify_send(tmp_path) -> str:
    """A ``notify-send`` that fails as libnotify's does without a notification service; a PATH holding it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "notify-send"
    script.write_text(
        '#!/bin/sh\necho "$@" >> "$(dirname "$0")/calls"\n'
        "echo 'GDBus.Error:org.freedesktop.DBus.Error.ServiceUnknown: The name is not activatable' >&2\nexit 1\n"
    )
    script.chmod(0o755)
    return f"{bin_dir}:/usr/bin:/bin"


@pytest.mark.process
@pytest.mark.skipif(_plyer_backend_name() != "NotifySendNotification", reason="plyer would not use notify-send here")
def test_plyers_notify_send_that_showed_nothing_is_not_taken_for_a_delivery(
    notification_server: NotificationServer, monkeypatch: pytest.MonkeyPatch, tmp_path, caplog
) -> None:
    """plyer runs notify-send and ignores its status: the D-Bus channel must still deliver."""
    monkeypatch.setenv("PATH", failing_notify_send(tmp_path))
    caplog.set_level(logging.DEBUG, logger="tray.system.notify")
    assert Notifier().notify("Ollama down", "Ollama is not responding") is True
    (body,) = notification_server.notifications(1)
    assert body[3:5] == ("Ollama down", "Ollama is not responding")
    assert [r.getMessage() for r in caplog.records] == [
        "Notification via plyer failed: plyer's NotifySendNotification cannot tell whether it showed anything",
        "Notification shown via dbus: Ollama down",
    ]
    assert not (tmp_path / "bin" / "calls").exists()


@pytest.mark.process
@pytest.mark.skipif(_plyer_backend_name() != "NotifySendNotification", reason="plyer would not use notify-send here")
def test_when_no_method_shows_anything_notify_says_so(session_bus: str, monkeypatch: pytest.MonkeyPatch, tmp_path):
    """A bus without a notification service: every channel fails, and notify() does not claim success."""
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", session_bus)
    monkeypatch.setenv("PATH", failing_notify_send(tmp_path))
    notifier = Notifier()
    assert notifier.notify("Ollama down", "Ollama is not responding") is False
    with pytest.raises(NotificationError) as err:
        notifier.deliver("Ollama down", "again")
    assert str(err.value).split("; ") == [
        "plyer: plyer's NotifySendNotification cannot tell whether it showed anything",
        "dbus: D-Bus notification refused: org.freedesktop.DBus.Error.ServiceUnknown",
        "notify-send: notify-send exited with status 1: "
        "GDBus.Error:org.freedesktop.DBus.Error.ServiceUnknown: The name is not activatable",
    ]
    assert len((tmp_path / "bin" / "calls").read_text().splitlines()) == 2  # only our own, checked, runs


@pytest.mark.process
def test_a_bus_without_a_notification_service_is_a_clear_error(session_bus: str) -> None:
    with pytest.raises(
        NotificationError, match=r"^D-Bus notification refused: org.freedesktop.DBus.Error.ServiceUnknown$"
    ):
        dbus_notify("t", "m", bus_address=session_bus)


def test_no_session_bus_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # no "bus" socket in it
    with pytest.raises(NotificationError, match=r"^no D-Bus session bus \(DBUS_SESSION_BUS_ADDRESS is not set\)$"):
        dbus_notify("t", "m")


def _run_notify_command(env_changes: dict[str, str], tmp_path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state"), **env_changes}
    return subprocess.run(
        [sys.executable, "-m", "tray", "notify", "Ollama Manager", "Notifications work"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.process
def test_notify_command_names_the_method_that_delivered(notification_server: NotificationServer, session_bus, tmp_path):
    done = _run_notify_command({"DBUS_SESSION_BUS_ADDRESS": session_bus}, tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout in ("Notification sent via dbus\n", "Notification sent via plyer\n")
    (body,) = notification_server.notifications(1)
    assert body[3:5] == ("Ollama Manager", "Notifications work")


@pytest.mark.process
def test_notify_command_without_any_working_method_is_one_line(session_bus, tmp_path):
    env = {"DBUS_SESSION_BUS_ADDRESS": session_bus, "PATH": failing_notify_send(tmp_path)}
    done = _run_notify_command(env, tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("ollama-manager: no notification method worked: ")
    assert done.stderr.count("\n") == 1
