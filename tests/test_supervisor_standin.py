"""The supervisor against the stand-in Ollama, both as real separate processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from tests.standin.harness import weights_blob
from tests.support.manager import Manager, wait_until

pytestmark = [pytest.mark.process, pytest.mark.slow]

DESIGN_NOTES_FIELDS = {
    "ollama_running": bool,
    "model_loaded": (str, type(None)),
    "latency_ms": (int, type(None)),
    "health": str,
    "uptime_seconds": int,
    "inference_count": int,
    "memory_usage_mb": int,
    "gpu_available": bool,
    "cpu_usage_percent": (int, float),
    "last_error": (str, type(None)),
}


@pytest.fixture
def manager(standin, tmp_path):
    m = Manager(standin.env, tmp_path)
    yield m
    m.cleanup()


def serve_starts(standin):
    return [e for e in standin.events() if e["event"] == "serve_start"]


def load_model(standin, name="llama3"):
    """Pull a model and run one chat so the server spawns a runner holding memory."""
    standin.pull(name)
    response = httpx.post(
        f"{standin.base_url}/api/chat",
        json={"model": name, "messages": [{"role": "user", "content": "hi"}], "stream": False},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return wait_until(standin.alive_runner_pids, 10, what="a runner process")


def test_start_launches_ollama_serve_when_nothing_runs(manager, standin):
    done = manager.run("start")
    assert done.returncode == 0, done.stderr
    starts = serve_starts(standin)
    assert len(starts) == 1
    assert done.stdout.strip() == f"Ollama is running at {standin.base_url} (started, pid {starts[0]['pid']})"
    assert httpx.get(standin.base_url + "/", timeout=5).text == "Ollama is running"
    # Its output goes to the server log in the app's log dir.
    log = os.path.join(standin.env["XDG_STATE_HOME"], "ollama-manager", "log", "ollama-server.log")
    with open(log) as server_log:
        assert "Listening on" in server_log.read()


def test_start_adopts_a_running_ollama_instead_of_starting_a_second(manager, standin):
    standin.spawn_serve()
    standin.wait_ready()
    done = manager.run("start")
    assert done.returncode == 0, done.stderr
    assert "(already running" in done.stdout
    assert len(serve_starts(standin)) == 1


def test_not_installed_is_one_clear_line(manager, standin):
    env = dict(manager.env)
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if not os.path.exists(os.path.join(p, "ollama"))
    )
    done = manager.run("start", env=env)
    assert done.returncode == 1
    assert done.stderr == "ollama-manager: Ollama is not installed: get it from https://ollama.com/download\n"


def test_foreign_process_on_the_port_is_named_and_left_alone(manager, standin, tmp_path):
    foreign = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.bind(('127.0.0.1', {standin.port})); s.listen(); time.sleep(120)",
        ],
    )
    try:
        wait_until(lambda: _port_open(standin.port), 10, what="the foreign listener")
        done = manager.run("start")
        assert done.returncode == 1
        assert done.stderr.startswith(f"ollama-manager: port {standin.port} is in use by python")
        assert f"pid {foreign.pid}" in done.stderr
        assert done.stderr.count("\n") == 1
        assert foreign.poll() is None  # never killed
        assert serve_starts(standin) == []
    finally:
        foreign.kill()
        foreign.wait()


def test_stop_with_a_web_server_on_the_port_says_nothing_was_stopped(manager, standin):
    foreign = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(__file__), "support", "foreign_server.py"), str(standin.port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert foreign.stdout is not None and foreign.stdout.readline() == "ready\n"
        done = manager.run("stop")
        assert done.returncode == 1
        assert "Ollama stopped" not in done.stdout + done.stderr
        assert done.stderr.startswith(f"ollama-manager: nothing was stopped: port {standin.port} is held by python")
        assert f"pid {foreign.pid}" in done.stderr
        assert f"run by {psutil.Process().username()}" in done.stderr
        assert done.stderr.count("\n") == 1
        assert foreign.poll() is None  # never signalled
    finally:
        foreign.kill()
        foreign.wait()


def _port_open(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_kill_9_is_restarted_and_orphaned_runners_are_reaped(manager, standin):
    manager.spawn_monitor()
    manager.wait_monitor_ready()
    runners = load_model(standin)
    old_pid = serve_starts(standin)[0]["pid"]
    # The runner is a child of serve, so the monitor tracks it before the crash.
    wait_until(lambda: (s := manager.api_status()) and s["memory_usage_mb"] > 60, 10, what="tree memory incl. runner")
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: len(serve_starts(standin)) == 2, 15, what="a new ollama serve")
    status = manager.wait_monitor_ready()
    assert status["pid"] != old_pid
    for pid in runners:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    kinds = [e["kind"] for e in manager.events()]
    assert "crash" in kinds and "restart" in kinds


def test_hang_that_ignores_sigterm_is_killed_and_replaced(manager, standin):
    manager.spawn_monitor(extra_env={"OLLAMA_STANDIN_IGNORE_SIGTERM": "1"})
    manager.wait_monitor_ready()
    old_pid = serve_starts(standin)[0]["pid"]
    os.kill(old_pid, signal.SIGSTOP)  # alive, port open, no answers: a hang
    wait_until(lambda: len(serve_starts(standin)) == 2, 40, what="the hung server to be replaced")
    manager.wait_monitor_ready()
    wait_until(lambda: not psutil.pid_exists(old_pid), 5, what="the hung server to be gone")
    stops = [e for e in manager.events() if e["kind"] == "stop"]
    assert stops and stops[-1]["data"]["killed"] == [old_pid]


def test_crash_loop_is_bounded_and_reports_down(manager, standin):
    manager.spawn_monitor(extra_env={"OLLAMA_STANDIN_EXIT_ON_START": "1"})
    status = wait_until(
        lambda: (s := manager.api_status()) and s["state"] == "failed" and s, 30, what="the manager to give up"
    )
    assert status["health"] == "down"
    assert status["cloud_active"] is True
    assert status["restart_attempt"] == 3
    # No storm: nothing more is started while the long retry delay runs. No check runs in it either, so
    # there is no event to await: a part of the delay is waited out.
    time.sleep(5)
    # It exits before listening, so each attempt shows as an exit with status 1:
    # the first start and 3 restart attempts.
    exits = [e for e in standin.events() if e["event"] == "serve_exit"]
    assert [e["code"] for e in exits] == [1, 1, 1, 1]
    gave_up = [e for e in manager.events() if e["kind"] == "gave_up"]
    assert len(gave_up) == 1


def test_a_user_stop_sticks(manager, standin):
    manager.spawn_monitor()
    manager.wait_monitor_ready()
    done = manager.run("stop")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Ollama stopped"
    time.sleep(4)  # many health-check intervals
    assert len(serve_starts(standin)) == 1
    status = manager.api_status()
    assert status["state"] == "stopped" and not status["ollama_running"]
    assert manager.run("start").returncode == 0
    manager.wait_monitor_ready()
    assert len(serve_starts(standin)) == 2


def test_slow_responses_are_unhealthy_without_a_restart(manager, standin):
    manager.spawn_monitor()
    manager.wait_monitor_ready()
    standin.set_faults(slow_ms=800)  # between the 0.5 s and 1.5 s thresholds
    wait_until(lambda: (s := manager.api_status()) and s["health"] == "unhealthy", 15, what="unhealthy")
    manager.wait_checks(4)  # each slow, none restarting it
    assert manager.api_status()["health"] == "unhealthy"
    assert len(serve_starts(standin)) == 1
    standin.clear_faults()
    manager.wait_monitor_ready()


def test_only_one_monitor_per_user(manager, standin):
    first = manager.spawn_monitor()
    manager.wait_monitor_ready()
    second = manager.run("monitor", timeout=30)
    assert second.returncode == 1
    assert second.stderr.strip().endswith(f"ollama-manager: Ollama Manager is already running (pid {first.pid})")
    assert first.poll() is None


def test_status_has_the_design_notes_fields(manager, standin):
    assert manager.run("start").returncode == 0
    status = manager.status()
    for field, kind in DESIGN_NOTES_FIELDS.items():
        assert isinstance(status[field], kind), (field, status[field])
    assert status["ollama_running"] is True
    assert status["health"] == "healthy"
    assert status["monitor_running"] is False
    manager.spawn_monitor()
    manager.wait_monitor_ready()
    through_api = manager.status()
    assert through_api["monitor_running"] is True
    assert set(DESIGN_NOTES_FIELDS) <= set(through_api)


def test_events_survive_a_crash_of_the_manager(manager, standin):
    monitor = manager.spawn_monitor()
    manager.wait_monitor_ready()
    os.kill(serve_starts(standin)[0]["pid"], signal.SIGKILL)
    wait_until(lambda: len(serve_starts(standin)) == 2, 15, what="the restart")
    manager.wait_monitor_ready()
    os.killpg(monitor.pid, signal.SIGKILL)
    monitor.wait()
    events = manager.events()
    assert all(set(e) >= {"time", "kind", "message"} for e in events)
    kinds = [e["kind"] for e in events]
    assert "crash" in kinds and "restart" in kinds


def test_an_unwritable_log_dir_does_not_stop_supervision(manager, standin):
    log_dir = os.path.join(standin.env["XDG_STATE_HOME"], "ollama-manager", "log")
    os.makedirs(os.path.dirname(log_dir), exist_ok=True)
    with open(log_dir, "w") as blocker:  # a file where the log dir should be
        blocker.write("not a directory")
    manager.spawn_monitor()
    manager.wait_monitor_ready()
    os.kill(serve_starts(standin)[0]["pid"], signal.SIGKILL)
    wait_until(lambda: len(serve_starts(standin)) == 2, 15, what="the restart")
    manager.wait_monitor_ready()
    assert manager.monitors[0].poll() is None


def test_start_names_a_hung_ollama_instead_of_calling_it_foreign(manager, standin):
    serve = standin.spawn_serve()
    standin.wait_ready()
    os.kill(serve.pid, signal.SIGSTOP)
    try:
        done = manager.run("start")
        assert done.returncode == 1
        assert done.stderr == (
            f"ollama-manager: Ollama (pid {serve.pid}) holds port {standin.port} but does not answer: "
            "run `ollama-manager restart`\n"
        )
        restarted = manager.run("restart")
        assert restarted.returncode == 0, restarted.stderr
        assert "(started, pid" in restarted.stdout
    finally:
        os.kill(serve.pid, signal.SIGCONT)


def test_metrics_prints_the_recorded_samples(manager, standin):
    manager.spawn_monitor()
    manager.wait_monitor_ready()
    wait_until(lambda: len(json.loads(manager.run("metrics", "--json").stdout)) >= 3, 20, what="three samples")
    samples = json.loads(manager.run("metrics", "--since", "5m", "--json").stdout)
    latest = samples[-1]
    assert latest["health"] == "healthy" and latest["span"] == 0
    # Healthy means the probe answered within the check's timeout: the sample's latency, in ms, says so too.
    timeout_ms = float(manager.env["OLLAMA_MANAGER_HEALTH_CHECK_TIMEOUT"]) * 1000
    assert 0 < latest["latency_ms"] < timeout_ms and latest["memory_mb"] > 5
    table = manager.run("metrics").stdout.splitlines()
    assert table[0].split() == ["time", "health", "latency", "memory", "cpu", "gpu", "mem"]
    assert "healthy" in table[-1]
    bad = manager.run("metrics", "--since", "yesterday")
    assert bad.returncode == 1
    assert bad.stderr == "ollama-manager: --since must look like 90s, 15m, 1h or 7d, got 'yesterday'\n"


def _users_llama_server(standin, tmp_path):
    """The user's own llama.cpp server on a blob of the models folder (a common way to reuse Ollama's weights)."""
    _, blob = weights_blob(standin.models_dir)
    link = tmp_path / "llama.cpp" / "llama-server"
    link.parent.mkdir()
    link.symlink_to(os.path.realpath(sys.executable))
    return subprocess.Popen(
        [str(link), "-c", "import time; time.sleep(600)", "--model", str(blob), "--port", "18080"],
        start_new_session=True,
    )


def test_a_users_own_llama_server_survives_stop_restart_and_a_crash(manager, standin, tmp_path):
    manager.spawn_monitor()
    manager.wait_monitor_ready()
    standin.pull("llama3")
    mine = _users_llama_server(standin, tmp_path)
    try:
        assert psutil.Process(mine.pid).name() == "llama-server"
        os.kill(serve_starts(standin)[0]["pid"], signal.SIGKILL)  # a crash
        wait_until(lambda: len(serve_starts(standin)) == 2, 15, what="the restart after the crash")
        manager.wait_monitor_ready()
        assert manager.run("restart").returncode == 0
        manager.wait_monitor_ready()
        stopped = manager.run("stop")
        assert stopped.returncode == 0, stopped.stderr
        assert manager.run("stop").returncode == 0  # with Ollama not running
        assert mine.poll() is None
        crash = next(e for e in manager.events() if e["kind"] == "crash")
        assert crash["data"]["runners_reaped"] == []
    finally:
        mine.kill()
        mine.wait()


def test_stop_names_the_runners_it_reaped(manager, standin):
    # A serve that ignores SIGTERM is killed after stop_timeout, leaving its runner behind.
    assert manager.run("start", env={**manager.env, "OLLAMA_STANDIN_IGNORE_SIGTERM": "1"}).returncode == 0
    runners = load_model(standin)
    done = manager.run("stop")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        "Ollama stopped (killed: it did not exit within 1 s); "
        f"reaped 1 orphaned runner (pid {runners[0]}: llama-server)\n"
    )
    assert not psutil.pid_exists(runners[0]) or psutil.Process(runners[0]).status() == psutil.STATUS_ZOMBIE


def test_orphans_are_reaped_when_the_models_dir_is_a_symlink(tmp_path):
    from standin.harness import StandinEnv

    real = tmp_path / "disk" / "models"
    real.mkdir(parents=True)
    env = StandinEnv(tmp_path / "env")
    env.models_dir.symlink_to(real)  # ~/.ollama/models -> another disk
    m = Manager(env.env, tmp_path)
    try:
        m.spawn_monitor()
        m.wait_monitor_ready()
        runners = load_model(env)
        wait_until(lambda: (s := m.api_status()) and s["memory_usage_mb"] > 60, 10, what="the runner to be tracked")
        os.kill(serve_starts(env)[0]["pid"], signal.SIGKILL)
        wait_until(lambda: len(serve_starts(env)) == 2, 15, what="the restart")
        wait_until(
            lambda: (
                not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in runners)
            ),
            10,
            what="the orphan to be reaped",
        )
    finally:
        m.cleanup()
        env.cleanup()


def test_mlx_runners_are_reaped_after_a_kill_9(manager, standin):
    manager.spawn_monitor(extra_env={"OLLAMA_STANDIN_MLX": "1"})
    manager.wait_monitor_ready()
    runners = load_model(standin)
    assert "--mlx-engine" in psutil.Process(runners[0]).cmdline()  # its --model is a name, not a blob path
    wait_until(lambda: (s := manager.api_status()) and s["memory_usage_mb"] > 60, 10, what="the runner to be tracked")
    os.kill(serve_starts(standin)[0]["pid"], signal.SIGKILL)
    wait_until(lambda: len(serve_starts(standin)) == 2, 15, what="the restart")
    wait_until(
        lambda: not psutil.pid_exists(runners[0]) or psutil.Process(runners[0]).status() == psutil.STATUS_ZOMBIE,
        10,
        what="the MLX runner to be reaped",
    )
    crash = next(e for e in manager.events() if e["kind"] == "crash")
    assert crash["data"]["runners_reaped"] == runners


def test_the_cloud_key_is_not_in_the_environment_of_the_server_or_its_runners(manager, standin):
    secrets = {
        "OPENAI_API_KEY": "sk-default-provider-key",
        "GROQ_KEY": "gsk-configured-key",
        "OLLAMA_MANAGER_CLOUD_API_KEY_ENV": "GROQ_KEY",
        "OLLAMA_MANAGER_CLOUD_PROVIDER": "openai",
    }
    done = manager.run("start", env={**manager.env, **secrets})
    assert done.returncode == 0, done.stderr
    serve = psutil.Process(serve_starts(standin)[0]["pid"])
    environments = [serve.environ()] + [psutil.Process(pid).environ() for pid in load_model(standin)]
    for environ in environments:
        assert "GROQ_KEY" not in environ
        assert not [name for name in environ if name.startswith("OLLAMA_MANAGER_")]
        assert environ["OLLAMA_HOST"]  # the server's own settings are still there
    # Only the configured key's variable is removed; another program's variables are the user's business.
    assert serve.environ()["OPENAI_API_KEY"] == "sk-default-provider-key"
