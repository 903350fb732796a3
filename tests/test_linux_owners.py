"""Pure parts of finding and judging the server's owner on Linux, and of naming models."""

from __future__ import annotations

import doctest
import socket
import subprocess

import pytest

import tray.service.supervisor
import tray.system.owners
import tray.system.processes
from tray.core.names import same_model
from tray.service.monitor import _has_model
from tray.system.owners import (
    SystemdService,
    Trust,
    journal_access_line,
    journal_refused,
    judge_owner,
    unit_state,
)
from tray.system.processes import find_listener


@pytest.mark.parametrize("module", [tray.system.owners, tray.system.processes, tray.service.supervisor])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


def test_a_model_listed_with_other_case_or_tag_form_is_present():
    assert _has_model({"Llama3:latest"}, "llama3")
    assert same_model("library/Mistral:Latest", "mistral")
    assert not _has_model({"llama3:8b"}, "llama3")


@pytest.mark.parametrize(
    ("server", "me", "unit_account", "trust"),
    [
        (1000, 1000, None, Trust.SELF),
        (0, 1000, None, Trust.ROOT),
        (996, 1000, 996, Trust.SERVICE),
        (1001, 1000, None, Trust.OTHER_USER),
        (1001, 1000, 996, Trust.OTHER_USER),
        (996, 1000, None, Trust.UNKNOWN_ACCOUNT),
        (65534, 1000, None, Trust.UNKNOWN_ACCOUNT),
    ],
)
def test_trust_by_owner(server, me, unit_account, trust):
    assert judge_owner(server, me, unit_account) is trust


def test_unit_state_reads_systemctl_show():
    shown = (
        "Id=ollama.service\nLoadState=loaded\nActiveState=active\nMainPID=812\nUser=ollama\n"
        'Environment=PATH=/usr/bin "OLLAMA_MODELS=/srv/my models"\n'
        "ExecStart={ path=/usr/local/bin/ollama ; argv[]=/usr/local/bin/ollama serve ; ignore_errors=no }\n"
        "FragmentPath=/etc/systemd/system/ollama.service\n"
    )
    calls = []

    def run(argv):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, shown, "")

    state = unit_state(SystemdService("ollama.service"), run)
    assert calls == [
        [
            "systemctl",
            "show",
            "-p",
            "Id,LoadState,ActiveState,MainPID,User,Environment,ExecStart,FragmentPath",
            "ollama.service",
        ]
    ]
    assert (state.installed, state.main_pid, state.account, state.models_dir) == (True, 812, "ollama", "/srv/my models")
    assert state.runs_ollama_serve
    missing = unit_state(SystemdService("ollama.service", user=True), lambda argv: None)
    assert not missing.installed


def test_systemctl_commands_ask_only_for_a_users_own_action():
    unit = SystemdService("ollama.service")
    assert unit.restart_command() == ["systemctl", "--no-ask-password", "restart", "ollama.service"]
    assert unit.restart_command(interactive=True) == ["systemctl", "restart", "ollama.service"]
    assert SystemdService("ollama.service", user=True).start_command() == [
        "systemctl",
        "--user",
        "--no-ask-password",
        "start",
        "ollama.service",
    ]
    assert unit.manual_command("restart") == "sudo systemctl restart ollama"


def test_journal_refusals_are_recognised_with_or_without_an_exit_status():
    assert journal_refused("No journal files were opened due to insufficient permissions.\n")
    assert journal_refused("Hint: You are currently not seeing messages from other users and the system.\n")
    # a user's own units log to the user's journal: the hint does not refuse them
    assert not journal_refused("Hint: You are currently not seeing messages from other users and the system.\n", True)
    assert journal_refused("No journal files were opened due to insufficient permissions.\n", user_unit=True)
    assert not journal_refused("")
    assert journal_access_line(SystemdService("ollama.service"), "ada") == (
        "Ollama's log is in the journal (journalctl -u ollama.service), which ada may not read: "
        "run `sudo usermod -aG systemd-journal ada` and log in again"
    )


def test_the_listener_is_found_with_its_owner(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        import os

        found = find_listener(listener.getsockname()[1])
        assert found is not None and (found.uid, found.pid) == (os.getuid(), os.getpid())


def _show(units):
    """A systemctl that knows ``units`` ({name: (MainPID, ExecStart argv)})."""

    def run(argv):
        name = argv[-1]
        if name not in units or "--user" in argv:
            return subprocess.CompletedProcess(argv, 0, "LoadState=not-found\nMainPID=0\n", "")
        main_pid, exec_start = units[name]
        text = (
            f"LoadState=loaded\nActiveState=active\nMainPID={main_pid}\nUser=llm\n"
            f"ExecStart={{ path=x ; argv[]={exec_start} ; }}\n"
        )
        return subprocess.CompletedProcess(argv, 0, text, "")

    return run


def test_the_unit_is_found_from_the_cgroup_whatever_its_name():
    from tray.system.owners import unit_running

    cgroup = lambda pid: "0::/system.slice/llm-server.service\n"  # noqa: E731
    by_exec = unit_running(4242, "linux", _show({"llm-server.service": (4000, "/opt/ollama serve")}), cgroup)
    assert by_exec is not None and by_exec.service.unit == "llm-server.service"
    by_main_pid = unit_running(4242, "linux", _show({"llm-server.service": (4242, "/opt/wrapper.sh")}), cgroup)
    assert by_main_pid is not None and by_main_pid.service.unit == "llm-server.service"
    # A terminal's own service holds a serve started from it, but does not run Ollama.
    terminal = lambda pid: "0::/user.slice/user-1000.slice/user@1000.service/app.slice/gnome-terminal-server.service\n"  # noqa: E731
    assert (
        unit_running(
            4242,
            "linux",
            _show({"gnome-terminal-server.service": (99, "/usr/libexec/gnome-terminal-server")}),
            terminal,
        )
        is None
    )


def test_the_unit_is_found_from_an_installed_units_main_pid_when_the_cgroup_says_nothing():
    from tray.system.owners import unit_running

    root_cgroup = lambda pid: "0::/\n"  # noqa: E731 - a container, or the stand-in systemd
    found = unit_running(4242, "linux", _show({"ollama.service": (4242, "/usr/local/bin/ollama serve")}), root_cgroup)
    assert found is not None and (found.service.unit, found.account) == ("ollama.service", "llm")
    assert (
        unit_running(4243, "linux", _show({"ollama.service": (4242, "/usr/local/bin/ollama serve")}), root_cgroup)
        is None
    )
