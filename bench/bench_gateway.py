"""The gateway's cost: added latency and streaming throughput, against the stand-in Ollama.

    python bench/bench_gateway.py [--requests N] [--streams M] [--token-ms T] [--in-process]

Runs the stand-in ``ollama serve`` and the stand-in cloud as real processes
and the gateway (uvicorn) in a process of its own, as it runs in the
monitor's (``--in-process``: on a background thread of the bench's, whose
client then competes with it for the interpreter lock), then measures
with one keep-alive HTTP client each:

- latency of ``GET /api/version`` and of a whole ``POST /api/chat``, called
  directly and through the gateway (N each, interleaved); p50/p99 and the
  difference of the medians; then ``/api/version`` again with a pause as long
  as a direct chat after each call, which shows what waking from such a pause
  costs the gateway on this machine (a chat's gateway waits that long for Ollama),
  and the floor: a bare uvicorn app answering "ok", back to back and with
  that pause (what waking costs any server here);
- streaming: a ``POST /api/chat`` answer of 200 tokens (NDJSON) and
  ``/v1/chat/completions`` (SSE), M each, directly and through the gateway;
  chunks and bytes per second;
- the same chat answered by the cloud fallback (Ollama killed), translated
  from SSE to NDJSON, for scale.

The stand-in sends its tokens ``T`` ms apart (default 0: as fast as it can,
so the gateway's own cost per chunk is what the streaming rates compare).

The stand-in's stdlib HTTP server writes headers and body in two sends with
Nagle's algorithm on, so on a kept-alive connection each answer waits ~40 ms
for the client's delayed ACK. Real Ollama (Go) sets TCP_NODELAY on every
connection; the bench does the same to the stand-in, through a
``sitecustomize`` that sets ``StreamRequestHandler.disable_nagle_algorithm``.
Without it, both the direct and the gateway numbers show that artefact, not
the gateway's cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from standin.harness import StandinEnv  # noqa: E402
from tests.support.standin_cloud import StandinCloud  # noqa: E402
from tray.gateway.app import Gateway, GatewayServer  # noqa: E402
from tray.settings.gateway import CloudSettings, GatewaySettings  # noqa: E402

NODELAY_SITECUSTOMIZE = "import socketserver\nsocketserver.StreamRequestHandler.disable_nagle_algorithm = True\n"
LONG_PROMPT = " ".join(f"w{i}" for i in range(198))  # the stand-in echoes up to 200 words, one per chunk
CHAT: dict[str, Any] = {"model": "llama3", "messages": [{"role": "user", "content": "hi there"}], "stream": False}
STREAM_CHAT: dict[str, Any] = {"model": "llama3", "messages": [{"role": "user", "content": LONG_PROMPT}]}


# The gateway in its own process: it prints its URL, then serves until its stdin closes.
GATEWAY_PROCESS = """
import json, sys
from tray.gateway.app import Gateway, GatewayServer
from tray.settings.gateway import CloudSettings, GatewaySettings
local_url, cloud_url = sys.argv[1:3]
settings = CloudSettings(enabled=True, base_url=cloud_url, model="cloud-model", api_key_env="BENCH_KEY")
gateway = Gateway(local_url=local_url, cloud=settings, settings=GatewaySettings(), env={"BENCH_KEY": "bench-key"},
                  key_store=None)
server = GatewayServer(gateway, 0)
server.start()
print(server.url, flush=True)
sys.stdin.read()
server.stop()
"""


# The floor: a bare uvicorn app that answers "ok", in its own process; it prints its URL, serves until stdin closes.
BARE_PROCESS = """
import socket, sys, threading, uvicorn
async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY only then
sock.bind(("127.0.0.1", 0))
server = uvicorn.Server(uvicorn.Config(app, http="httptools", loop="asyncio", log_level="warning", lifespan="off"))
threading.Thread(target=lambda: (sys.stdin.read(), setattr(server, "should_exit", True)), daemon=True).start()
print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
server.run(sockets=[sock])
"""


class GatewayProcess:
    """The gateway served by a child interpreter; ``url`` once it serves."""

    def __init__(self, local_url: str, cloud_url: str, script: str = GATEWAY_PROCESS) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", script, local_url, cloud_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.stop()
            raise RuntimeError("the gateway process did not start")

    def cpu_seconds(self) -> float:
        """User + system CPU time the gateway's process has used."""
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def interleaved(
    direct: Callable[[], object], via: Callable[[], object], runs: int, pause: float = 0.0
) -> tuple[list[float], list[float]]:
    """Milliseconds per call, the two alternating so both see the same machine load; ``pause`` s after each call."""
    pairs = [(timed(direct, 1, pause)[0], timed(via, 1, pause)[0]) for _ in range(runs)]
    return [d for d, _ in pairs], [v for _, v in pairs]


