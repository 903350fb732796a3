"""The test infrastructure for other users: accounts, the user runtime, the stand-in systemd."""

from __future__ import annotations

import os

import httpx
import psutil
import pytest

from tests.support.users import run_as

pytestmark = [pytest.mark.process, pytest.mark.slow]


def test_the_desktop_user_runs_the_project_with_its_own_identity(desktop_user, user_runtime, desktop_manager):
    done = run_as(
        desktop_user,
        [
            str(user_runtime.python),
            "-c",
            "import os, tray, psutil; print(os.getuid(), os.environ['HOME'], tray.__file__)",
        ],
        env=desktop_manager.env,
    )
    assert done.returncode == 0, done.stderr
    uid, home, module = done.stdout.split()
    assert (int(uid), home) == (desktop_user.uid, str(desktop_user.home))
    assert module.startswith(str(user_runtime.source))


def test_the_service_runs_serve_as_its_account_and_journals_its_output(ollama_service, systemd, desktop_user):
    pid = ollama_service.start()
    assert pid == ollama_service.serve_starts()[0]["pid"]
    serve = psutil.Process(pid)
    assert serve.uids().real == ollama_service.account.uid
    assert serve.cmdline()[-2:] == [str(ollama_service.binary), "serve"]
    assert httpx.get(ollama_service.base_url + "/", timeout=5).text == "Ollama is running"
    assert any("Listening on" in line for line in systemd.journal("ollama.service"))
    # Models go where install.sh's account keeps them.
    ollama_service.standin.pull("llama3")
    assert (ollama_service.models_dir / "manifests" / "registry.ollama.ai" / "library" / "llama3" / "latest").is_file()

    shown = systemd.systemctl("show", "-p", "MainPID,ActiveState,User", "ollama", account=desktop_user)
    assert shown.stdout == f"MainPID={pid}\nActiveState=active\nUser={ollama_service.account.name}\n"


def test_systemctl_and_journalctl_refuse_a_user_as_real_ones_do(ollama_service, systemd, desktop_user):
    pid = ollama_service.start()
    refused = systemd.systemctl("--no-ask-password", "restart", "ollama", account=desktop_user)
    assert (refused.returncode, refused.stderr) == (
        1,
        "Failed to restart ollama.service: Interactive authentication required.\n",
    )
    no_agent = systemd.systemctl("restart", "ollama", account=desktop_user)
    assert (no_agent.returncode, no_agent.stderr) == (1, "Failed to restart ollama.service: Access denied\n")
    assert ollama_service.main_pid() == pid

    journal = run_as(
        desktop_user,
        [str(systemd.runtime.sbin / "journalctl"), "-u", "ollama", "--no-pager"],
        env=desktop_user.env({**systemd.env, "PATH": systemd.runtime.path()}),
    )
    assert journal.returncode == 1
    assert journal.stderr.endswith("No journal files were opened due to insufficient permissions.\n")
    assert journal.stderr.startswith("Hint: You are currently not seeing messages from other users and the system.")

    systemd.allow_manage(desktop_user)
    allowed = systemd.systemctl("--no-ask-password", "restart", "ollama", account=desktop_user)
    assert allowed.returncode == 0, allowed.stderr
    ollama_service.wait_new_serve(2)
    assert ollama_service.main_pid() not in (0, pid)


def test_a_unit_restarts_its_serve_and_kills_its_runners_with_it(ollama_service, systemd):
    pid = ollama_service.start()
    ollama_service.standin.pull("llama3")
    httpx.post(
        ollama_service.base_url + "/api/generate", json={"model": "llama3", "prompt": "hi", "stream": False}, timeout=30
    ).raise_for_status()
    runner = ollama_service.standin.runner_pid()
    assert runner is not None and psutil.Process(runner).uids().real == ollama_service.account.uid
    os.kill(pid, 9)
    ollama_service.wait_new_serve(2)
    assert not psutil.pid_exists(runner) or psutil.Process(runner).status() == psutil.STATUS_ZOMBIE
    assert systemd.show("ollama", "NRestarts") == "1"
