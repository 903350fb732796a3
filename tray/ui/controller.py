"""What the tray needs from the rest of the app, over a running Monitor."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from tray.core.status import Status
from tray.history import History
from tray.service.monitor import Monitor
from tray.settings.config import Config
from tray.settings.store import set_config_value
from tray.system.autostart import Autostart
from tray.system.notify import Notifier
from tray.system.owners import SystemdService, current_uid, user_name, write_journal_snapshot
from tray.system.paths import AppPaths

log = logging.getLogger(__name__)


def ollama_log_locations(paths: AppPaths, platform: str = sys.platform, env: dict[str, str] | None = None) -> list[str]:
    """The app's log folder, then where Ollama's own server log lives on this OS."""
    env = dict(os.environ if env is None else env)
    home = Path(env.get("HOME") or Path.home())
    locations = [str(paths.log_dir)]
    if platform == "darwin":
        locations.append(str(home / ".ollama" / "logs"))
    elif platform == "win32":
        locations.append(str(Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local") / "Ollama"))
    else:
        locations.append(str(paths.server_log))
    return locations


class MonitorController:
    def __init__(
        self,
        monitor: Monitor,
        config: Config,
        paths: AppPaths,
        history: History,
        notifier: Notifier,
        autostart: Autostart,
    ) -> None:
        self.monitor = monitor
        self.config = config
        self.paths = paths
        self.notifier = notifier
        self.autostart = autostart
        self.stop_ollama_on_quit = config.stop_ollama_on_quit

    def snapshot(self) -> Status:
        return self.monitor.snapshot()

    def subscribe(self, callback: Callable[[Status], None]) -> Callable[[], None]:
        return self.monitor.subscribe(callback)

    def request(self, action: str) -> concurrent.futures.Future[str]:
        return self.monitor.request(action)

    def use_model(self, name: str) -> concurrent.futures.Future[str]:
        return self.monitor.use_model(name)

    def settings(self) -> dict[str, bool]:
        return {
            "notifications": self.notifier.enabled,
            "autostart": self.autostart.is_enabled(),
            "stop_ollama_on_quit": self.stop_ollama_on_quit,
        }

    def set_setting(self, key: str, value: bool) -> None:
        if key == "autostart":
            self.autostart.enable() if value else self.autostart.disable()
            return
        if key == "notifications":
            self.notifier.enabled = value
        elif key == "stop_ollama_on_quit":
            self.stop_ollama_on_quit = value
        else:
            raise ValueError(f"unknown setting {key!r}")
        set_config_value(Path(self.config.source), key, value)

    def log_paths(self) -> list[str]:
        """Where to look: the journal of a systemd server (copied to a file to open), then the app's logs."""
        external = self.monitor.supervisor.external
        if isinstance(external, SystemdService):
            snapshot = write_journal_snapshot(
                external, self.paths.log_dir / "ollama-journal.log", user_name(current_uid())
            )
            return [str(snapshot), *ollama_log_locations(self.paths)]
        return ollama_log_locations(self.paths)

    def open_dashboard(self) -> None:
        from tray.dashboard.launch import open_dashboard

        open_dashboard(self.paths)

    def notify(self, title: str, message: str) -> None:
        self.notifier.notify(title, message)