def timed(call: Callable[[], object], runs: int, pause: float = 0.0) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
        if pause:
            time.sleep(pause)
    return out


def latency_line(name: str, direct: list[float], via: list[float]) -> str:
    added = statistics.median(via) - statistics.median(direct)
    return (
        f"{name:<28} direct p50 {statistics.median(direct):6.2f} ms p99 {percentile(direct, 0.99):6.2f} ms | "
        f"gateway p50 {statistics.median(via):6.2f} ms p99 {percentile(via, 0.99):6.2f} ms | added p50 {added:+.2f} ms"
    )


def floor_line(requests: int, pause: float) -> str:
    """What waking costs any server on this machine: a bare uvicorn app's "ok", back to back and ``pause`` s apart."""
    bare = GatewayProcess("", "", BARE_PROCESS)
    try:
        with httpx.Client(base_url=bare.url, timeout=60) as client:
            timed(lambda: client.get("/"), 20)
            parts = []
            for gap in (0.0, pause):
                before = bare.cpu_seconds()
                latency = statistics.median(timed(lambda: client.get("/"), requests, gap))
                spent = (bare.cpu_seconds() - before) / requests * 1e6
                parts.append(
                    f"{'back to back' if not gap else f'{gap * 1000:.0f} ms apart'} p50 {latency:5.2f} ms, "
                    f"CPU {spent:.0f} µs/request"
                )
        return f"{'bare uvicorn (the floor)':<28} " + " | ".join(parts)
    finally:
        bare.stop()


def stream_rate(client: httpx.Client, path: str, body: dict[str, Any], runs: int) -> tuple[float, float, float]:
    """(chunks/s, MB/s, seconds per stream) over ``runs`` streamed answers."""
    chunks = size = 0
    started = time.perf_counter()
    for _ in range(runs):
        with client.stream("POST", path, json=body) as response:
            for line in response.iter_lines():
                if line.strip():
                    chunks += 1
                    size += len(line) + 1
    elapsed = time.perf_counter() - started
    return chunks / elapsed, size / elapsed / 1e6, elapsed / runs


def stream_line(name: str, direct: tuple[float, float, float], via: tuple[float, float, float]) -> str:
    return (
        f"{name:<28} direct {direct[0]:7.0f} chunks/s {direct[1]:5.2f} MB/s {direct[2] * 1000:6.1f} ms/stream | "
        f"gateway {via[0]:7.0f} chunks/s {via[1]:5.2f} MB/s {via[2] * 1000:6.1f} ms/stream ({via[0] / direct[0]:.0%})"
    )


