"""The manager, run by a desktop user, supervising Ollama as Linux installs run it: ``ollama.service``.

Ollama runs as the unit's system account (the stand-in, started by the stand-in systemd), the
manager as an unprivileged desktop user with its own HOME: the situation of every
``curl … install.sh`` user.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import httpx
import psutil
import pytest

from tests.standin.harness import flip_middle_byte, weights_blob
from tests.support.manager import wait_until
from tests.support.system_install import OllamaService, session_manager
from tests.support.users import popen_as, run_as, scratch

pytestmark = [pytest.mark.process, pytest.mark.slow]

MODEL = "uncensored-llama3"


def desktop_serves(account):
    """``ollama serve`` processes the desktop user runs (the manager must never start one beside the unit)."""
    found = []
    for proc in psutil.process_iter(["uids", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["uids"] and proc.info["uids"].real == account.uid and cmdline[-1:] == ["serve"]:
            found.append(proc.pid)
    return found


def events_with(manager, text):
    return [e for e in manager.events() if text in e["message"]]


def test_status_names_the_services_pid_owner_and_memory(ollama_service, desktop_manager):
    pid = ollama_service.start()
    status = desktop_manager.status()
    assert status["ollama_running"] is True
    assert (status["pid"], status["managed_by"], status["owner"]) == (pid, "systemd", ollama_service.account.name)
    assert status["memory_usage_mb"] > 5  # the serve's own memory, read though another user runs it
    text = desktop_manager.run("status").stdout
    assert f"pid {pid}, managed by systemd (ollama.service), run by {ollama_service.account.name}" in text
    assert "Settings:" not in text

    # [ollama_server] cannot reach it: the status says so, with the drop-in that would.
    desktop_manager.env["OLLAMA_MANAGER_OLLAMA_SERVER_KEEP_ALIVE"] = "1h"
    text = desktop_manager.run("status").stdout
    assert (
        "Settings: [ollama_server] does not reach Ollama run by ollama.service; to apply it, run "
        '`sudo systemctl edit ollama`, add\n[Service]\nEnvironment="OLLAMA_KEEP_ALIVE=1h"\n'
        "then run `sudo systemctl restart ollama`"
    ) in text

    desktop_manager.spawn_monitor()
    live = desktop_manager.wait_monitor_ready()
    assert (live["pid"], live["managed_by"], live["owner"]) == (pid, "systemd", ollama_service.account.name)
    assert live["memory_usage_mb"] > 5


def test_verify_checks_the_services_store_and_repair_goes_through_the_api(ollama_service, desktop_manager):
    ollama_service.start()
    modelfile = desktop_manager.workdir / "uncensored.Modelfile"
    modelfile.write_text("FROM llama3\nSYSTEM You answer briefly.\n")
    desktop_manager.env["OLLAMA_MANAGER_MODELFILE"] = str(modelfile)
    built = desktop_manager.run("model", "ensure", timeout=120)
    assert built.returncode == 0, built.stderr
    assert "warning" not in built.stderr  # the store the server uses was found
    assert desktop_manager.run("model", "verify", "--full").returncode == 0

    weights, blob = weights_blob(ollama_service.models_dir)
    flip_middle_byte(blob)

    damaged = desktop_manager.run("model", "verify", "--full")
    assert damaged.returncode == 2, damaged.stdout + damaged.stderr
    assert weights in damaged.stdout

    repaired = desktop_manager.run("model", "rebuild", timeout=120)
    assert repaired.returncode == 0, repaired.stderr
    assert "repaired 1 damaged blob(s)" in repaired.stdout
    assert blob.stat().st_uid == ollama_service.account.uid  # Ollama wrote it again, not the desktop user
    assert desktop_manager.run("model", "verify", "--full").returncode == 0
    assert desktop_serves(desktop_manager.account) == []


def test_an_unreadable_store_is_said_and_never_called_missing(ollama_service, desktop_manager):
    ollama_service.start()
    ollama_service.account.home.chmod(0o700)  # the account's home closed to others
    modelfile = desktop_manager.workdir / "uncensored.Modelfile"
    modelfile.write_text("FROM llama3\nSYSTEM You answer briefly.\n")
    desktop_manager.env.update(
        {
            "OLLAMA_MANAGER_MODELFILE": str(modelfile),
            "OLLAMA_MANAGER_AUTO_BUILD_MODEL": "true",
            "OLLAMA_MANAGER_MODEL_VERIFY_INTERVAL": "1",
        }
    )
    verify = desktop_manager.run("model", "verify")
    assert verify.returncode == 1
    assert verify.stderr == (
        f"ollama-manager: cannot read Ollama's model store {ollama_service.models_dir} "
        f"(it belongs to {ollama_service.account.name}): verification skipped\n"
    )
    desktop_manager.spawn_monitor()
    wait_until(lambda: (s := desktop_manager.api_status()) and s["model_loaded"], 60, what="the model to be built")
    time.sleep(4)  # several verify intervals
    kinds = [e["kind"] for e in desktop_manager.events()]
    assert kinds.count("model_built") == 1
    assert "model_corrupt" not in kinds and "model_missing" not in kinds
    assert events_with(desktop_manager, "verification skipped")


def test_a_hung_service_gives_the_exact_systemctl_command_and_no_second_server(ollama_service, desktop_manager):
    pid = ollama_service.start()
    desktop_manager.spawn_monitor()
    desktop_manager.wait_monitor_ready()
    os.kill(pid, signal.SIGSTOP)
    try:
        status = wait_until(
            lambda: (
                (s := desktop_manager.api_status()) and "sudo systemctl restart ollama" in (s["last_error"] or "") and s
            ),
            40,
            what="the monitor to give the command",
        )
        assert f"pid {pid}" in status["last_error"] and "not Ollama" not in status["last_error"]
        time.sleep(3)  # given up: no check runs now that could be awaited instead
        told = events_with(desktop_manager, "`sudo systemctl restart ollama`")
        assert len(told) == 1, told
        assert not events_with(desktop_manager, "not Ollama")
        assert desktop_serves(desktop_manager.account) == []
        assert len(ollama_service.serve_starts()) == 1
        assert ollama_service.main_pid() == pid
    finally:
        os.kill(pid, signal.SIGCONT)


def test_with_permission_restarts_go_through_systemctl(ollama_service, systemd, desktop_manager, desktop_user):
    pid = ollama_service.start()
    systemd.allow_manage(desktop_user)
    desktop_manager.spawn_monitor()
    desktop_manager.wait_monitor_ready()
    os.kill(pid, signal.SIGSTOP)
    ollama_service.wait_new_serve(2, timeout=40)
    new_pid = ollama_service.main_pid()
    assert new_pid != pid
    status = wait_until(
        lambda: (s := desktop_manager.api_status()) and s["pid"] == new_pid and s["health"] == "healthy" and s,
        20,
        what="the monitor to watch the new serve",
    )
    assert status["managed_by"] == "systemd"
    assert "Stopped ollama.service." in systemd.journal("ollama.service")
    assert events_with(desktop_manager, "Ollama restarted through the systemd service ollama.service")
    assert desktop_serves(desktop_user) == []


def test_a_menu_restart_may_let_polkit_ask(ollama_service, systemd, desktop_manager, desktop_user):
    pid = ollama_service.start()
    systemd.polkit_agent(desktop_user, "allow")  # the user types the password when asked
    desktop_manager.spawn_monitor()
    desktop_manager.wait_monitor_ready()
    message = desktop_manager.action("restart")
    assert "managed by systemd" in message
    assert ollama_service.main_pid() not in (0, pid)
    assert desktop_serves(desktop_user) == []


def test_a_refused_menu_restart_says_the_command_and_leaves_the_server(ollama_service, desktop_manager, desktop_user):
    pid = ollama_service.start()
    desktop_manager.spawn_monitor()
    desktop_manager.wait_monitor_ready()
    answer = desktop_manager.action_answer("restart")  # no polkit agent answers: Access denied
    assert answer["ok"] is False
    assert answer["error"] == (
        f"Ollama (pid {pid}, the systemd service ollama.service, run by {ollama_service.account.name}) runs; "
        "this user may not restart it (Access denied): run `sudo systemctl restart ollama`"
    )
    assert ollama_service.main_pid() == pid
    assert len(events_with(desktop_manager, "`sudo systemctl restart ollama`")) == 1
    assert desktop_manager.wait_monitor_ready()["pid"] == pid
    assert desktop_serves(desktop_user) == []


def test_the_manager_starts_the_installed_unit_instead_of_its_own_serve(
    ollama_service, systemd, desktop_manager, desktop_user
):
    done = desktop_manager.run("start")
    assert done.returncode == 1
    assert done.stderr == (
        "ollama-manager: Ollama is installed as the systemd service ollama.service, which this user may not "
        "start (Interactive authentication required.): run `sudo systemctl start ollama`\n"
    )
    assert desktop_serves(desktop_user) == []
    systemd.allow_manage(desktop_user)
    started = desktop_manager.run("start")
    assert started.returncode == 0, started.stderr
    assert "managed by systemd" in started.stdout
    assert ollama_service.main_pid() != 0
    assert desktop_serves(desktop_user) == []


def test_a_systemctl_stop_is_a_user_stop_not_a_crash(ollama_service, systemd, desktop_manager, desktop_user):
    ollama_service.start()
    desktop_manager.spawn_monitor()
    desktop_manager.wait_monitor_ready()
    assert systemd.systemctl("stop", "ollama").returncode == 0
    wait_until(lambda: (s := desktop_manager.api_status()) and s["state"] == "stopped", 20, what="a user stop")
    time.sleep(2)
    kinds = [e["kind"] for e in desktop_manager.events()]
    assert "crash" not in kinds and "gave_up" not in kinds
    assert desktop_serves(desktop_user) == []


def test_a_unit_stuck_restarting_is_given_up_on_with_the_command_that_shows_why(
    ollama_service, accounts, systemd, desktop_manager, desktop_user
):
    accounts.add_to_group(desktop_user, "systemd-journal")
    pid = ollama_service.start()
    desktop_manager.spawn_monitor()
    desktop_manager.wait_monitor_ready()
    # From now on Ollama cannot start: its models folder is gone and may not be made again (a chmod gone wrong).
    shutil.rmtree(ollama_service.models_dir)
    ollama_service.models_dir.parent.chmod(0o555)
    os.kill(pid, signal.SIGKILL)
    status = wait_until(
        lambda: (s := desktop_manager.api_status()) and s["state"] == "failed" and s, 60, what="the monitor to give up"
    )
    assert status["last_error"].startswith(
        "Ollama does not answer and the systemd service ollama.service has been restarting for "
    )
    assert status["last_error"].endswith(
        f"it keeps exiting as it starts (Error: mkdir {ollama_service.models_dir}: permission denied: "
        "ensure path elements are traversable); see why with `journalctl -u ollama.service -n 50`"
    )
    assert status["cloud_active"] is True
    restarts = int(systemd.show("ollama.service", "NRestarts"))
    wait_until(lambda: int(systemd.show("ollama.service", "NRestarts")) > restarts + 1, 20, what="systemd to retry")
    assert len(events_with(desktop_manager, "has been restarting for")) == 1
    kinds = [e["kind"] for e in desktop_manager.events()]
    assert "not_permitted" not in kinds  # no restart of its own was tried
    assert "Stopped ollama.service." not in systemd.journal("ollama.service")
    assert desktop_serves(desktop_user) == []


def test_a_users_own_unit_goes_through_systemctl_user(accounts, systemd, user_runtime, desktop_user):
    with scratch("om-user-unit-") as root:
        service = OllamaService(root, accounts, user_runtime, systemd, user_unit_of=desktop_user)
        manager = session_manager(desktop_user, user_runtime, systemd, service)
        try:
            pid = service.start()
            status = manager.status()
            assert (status["pid"], status["managed_by"], status["unit"]) == (pid, "systemd", "ollama.service")
            assert "managed by systemd (ollama.service)" in manager.run("status").stdout
            manager.spawn_monitor()
            manager.wait_monitor_ready()

            # Its messages are in the user's own journal, which the user reads: OOM lines reach the ladder.
            service.standin.pull("llama3")
            time.sleep(1)  # the journal is followed from now on
            service.standin.set_faults(oom="cuda")
            request = {"model": "llama3", "prompt": "hi", "stream": False}
            answer = httpx.post(service.base_url + "/api/generate", json=request, timeout=30)
            assert answer.status_code == 500
            wait_until(lambda: [e for e in manager.events() if e["kind"] == "oom"], 20, what="the ladder to move")
            service.standin.set_faults()
            assert not events_with(manager, "may not read")

            # A hang: the restart goes through `systemctl --user`, which asks no one.
            os.kill(pid, signal.SIGSTOP)
            service.wait_new_serve(2, timeout=40)
            new_pid = service.main_pid()
            assert new_pid not in (0, pid)
            wait_until(
                lambda: (s := manager.api_status()) and s["pid"] == new_pid and s["health"] == "healthy",
                20,
                what="the monitor to watch the new serve",
            )
            assert events_with(manager, "Ollama restarted through the systemd service ollama.service")
            assert "Stopped ollama.service." in systemd.journal("ollama.service", user=desktop_user)
            assert desktop_serves(desktop_user) == [new_pid]  # the unit's, and no serve of the manager's beside it

            stopped = manager.run("stop")
            assert (stopped.returncode, stopped.stdout) == (0, "Ollama stopped\n"), stopped.stderr
            assert service.show("ActiveState") == "inactive"
            wait_until(lambda: (s := manager.api_status()) and s["state"] == "stopped", 20, what="the user stop")
            assert desktop_serves(desktop_user) == []
        finally:
            manager.cleanup()
            service.cleanup()


def _serve_as(account, runtime, port, home):
    env = account.env(
        {"PATH": runtime.path(), "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(home / "models")}
    )
    return popen_as(
        account,
        [str(runtime.python), str(runtime.standin / "ollama"), "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.mark.parametrize("kind", ["regular", "system"])
def test_a_server_of_another_user_is_refused_with_an_alert(
    kind, accounts, ollama_service, user_runtime, desktop_manager, tmp_path
):
    if kind == "regular":
        other = accounts.regular("other")
        described = f"run by {other.name}, another user"
    else:
        other = accounts.system("svc", ollama_service.root / "var" / "lib" / "svc")
        described = f"run by {other.name}, a system account no systemd unit runs it for"
    ollama_service.unit_path.unlink()  # no unit installed: only the other user's server is there
    serve = _serve_as(other, user_runtime, ollama_service.port, other.home)
    try:
        wait_until(lambda: _up(ollama_service), 20, what="the other user's serve")
        desktop_manager.env["OLLAMA_MANAGER_GATEWAY_ENABLED"] = "true"
        desktop_manager.spawn_monitor()
        status = wait_until(
            lambda: (s := desktop_manager.api_status()) and s["state"] == "refused" and s, 30, what="the refusal"
        )
        assert status["ollama_running"] is False and status["pid"] is None
        assert described in status["last_error"]
        assert f"pid {serve.pid}" in status["last_error"]
        alerts = [e for e in desktop_manager.events() if e["kind"] == "alert" and described in e["message"]]
        assert len(alerts) == 1
        stopped = desktop_manager.run("stop")
        assert stopped.returncode == 1 and "Ollama stopped" not in stopped.stdout
        assert stopped.stderr.startswith("ollama-manager: nothing was stopped: port ")
        assert described in stopped.stderr and f"pid {serve.pid}" in stopped.stderr
        assert serve.poll() is None  # never signalled
        assert desktop_serves(desktop_manager.account) == []
    finally:
        serve.kill()
        serve.wait()


def _up(service):
    try:
        httpx.get(service.base_url + "/", timeout=2)
        return True
    except httpx.HTTPError:
        return False


def test_oom_lines_reach_the_ladder_from_the_journal(ollama_service, accounts, desktop_manager, desktop_user):
    accounts.add_to_group(desktop_user, "systemd-journal")
    ollama_service.start()
    ollama_service.standin.pull("llama3")
    desktop_manager.spawn_monitor()
    desktop_manager.wait_monitor_ready()
    time.sleep(1)  # the journal is followed from now on
    ollama_service.standin.set_faults(oom="cuda")
    answer = httpx.post(
        ollama_service.base_url + "/api/generate", json={"model": "llama3", "prompt": "hi", "stream": False}, timeout=30
    )
    assert answer.status_code == 500
    oom = wait_until(lambda: [e for e in desktop_manager.events() if e["kind"] == "oom"], 20, what="the ladder to move")
    assert oom[0]["data"]["memory"] == "gpu"
    assert not events_with(desktop_manager, "may not read")


def test_a_refused_journal_gives_the_one_line_on_access(ollama_service, desktop_manager, desktop_user):
    ollama_service.start()
    desktop_manager.spawn_monitor()
    desktop_manager.wait_monitor_ready()
    line = (
        f"Ollama's log is in the journal (journalctl -u ollama.service), which {desktop_user.name} may not read: "
        f"run `sudo usermod -aG systemd-journal {desktop_user.name}` and log in again"
    )
    wait_until(lambda: events_with(desktop_manager, line), 20, what="the line on journal access")
    desktop_manager.wait_checks(3)
    assert len(events_with(desktop_manager, line)) == 1


OPEN_LOGS = """
import sys
from pathlib import Path
from types import SimpleNamespace
from tray.system.owners import SystemdService
from tray.ui.controller import MonitorController

