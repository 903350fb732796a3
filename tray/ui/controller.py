"""What the tray needs from the rest of the app, over a running Monitor."""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Callable
from pathlib import Path

from tray.core.status import Status
from tray.history import History
from tray.service.monitor import Monitor
from tray.settings.config import Config
from tray.system.autostart import Autostart
from tray.system.notify import Notifier
from tray.system.ollama_app import app_layout
from tray.system.owners import SystemdService, current_uid, user_name, write_journal_snapshot
from tray.system.paths import AppPaths

log = logging.getLogger(__name__)


def ollama_log_locations(
    paths: AppPaths, platform: str | None = None, env: dict[str, str] | None = None, server_log: Path | None = None
) -> list[str]:
    """Where "Open logs" looks, the first that exists wins.

    The folder of the running server's log when another program writes it (the Ollama
    app's ``server.log``), then the manager's own log folder, then Ollama's app log folder
    on this OS (or, on Linux, the log of a server the manager started).
    """
    env = dict(os.environ if env is None else env)
    locations = []
    if server_log is not None and server_log != paths.server_log:
        locations.append(str(server_log.parent))
    locations.append(str(paths.log_dir))
    layout = app_layout(platform, env)
    extra = str(layout.log_dir) if layout is not None else str(paths.server_log)
    if extra not in locations:
        locations.append(extra)
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
        *,
        open_dashboard: Callable[[], object],
    ) -> None:
        """``open_dashboard`` opens the dashboard in a browser or raises with a one-line reason; the composition
        layer hands it in (the tray sits beside the dashboard, not above it)."""
        self.monitor = monitor
        self.config = config
        self.paths = paths
        self.notifier = notifier
        self.autostart = autostart
        self._open_dashboard = open_dashboard
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
        from tray.settings.store import set_config_value  # the comment-keeping TOML writer, loaded when saving

        set_config_value(Path(self.config.source), key, value)

    def log_paths(self) -> list[str]:
        """Where to look, the first that exists wins: the journal of a systemd server (copied to a file to open),
        the folder of the log the running server writes (the Ollama app's), then the manager's logs."""
        supervisor = self.monitor.supervisor
        external = supervisor.external
        if isinstance(external, SystemdService):
            snapshot = write_journal_snapshot(
                external, self.paths.log_dir / "ollama-journal.log", user_name(current_uid())
            )
            return [str(snapshot), *ollama_log_locations(self.paths)]
        return ollama_log_locations(self.paths, server_log=supervisor.server_log)

    def open_dashboard(self) -> None:
        self._open_dashboard()

    def notify(self, title: str, message: str) -> None:
        self.notifier.notify(title, message)