def run(requests: int, streams: int, token_ms: float, in_process: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ollama = StandinEnv(Path(tmp) / "ollama")
        cloud = StandinCloud(str(Path(tmp) / "cloud"), api_key="bench-key")
        server = None
        try:
            site = Path(tmp) / "site"
            site.mkdir()
            (site / "sitecustomize.py").write_text(NODELAY_SITECUSTOMIZE)
            ollama.spawn_serve(extra_env={"PYTHONPATH": str(site), "OLLAMA_STANDIN_TOKEN_MS": f"{token_ms:g}"})
            ollama.wait_ready()
            ollama.set_faults(token_ms=token_ms)
            ollama.pull("llama3")
            if in_process:
                settings = CloudSettings(
                    enabled=True, base_url=cloud.base_url, model="cloud-model", api_key_env="BENCH_KEY"
                )
                gateway = Gateway(
                    local_url=ollama.base_url,
                    cloud=settings,
                    settings=GatewaySettings(),
                    env={"BENCH_KEY": "bench-key"},
                    key_store=None,
                )
                server = GatewayServer(gateway, 0)
                server.start()
                gateway_url = server.url
            else:
                server = GatewayProcess(ollama.base_url, cloud.base_url)
                gateway_url = server.url
            direct = httpx.Client(base_url=ollama.base_url, timeout=60)
            via = httpx.Client(base_url=gateway_url, timeout=60)
            for client in (direct, via):  # warm up: load the model, open the connections
                client.post("/api/chat", json=CHAT)
                client.get("/api/version")

            print(
                f"gateway bench: {requests} requests, {streams} streams of ~200 chunks each, "
                f"token delay {token_ms:g} ms, gateway {'in this process' if in_process else 'in its own process'}"
            )

            def cpu_per_request(
                run: Callable[[], tuple[list[float], list[float]]],
            ) -> tuple[tuple[list[float], list[float]], str]:
                """Run a phase; its latencies and what the gateway's process spent per request through it."""
                if not isinstance(server, GatewayProcess):
                    return run(), ""
                before = server.cpu_seconds()
                result = run()
                spent = (server.cpu_seconds() - before) / requests * 1e6
                return result, f" | gateway CPU {spent:.0f} µs/request"

            version, version_cpu = cpu_per_request(
                lambda: interleaved(lambda: direct.get("/api/version"), lambda: via.get("/api/version"), requests)
            )
            print(latency_line("GET /api/version", *version) + version_cpu)
            chat, chat_cpu = cpu_per_request(
                lambda: interleaved(
                    lambda: direct.post("/api/chat", json=CHAT), lambda: via.post("/api/chat", json=CHAT), requests
                )
            )
            print(latency_line("POST /api/chat (whole)", *chat) + chat_cpu)
            # The same cheap request, each call followed by a pause as long as a direct chat: the gateway then
            # wakes from a sleep as it does for a chat, which on some machines costs more than the request's work.
            pause = statistics.median(chat[0]) / 1000
            paused, paused_cpu = cpu_per_request(
                lambda: interleaved(
                    lambda: direct.get("/api/version"), lambda: via.get("/api/version"), requests, pause
                )
            )
            print(latency_line(f"GET /api/version, {pause * 1000:.0f} ms apart", *paused) + paused_cpu)
            print(floor_line(requests, pause))
            print(
                stream_line(
                    "stream /api/chat (NDJSON)",
                    stream_rate(direct, "/api/chat", STREAM_CHAT, streams),
                    stream_rate(via, "/api/chat", STREAM_CHAT, streams),
                )
            )
            sse_body = dict(STREAM_CHAT, stream=True)
            print(
                stream_line(
                    "stream /v1/chat (SSE)",
                    stream_rate(direct, "/v1/chat/completions", sse_body, streams),
                    stream_rate(via, "/v1/chat/completions", sse_body, streams),
                )
            )

            ollama.cleanup()
            via.post("/api/chat", json=CHAT)  # the first request finds Ollama gone
            cloud_direct = httpx.Client(
                base_url=cloud.base_url, timeout=60, headers={"Authorization": "Bearer bench-key"}
            )
            openai_body = {"model": "cloud-model", "messages": CHAT["messages"], "stream": False}
            fallback_direct = timed(lambda: cloud_direct.post("/chat/completions", json=openai_body), requests)
            fallback_via = timed(lambda: via.post("/api/chat", json=CHAT), requests)
            print(latency_line("fallback chat (translated)", fallback_direct, fallback_via))
            long_openai = {"model": "cloud-model", "messages": STREAM_CHAT["messages"], "stream": True}
            print(
                stream_line(
                    "fallback stream SSE->NDJSON",
                    stream_rate(cloud_direct, "/chat/completions", long_openai, streams),
                    stream_rate(via, "/api/chat", STREAM_CHAT, streams),
                )
            )
        finally:
            if server is not None:
                server.stop()
            cloud.stop()
            ollama.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--streams", type=int, default=30)
    parser.add_argument("--token-ms", type=float, default=0.0, help="the stand-in's delay between tokens (default 0)")
    parser.add_argument("--in-process", action="store_true", help="serve the gateway on a thread of the bench's")
    args = parser.parse_args()
    run(args.requests, args.streams, args.token_ms, args.in_process)


if __name__ == "__main__":
    main()
