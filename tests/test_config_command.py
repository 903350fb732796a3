"""``ollama-manager config get/set`` and the command-line flags that stand for a setting: the settings' own checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tray.cli import main

COMMENTED = "# my settings\nhealth_check_interval = 30  # every half minute\n"


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("OLLAMA_MANAGER_") or name == "OLLAMA_HOST":
            monkeypatch.delenv(name)
    for name, folder in (("XDG_CONFIG_HOME", "config"), ("XDG_STATE_HOME", "state"), ("XDG_DATA_HOME", "data")):
        monkeypatch.setenv(name, str(tmp_path / folder))
    file = tmp_path / "config.toml"
    file.write_text(COMMENTED)
    return file


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's own refusals
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_config_set_saves_a_checked_value_and_keeps_comments(config_file: Path, capsys) -> None:
    code, out, err = run(capsys, "--config", str(config_file), "config", "set", "health_check_interval", "12.5")
    assert (code, err) == (0, "")
    assert out == f"Saved health_check_interval = 12.5 to {config_file}; Ollama Manager uses it from its next start\n"
    assert config_file.read_text() == "# my settings\nhealth_check_interval = 12.5  # every half minute\n"
    code, out, _ = run(capsys, "--config", str(config_file), "config", "set", "gateway.port", "11500")
    assert code == 0
    assert "[gateway]\nport = 11500\n" in config_file.read_text()
    assert run(capsys, "--config", str(config_file), "config", "get", "gateway.port")[1] == "11500\n"
    code, out, _ = run(capsys, "--config", str(config_file), "config", "get")
    assert code == 0
    assert "health_check_interval = 12.5\n" in out and "gateway.port = 11500\n" in out


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("health_check_interval", "nan", "health_check_interval must be a finite number, got nan"),
        ("health_check_interval", "1e308", "health_check_interval must be at most 86400, got 1e+308"),
        ("status_port", "70000", "status_port must be at most 65535, got 70000"),
        ("ollama_host", "localhost:70000", "ollama_host must have a port from 1 to 65535, got 'localhost:70000'"),
        ("ollama_model", "my model", "ollama_model must be a model name such as 'llama3' or 'namespace/model:tag', "
         "got 'my model'"),
        ("cloud.base_url", "https://box:99999/v1",
         "cloud.base_url must have a port from 1 to 65535, got 'https://box:99999/v1'"),
        ("cloud.enabled", "true", "cloud.model must be set when cloud.enabled is true"),
        ("gateway.allowed_origins", "vscode-webview://*,localhost:3000",
         "gateway.allowed_origins must be an origin such as 'http://localhost:3000' or a pattern with one '*' "
         "such as 'vscode-webview://*', got 'localhost:3000'"),
    ],
)  # fmt: skip
def test_config_set_refuses_a_bad_value_in_one_line_with_status_2(
    config_file: Path, capsys, key: str, value: str, problem: str
) -> None:
    code, out, err = run(capsys, "--config", str(config_file), "config", "set", key, value)
    assert (code, out) == (2, "")
    assert err == f"ollama-manager: {config_file}: {problem}\n"
    assert config_file.read_text() == COMMENTED


def test_config_set_takes_a_list_as_comma_separated_text_and_get_shows_it(config_file: Path, capsys) -> None:
    argv = ("--config", str(config_file), "config")
    code, out, err = run(capsys, *argv, "set", "gateway.allowed_origins", "vscode-webview://*, chrome-extension://*")
    assert (code, err) == (0, "")
    assert out.startswith('Saved gateway.allowed_origins = ["vscode-webview://*", "chrome-extension://*"] to ')
    assert '[gateway]\nallowed_origins = ["vscode-webview://*", "chrome-extension://*"]\n' in config_file.read_text()
    got = run(capsys, *argv, "get", "gateway.allowed_origins")[1]
    assert got == '["vscode-webview://*", "chrome-extension://*"]\n'


def test_config_set_and_get_refuse_an_unknown_key(config_file: Path, capsys) -> None:
    for argv in (("set", "colour", "blue"), ("get", "colour")):
        code, out, err = run(capsys, "--config", str(config_file), "config", *argv)
        assert (code, out) == (2, "")
        assert err == "ollama-manager: 'colour' is not a setting (ollama-manager config get lists them)\n"


def test_config_set_fixes_a_value_that_stops_the_app(config_file: Path, capsys) -> None:
    config_file.write_text("status_port = 70000\n")
    code, _, err = run(capsys, "--config", str(config_file), "status")
    assert code == 1 and err == f"ollama-manager: {config_file}: key 'status_port' must be at most 65535, got 70000\n"
    code, _, err = run(capsys, "--config", str(config_file), "config", "set", "status_port", "11500")
    assert (code, err) == (0, "")
    assert config_file.read_text() == "status_port = 11500\n"


def test_config_set_warns_when_ollama_would_listen_on_every_interface(config_file: Path, capsys) -> None:
    code, _, err = run(capsys, "--config", str(config_file), "config", "set", "ollama_host", "0.0.0.0:11434")
    assert code == 0
    assert err == (
        "ollama-manager: warning: Ollama started by this app listens on every network interface "
        "(OLLAMA_HOST 0.0.0.0:11434): anyone on the network can use it; "
        'set ollama_host = "127.0.0.1:11434" to keep it on this machine\n'
    )


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


@pytest.mark.process
@pytest.mark.slow
def test_the_monitor_warns_at_start_when_ollama_would_listen_on_every_interface(tmp_path: Path) -> None:
    import json
    import socket
    import subprocess
    import sys

    from tests.support.manager import wait_until

    with socket.socket() as sock:  # a port nothing listens on: no Ollama is found or started here
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        **{name: str(tmp_path / name.lower()) for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME")},
        "OLLAMA_MANAGER_OLLAMA_HOST": f"0.0.0.0:{port}",
        "OLLAMA_MANAGER_STATUS_PORT": "0",
        "OLLAMA_MANAGER_AUTO_BUILD_MODEL": "false",
    }
    monitor = subprocess.Popen(
        [sys.executable, "-m", "tray", "monitor"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        monitor_file = tmp_path / "xdg_state_home" / "ollama-manager" / "monitor.json"
        wait_until(monitor_file.exists, 60, what="the monitor to start")
        events = [sys.executable, "-m", "tray", "events", "--json"]
        done = subprocess.run(events, env=env, capture_output=True, text=True, timeout=60, check=True)
    finally:
        monitor.terminate()
        monitor.wait(30)
    alerts = [event["message"] for event in json.loads(done.stdout) if event["kind"] == "alert"]
    assert alerts == [
        f"Ollama started by this app listens on every network interface (OLLAMA_HOST 0.0.0.0:{port}): anyone on "
        f'the network can use it; set ollama_host = "127.0.0.1:{port}" to keep it on this machine'
    ]


@pytest.mark.parametrize(
    ("key", "value", "attribute"),
    [
        ("ollama_host", "127.0.0.1:11500", lambda c: c.ollama_host),
        ("ollama_binary", "/opt/ollama dir/ollama", lambda c: c.ollama_binary),
        ("modelfile", "/srv/my.Modelfile", lambda c: c.modelfile),
        ("cloud.base_url", "https://llm.example/v1", lambda c: c.cloud.base_url),
        ("cloud.api_key_env", "MY_LLM_KEY", lambda c: c.cloud.api_key_env),
        ("ollama_server.models_dir", "/srv/models", lambda c: c.ollama_server.models_dir),
        ("ollama_server.expose", True, lambda c: c.ollama_server.expose),
    ],
)
def test_the_command_the_web_api_gives_for_a_command_only_key_sets_it(
    config_file: Path, capsys, key: str, value: object, attribute
) -> None:
    import shlex

    from tray.dashboard.settings_form import SettingsService
    from tray.settings.config import load_config
    from tray.system.paths import AppPaths

    service = SettingsService(config_file, {}, lambda plan, wanted: None)
    status, answer = service.save({key: value})
    assert status == 403
    command = shlex.split(answer["error"].partition(": ")[2])
    assert command[:4] == ["ollama-manager", "--config", str(config_file), "config"]
    code, out, err = run(capsys, *command[1:])
    assert (code, out.startswith(f"Saved {key} = ")) == (0, True), err
    assert attribute(load_config(config_file, env={}, paths=AppPaths.default())) == value
    assert config_file.read_text().startswith(COMMENTED)
