from pathlib import Path

from tray.history import History
from tray.service.notices import notify_events
from tray.settings.config import load_config
from tray.system.paths import AppPaths
from tray.ui.controller import MonitorController, ollama_log_locations


class RecordingNotifier:
    def __init__(self):
        self.enabled = True
        self.sent = []

    def notify(self, title, message, *, key=None):
        self.sent.append((title, message, key))
        return True


class FakeAutostart:
    def __init__(self) -> None:
        self.on = False

    def enable(self) -> None:
        self.on = True

    def disable(self) -> None:
        self.on = False

    def is_enabled(self) -> bool:
        return self.on

    def describe(self) -> str:
        return "a flag in memory"


def paths_in(tmp_path):
    return AppPaths(tmp_path / "config", tmp_path / "log", tmp_path / "data", tmp_path / "state")


def test_events_worth_it_become_notifications():
    history, notifier = History(None), RecordingNotifier()
    notify_events(history, notifier)
    history.record("health", "health healthy -> unhealthy (7000 ms)")
    history.record("crash", "Ollama exited unexpectedly (status -9); reaped 1 orphaned runner(s)")
    history.record("alert", "High memory: Ollama is using 7.2 GB", {"kind": "memory", "state": "raised"})
    assert notifier.sent == [
        ("Ollama crashed", "Ollama exited unexpectedly (status -9); reaped 1 orphaned runner(s)", "crash:"),
        ("Ollama alert", "High memory: Ollama is using 7.2 GB", "alert:memory"),
    ]


def test_log_locations_per_os(tmp_path):
    paths = paths_in(tmp_path)
    env = {"HOME": "/home/u", "LOCALAPPDATA": "C:/Users/u/AppData/Local"}
    assert ollama_log_locations(paths, "darwin", env) == [str(paths.log_dir), str(Path("/home/u/.ollama/logs"))]
    assert ollama_log_locations(paths, "win32", env) == [
        str(paths.log_dir),
        str(Path("C:/Users/u/AppData/Local/Ollama")),
    ]
    assert ollama_log_locations(paths, "linux", env) == [str(paths.log_dir), str(paths.server_log)]


def test_menu_toggles_are_saved_keeping_the_users_comments(tmp_path):
    paths = paths_in(tmp_path)
    paths.config_dir.mkdir(parents=True)
    paths.config_file.write_text("# my settings\nhealth_check_interval = 10  # seconds\n")
    config = load_config(env={}, paths=paths)
    notifier, autostart = RecordingNotifier(), FakeAutostart()
    controller = MonitorController(None, config, paths, History(None), notifier, autostart, open_dashboard=lambda: None)
    controller.set_setting("notifications", False)
    controller.set_setting("autostart", True)
    assert notifier.enabled is False and autostart.on is True
    assert controller.settings() == {"notifications": False, "autostart": True, "stop_ollama_on_quit": False}
    assert (
        paths.config_file.read_text() == "# my settings\nhealth_check_interval = 10  # seconds\nnotifications = false\n"
    )
    assert load_config(env={}, paths=paths).notifications is False


def test_open_dashboard_runs_what_the_composition_layer_handed_in(tmp_path):
    paths = paths_in(tmp_path)
    opened = []
    controller = MonitorController(
        None,
        load_config(env={}, paths=paths),
        paths,
        History(None),
        RecordingNotifier(),
        FakeAutostart(),
        open_dashboard=lambda: opened.append("dashboard"),
    )
    controller.open_dashboard()
    assert opened == ["dashboard"]
