"""The gateway with a running monitor (real processes): it follows the monitor's status, reports what it sees,
and never takes slowness for death."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from standin.harness import StandinEnv, free_port
from tests.support.manager import Manager, in_thread, wait_until
from tests.support.standin_cloud import StandinCloud

pytestmark = [pytest.mark.process, pytest.mark.slow]

KEY = "sk-standin-0123456789"
KEY_ENV = "STANDIN_CLOUD_KEY"
HEADER = "x-ollama-manager-backend"
CHAT: dict[str, Any] = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
LONG: dict[str, Any] = {"model": "llama3", "messages": [{"role": "user", "content": "one two three four five six"}]}
LONG_REPLY = "You said: one two three four five six"  # 8 tokens: 7 pauses of token_ms


def test_gateway_inside_the_monitor(standin, tmp_path):
    port = free_port()
    manager = Manager(standin.env, tmp_path)
    manager.env.update({"OLLAMA_MANAGER_GATEWAY_ENABLED": "true", "OLLAMA_MANAGER_GATEWAY_PORT": str(port)})
    try:
        manager.spawn_monitor()
        manager.wait_monitor_ready()
        gateway = f"http://127.0.0.1:{port}"
        standin.pull("llama3")
        body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        response = httpx.post(f"{gateway}/api/chat", json=body, timeout=30)
        assert response.status_code == 200 and response.json()["done"] is True
        assert response.headers["x-ollama-manager-backend"] == "local"
        seen = wait_until(lambda: (s := manager.api_status()) and s["gateway"]["calls"] >= 1 and s, 10, what="calls")
        assert seen["gateway"]["cloud_enabled"] is False and seen["cloud_active"] is False
        # The cloud is off by default: with Ollama gone the client gets a clear error, never the cloud.
        os.kill(seen["pid"], signal.SIGSTOP)
        try:
            wait_until(lambda: health(manager) == "down", 20, what="down")
            refused = httpx.post(f"{gateway}/api/chat", json=body, timeout=30)
            assert refused.status_code == 503
            assert "the cloud fallback is off" in refused.json()["error"]
        finally:
            os.kill(seen["pid"], signal.SIGCONT)
    finally:
        manager.cleanup()


# --------------------------------------------------------------------------- with the cloud on


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[StandinCloud]:
    server = StandinCloud(str(tmp_path / "cloud"), api_key=KEY)
    yield server
    server.stop()


def cloud_env(cloud: StandinCloud, **gateway: Any) -> dict[str, str]:
    """Settings for the gateway and the cloud fallback, as a user sets them (environment overrides)."""
    env = {
        "OLLAMA_MANAGER_CLOUD_ENABLED": "true",
        "OLLAMA_MANAGER_CLOUD_BASE_URL": cloud.base_url,
        "OLLAMA_MANAGER_CLOUD_MODEL": "cloud-model",
        "OLLAMA_MANAGER_CLOUD_API_KEY_ENV": KEY_ENV,
        KEY_ENV: KEY,
        # The monitor's probe is the API one: how the inference probe behaves under load is not what is tested here.
        "OLLAMA_MANAGER_HEALTH_PROBE": "api",
    }
    env.update({f"OLLAMA_MANAGER_GATEWAY_{name.upper()}": str(value) for name, value in gateway.items()})
    return env


@pytest.fixture
def managed(standin: StandinEnv, tmp_path: Path, cloud: StandinCloud) -> Iterator[Callable[..., tuple[Manager, str]]]:
    managers: list[Manager] = []

    def start(monitor: dict[str, str] | None = None, **gateway: Any) -> tuple[Manager, str]:
        port = free_port()
        manager = Manager(standin.env, tmp_path)
        manager.env.update(cloud_env(cloud, enabled="true", port=port, **gateway))
        manager.env.update(monitor or {})
        managers.append(manager)
        manager.spawn_monitor()
        manager.wait_monitor_ready()
        standin.pull("llama3")
        return manager, f"http://127.0.0.1:{port}"

    yield start
    for manager in managers:
        manager.cleanup()


def timed(call: Callable[[], httpx.Response]) -> Callable[[], tuple[httpx.Response, float]]:
    def run() -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = call()
        return response, time.monotonic() - started

    return run


def status(manager: Manager) -> dict[str, Any]:
    """The monitor's status, once its status API answers."""
    return dict(wait_until(manager.api_status, 20, what="the status API"))


def health(manager: Manager) -> str | None:
    """The monitor's health, None while its status API does not answer (a loaded machine)."""
    status = manager.api_status()
    return None if status is None else str(status["health"])


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def restarts(manager: Manager) -> list[dict[str, Any]]:
    return [e for e in manager.events() if e["kind"] in ("restart", "crash", "unexpected_restart")]


def test_slow_answers_and_cold_loads_stay_local_with_no_restart(
    managed: Callable[..., tuple[Manager, str]], standin: StandinEnv, cloud: StandinCloud
) -> None:
    budget = 1.0
    # A probe that gives up at 6 s, not 1.5 s: on a loaded test machine the monitor must not see a hang of its own.
    manager, gateway = managed({"OLLAMA_MANAGER_HEALTH_CHECK_TIMEOUT": "2"}, first_byte_timeout=budget)
    pid = status(manager)["pid"]
    standin.set_faults(load_ms=3000)  # llama3 is not in memory: the first chat loads it for 3 s
    cold, cold_seconds = timed(lambda: httpx.post(f"{gateway}/api/chat", json=CHAT, timeout=60))()
    assert cold.headers[HEADER] == "local"
    assert ndjson(cold)[-1]["load_duration"] >= 3e9 and cold_seconds > 3 * budget
    standin.set_faults(token_ms=500)  # 3.5 s per answer
    whole = in_thread(timed(lambda: httpx.post(f"{gateway}/v1/chat/completions", json=LONG, timeout=60)))
    streamed = in_thread(timed(lambda: httpx.post(f"{gateway}/api/chat", json=LONG, timeout=60)))
    (whole_answer, whole_seconds), (streamed_answer, streamed_seconds) = whole(), streamed()
    assert (whole_answer.headers[HEADER], streamed_answer.headers[HEADER]) == ("local", "local")
    assert whole_answer.json()["choices"][0]["message"]["content"] == LONG_REPLY
    assert "".join(c["message"]["content"] for c in ndjson(streamed_answer)) == LONG_REPLY
    assert whole_seconds > 3 * budget and streamed_seconds > 3 * budget  # longer than the budget that sent them away
    assert cloud.requests() == []
    after = status(manager)
    assert (after["pid"], after["health"] != "down", after["gateway"]["cloud_calls"]) == (pid, True, 0)
    assert restarts(manager) == []


