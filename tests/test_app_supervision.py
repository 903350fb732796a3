"""The supervisor with Ollama's desktop app as the server's owner, against the stand-in app as real processes.

The supervisor gets the stand-in app's finder through its ``app_finder`` argument, the
contract the per-OS finders fulfil; everything else is the manager's own code for the app.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from dataclasses import replace
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.manager import FAST_SETTINGS, wait_until
from tests.support.standin_app_finder import StandinAppFinder
from tray.history import History
from tray.service.supervisor import StartFailed, Supervisor
from tray.settings.config import load_config
from tray.system.logs import LogTail
from tray.system.ollama_app import StartRoute
from tray.system.paths import AppPaths
from tray.ui.controller import ollama_log_locations

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the stand-in app is a POSIX program")


def make_supervisor(
    standin, tmp_path: Path, server_settings: str = "", env_models: Path | None = None, **overrides
) -> Supervisor:
    """``env_models``: the manager's own OLLAMA_MODELS, when it is not the stand-in's store."""
    paths = AppPaths(*(tmp_path / "manager" / name for name in ("config", "log", "data", "state")))
    if server_settings:
        paths.config_dir.mkdir(parents=True)
        paths.config_file.write_text(f"[ollama_server]\n{server_settings}\n")
    env = {**standin.env, **FAST_SETTINGS}
    if env_models is not None:
        env["OLLAMA_MODELS"] = str(env_models)
    config = load_config(env=env, paths=paths)
    return Supervisor(config, paths, History(None), env=env, app_finder=StandinAppFinder.of(standin), **overrides)


@pytest.fixture
def app_running(standin):
    app = standin.spawn_app("hidden")
    standin.wait_ready(20)
    return app


def events(sup: Supervisor, kind: str) -> list[str]:
    return [event.message for event in sup.history.events() if event.kind == kind]


@pytest.mark.process
def test_the_apps_server_is_adopted_as_the_apps(standin, app_running, tmp_path):
    sup = make_supervisor(standin, tmp_path)
    outcome = sup.start()
    assert not outcome.started and outcome.managed_by == "ollama-app"
    assert sup.pid == standin.app_serve_pids()[-1]
    assert sup.server_log == Path(standin.env["HOME"]) / ".ollama" / "logs" / "server.log"


@pytest.mark.process
def test_the_models_dir_is_the_one_the_apps_server_uses(standin, app_running, tmp_path):
    layout = StandinAppFinder.of(standin).layout
    elsewhere = tmp_path / "app-model-location"
    elsewhere.mkdir()
    sup = make_supervisor(standin, tmp_path, env_models=elsewhere)
    standin.pull("llama3")
    response = httpx.post(
        f"{standin.base_url}/api/generate", json={"model": "llama3", "prompt": "", "keep_alive": -1}, timeout=30
    )
    assert response.status_code == 200
    wait_until(standin.alive_runner_pids, 10, what="a runner")
    sup.adopt()
    assert sup.managed_by == "ollama-app"
    assert sup.configured_models_dir == elsewhere  # what a server of the manager's own would use
    assert sup.models_dir == standin.models_dir  # the app's server's own, confirmed by /api/tags
    assert sup.store_source.endswith("matching /api/tags")
    assert layout.server_log == sup.server_log


@pytest.mark.process
def test_restart_through_the_app_ends_its_serve_and_awaits_the_respawn(standin, app_running, tmp_path):
    sup = make_supervisor(standin, tmp_path)
    sup.adopt()
    old = sup.pid
    outcome = sup.restart("not responding")
    new = standin.app_serve_pids()[-1]
    assert outcome.pid == new != old and outcome.managed_by == "ollama-app"
    assert app_running.poll() is None  # the app itself was left running
    assert not standin.events_of("app_exit")
    (message,) = events(sup, "restart")
    assert message == (
        f"Ollama restarted through the Ollama app: its server (pid {old}) ended, and the app started pid {new}"
    )
    assert httpx.get(standin.base_url + "/", timeout=5).text == "Ollama is running"


@pytest.mark.process
def test_stop_through_the_app_quits_it_by_signal(standin, app_running, tmp_path):
    sup = make_supervisor(standin, tmp_path)
    sup.adopt()
    outcome = sup.stop("user")
    assert (outcome.graceful, outcome.message()) == (True, "Ollama stopped")
    assert app_running.wait(10) == 0
    (app_exit,) = standin.events_of("app_exit")
    assert app_exit["signal"] == signal.SIGTERM
    assert sup.answers() is None
    assert events(sup, "stop") == ["Ollama stopped (gracefully)"]


@pytest.mark.process
def test_custom_settings_bypass_the_app_while_it_is_not_running(standin, tmp_path):
    standin.install_app()
    sup = make_supervisor(standin, tmp_path, 'keep_alive = "10m"')
    outcome = sup.start()
    assert outcome.started and outcome.managed_by == "manager"
    assert standin.events_of("app_start") == []  # the app was not opened
    (serve,) = standin.events_of("serve_start")
    assert psutil.Process(serve["pid"]).environ()["OLLAMA_KEEP_ALIVE"] == "10m"
    sup.stop()


@pytest.mark.process
def test_while_the_app_runs_its_server_comes_back_and_the_app_is_never_quit(standin, app_running, tmp_path):
    sup = make_supervisor(standin, tmp_path, 'keep_alive = "10m"')
    serve = standin.app_serve_pids()[-1]
    os.kill(serve, signal.SIGKILL)  # the app's server is down for a second
    wait_until(lambda: sup.answers() is None, 10, what="the server to be down")
    outcome = sup.start()
    assert not outcome.started and outcome.managed_by == "ollama-app"
    assert outcome.pid == standin.app_serve_pids()[-1] != serve
    assert len(standin.events_of("serve_start")) == 2  # no serve of the manager's own beside the app's
    assert app_running.poll() is None and not standin.events_of("app_exit")
    (warning,) = events(sup, "external")
    assert warning.startswith("The Ollama app runs the server") and "quit the Ollama app from its menu" in warning


@pytest.mark.process
def test_an_app_whose_server_does_not_come_back_is_reported_with_its_log(standin, app_running, tmp_path):
    sup = make_supervisor(standin, tmp_path)
    sup.reconfigure(replace(sup.config, startup_timeout=2))
    serve = standin.app_serve_pids()[-1]
    app_running.send_signal(signal.SIGSTOP)  # the app hangs: it respawns nothing
    try:
        os.kill(serve, signal.SIGKILL)
        wait_until(lambda: sup.answers() is None, 10, what="the server to be down")
        with pytest.raises(StartFailed) as failed:
            sup.start()
    finally:
        app_running.send_signal(signal.SIGCONT)
    assert str(failed.value) == (
        f"the Ollama app is running but its server does not answer at {standin.base_url} within 2 s: "
        f"see {standin.app_server_log}, or quit the app from its menu and open it again"
    )
    assert len(standin.events_of("serve_start")) == 1  # no serve of the manager's own beside the app
    assert app_running.poll() is None


@pytest.mark.process
def test_when_the_app_takes_the_port_back_the_lost_settings_are_reported(standin, tmp_path):
    """The app's login item starts it beside the manager's own server: it reaps that server and serves instead."""
    sup = make_supervisor(standin, tmp_path, 'keep_alive = "10m"')
    ours = sup.start()
    assert ours.managed_by == "manager"
    app = standin.spawn_app("hidden")
    (reap,) = wait_until(lambda: standin.events_of("app_reap"), 20, what="the app reaping the manager's server")
    assert reap["pids"] == [ours.pid]
    wait_until(lambda: set(standin.serve_pids()) & set(standin.app_serve_pids()), 20, what="the app's serve")
    standin.wait_ready(10)
    outcome = sup.start()  # what the monitor does once the server it ran is gone
    assert not outcome.started and outcome.managed_by == "ollama-app"
    assert app.poll() is None
    (warning,) = events(sup, "external")
    assert warning.startswith(f"The Ollama app runs the server on port {standin.port} with its own settings")


def test_a_login_item_that_will_take_the_port_back_is_recorded(standin, tmp_path, monkeypatch):
    """The app's port is Ollama's default, which this test does not bind: the route is decided, not carried out."""
    from tray.service import supervisor as module

    standin.install_app()
    monkeypatch.setattr(module, "app_starts_at_login", lambda layout: layout.platform == "darwin")
    sup = make_supervisor(standin, tmp_path, 'keep_alive = "10m"')
    sup.host = sup.host.__class__(sup.host.scheme, "127.0.0.1", 11434)
    route, command = sup._start_route(customized=True)
    assert (route, command) == (StartRoute.OWN_SERVER, None)
    (warning,) = events(sup, "external")
    assert warning.startswith("The Ollama app starts at login and will then take port 11434 back")


@pytest.mark.process
def test_the_apps_server_log_is_tailed_across_its_rotation(standin, app_running, tmp_path):
    sup = make_supervisor(standin, tmp_path)
    sup.adopt()
    tail = LogTail(lambda: sup.server_log)
    assert tail.new_lines() == []  # the first look starts at the end
    standin.pull("llama3")
    standin.set_faults(oom="cuda")
    httpx.post(f"{standin.base_url}/api/generate", json={"model": "llama3", "prompt": "hi"}, timeout=30)
    lines = tail.new_lines()
    assert any("cudaMalloc failed: out of memory" in line for line in lines)
    # The app restarts its server for new settings: server.log becomes server-1.log and begins again.
    standin.clear_faults()
    os.kill(app_running.pid, signal.SIGHUP)
    wait_until(lambda: len(standin.app_serve_pids()) == 2, 15, what="the app's new server")
    standin.wait_ready(10)
    after = wait_until(tail.new_lines, 10, what="lines of the new server.log")
    assert any("Listening on" in line for line in after)
    assert sup.server_log.with_name("server-1.log").exists()


@pytest.mark.process
def test_open_logs_opens_the_apps_log_folder_when_the_app_runs_the_server(standin, app_running, tmp_path):
    sup = make_supervisor(standin, tmp_path)
    sup.adopt()
    locations = ollama_log_locations(sup.paths, "linux", dict(standin.env), server_log=sup.server_log)
    assert locations[0] == str(Path(standin.env["HOME"]) / ".ollama" / "logs")
    assert locations[1] == str(sup.paths.log_dir)


@pytest.mark.process
def test_models_dir_of_the_apps_server(standin, app_running, tmp_path):
    sup = make_supervisor(standin, tmp_path)
    sup.adopt()
    assert sup.models_dir == standin.models_dir


@pytest.mark.process
def test_the_monitor_reads_the_models_where_the_apps_server_keeps_them(standin, tmp_path):
    """The app's "Model location" is not the manager's default: the model keeper and disk checks follow it."""
    from tray.service.monitor import Monitor

    location = tmp_path / "external-disk" / "models"
    location.mkdir(parents=True)
    # The app is started from the desktop: OLLAMA_MODELS reaches its server only from its own setting.
    standin.env = {key: value for key, value in standin.env.items() if key != "OLLAMA_MODELS"}
    settings = Path(standin.env["HOME"]) / "Library" / "Application Support" / "Ollama" / "db.sqlite"
    settings.parent.mkdir(parents=True)
    connection = sqlite3.connect(settings)
    with connection:
        connection.execute(
            "CREATE TABLE settings (id INTEGER PRIMARY KEY, expose BOOLEAN NOT NULL DEFAULT 0, browser BOOLEAN"
            " NOT NULL DEFAULT 0, models TEXT NOT NULL DEFAULT '', context_length INTEGER NOT NULL DEFAULT 0)"
        )
        connection.execute("INSERT INTO settings (id, models) VALUES (1, ?)", (str(location),))
    connection.close()
    standin.spawn_app("hidden")
    standin.wait_ready(20)
    sup = make_supervisor(standin, tmp_path)
    monitor = Monitor(sup, sup.config, sup.history)
    assert monitor.models.models_dir != location
    monitor.check_once()
    assert sup.models_dir == location
    assert monitor.models.models_dir == location and monitor.sampler.models_dir == location


def test_windows_models_dir_follows_userprofile_not_home(tmp_path):
    paths = AppPaths(*(tmp_path / name for name in ("config", "log", "data", "state")))
    env = {"HOME": "/c/msys64/home/ada", "USERPROFILE": "C:/Users/ada", "LOCALAPPDATA": str(tmp_path / "local")}
    sup = Supervisor(load_config(env=env, paths=paths), paths, History(None), env=env, platform="win32")
    assert sup.models_dir == Path("C:/Users/ada/.ollama/models")
