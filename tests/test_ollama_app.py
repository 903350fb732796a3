"""The Ollama desktop app as the owner of a server: control steps per OS, checked exactly, and the
same owner interface driving the stand-in app (tests/standin/ollama-app) as real processes."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.manager import wait_until
from tests.support.standin_app_finder import StandinAppFinder
from tray.settings.hosts import parse_ollama_host
from tray.system import processes
from tray.system.ollama_app import (
    AppQuit,
    ConsoleBreak,
    OllamaApp,
    RunCommand,
    SendSignal,
    StartRoute,
    app_layout,
    app_model_location,
    app_owning,
    app_starts_at_login,
    choose_start,
    needs_own_server,
    perform,
    quit_app,
    read_app_settings,
    restart_app_server,
    running_app,
)
from tray.system.ollama_app_darwin import (
    MacAppFinder,
    launchctl_disabled_command,
    launchctl_print_command,
    mac_start_command,
)
from tray.system.ollama_app_windows import WindowsAppFinder, windows_start_command
from tray.system.processes import ProcessRef, ollama_home, server_on_port

MAC_LAYOUT = app_layout("darwin", {"HOME": "/Users/ada"})
WIN_ENV = {
    "USERPROFILE": "C:/Users/ada",
    "HOME": "C:/msys64/home/ada",
    "LOCALAPPDATA": "C:/Users/ada/AppData/Local",
    "APPDATA": "C:/Users/ada/AppData/Roaming",
}
WIN_LAYOUT = app_layout("win32", WIN_ENV)


def mac_app(pid: int = 42) -> OllamaApp:
    return OllamaApp(ProcessRef(pid, 0.0), Path("/Applications/Ollama.app/Contents/MacOS/Ollama"), MAC_LAYOUT)


def win_app(pid: int = 42) -> OllamaApp:
    exe = Path("C:/Users/ada/AppData/Local/Programs/Ollama/ollama app.exe")
    return OllamaApp(ProcessRef(pid, 0.0), exe, WIN_LAYOUT)


# --------------------------------------------------------------------------- exact steps per OS


def test_macos_app_quits_on_sigterm_to_its_pid_not_through_applescript():
    assert mac_app(4242).quit_steps() == [SendSignal(4242, signal.SIGTERM)]
    # A killed app leaves its serve and runners behind: they go too.
    assert mac_app(4242).force_quit_steps([4300, 4301]) == [
        SendSignal(4242, signal.SIGKILL),
        SendSignal(4300, signal.SIGKILL),
        SendSignal(4301, signal.SIGKILL),
    ]


def test_macos_app_server_restarts_by_ending_its_serve_child():
    assert mac_app().server_stop_steps(5150) == [SendSignal(5150, signal.SIGTERM)]
    kills = [SendSignal(5150, signal.SIGKILL), SendSignal(5151, signal.SIGKILL)]
    assert mac_app().server_kill_steps(5150, [5151]) == kills


def test_windows_app_quits_on_wm_close_and_its_serve_stops_on_a_console_break():
    app = win_app(4242)
    # taskkill without /F posts WM_CLOSE to the app's tray window; without /T it spares the windowless serve.
    assert app.quit_steps() == [RunCommand(("taskkill", "/PID", "4242"))]
    assert app.force_quit_steps([4300]) == [RunCommand(("taskkill", "/F", "/T", "/PID", "4242"))]
    assert app.server_stop_steps(5150) == [ConsoleBreak(5150)]
    assert app.server_kill_steps(5150, [5151]) == [RunCommand(("taskkill", "/F", "/T", "/PID", "5150"))]


def test_start_commands_open_the_app_hidden():
    assert mac_start_command(Path("/Applications/Ollama.app")) == [
        "open",
        "-j",
        "-a",
        "/Applications/Ollama.app",
        "--args",
        "--fast-startup",
    ]
    exe = Path("C:/Users/ada/AppData/Local/Programs/Ollama/ollama app.exe")
    assert windows_start_command(exe) == [str(exe), "--hide", "--fast-startup"]


def test_app_files_per_os():
    assert MAC_LAYOUT.server_log == Path("/Users/ada/.ollama/logs/server.log")
    assert MAC_LAYOUT.settings_db == Path("/Users/ada/Library/Application Support/Ollama/db.sqlite")
    assert MAC_LAYOUT.login_item == Path("/Users/ada/Library/LaunchAgents/com.ollama.ollama.plist")
    assert WIN_LAYOUT.server_log == Path("C:/Users/ada/AppData/Local/Ollama/server.log")
    assert WIN_LAYOUT.settings_db == Path("C:/Users/ada/AppData/Local/Ollama/db.sqlite")
    assert WIN_LAYOUT.login_item == Path(
        "C:/Users/ada/AppData/Roaming/Microsoft/Windows/Start Menu/Programs/Startup/Ollama.lnk"
    )
    assert app_layout("linux", {"HOME": "/home/ada"}) is None


def test_windows_finder_and_models_follow_userprofile_not_home(tmp_path):
    finder = WindowsAppFinder.for_env({"USERPROFILE": "C:/Users/ada", "HOME": "C:/msys64/home/ada"})
    assert finder.candidates == (Path("C:/Users/ada/AppData/Local/Programs/Ollama/ollama app.exe"),)
    assert finder.layout.server_log == Path("C:/Users/ada/AppData/Local/Ollama/server.log")
    no_db = app_layout("win32", {**WIN_ENV, "LOCALAPPDATA": str(tmp_path)})
    assert app_model_location(no_db) is None  # no "Model location": Ollama's default under Go's home folder
    assert ollama_home(WIN_ENV, "win32") / ".ollama" / "models" == Path("C:/Users/ada/.ollama/models")


def test_mac_finder_looks_in_both_applications_folders():
    finder = MacAppFinder.for_env({"HOME": "/Users/ada"})
    assert finder.candidates == (Path("/Applications/Ollama.app"), Path("/Users/ada/Applications/Ollama.app"))


# --------------------------------------------------------------------------- settings, models, login item


def write_app_settings(db: Path, **values: object) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db) as connection:
        connection.execute(
            "CREATE TABLE settings (id INTEGER PRIMARY KEY, expose BOOLEAN NOT NULL DEFAULT 0,"
            " models TEXT NOT NULL DEFAULT '', context_length INTEGER NOT NULL DEFAULT 0)"
        )
        connection.execute("INSERT INTO settings (id) VALUES (1)")
        for key, value in values.items():
            connection.execute(f"UPDATE settings SET {key} = ? WHERE id = 1", (value,))
    connection.close()


def test_model_location_setting_is_read_from_the_apps_database(tmp_path):
    layout = app_layout("darwin", {"HOME": str(tmp_path)})
    models = tmp_path / "Volumes" / "external" / "models"
    models.mkdir(parents=True)
    write_app_settings(layout.settings_db, models=str(models), expose=1)
    settings = read_app_settings(layout.settings_db)
    assert (settings.models, settings.expose) == (str(models), True)
    assert app_model_location(layout) == models


def test_a_model_location_that_does_not_exist_is_ignored_as_the_app_ignores_it(tmp_path):
    layout = app_layout("darwin", {"HOME": str(tmp_path)})
    write_app_settings(layout.settings_db, models=str(tmp_path / "unplugged-disk"))
    assert app_model_location(layout) is None


def test_macos_login_item_from_launchctl():
    calls: list[list[str]] = []

    def launchctl(answers: dict[str, tuple[int, str]]):
        def run(argv: list[str]) -> tuple[int, str]:
            calls.append(argv)
            return answers[argv[1]]

        return run

    enabled = launchctl({"print-disabled": (0, '\t"com.other" => disabled\n'), "print": (0, "state = running")})
    assert app_starts_at_login(MAC_LAYOUT, run=enabled, uid=501) is True
    assert calls == [launchctl_disabled_command(501), launchctl_print_command(501)]
    assert calls == [["launchctl", "print-disabled", "gui/501"], ["launchctl", "print", "gui/501/com.ollama.ollama"]]
    switched_off = launchctl({"print-disabled": (0, '\t"com.ollama.ollama" => disabled\n'), "print": (0, "")})
    assert app_starts_at_login(MAC_LAYOUT, run=switched_off, uid=501) is False
    never_registered = launchctl({"print-disabled": (0, ""), "print": (113, "")})
    assert app_starts_at_login(MAC_LAYOUT, run=never_registered, uid=501) is False


def test_windows_login_item_is_the_startup_shortcut_unless_task_manager_disabled_it(tmp_path):
    layout = app_layout("win32", {"APPDATA": str(tmp_path), "LOCALAPPDATA": str(tmp_path)})
    asked: list[str] = []

    def approved(value: bytes | None):
        def read(name: str) -> bytes | None:
            asked.append(name)
            return value

        return read

    assert app_starts_at_login(layout, startup_approved=approved(None)) is False
    layout.login_item.parent.mkdir(parents=True)
    layout.login_item.write_bytes(b"L\0\0\0")
    assert app_starts_at_login(layout, startup_approved=approved(None)) is True
    assert app_starts_at_login(layout, startup_approved=approved(bytes([2] + [0] * 11))) is True
    assert app_starts_at_login(layout, startup_approved=approved(bytes([3] + [0] * 11))) is False
    assert asked == ["Ollama.lnk"] * 3


# --------------------------------------------------------------------------- when to bypass the app (pure)


@pytest.mark.parametrize(
    "ollama_host, customized, own",
    [
        (None, False, False),
        ("127.0.0.1:11434", False, False),
        ("localhost", False, False),
        ("0.0.0.0", False, True),  # exposure: the app would listen on loopback only
        (":11434", False, True),
        ("127.0.0.1:12345", False, True),
        (None, True, True),  # [ollama_server] settings reach only a serve the manager starts
    ],
)
def test_what_needs_a_server_of_the_managers_own(ollama_host, customized, own):
    assert needs_own_server(parse_ollama_host(ollama_host), customized) is own


def test_exposure_bypasses_the_app_only_while_it_is_not_running():
    stopped = choose_start(own_server=True, port=11434, installed=True, running=False, login_item=False)
    assert (stopped.route, stopped.warning) == (StartRoute.OWN_SERVER, "")
    # Running: its server takes the port back 1 s after any exit. The app is never quit for it.
    running = choose_start(own_server=True, port=11434, installed=True, running=True, login_item=False)
    assert running.route is StartRoute.WAIT_FOR_APP
    assert "quit the Ollama app from its menu" in running.warning
    plain = choose_start(own_server=False, port=11434, installed=True, running=False, login_item=True)
    assert (plain.route, plain.warning) == (StartRoute.VIA_APP, "")
    assert choose_start(own_server=False, port=11434, installed=True, running=True, login_item=True) == (
        choose_start(own_server=False, port=11434, installed=False, running=True, login_item=False)
    )


def test_a_login_item_that_will_take_the_port_back_is_warned_about():
    choice = choose_start(own_server=True, port=11434, installed=True, running=False, login_item=True)
    assert choice.route is StartRoute.OWN_SERVER
    assert choice.warning.startswith("the Ollama app starts at login and will then take port 11434 back")
    # Another port: the app's server never competes for it.
    other = choose_start(own_server=True, port=12345, installed=True, running=True, login_item=True)
    assert (other.route, other.warning) == (StartRoute.OWN_SERVER, "")


def test_without_the_app_the_manager_runs_its_own_server():
    choice = choose_start(own_server=False, port=11434, installed=False, running=False, login_item=False)
    assert (choice.route, choice.warning) == (StartRoute.OWN_SERVER, "")


# --------------------------------------------------------------------------- the stand-in app, as real processes

posix_only = pytest.mark.skipif(os.name != "posix", reason="the stand-in app is a POSIX program")


@pytest.fixture
def app_env(standin):
    """The stand-in app running its serve; the finder that recognises it."""
    app_process = standin.spawn_app("hidden")
    standin.wait_ready(20)
    finder = StandinAppFinder.of(standin)
    app = running_app(finder)
    assert app is not None and app.pid == app_process.pid
    yield standin, app_process, finder, app


def hide_listeners(monkeypatch, tmp_path):
    """As on macOS without root: no /proc socket tables, and the system-wide socket table is refused."""

    def refused(*_args, **_kwargs):
        raise psutil.AccessDenied()

    monkeypatch.setattr(processes, "PROC", tmp_path / "no-proc")
    monkeypatch.setattr(psutil, "net_connections", refused)


@pytest.mark.process
@posix_only
def test_the_apps_server_is_found_from_the_process_table_when_the_socket_table_is_refused(
    app_env, monkeypatch, tmp_path
):
    standin, app_process, finder, _app = app_env
    hide_listeners(monkeypatch, tmp_path)
    server = server_on_port(standin.port)
    assert server is not None and server.pid == standin.app_serve_pids()[-1]
    app = app_owning(server, finder)
    assert app is not None and app.pid == app_process.pid
    assert running_app(finder) == app
    assert app.serve_child() == server


@pytest.mark.process
@posix_only
def test_restart_ends_the_serve_child_and_awaits_the_apps_respawn(app_env):
    standin, app_process, finder, app = app_env
    old_pid = standin.app_serve_pids()[-1]
    respawn = restart_app_server(app, stop_timeout=5, respawn_timeout=15)
    assert respawn.graceful and respawn.old is not None and respawn.old.pid == old_pid
    assert respawn.new.pid == standin.app_serve_pids()[-1] != old_pid
    (ended,) = [e for e in standin.events_of("serve_exit") if e["pid"] == old_pid]
    assert ended["signal"] == signal.SIGTERM  # the serve child, not the app, got the signal
    (started,) = [e for e in standin.events_of("app_serve_start") if e["pid"] == respawn.new.pid]
    assert started["time"] - ended["time"] >= 1.0  # the app's own respawn delay, awaited
    assert app.alive() and app_process.poll() is None
    standin.wait_ready(10)
    assert httpx.get(standin.base_url + "/", timeout=5).text == "Ollama is running"


@pytest.mark.process
@posix_only
def test_quit_signals_the_app_pid_which_stops_its_serve(app_env):
    standin, app_process, finder, app = app_env
    serve_pid = standin.app_serve_pids()[-1]
    outcome = quit_app(app, timeout=15)
    assert outcome == AppQuit(graceful=True)
    assert app_process.wait(5) == 0
    (app_exit,) = standin.events_of("app_exit")
    assert app_exit["signal"] == signal.SIGTERM
    (serve_exit,) = [e for e in standin.events_of("serve_exit") if e["pid"] == serve_pid]
    assert serve_exit["signal"] == signal.SIGINT  # the app's own interrupt
    assert not psutil.pid_exists(serve_pid) or psutil.Process(serve_pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.process
@posix_only
def test_an_app_that_does_not_quit_is_killed_with_its_server_and_says_so(app_env):
    standin, app_process, finder, app = app_env
    serve_pid = standin.app_serve_pids()[-1]
    ignored: list[object] = []

    def deaf_to_sigterm(step):
        if step in app.quit_steps():
            ignored.append(step)
            return None
        return perform(step)

    outcome = quit_app(app, timeout=1.5, act=deaf_to_sigterm)
    assert ignored == [SendSignal(app.pid, signal.SIGTERM)]
    assert not outcome.graceful
    assert outcome.killed[:2] == [app.pid, serve_pid]
    assert outcome.detail == "the Ollama app did not quit within 1.5 s"
    assert app_process.wait(5) == -signal.SIGKILL
    wait_until(lambda: not psutil.pid_exists(serve_pid) or psutil.Process(serve_pid).status() == "zombie", 5)


@pytest.mark.process
@posix_only
def test_restart_notices_an_app_that_quits_meanwhile(app_env):
    from tray.system.ollama_app import AppGone

    standin, app_process, finder, app = app_env
    os.kill(app.pid, signal.SIGTERM)
    with pytest.raises(AppGone):
        restart_app_server(app, stop_timeout=5, respawn_timeout=15)


@pytest.mark.process
@posix_only
def test_the_stand_in_app_rotates_its_server_log_like_the_app(standin):
    app_process = standin.spawn_app()
    standin.wait_ready(20)
    first = standin.app_server_log.read_text()
    assert "Listening on" in first
    os.kill(app_process.pid, signal.SIGHUP)  # its Settings window: restart the server
    wait_until(lambda: len(standin.app_serve_pids()) == 2, 15, what="the server restarted")
    standin.wait_ready(10)
    rotated = standin.app_server_log.with_name("server-1.log")
    assert rotated.read_text().startswith(first)
    assert "Listening on" in standin.app_server_log.read_text()


@pytest.mark.process
@posix_only
def test_the_stand_in_app_reaps_a_serve_holding_its_port(standin):
    squatter = standin.spawn_serve()
    standin.wait_ready()
    app_process = standin.spawn_app()
    (reap,) = wait_until(lambda: standin.events_of("app_reap"), 20, what="the app's reaping")
    assert reap["pids"] == [squatter.pid]
    assert squatter.wait(10) == 0
    # The app's next serve (1 s later, again every second while the port is still held) takes the port.
    wait_until(lambda: set(standin.serve_pids()) & set(standin.app_serve_pids()), 20, what="the app's serve listening")
    standin.wait_ready(10)
    assert app_process.poll() is None
    assert standin.serve_pids()[-1] in standin.app_serve_pids()[1:]