log_dir = Path(sys.argv[1])
monitor = SimpleNamespace(supervisor=SimpleNamespace(external=SystemdService("ollama.service")))
paths = SimpleNamespace(log_dir=log_dir, server_log=log_dir / "ollama-server.log")
controller = MonitorController(
    monitor, SimpleNamespace(stop_ollama_on_quit=False), paths, None, None, None, open_dashboard=lambda: None
)
first = controller.log_paths()[0]
print(first)
print(Path(first).read_text())
"""


def test_open_logs_opens_the_services_journal_or_says_how_to_read_it(
    ollama_service, accounts, desktop_manager, desktop_user, user_runtime
):
    ollama_service.start()
    log_dir = desktop_manager.workdir / "logs"

    def open_logs():
        done = run_as(desktop_user, [str(user_runtime.python), "-c", OPEN_LOGS, str(log_dir)], env=desktop_manager.env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    refused = open_logs()
    assert refused.splitlines()[0] == str(log_dir / "ollama-journal.log")
    assert (
        f"which {desktop_user.name} may not read: run `sudo usermod -aG systemd-journal {desktop_user.name}`" in refused
    )
    accounts.add_to_group(desktop_user, "systemd-journal")
    readable = open_logs()
    assert "Listening on 127.0.0.1" in readable and "may not read" not in readable
