"""Where the app keeps its files, per OS (platformdirs; XDG variables on Linux)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from tray import APP_NAME


@dataclass(frozen=True)
class AppPaths:
    config_dir: Path
    log_dir: Path
    data_dir: Path
    state_dir: Path

    @classmethod
    def default(cls) -> AppPaths:
        # appauthor=False keeps Windows paths at %LOCALAPPDATA%\ollama-manager.
        dirs = platformdirs.PlatformDirs(APP_NAME, appauthor=False)
        return cls(
            config_dir=Path(dirs.user_config_dir),
            log_dir=Path(dirs.user_log_dir),
            data_dir=Path(dirs.user_data_dir),
            state_dir=Path(dirs.user_state_dir),
        )

    def make_private(self) -> None:
        """Create the app's folders for the user alone (0700), and tighten ones an older version left open."""
        from tray.atomic import private_dir

        for folder in dict.fromkeys((self.config_dir, self.log_dir, self.data_dir, self.state_dir)):
            try:
                private_dir(folder)
            except OSError:
                pass  # each writer reports its own folder's problem

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def app_log(self) -> Path:
        return self.log_dir / "ollama-manager.log"

    @property
    def server_log(self) -> Path:
        """Output of an Ollama server this app started."""
        return self.log_dir / "ollama-server.log"

    @property
    def history_db(self) -> Path:
        return self.data_dir / "history.sqlite3"

    @property
    def instance_lock(self) -> Path:
        return self.state_dir / "instance.lock"

    @property
    def monitor_file(self) -> Path:
        """Written by a running monitor: its pid and the status API's address."""
        return self.state_dir / "monitor.json"

    @property
    def runtime_dir(self) -> Path:
        """Short-lived private files: ``$XDG_RUNTIME_DIR/ollama-manager`` on Linux, else the state folder."""
        runtime = os.environ.get("XDG_RUNTIME_DIR", "")
        if sys.platform.startswith("linux") and runtime and Path(runtime).is_absolute() and Path(runtime).is_dir():
            return Path(runtime) / APP_NAME
        return self.state_dir

    @property
    def signin_page(self) -> Path:
        """The page that signs a browser in to the dashboard with a one-time code (0600)."""
        return self.runtime_dir / "open-dashboard.html"

    @property
    def api_token(self) -> Path:
        """Secret that authorises actions on the status API (mode 0600)."""
        return self.state_dir / "api-token"

    @property
    def oom_ladder_file(self) -> Path:
        """The out-of-memory ladder's rungs and what they changed, kept across restarts of the app."""
        return self.state_dir / "oom-ladder.json"

    @property
    def user_stop_file(self) -> Path:
        return self.state_dir / "user-stopped.json"
