"""The gateway's cost: added latency and streaming throughput, against the stand-in Ollama.

    python bench/bench_gateway.py [--requests N] [--streams M]

Runs the stand-in ``ollama serve`` and the stand-in cloud as real processes
and the gateway (uvicorn, in this process's background thread), then measures
with one keep-alive HTTP client each:

- latency of ``GET /api/version`` and of a whole ``POST /api/chat``, called
  directly and through the gateway (N each, interleaved); p50/p99 and the
  difference of the medians;
- streaming: a ``POST /api/chat`` answer of 200 tokens (NDJSON) and
  ``/v1/chat/completions`` (SSE), M each, directly and through the gateway;
  chunks and bytes per second;
- the same chat answered by the cloud fallback (Ollama killed), translated
  from SSE to NDJSON, for scale.

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
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from standin.harness import StandinEnv  # noqa: E402
from standin_cloud import StandinCloud  # noqa: E402
from tray.gateway.app import Gateway, GatewayServer  # noqa: E402
from tray.gateway.settings import CloudSettings, GatewaySettings  # noqa: E402

NODELAY_SITECUSTOMIZE = "import socketserver\nsocketserver.StreamRequestHandler.disable_nagle_algorithm = True\n"
LONG_PROMPT = " ".join(f"w{i}" for i in range(198))  # the stand-in echoes up to 200 words, one per chunk
CHAT: dict[str, Any] = {"model": "llama3", "messages": [{"role": "user", "content": "hi there"}], "stream": False}
STREAM_CHAT: dict[str, Any] = {"model": "llama3", "messages": [{"role": "user", "content": LONG_PROMPT}]}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def interleaved(direct: Callable[[], object], via: Callable[[], object], runs: int) -> tuple[list[float], list[float]]:
    """Milliseconds per call, the two alternating so both see the same machine load."""
    pairs = [(timed(direct, 1)[0], timed(via, 1)[0]) for _ in range(runs)]
    return [d for d, _ in pairs], [v for _, v in pairs]


def timed(call: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def latency_line(name: str, direct: list[float], via: list[float]) -> str:
    added = statistics.median(via) - statistics.median(direct)
    return (
        f"{name:<28} direct p50 {statistics.median(direct):6.2f} ms p99 {percentile(direct, 0.99):6.2f} ms | "
        f"gateway p50 {statistics.median(via):6.2f} ms p99 {percentile(via, 0.99):6.2f} ms | added p50 {added:+.2f} ms"
    )


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


def run(requests: int, streams: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ollama = StandinEnv(Path(tmp) / "ollama")
        cloud = StandinCloud(str(Path(tmp) / "cloud"), api_key="bench-key")
        server = None
        try:
            site = Path(tmp) / "site"
            site.mkdir()
            (site / "sitecustomize.py").write_text(NODELAY_SITECUSTOMIZE)
            ollama.spawn_serve(extra_env={"PYTHONPATH": str(site)})
            ollama.wait_ready()
            ollama.pull("llama3")
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
            direct = httpx.Client(base_url=ollama.base_url, timeout=60)
            via = httpx.Client(base_url=server.url, timeout=60)
            for client in (direct, via):  # warm up: load the model, open the connections
                client.post("/api/chat", json=CHAT)
                client.get("/api/version")

            print(f"gateway bench: {requests} requests, {streams} streams of ~200 chunks each")
            version = interleaved(lambda: direct.get("/api/version"), lambda: via.get("/api/version"), requests)
            print(latency_line("GET /api/version", *version))
            chat = interleaved(
                lambda: direct.post("/api/chat", json=CHAT), lambda: via.post("/api/chat", json=CHAT), requests
            )
            print(latency_line("POST /api/chat (whole)", *chat))
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
    args = parser.parse_args()
    run(args.requests, args.streams)


if __name__ == "__main__":
    main()