def test_a_request_waiting_on_a_hung_server_is_answered_once_the_monitor_finds_it_down(
    managed: Callable[..., tuple[Manager, str]], standin: StandinEnv, cloud: StandinCloud
) -> None:
    manager, gateway = managed(first_byte_timeout=30)
    httpx.post(f"{gateway}/api/chat", json=dict(CHAT, stream=False), timeout=30)  # llama3 in memory
    standin.set_faults(token_ms=2000)  # a whole answer of 14 s
    pid = status(manager)["pid"]
    sent = time.monotonic()
    waiting = in_thread(lambda: httpx.post(f"{gateway}/api/chat", json=dict(LONG, stream=False), timeout=60))
    time.sleep(0.3)  # the request is with Ollama, generating
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: health(manager) == "down", 30, interval=0.02, what="the monitor to see it")
        found_down = time.monotonic()
        answer = waiting()
        answered = time.monotonic()
    finally:
        with contextlib.suppress(ProcessLookupError):  # replaced by the monitor meanwhile
            os.kill(pid, signal.SIGCONT)
    assert sent < found_down
    assert answer.headers[HEADER] == "cloud"
    assert answer.json()["message"]["content"] == "Cloud answer to: one two three four five six"
    # At once: sooner than the monitor took to find Ollama stopped, let alone the answer's 14 s.
    assert answered - found_down < found_down - sent


def test_model_lists_come_from_ollama_as_soon_as_the_monitor_sees_it_back(
    managed: Callable[..., tuple[Manager, str]], standin: StandinEnv
) -> None:
    # Nothing of the gateway's own brings Ollama back within the test: its breaker skips Ollama for an hour once
    # it is down, and its own probe is an hour apart. Only the monitor's report that Ollama is back can.
    hour = 3600
    manager, gateway = managed(breaker_open_seconds=hour, breaker_max_open_seconds=hour, probe_interval=hour)
    pid = status(manager)["pid"]
    assert httpx.get(f"{gateway}/api/tags").headers[HEADER] == "local"
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: health(manager) == "down", 30, what="the monitor to see it hang")
        tags = httpx.get(f"{gateway}/api/tags", timeout=10)
        assert tags.headers[HEADER] == "gateway"
        assert [m["name"] for m in tags.json()["models"]] == ["llama3:latest", "cloud-model"]
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: health(manager) == "healthy", 30, interval=0.02, what="the monitor to see it")
    wait_until(lambda: httpx.get(f"{gateway}/api/tags").headers[HEADER] == "local", 30, interval=0.02, what="lists")
    assert httpx.get(f"{gateway}/api/ps").headers[HEADER] == "local"
    assert status(manager)["pid"] == pid


def test_the_standalone_gateway_reports_to_the_running_monitor(
    standin: StandinEnv, tmp_path: Path, cloud: StandinCloud
) -> None:
    manager = Manager(standin.env, tmp_path)
    port = free_port()
    env = {**manager.env, **cloud_env(cloud, first_byte_timeout=0.5, probe_interval=0.2)}
    log = open(tmp_path / "gateway.log", "w")  # noqa: SIM115 - closed below
    gateway: subprocess.Popen[str] | None = None
    try:
        # The monitor must see Ollama idle when the request goes out: a busy Ollama rightly gets no first-byte
        # budget. So no test prompt of its own (it would wait behind the hung one), and no check between the load
        # below and the request (the new runner's CPU time would read as someone's work) until the report asks.
        manager.spawn_monitor({"OLLAMA_MANAGER_HEALTH_PROBE": "api", "OLLAMA_MANAGER_HEALTH_CHECK_INTERVAL": "120"})
        manager.wait_monitor_ready()
        standin.pull("llama3")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "tray", "gateway", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, cwd=tmp_path,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url), 20, what="the gateway")
        httpx.post(f"{url}/api/chat", json=dict(CHAT, stream=False), timeout=30)  # llama3 in memory, idle
        standin.set_faults(hang_inference=True)
        silent = httpx.post(f"{url}/api/chat", json=CHAT, timeout=30)
        assert silent.headers[HEADER] == "cloud"
        checked = wait_until(
            lambda: [line for line in (tmp_path / "gateway.log").read_text().splitlines() if "monitor: " in line],
            20,
            what="the monitor's answer to the gateway's report",
        )
        assert checked[0].endswith("monitor: Ollama is healthy")
        assert restarts(manager) == []
        state_home = Path(manager.env["XDG_STATE_HOME"]) / "ollama-manager"
        status_port = json.loads((state_home / "monitor.json").read_text())["port"]
        anonymous = httpx.post(f"http://127.0.0.1:{status_port}/api/actions/check", timeout=10)
        assert (anonymous.status_code, anonymous.json()) == (401, {"error": "missing or wrong token"})
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(15)
        log.close()
        manager.cleanup()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/version", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
