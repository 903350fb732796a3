"""Per-OS launch and control command lines, checked exactly through their interfaces."""

import subprocess
import sys
from pathlib import Path

import pytest

from tray.settings.hosts import parse_ollama_host
from tray.system.ollama_app_darwin import mac_start_command
from tray.system.ollama_app_windows import windows_start_command
from tray.system.owners import SystemdService, systemd_unit_from_cgroup
from tray.system.processes import (
    OllamaNotInstalled,
    find_ollama_binary,
    is_runner_cmdline,
    is_server_cmdline,
    launch_plan,
    runner_model_path,
    standard_locations,
)
from tray.system.processes_windows import CREATE_NEW_CONSOLE, CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW

DEFAULT = parse_ollama_host(None)
CUSTOM = parse_ollama_host("127.0.0.1:12345")


def test_linux_runs_ollama_serve_in_its_own_session_with_our_host():
    plan = launch_plan(Path("/usr/local/bin/ollama"), CUSTOM, platform="linux", env={"PATH": "/bin"})
    assert plan.argv == ["/usr/local/bin/ollama", "serve"]
    assert plan.env == {"PATH": "/bin", "OLLAMA_HOST": "127.0.0.1:12345"}
    assert plan.new_session and not plan.via_app and plan.creationflags == 0


def test_macos_starts_the_app_hidden_when_it_may_run_the_server():
    app_command = mac_start_command(Path("/Applications/Ollama.app"))
    plan = launch_plan(Path("/usr/local/bin/ollama"), DEFAULT, platform="darwin", app_command=app_command, env={})
    assert plan.argv == ["open", "-j", "-a", "/Applications/Ollama.app", "--args", "--fast-startup"]
    assert plan.via_app and plan.new_session


def test_macos_uses_serve_without_the_app():
    assert launch_plan(Path("/opt/homebrew/bin/ollama"), CUSTOM, platform="darwin", env={}).argv == [
        "/opt/homebrew/bin/ollama",
        "serve",
    ]


def test_windows_app_hidden_and_serve_on_a_hidden_console_of_its_own():
    app = Path("C:/Users/u/AppData/Local/Programs/Ollama/ollama app.exe")
    plan = launch_plan(None, DEFAULT, platform="win32", app_command=windows_start_command(app), env={})
    assert plan.argv == [str(app), "--hide", "--fast-startup"]
    assert plan.creationflags == CREATE_NO_WINDOW and plan.via_app and not plan.new_session
    serve = launch_plan(Path("C:/x/ollama.exe"), CUSTOM, platform="win32", env={})
    assert serve.argv == [str(Path("C:/x/ollama.exe")), "serve"]
    # As Ollama's app starts it: a console of its own (hidden) and its own process group, so that
    # Ctrl+Break on that console reaches it alone.
    assert serve.creationflags == CREATE_NEW_CONSOLE | CREATE_NEW_PROCESS_GROUP == 0x210
    assert serve.hidden_window and not serve.new_session


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


@pytest.mark.skipif(sys.platform == "win32", reason="Windows finds programs by PATHEXT, not by mode")
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


# --------------------------------------------------------------------------- Windows: stopping a server


class FakeKernel32:
    """Records the console calls; ``fail`` names the one that returns 0."""

    def __init__(self, fail: str = "") -> None:
        self.calls: list[tuple] = []
        self.fail = fail

    def _call(self, name: str, *args: object) -> int:
        self.calls.append((name, *args))
        return 0 if name == self.fail else 1

    def AttachConsole(self, pid):
        return self._call("AttachConsole", pid)

    def SetConsoleCtrlHandler(self, handler, add):
        return self._call("SetConsoleCtrlHandler", handler, add)

    def GenerateConsoleCtrlEvent(self, event, group):
        return self._call("GenerateConsoleCtrlEvent", event, group)

    def FreeConsole(self):
        return self._call("FreeConsole")

    def last_error(self):
        return 5


def test_console_break_attaches_to_the_servers_console_as_ollamas_app_does():
    from tray.system.console_break import CTRL_BREAK_EVENT, send_console_break

    kernel32 = FakeKernel32()
    send_console_break(5150, kernel32)
    assert CTRL_BREAK_EVENT == 1
    assert kernel32.calls == [
        ("AttachConsole", 5150),
        ("SetConsoleCtrlHandler", None, True),  # the sender ignores Ctrl+C on the console it borrowed
        ("GenerateConsoleCtrlEvent", 1, 5150),  # Ctrl+Break to the serve's own process group
        ("FreeConsole",),
    ]


