"""Recovery times and the monitor's idle cost, against the stand-in Ollama.

    python bench/bench_supervisor.py [--runs N] [--idle-seconds S]

Measures, with ``ollama-manager monitor`` running as a real process:
- kill -9 of ``ollama serve`` → the server answering again (N runs);
- SIGSTOP hang (ignoring SIGTERM) → a new server answering (N runs), with the
  default probe rules (more than 3 consecutive timeouts) at a 1 s interval,
  0.5 s health_check_timeout (so a probe gives up at 1.5 s) and a 1 s stop
  timeout;
each run with a fresh manager (a crash loop on one server makes the policy
give up, which is the point of it);
- the monitor's CPU % and RSS while idle for S seconds at the default 30 s
  interval.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.standin.harness import StandinEnv  # noqa: E402
from tests.support.manager import Manager, wait_until  # noqa: E402


def serve_pids(standin: StandinEnv) -> list[int]:
    return [e["pid"] for e in standin.events() if e["event"] == "serve_start"]


def answers(url: str) -> bool:
    try:
        return httpx.get(url + "/", timeout=0.5).text == "Ollama is running"
    except httpx.HTTPError:
        return False


def recovery(standin: StandinEnv, manager: Manager, signum: int) -> float:
    before = len(serve_pids(standin))
    pid = serve_pids(standin)[-1]
    started = time.monotonic()
    os.kill(pid, signum)
    wait_until(
        lambda: len(serve_pids(standin)) > before and answers(standin.base_url), 120, interval=0.01, what="recovery"
    )
    return time.monotonic() - started


def summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{name}: n={len(values)} p50={statistics.median(values):.2f} s p95={p95:.2f} s max={max(values):.2f} s"


def one_recovery(signum: int) -> float:
    """A fresh manager for each run: the restart policy rightly gives up on a crash loop,
    so back-to-back kills of one server would measure the backoff, not a recovery."""
    with tempfile.TemporaryDirectory() as tmp:
        standin = StandinEnv(Path(tmp))
        manager = Manager(standin.env, Path(tmp))
        manager.env["OLLAMA_MANAGER_HEALTH_CHECK_INTERVAL"] = "1"
        try:
            manager.spawn_monitor(extra_env={"OLLAMA_STANDIN_IGNORE_SIGTERM": "1"})
            manager.wait_monitor_ready(60)
            return recovery(standin, manager, signum)
        finally:
            manager.cleanup()
            standin.cleanup()


def run_recoveries(runs: int) -> None:
    kills = [one_recovery(signal.SIGKILL) for _ in range(runs)]
    print(summary("kill -9 -> answering again", kills), flush=True)
    hangs = [one_recovery(signal.SIGSTOP) for _ in range(runs)]
    print(summary("SIGSTOP hang (ignores SIGTERM) -> answering again", hangs), flush=True)


def run_idle(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        standin = StandinEnv(Path(tmp))
        manager = Manager(standin.env, Path(tmp))
        manager.env["OLLAMA_MANAGER_HEALTH_CHECK_INTERVAL"] = "30"
        manager.env["OLLAMA_MANAGER_HEALTH_CHECK_TIMEOUT"] = "5"
        try:
            monitor = manager.spawn_monitor()
            manager.wait_monitor_ready(60)
            proc = psutil.Process(monitor.pid)
            time.sleep(2)
            cpu_before = proc.cpu_times()
            started = time.monotonic()
            rss = []
            while time.monotonic() - started < seconds:
                rss.append(proc.memory_info().rss)
                time.sleep(1)
            cpu_after = proc.cpu_times()
            wall = time.monotonic() - started
            cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
            print(
                f"monitor idle over {wall:.0f} s at a 30 s interval: CPU {100 * cpu / wall:.2f} % of one core, "
                f"RSS {statistics.mean(rss) / 2**20:.1f} MiB mean / {max(rss) / 2**20:.1f} MiB max"
            )
        finally:
            manager.cleanup()
            standin.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=60)
    args = parser.parse_args()
    run_recoveries(args.runs)
    run_idle(args.idle_seconds)


if __name__ == "__main__":
    main()
