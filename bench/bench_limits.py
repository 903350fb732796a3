"""The loopback servers under load they must refuse: big bodies and connections that never send a byte.

    python bench/bench_limits.py [--code DIR] [--requests N] [--mb M] [--within N2] [--within-mb M2] [--half-open H]

Runs the stand-in ``ollama serve`` and ``ollama-manager monitor`` (its gateway on) as real
processes, the monitor with a hard limit of 1,024 open files (``ulimit -n 1024``), and measures:

- the monitor process's peak and settled RSS while N (default 10) clients at once send
  ``POST /api/chat`` through its gateway with an M MB (default 50) JSON body, and what they got;
- the same for N2 (default 20) clients at once with an M2 MB (default 30) body each: each within the
  32 MiB limit of a JSON body, all together past the 256 MiB the gateway holds of bodies at once;
- the time ``GET /api/status`` takes (a new connection each, 20 in a row) before and while the
  bench holds H (default 1,000) connections to the status API that never send a byte.

``--code DIR`` runs the monitor from another checkout (e.g. an exported copy of main) to
compare; the bench, the stand-in and the clients are this checkout's.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from standin.harness import StandinEnv, free_port  # noqa: E402
from tests.support.manager import Manager  # noqa: E402
from tests.test_limits import limited_python, status_port  # noqa: E402

ANSWER_TIMEOUT = 5.0


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def big_bodies(manager: Manager, pid: int, gateway: int, requests: int, mb: int) -> dict[str, object]:
    """Peak and settled RSS of ``pid`` while ``requests`` clients send an ``mb`` MB chat each; their answers."""
    body = json.dumps(
        {"model": "llama3", "messages": [{"role": "user", "content": "x" * (mb * 10**6)}], "stream": False}
    ).encode()
    answers: list[str] = []
    peak, before = 0.0, rss_mib(pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mib(pid))
            time.sleep(0.01)

    def send() -> None:
        try:
            response = httpx.post(
                f"http://127.0.0.1:{gateway}/api/chat",
                content=body,
                headers={"content-type": "application/json"},
                timeout=120,
            )
            answers.append(str(response.status_code))
        except httpx.HTTPError as exc:
            answers.append(type(exc).__name__)

    sampler = threading.Thread(target=sample)
    sampler.start()
    clients = [threading.Thread(target=send) for _ in range(requests)]
    started = time.monotonic()
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    took = time.monotonic() - started
    time.sleep(2.0)
    done.set()
    sampler.join()
    return {
        "rss_before_mib": round(before, 1),
        "rss_peak_mib": round(peak, 1),
        "rss_after_mib": round(rss_mib(pid), 1),
        "seconds": round(took, 2),
        "answers": {status: answers.count(status) for status in sorted(set(answers))},
    }


def status_times(port: int, count: int = 20) -> dict[str, object]:
    """How long ``GET /api/status`` takes, a new connection each time (ms); how many got no answer."""
    times: list[float] = []
    failed = 0
    client = httpx.Client(timeout=ANSWER_TIMEOUT, limits=httpx.Limits(max_keepalive_connections=0))
    for _ in range(count):
        started = time.perf_counter()
        try:
            ok = client.get(f"http://127.0.0.1:{port}/api/status").status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            times.append((time.perf_counter() - started) * 1000)
        else:
            failed += 1
    client.close()
    summary: dict[str, object] = {"answered": len(times), "no_answer": failed}
    if times:
        summary.update(median_ms=round(statistics.median(times), 2), max_ms=round(max(times), 2))
    return summary


def hold_half_open(port: int, count: int) -> list[socket.socket]:
    held = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        if sock.connect_ex(("127.0.0.1", port)) in (0, 115):  # 115: EINPROGRESS
            held.append(sock)
        else:
            sock.close()
    return held


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout the monitor runs from")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--within", type=int, default=20, help="clients at once with a body within the limit")
    parser.add_argument("--within-mb", type=int, default=30)
    parser.add_argument("--half-open", type=int, default=1000)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the bench holds the half-open sockets itself

    with tempfile.TemporaryDirectory(prefix="bench-limits-") as tmp:
        workdir = Path(tmp)
        standin = StandinEnv(workdir / "standin")
        gateway = free_port()
        manager = Manager(
            {**standin.env, "PYTHONPATH": str(args.code.resolve())}, workdir, python=limited_python(workdir)
        )
        manager.enable_gateway(gateway)
        try:
            monitor = manager.spawn_monitor()
            manager.wait_monitor_ready(60)
            standin.pull("llama3")
            figures: dict[str, object] = {"code": str(args.code.resolve())}
            figures["big_bodies"] = big_bodies(manager, monitor.pid, gateway, args.requests, args.mb)
            figures["bodies_within_limit"] = big_bodies(manager, monitor.pid, gateway, args.within, args.within_mb)
            port = status_port(manager)
            figures["status_idle"] = status_times(port)
            held = hold_half_open(port, args.half_open)
            time.sleep(1.0)
            figures["half_open_held"] = len(held)
            figures["status_while_held"] = status_times(port)
            figures["monitor_alive"] = monitor.poll() is None
            for sock in held:
                sock.close()
            log = manager.monitor_log()
            figures["monitor_log_lines"] = len(log.splitlines())
            print(json.dumps(figures, indent=2))
        finally:
            manager.cleanup()
            standin.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
