"""Per-OS launch and control command lines, checked exactly through their interfaces."""

from pathlib import Path

import pytest

from tray.settings.hosts import parse_ollama_host
from tray.system.owners import OllamaApp, SystemdService, systemd_unit_from_cgroup
from tray.system.processes import (
    CREATE_NEW_PROCESS_GROUP,
    CREATE_NO_WINDOW,
    OllamaNotInstalled,
    find_ollama_binary,
    is_runner_cmdline,
    is_server_cmdline,
    launch_plan,
    runner_model_path,
    standard_locations,
)

DEFAULT = parse_ollama_host(None)
CUSTOM = parse_ollama_host("127.0.0.1:12345")


def test_linux_runs_ollama_serve_in_its_own_session_with_our_host():
    plan = launch_plan(Path("/usr/local/bin/ollama"), CUSTOM, platform="linux", env={"PATH": "/bin"})
    assert plan.argv == ["/usr/local/bin/ollama", "serve"]
    assert plan.env == {"PATH": "/bin", "OLLAMA_HOST": "127.0.0.1:12345"}
    assert plan.new_session and not plan.via_app and plan.creationflags == 0


def test_macos_prefers_the_app_for_the_default_address():
    app = Path("/Applications/Ollama.app")
    plan = launch_plan(Path("/usr/local/bin/ollama"), DEFAULT, platform="darwin", app=app, env={})
    assert plan.argv == ["open", "-j", "-a", "/Applications/Ollama.app", "--args", "--fast-startup"]
    assert plan.via_app


def test_macos_uses_serve_for_another_address_or_without_the_app():
    app = Path("/Applications/Ollama.app")
    assert launch_plan(Path("/opt/homebrew/bin/ollama"), CUSTOM, platform="darwin", app=app, env={}).argv == [
        "/opt/homebrew/bin/ollama",
        "serve",
    ]
    assert launch_plan(Path("/opt/homebrew/bin/ollama"), DEFAULT, platform="darwin", env={}).argv == [
        "/opt/homebrew/bin/ollama",
        "serve",
    ]


def test_windows_app_hidden_and_serve_without_a_console():
    app = Path("C:/Users/u/AppData/Local/Programs/Ollama/ollama app.exe")
    plan = launch_plan(None, DEFAULT, platform="win32", app=app, env={})
    assert plan.argv == [str(app), "--hide", "--fast-startup"]
    assert plan.creationflags == CREATE_NO_WINDOW and plan.via_app and not plan.new_session
    serve = launch_plan(Path("C:/x/ollama.exe"), CUSTOM, platform="win32", env={})
    assert serve.argv == [str(Path("C:/x/ollama.exe")), "serve"]
    # Its own process group, so the console-break stop reaches it alone.
    assert serve.creationflags == CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP


def test_no_binary_and_no_app_is_not_installed():
    with pytest.raises(OllamaNotInstalled) as err:
        launch_plan(None, DEFAULT, platform="linux", env={})
    assert str(err.value) == "Ollama is not installed: get it from https://ollama.com/download"


def test_standard_locations_per_os():
    env = {"HOME": "/home/u", "LOCALAPPDATA": "C:/Users/u/AppData/Local", "ProgramFiles": "C:/Program Files"}
    assert standard_locations("darwin", env)[0] == Path("/Applications/Ollama.app/Contents/Resources/ollama")
    assert standard_locations("win32", env) == [
        Path("C:/Users/u/AppData/Local/Programs/Ollama/ollama.exe"),
        Path("C:/Program Files/Ollama/ollama.exe"),
    ]
    assert Path("/usr/local/bin/ollama") in standard_locations("linux", env)


def test_binary_found_on_path_or_configured(tmp_path):
    binary = tmp_path / "ollama"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert find_ollama_binary("", {"PATH": str(tmp_path)}, "linux") == binary
    assert find_ollama_binary(str(binary), {"PATH": ""}, "linux") == binary
    with pytest.raises(OllamaNotInstalled) as err:
        find_ollama_binary(str(tmp_path / "missing"), {"PATH": ""}, "linux")
    assert (
        str(err.value)
        == f"ollama_binary {tmp_path / 'missing'} does not exist: install Ollama from https://ollama.com/download"
    )


@pytest.mark.parametrize(
    "cmdline, server, runner",
    [
        (["/usr/local/bin/ollama", "serve"], True, False),
        (["ollama", "start"], True, False),
        (["python3", "/tmp/bin/ollama", "serve"], True, False),
        (["C:\\Program Files\\Ollama\\ollama.exe", "serve"], True, False),
        (["/usr/local/bin/ollama", "runner", "--model", "/m/blobs/sha256-1"], False, True),
        (["/usr/local/lib/ollama/llama-server", "--model", "/m"], False, True),
        (["/tmp/ollama_llama_server", "--model", "/m"], False, True),
        (["/usr/local/bin/ollama", "list"], False, False),
        (["python3", "-m", "http.server", "11434"], False, False),
        (["/usr/bin/vim", "ollama", "serve"], False, False),
    ],
)
def test_process_identification(cmdline, server, runner):
    assert is_server_cmdline(cmdline) is server
    assert is_runner_cmdline(cmdline) is runner


def test_runner_model_path():
    assert runner_model_path(["llama-server", "--model", "/m/blobs/x", "--port", "1"]) == "/m/blobs/x"
    assert runner_model_path(["llama-server"]) is None


def test_systemd_commands():
    system = SystemdService()
    assert system.restart_command() == ["systemctl", "--no-ask-password", "restart", "ollama.service"]
    assert system.stop_command() == ["systemctl", "--no-ask-password", "stop", "ollama.service"]
    assert system.manual_command("restart") == "sudo systemctl restart ollama"
    user = SystemdService(user=True)
    assert user.restart_command() == ["systemctl", "--user", "--no-ask-password", "restart", "ollama.service"]
    assert user.manual_command("stop") == "systemctl --user stop ollama"


def test_systemd_detected_from_the_cgroup():
    assert systemd_unit_from_cgroup("0::/system.slice/ollama.service\n") == SystemdService()
    assert systemd_unit_from_cgroup("0::/user.slice/user-1000.slice/user@1000.service/app.slice/ollama.service") == (
        SystemdService(user=True)
    )
    assert systemd_unit_from_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n") is None
    assert systemd_unit_from_cgroup("") is None


def test_official_app_commands():
    mac = OllamaApp(Path("/Applications/Ollama.app"), 42, "darwin")
    assert mac.quit_command() == ["osascript", "-e", 'tell application "Ollama" to quit']
    assert mac.start_command() == ["open", "-j", "-a", "/Applications/Ollama.app", "--args", "--fast-startup"]
    win = OllamaApp(Path("C:/Users/u/AppData/Local/Programs/Ollama/ollama app.exe"), 42, "win32")
    assert win.quit_command() == ["taskkill", "/PID", "42", "/T"]
    assert win.start_command() == [
        str(Path("C:/Users/u/AppData/Local/Programs/Ollama/ollama app.exe")),
        "--hide",
        "--fast-startup",
    ]
