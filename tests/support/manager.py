"""Running ``ollama-manager`` as a real process against the stand-in Ollama.

The manager is pointed at the stand-in the way a user points it at a real
install: ``ollama`` first on PATH, OLLAMA_HOST and OLLAMA_MODELS, with its
own config/state dirs through the XDG variables of the stand-in's env.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.users import Account, popen_as

FAST_SETTINGS = {
    "OLLAMA_MANAGER_HEALTH_CHECK_INTERVAL": "0.5",
    "OLLAMA_MANAGER_HEALTH_CHECK_TIMEOUT": "0.5",
    "OLLAMA_MANAGER_STOP_TIMEOUT": "1",
    "OLLAMA_MANAGER_STARTUP_TIMEOUT": "10",
    "OLLAMA_MANAGER_STATUS_PORT": "0",
    # Supervision tests do not build the model; the model tests turn it back on.
    "OLLAMA_MANAGER_AUTO_BUILD_MODEL": "false",
}
# The default interval: once Ollama is found healthy, the next check is 30 s away.
DEFAULT_INTERVAL = {"OLLAMA_MANAGER_HEALTH_CHECK_INTERVAL": "30", "OLLAMA_MANAGER_HEALTH_CHECK_TIMEOUT": "5"}


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of all the live threads of ``pid``: each time one woke."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/status") as status:  # OSError: it ended
            total += sum(int(line.split()[1]) for line in status if "ctxt_switches:" in line)
    return total


def quietest_wakeups(pid: int, span: float = 12.0, window: float = 3.0, step: float = 0.5) -> tuple[int, list[int]]:
    """The fewest wakeups of ``pid`` in any ``window`` seconds of the next ``span``, and the readings.

    A thread that polls (a 0.1 s tick, a wait with a 1 s timeout) wakes
    several times in every window; one-off work (the end of a start-up)
    leaves the others quiet.
    """
    readings: list[int] = []
    for _ in range(round(span / step) + 1):
        readings.append(context_switches(pid))
        time.sleep(step)
    per_window = round(window / step)
    return min(b - a for a, b in zip(readings, readings[per_window:], strict=False)), readings


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def in_thread(call: Callable[[], Any], timeout: float = 120) -> Callable[[], Any]:
    """Run ``call`` on a thread; the returned function waits for its value (or raises its exception)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result() -> Any:
        thread.join(timeout)
        if "error" in box:
            raise box["error"]
        return box["value"]

    return result


_LIVE: list[Manager] = []


def cleanup_managers() -> None:
    """Stop every monitor a test started, before the stand-in it supervises is cleaned up.

    A monitor left running is a supervisor: it starts Ollama again once the stand-in's serve is
    killed, and that serve outlives the test. The ``standin`` fixture calls this first.
    """
    while _LIVE:
        _LIVE.pop().cleanup()


class Manager:
    """The CLI and a background ``monitor`` process, with everything reaped at the end.

    With ``account`` (and the ``python`` that user can run) both run as that user, the way a
    desktop user runs the manager; ``workdir`` must then be writable by that user.
    """

    def __init__(
        self, env: dict[str, str], workdir: Path, *, account: Account | None = None, python: Path | None = None
    ) -> None:
        self.env = {**env, **FAST_SETTINGS}
        self.workdir = workdir
        self.account = account
        self.python = str(python or sys.executable)
        self.monitors: list[subprocess.Popen[str]] = []
        _LIVE.append(self)

    def enable_gateway(self, port: int) -> None:
        """Have the monitor serve its gateway on ``port``."""
        self.env.update({"OLLAMA_MANAGER_GATEWAY_ENABLED": "true", "OLLAMA_MANAGER_GATEWAY_PORT": str(port)})

    def _popen(self, argv: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
        if self.account is not None:
            return popen_as(self.account, argv, env=env, cwd=self.workdir, **kwargs)
        return subprocess.Popen(argv, env=env, cwd=self.workdir, **kwargs)

    def run(
        self, *args: str, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.python, "-m", "tray", *args]
        with self._popen(
            argv, env or self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        ) as process:
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
                raise
        return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)

    def status(self) -> dict[str, Any]:
        done = self.run("status", "--json")
        return dict(json.loads(done.stdout))

    def events(self) -> list[dict[str, Any]]:
        return list(json.loads(self.run("events", "--json", "--limit", "1000").stdout))

    def spawn_monitor(self, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        log = open(self.workdir / f"monitor-{len(self.monitors)}.log", "w")  # noqa: SIM115
        proc = self._popen(
            [self.python, "-m", "tray", "monitor"],
            {**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        log.close()
        self.monitors.append(proc)
        return proc

    def monitor_log(self, index: int = 0) -> str:
        return (self.workdir / f"monitor-{index}.log").read_text()

    def api_status(self) -> dict[str, Any] | None:
        state_home = Path(self.env["XDG_STATE_HOME"])
        try:
            info = json.loads((state_home / "ollama-manager" / "monitor.json").read_text())
            return dict(httpx.get(f"http://127.0.0.1:{info['port']}/api/status", timeout=5).json())
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            return None

    def action_answer(self, name: str) -> dict[str, Any]:
        """Run a menu action (``unload``, ``restart`` …) through the running monitor's status API; its answer."""
        state = Path(self.env["XDG_STATE_HOME"]) / "ollama-manager"
        info = json.loads((state / "monitor.json").read_text())
        token = (state / "api-token").read_text().strip()
        response = httpx.post(
            f"http://127.0.0.1:{info['port']}/api/actions/{name}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        return dict(response.json())

    def action(self, name: str) -> str:
        """Run a menu action that must succeed; its one-line message."""
        body = self.action_answer(name)
        assert body.get("ok"), body
        return str(body["message"])

    def checks_done(self) -> int:
        """The health checks the monitor finished: each records one sample in its history (``metrics``)."""
        return len(json.loads(self.run("metrics", "--json").stdout))

    def wait_checks(self, count: int, timeout: float = 30) -> None:
        """Return once the monitor finished ``count`` more health checks, having acted on what each found.

        What proves that something did *not* happen (no restart, no second event) is this, not a sleep: the
        checks that would have done it have run.
        """
        done = self.checks_done()
        wait_until(lambda: self.checks_done() >= done + count, timeout, interval=0.2, what=f"{count} more checks")

    def wait_monitor_ready(self, timeout: float = 20) -> dict[str, Any]:
        return wait_until(
            lambda: (s := self.api_status()) and s["state"] == "running" and s["health"] == "healthy" and s,
            timeout,
            what="the monitor to report a healthy Ollama",
        )

    def cleanup(self) -> None:
        for proc in self.monitors:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    proc.kill()
                    proc.wait(5)