@pytest.mark.parametrize("failing", ["AttachConsole", "SetConsoleCtrlHandler", "GenerateConsoleCtrlEvent"])
def test_a_failed_console_step_is_named_and_the_console_released(failing):
    from tray.system.console_break import ConsoleBreakError, send_console_break

    kernel32 = FakeKernel32(fail=failing)
    with pytest.raises(ConsoleBreakError) as err:
        send_console_break(5150, kernel32)
    assert str(err.value).startswith(failing) and str(err.value).endswith("failed with Windows error 5")
    attached = failing != "AttachConsole"
    assert (kernel32.calls[-1] == ("FreeConsole",)) is attached


def test_the_console_break_runs_in_a_helper_without_a_console(monkeypatch):
    from tray.system import console_break as module

    seen: dict = {}

    def run(argv, **kwargs):
        seen.update(argv=argv, **kwargs)
        return subprocess.CompletedProcess(argv, 1, "", "AttachConsole(5150) failed with Windows error 6\n")

    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", "C:/om/ollama-manager.exe")
    assert module.console_break(5150, run=run) == "AttachConsole(5150) failed with Windows error 6"
    assert seen["argv"] == ["C:/om/ollama-manager.exe", "--console-break", "5150"]
    assert seen["creationflags"] == module.DETACHED_PROCESS == 0x00000008
    assert module.console_break(5150, run=lambda argv, **kw: subprocess.CompletedProcess(argv, 0, "", "")) is None


def test_the_helper_entry_point_exits_0_only_when_the_break_was_sent(capsys):
    from tray.system.console_break import main

    assert main(["5150"], api=FakeKernel32()) == 0
    assert main(["5150"], api=FakeKernel32(fail="AttachConsole")) == 1
    assert capsys.readouterr().err.strip() == "AttachConsole(5150) failed with Windows error 5"
    assert main(["x"], api=FakeKernel32()) == 2


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


@pytest.mark.process
def test_a_windows_server_the_console_break_cannot_reach_is_hard_killed_and_reported_so(monkeypatch):
    import psutil

    from tray.system import processes, processes_windows

    child = _sleeper()
    try:
        ran: list[list[str]] = []
        steps: list[tuple[str, list[int], float | None]] = []  # what happened to the child, in order
        wait_exited = processes.wait_exited

        def taskkill(argv, **_kwargs):
            ran.append(argv)
            steps.append(("killed", [child.pid], None))
            child.kill()  # what taskkill /F does
            return subprocess.CompletedProcess(argv, 0, b"", b"")

        def recorded_wait(procs, timeout):
            procs = list(procs)
            steps.append(("waited", [proc.pid for proc in procs], timeout))
            if child.pid in [proc.pid for proc in procs] and ("killed", [child.pid], None) not in steps:
                return procs  # a wait for the polite stop it never got: noted, not sat through
            return wait_exited(procs, timeout)

        monkeypatch.setattr(
            processes_windows, "console_break", lambda pid: f"AttachConsole({pid}) failed with Windows error 5"
        )
        monkeypatch.setattr(processes_windows.subprocess, "run", taskkill)
        monkeypatch.setattr(processes, "wait_exited", recorded_wait)
        outcome = processes.terminate([processes.ProcessRef.of(psutil.Process(child.pid))], 30, platform="win32")
        assert ran == [["taskkill", "/F", "/T", "/PID", str(child.pid)]]
        assert (outcome.found, outcome.graceful, outcome.killed) == (True, False, [child.pid])
        assert outcome.how() == f"killed: AttachConsole({child.pid}) failed with Windows error 5"
        # Not asked, so not waited for: killed first, and only then waited on (for its exit after the kill).
        assert [step for step in steps if child.pid in step[1]] == [
            ("killed", [child.pid], None),
            ("waited", [child.pid], 5),
        ]
    finally:
        child.kill()
        child.wait()


