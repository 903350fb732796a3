"""What the manager keeps is the user's business: another local user can read none of it (issue: files were 0644)."""

from __future__ import annotations

import json
import socket
import stat
import subprocess

import pytest

from tests.support.manager import wait_until
from tests.support.users import Account, popen_as, run_as

pytestmark = [pytest.mark.process, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def session_env(account: Account, user_runtime) -> dict[str, str]:
    home = account.home
    return account.env(
        {
            "PATH": user_runtime.path(),
            "PYTHONPATH": str(user_runtime.source),
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_STATE_HOME": str(home / ".local" / "state"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            # Nothing answers there and no ollama is on PATH: the monitor runs, records why, and serves its status.
            "OLLAMA_HOST": f"127.0.0.1:{free_port()}",
            "OLLAMA_MANAGER_STATUS_PORT": "0",
            "OLLAMA_MANAGER_AUTO_BUILD_MODEL": "false",
        }
    )


def test_another_local_user_reads_none_of_the_managers_files(accounts, user_runtime):
    desk, other = accounts.regular("desk"), accounts.regular("other")
    env = session_env(desk, user_runtime)
    tray = [str(user_runtime.python), "-m", "tray"]
    saved = run_as(desk, [*tray, "config", "set", "health_check_interval", "12"], env=env)
    assert saved.returncode == 0, saved.stderr
    monitor = popen_as(desk, [*tray, "monitor"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = desk.home / ".local" / "state" / "ollama-manager"
    history = desk.home / ".local" / "share" / "ollama-manager" / "history.sqlite3"
    try:
        wait_until((state / "monitor.json").exists, 60, what="the monitor to write monitor.json")
        assert json.loads((state / "monitor.json").read_text())["pid"] == monitor.pid
        assert_private(state / "monitor.json", other)  # it is removed when the monitor stops
        wait_until(history.exists, 30, what="the history database")
    finally:
        monitor.terminate()
        monitor.wait(30)
    files = [
        desk.home / ".config" / "ollama-manager" / "config.toml",
        history,
        state / "api-token",
        *sorted(path for path in (desk.home / ".local" / "state" / "ollama-manager").rglob("*.log")),
    ]
    assert any(path.name == "ollama-manager.log" for path in files)
    for path in files:
        assert_private(path, other)


def assert_private(path, other: Account) -> None:
    """``path`` is 0600 in a 0700 folder, and ``other`` cannot read it."""
    assert (oct(stat.S_IMODE(path.stat().st_mode)), oct(stat.S_IMODE(path.parent.stat().st_mode))) == (
        "0o600",
        "0o700",
    ), path
    peek = run_as(other, ["cat", str(path)], env=other.env({"PATH": "/usr/bin:/bin"}))
    assert peek.returncode != 0 and "Permission denied" in peek.stderr, (path, peek.stdout[:80])


def test_files_and_folders_an_older_version_left_open_are_closed(tmp_path):
    from tray.history import History
    from tray.system.paths import AppPaths

    paths = AppPaths(*(tmp_path / name / "ollama-manager" for name in ("config", "log", "data", "state")))
    (tmp_path / "data").mkdir(mode=0o755)
    (tmp_path / "data").chmod(0o755)
    for folder in (paths.config_dir, paths.log_dir, paths.data_dir, paths.state_dir):
        folder.mkdir(parents=True, mode=0o755)
        folder.chmod(0o755)
    History(paths.history_db).close()
    paths.history_db.chmod(0o644)
    paths.make_private()
    history = History(paths.history_db)
    history.record("start", "Ollama started")
    modes = {path: oct(stat.S_IMODE(path.stat().st_mode)) for path in (paths.data_dir, paths.history_db)}
    assert modes == {paths.data_dir: "0o700", paths.history_db: "0o600"}
    assert all(oct(stat.S_IMODE(folder.stat().st_mode)) == "0o700" for folder in (paths.config_dir, paths.state_dir))
    assert oct(stat.S_IMODE((tmp_path / "data").stat().st_mode)) == "0o755"  # a folder above the app's is not touched
