"""The command-line flags that stand for a setting, checked as the setting is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tray.cli import main


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("OLLAMA_MANAGER_") or name == "OLLAMA_HOST":
            monkeypatch.delenv(name)
    for name, folder in (("XDG_CONFIG_HOME", "config"), ("XDG_STATE_HOME", "state"), ("XDG_DATA_HOME", "data")):
        monkeypatch.setenv(name, str(tmp_path / folder))
    file = tmp_path / "config.toml"
    file.write_text("")
    return file


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's own refusals
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_gateway_port_flag_passes_the_settings_check(config_file: Path, capsys) -> None:
    code, out, err = run(capsys, "--config", str(config_file), "gateway", "--port", "70000")
    assert (code, out) == (2, "")
    assert err.splitlines()[-1] == "ollama-manager gateway: error: argument --port: must be at most 65535, got 70000"
    assert "Traceback" not in err


def test_a_huge_events_limit_is_refused_in_one_line(config_file: Path, capsys) -> None:
    code, out, err = run(capsys, "--config", str(config_file), "events", "--limit", "9" * 30)
    assert (code, out) == (2, "")
    assert err.splitlines()[-1] == (
        f"ollama-manager events: error: argument --limit: must be a whole number from 1 to 1000000, got '{'9' * 30}'"
    )
