"""Busy versus hung, against the stand-in Ollama that serves one request at a time per model.

    python bench/bench_busy.py [--hang-runs N] [--pairs M] [--skip-defaults]

With ``ollama-manager monitor`` running as a real process (gateway off),
measures:

- SIGSTOP of ``ollama serve`` → a new server answering, N runs each with the
  default settings (30 s interval, 5 s timeout, 5 s stop timeout) and with a
  1 s interval (other settings default); a fresh manager per run. The stop
  lands right after the first check, so a whole interval passes before the
  next one: the worst case. Each check then waits out its 3 x 5 s timeout;
  more than 3 of them in a row restart Ollama;
- the health probe's extra latency on user requests: a user generation A
  (250 tokens x 20 ms, 300 ms of prompt evaluation per request) runs while
  the monitor checks every 1 s with the inference probe on; 0.5 to 4.5 s in
  (the offsets taken in turn, so the checks fall at every point of A), a
  second request B (10 tokens) is sent, which Ollama queues behind A. B's
  delay is the time from A's end to B's end. M pairs with the monitor running
  and M without it (interleaved); the difference is what the probe adds
  (goal: nothing, because it never queues behind a generation).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_supervisor import answers, serve_pids, summary  # noqa: E402

from standin.harness import StandinEnv  # noqa: E402
from tests.support.manager import Manager, wait_until  # noqa: E402

DEFAULTS = {
    "OLLAMA_MANAGER_HEALTH_CHECK_INTERVAL": "30",
    "OLLAMA_MANAGER_HEALTH_CHECK_TIMEOUT": "5",
    "OLLAMA_MANAGER_STOP_TIMEOUT": "5",
    "OLLAMA_MANAGER_STARTUP_TIMEOUT": "30",
}
MODEL = "llama3"
TOKEN_MS = 20
PROMPT_MS = 300  # prompt evaluation, which a queued probe would also cost
LONG_TOKENS = 250
SHORT_TOKENS = 10
SECOND_AFTER_S = (0.5, 1.5, 2.5, 3.5, 4.5)


@contextmanager
def environment(settings: dict[str, str]) -> Iterator[tuple[StandinEnv, Manager]]:
    with tempfile.TemporaryDirectory() as tmp:
        standin = StandinEnv(Path(tmp))
        manager = Manager(standin.env, Path(tmp))
        manager.env.update(settings)
        try:
            yield standin, manager
        finally:
            manager.cleanup()
            standin.cleanup()


def one_hang(settings: dict[str, str]) -> float:
    with environment(settings) as (standin, manager):
        manager.spawn_monitor()
        manager.wait_monitor_ready(90)
        pid = serve_pids(standin)[-1]
        started = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        wait_until(
            lambda: len(serve_pids(standin)) > 1 and answers(standin.base_url),
            300,
            interval=0.05,
            what="a new server",
        )
        return time.monotonic() - started


def chat(base_url: str, num_predict: int | None) -> float:
    """One stream:false chat; the monotonic time it finished."""
    body: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "stream": False}
    if num_predict is not None:
        body["options"] = {"num_predict": num_predict}
    response = httpx.post(base_url + "/api/chat", json=body, timeout=120, trust_env=False)
    response.raise_for_status()
    return time.monotonic()


def second_request_delay(base_url: str, after: float) -> float:
    """Seconds from the end of generation A to the end of request B, sent ``after`` s into A and queued behind it."""
    ended: dict[str, float] = {}
    first = threading.Thread(target=lambda: ended.__setitem__("a", chat(base_url, None)))
    first.start()
    time.sleep(after)
    ended["b"] = chat(base_url, SHORT_TOKENS)
    first.join()
    return ended["b"] - ended["a"]


def probe_latency(pairs: int) -> None:
    settings = {
        "OLLAMA_MANAGER_HEALTH_CHECK_INTERVAL": "1",
        "OLLAMA_MANAGER_HEALTH_CHECK_TIMEOUT": "1",
        "OLLAMA_MANAGER_OLLAMA_MODEL": MODEL,
    }
    with environment(settings) as (standin, manager):
        standin.spawn_serve()
        standin.wait_ready()
        standin.pull(MODEL)
        chat(standin.base_url, 1)  # loaded, as a user's earlier request left it
        standin.set_faults(token_ms=TOKEN_MS, tokens=LONG_TOKENS, slow_inference_ms=PROMPT_MS)
        without, with_monitor, probes = [], [], 0
        for pair in range(pairs):
            after = SECOND_AFTER_S[pair % len(SECOND_AFTER_S)]
            without.append(second_request_delay(standin.base_url, after))
            monitor = manager.spawn_monitor()
            manager.wait_monitor_ready(30)
            before = manager.api_status()["inference_count"]
            with_monitor.append(second_request_delay(standin.base_url, after))
            probes += manager.api_status()["inference_count"] - before
            os.killpg(monitor.pid, signal.SIGTERM)
            monitor.wait(15)
        cancelled = sum(1 for e in standin.events() if e["event"] == "request_cancelled")
    base, probed = statistics.median(without), statistics.median(with_monitor)
    print(
        f"second request queued behind a {LONG_TOKENS * TOKEN_MS / 1000:.0f} s generation, delay after it ends: "
        f"without monitor p50 {base * 1000:.0f} ms max {max(without) * 1000:.0f} ms | "
        f"with monitor (1 s checks) p50 {probed * 1000:.0f} ms max {max(with_monitor) * 1000:.0f} ms | "
        f"added p50 {(probed - base) * 1000:+.0f} ms max {(max(with_monitor) - max(without)) * 1000:+.0f} ms; "
        f"{probes} test prompts sent during {pairs} pairs, "
        f"{cancelled} requests cancelled",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hang-runs", type=int, default=3, help="0: skip the hang measurements")
    parser.add_argument("--pairs", type=int, default=10, help="0: skip the probe-latency measurement")
    parser.add_argument("--skip-defaults", action="store_true", help="skip the hang runs at the 30 s default interval")
    args = parser.parse_args()
    if args.hang_runs and not args.skip_defaults:
        hangs = [one_hang(DEFAULTS) for _ in range(args.hang_runs)]
        print(summary("SIGSTOP of serve -> new server answering, defaults (30 s / 5 s)", hangs), flush=True)
    if args.hang_runs:
        fast = {**DEFAULTS, "OLLAMA_MANAGER_HEALTH_CHECK_INTERVAL": "1"}
        hangs = [one_hang(fast) for _ in range(args.hang_runs)]
        print(summary("SIGSTOP of serve -> new server answering, 1 s interval (5 s timeout)", hangs), flush=True)
    if args.pairs:
        probe_latency(args.pairs)


if __name__ == "__main__":
    main()
