"""Files the app writes for the user go through tray.atomic: whole or not at all, 0600, no temp file left."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

from tray.models.defaults import install_default_modelfile
from tray.models.integrity import FileStamp, HashCache
from tray.settings.config import load_config
from tray.system.owners import SystemdService, write_journal_snapshot
from tray.system.paths import AppPaths

SHIPPED = Path(__file__).resolve().parent.parent / "tray" / "data" / "uncensored.Modelfile"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_default_modelfile_is_installed_whole_for_the_user_alone(tmp_path: Path) -> None:
    paths = AppPaths(tmp_path / "config", tmp_path / "log", tmp_path / "data", tmp_path / "state")
    config = load_config(env={}, paths=paths)
    install_default_modelfile(config, paths)
    assert config.modelfile_path.read_bytes() == SHIPPED.read_bytes()
    assert mode_of(config.modelfile_path) == 0o600
    assert [p.name for p in paths.config_dir.iterdir()] == ["uncensored.Modelfile"]


def test_the_journal_snapshot_is_written_whole_for_the_user_alone(tmp_path: Path) -> None:
    def journalctl(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 0, stdout='time=… level=INFO msg="Listening"\n', stderr="")

    target = tmp_path / "log" / "ollama-journal.log"
    assert write_journal_snapshot(SystemdService(), target, "me", run=journalctl) == target
    assert target.read_text() == 'time=… level=INFO msg="Listening"\n'
    assert mode_of(target) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["ollama-journal.log"]


def test_the_hash_cache_is_written_whole_for_the_user_alone(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"abc")
    target = tmp_path / "state" / "hashes.json"
    cache = HashCache(target)
    cache.store(blob, FileStamp.of(blob.stat()), "0" * 64)
    cache.save()
    assert json.loads(target.read_text())["files"][str(blob)]["sha256"] == "0" * 64
    assert mode_of(target) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["hashes.json"]