@pytest.mark.process
def test_a_windows_server_that_ignores_the_break_is_killed_after_the_timeout(monkeypatch):
    import psutil

    from tray.system import processes, processes_windows

    child = _sleeper()
    try:
        breaks: list[int] = []
        ran: list[list[str]] = []
        monkeypatch.setattr(processes_windows, "console_break", breaks.append)

        def taskkill(argv, **_kwargs):
            ran.append(argv)
            child.kill()
            return subprocess.CompletedProcess(argv, 0, b"", b"")

        monkeypatch.setattr(processes_windows.subprocess, "run", taskkill)
        outcome = processes.terminate([processes.ProcessRef.of(psutil.Process(child.pid))], 0.5, platform="win32")
        assert breaks == [child.pid] and ran == [["taskkill", "/F", "/T", "/PID", str(child.pid)]]
        assert outcome.how() == "killed: it did not exit within 0.5 s"
    finally:
        child.kill()
        child.wait()


@pytest.mark.process
@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
def test_a_posix_server_that_exits_on_sigterm_stopped_gracefully():
    import psutil

    from tray.system import processes

    child = _sleeper()
    try:
        outcome = processes.terminate([processes.ProcessRef.of(psutil.Process(child.pid))], 10)
        assert (outcome.graceful, outcome.killed, outcome.how()) == (True, [], "gracefully")
        assert not psutil.pid_exists(child.pid)
    finally:
        child.kill()
        child.wait()


@pytest.mark.process
@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM; Windows has no zombies")
def test_a_server_whose_exit_its_parent_has_not_collected_yet_stopped_gracefully():
    """An orphaned serve's exit waits for init to collect it: exited all the same, not a kill."""
    import psutil

    from tray.system import processes

    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"  # never waits for its child
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        server = psutil.Process(int(parent.stdout.readline()))
        outcome = processes.terminate([processes.ProcessRef.of(server)], 10)
        assert (outcome.graceful, outcome.killed, outcome.how()) == (True, [], "gracefully")
        assert server.status() == psutil.STATUS_ZOMBIE
    finally:
        parent.kill()
        parent.wait()


def test_windows_home_is_userprofile_as_gos_user_home_dir():
    from tray.system.processes import ollama_home

    env = {"HOME": "/c/msys64/home/ada", "USERPROFILE": "C:/Users/ada", "LOCALAPPDATA": ""}
    assert ollama_home(env, "win32") == Path("C:/Users/ada")
    assert ollama_home(env, "darwin") == Path("/c/msys64/home/ada")
    assert standard_locations("win32", env)[0] == Path("C:/Users/ada/AppData/Local/Programs/Ollama/ollama.exe")


@pytest.mark.process
def test_a_server_is_found_from_the_process_table_when_the_socket_table_is_refused(standin, monkeypatch, tmp_path):
    import psutil

    from tray.system import processes
    from tray.system.processes import server_on_port

    serve = standin.spawn_serve()
    standin.wait_ready()

    def refused(*_args, **_kwargs):
        raise psutil.AccessDenied()

    # As on macOS without root: no /proc socket tables, and the system-wide socket table refused.
    monkeypatch.setattr(processes, "PROC", tmp_path / "no-proc")
    monkeypatch.setattr(psutil, "net_connections", refused)
    found = server_on_port(standin.port)
    assert found is not None and found.pid == serve.pid
    assert server_on_port(standin.port + 1 if standin.port < 65535 else standin.port - 1) is None


# Windows has no passwd or group database: importing these must fail there as it does, not just be absent here.
WITHOUT_POSIX_ACCOUNTS = """
import importlib.abc, sys

class NoPosixAccounts(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in ("pwd", "grp"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

for name in ("pwd", "grp"):
    sys.modules.pop(name, None)
sys.meta_path.insert(0, NoPosixAccounts())
"""


@pytest.mark.process
def test_the_monitor_supervisor_and_cli_import_and_name_accounts_without_pwd_and_grp():
    """The Linux owner code (accounts, systemd units) must not need ``pwd``/``grp`` to be imported or asked."""
    script = WITHOUT_POSIX_ACCOUNTS + (
        "import tray.cli, tray.service.monitor, tray.service.supervisor, tray.system.ollama_app, tray.ui.controller\n"
        "from tray.system.owners import UnitState, SystemdService, user_name\n"
        "from tray.models.store import _owner_of\n"
        "import pathlib\n"
        "try:\n"
        "    import pwd\n"
        "except ModuleNotFoundError:\n"
        "    print('blocked')\n"
        "print(user_name(1000), UnitState(SystemdService('ollama.service'), run_as='ollama').account_uid())\n"
        "print(_owner_of(pathlib.Path(sys.executable)).startswith('uid '))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["blocked", "uid", "1000", "None", "True"]
