"""The runner child: holds a loaded model's memory and does the generating, over HTTP on its port.

Two commands start it, as the Ollama version serve claims would:

  <install>/lib/ollama/llama-server --model <blob> --port N --host 127.0.0.1 ...   (Ollama >= 0.30;
      the stand-in runs it as ``llama-server standin_runner.py --model ...``, ``llama-server`` being a
      link to the Python interpreter, so the process is named llama-server)
  ollama runner --model <blob> --port N                                            (Ollama < 0.30)

It starts listening at once and answers ``GET /health`` with ``{"status":"loading model"}``
(503) while it loads: it checks the GGUF magic (a bad file makes it exit 1 with
llama.cpp's error lines), allocates and touches OLLAMA_STANDIN_RUNNER_MB MiB so its RSS
is real, and waits out the load time serve asked for. Then ``/health`` is
``{"status":"ok"}`` and ``POST /completion`` streams the answer serve asked for as
server-sent events, one token per event, doing a few milliseconds of real CPU work per
token and pausing between tokens as asked; it stops as soon as serve closes the
connection. ``POST /embedding`` answers a deterministic unit vector.

What serve asks for travels in the request body (``standin``: tokens, pacing) and, for
the load, in the OLLAMA_STANDIN_RUNNER_PLAN environment variable (JSON: ``load_ms``,
``spawned`` epoch seconds, ``cpu_ms`` per token, ``oom`` {kind, via}: the out-of-memory
failure to act out, with the lines llama.cpp prints, see :data:`OOM_LINES`). The runner
does not watch its parent: when serve is SIGKILLed it lives on as an orphan, as Ollama's
runners do.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import select
import signal
import socket
import socketserver
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from standin_common import MIB, set_process_name, slog_line, write_line

PAGE = 4096
DEFAULT_CPU_MS = 2.0
JSON_TYPE = "application/json; charset=utf-8"
RECOVERABLE_SECONDS = 0.3
# What llama.cpp prints when memory runs out, per kind; each contains one of Ollama's OOM substrings.
OOM_LINES: Dict[str, List[str]] = {
    "cuda": [
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 4096.00 MiB on device 0: "
        "cudaMalloc failed: out of memory",
        "alloc_tensor_range: failed to allocate CUDA0 buffer of size 4294967296",
        "llama_model_load: error loading model: unable to allocate CUDA0 buffer",
        "llama_model_load_from_file_impl: failed to load model",
    ],
    "host": [
        "ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 8589934592",
        "alloc_tensor_range: failed to allocate CPU buffer of size 8589934592",
        "llama_model_load: error loading model: unable to allocate CPU buffer",
        "llama_model_load_from_file_impl: failed to load model",
    ],
    "windows": [
        "llama_model_load: error loading model: MapViewOfFile failed: "
        "Not enough memory resources are available to process this command.",
        "llama_model_load_from_file_impl: failed to load model",
    ],
    "metal": [
        "ggml_metal_graph_compute: command buffer 0 failed with status 5",
        "error: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)",
    ],
    "vulkan": [
        "ggml_vulkan: Device memory allocation of size 4294967296 failed.",
        "ggml_vulkan: vk::Device::allocateMemory: VK_ERROR_OUT_OF_DEVICE_MEMORY",
        "llama_model_load: error loading model: unable to allocate Vulkan0 buffer",
        "llama_model_load_from_file_impl: failed to load model",
    ],
    "compute": [
        "ggml_backend_sched_reserve: compute buffer allocation failed",
        "llama_init_from_model: failed to initialize the context: failed to allocate compute pp buffers",
    ],
    "health": [],
    "runtime": [
        "CUDA error: out of memory",
        "  current device: 0, in function ggml_backend_cuda_graph_compute at ggml/src/ggml-cuda/ggml-cuda.cu:2773",
        "  cudaGraphLaunch(cuda_ctx->cuda_graph->instance, cuda_ctx->stream())",
    ],
    "recoverable": [
        "ggml_backend_sched_reserve: compute buffer allocation failed, retrying without pipeline parallelism"
    ],
}


def _flag(argv: List[str], name: str) -> Optional[str]:
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _say(line: str) -> None:
    write_line(sys.stderr, line)


def model_error(path: str) -> Optional[str]:
    """Why llama.cpp would refuse this file, or None when it starts with the GGUF magic."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        return "open %s: %s" % (path, (error.strerror or str(error)).lower())
    return None if magic == b"GGUF" else "invalid file magic"


def hold_memory(megabytes: int) -> bytearray:
    """Allocate and touch every page of ``megabytes`` MiB so it counts in RSS."""
    buffer = bytearray(megabytes * MIB)
    pages = len(range(0, len(buffer), PAGE))
    buffer[::PAGE] = b"\x01" * pages
    return buffer


def burn_cpu(milliseconds: float) -> None:
    """Spend about this much CPU time of this thread, as evaluating a token does."""
    end = time.thread_time() + milliseconds / 1000.0
    data = b"\x00" * 4096
    while time.thread_time() < end:
        data = hashlib.sha256(data).digest() * 128


def embedding_vector(text: str, dimensions: int) -> List[float]:
    """A deterministic unit vector for a text."""
    rng = random.Random(hashlib.sha256(text.encode("utf-8")).hexdigest())
    values = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = sum(value * value for value in values) ** 0.5 or 1.0
    return [round(value / norm, 8) for value in values]


def read_plan() -> Dict[str, Any]:
    """What serve asked of this load (OLLAMA_STANDIN_RUNNER_PLAN), empty when absent or unreadable."""
    try:
        plan = json.loads(os.environ.get("OLLAMA_STANDIN_RUNNER_PLAN") or "{}")
    except ValueError:
        return {}
    return plan if isinstance(plan, dict) else {}


class RunnerState:
    """What ``/health`` says: loading, then ok (or an error body); and a pending runtime failure."""

    def __init__(self, cpu_ms: float) -> None:
        self.cpu_ms = cpu_ms
        self.status = "loading"
        self.error_body = b""
        self.fail_on_generate: List[str] = []

    def fail(self, message: str) -> None:
        """``/health`` answers 500 with llama-server's error body."""
        self.error_body = json.dumps({"status": "error", "message": message}, separators=(",", ":")).encode()
        self.status = "error"

    def health(self) -> Tuple[int, bytes]:
        """Status code and body of ``GET /health``."""
        if self.status == "ok":
            return 200, b'{"status":"ok"}'
        if self.status == "error":
            return 500, self.error_body
        return 503, b'{"status":"loading model"}'


class RunnerHTTPServer(http.server.ThreadingHTTPServer):
    """The runner's listener on 127.0.0.1 (no reverse-DNS lookup at bind)."""

    daemon_threads = True
    state: RunnerState

    def server_bind(self) -> None:
        """Bind without http.server's ``getfqdn``."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", int(self.server_address[1])


class RunnerHandler(http.server.BaseHTTPRequestHandler):
    """``/health``, ``/completion`` and ``/embedding``; every answer closes its connection."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: RunnerHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """No access log."""

    def reply(self, status: int, body: bytes, content_type: str = JSON_TYPE) -> None:
        """A complete answer."""
        self.close_connection = True
        self.send_response_only(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        """``GET /health``."""
        if self.path == "/health":
            self.reply(*self.server.state.health())
        else:
            self.reply(404, b"File Not Found", "text/plain")

    def do_POST(self) -> None:
        """``POST /completion`` and ``POST /embedding``."""
        length = int(self.headers.get("Content-Length") or 0)
        try:
            request = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            request = {}
        if self.server.state.status != "ok":
            self.reply(503, b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}')
        elif self.path == "/completion":
            self.completion(request)
        elif self.path == "/embedding":
            self.embedding(request)
        else:
            self.reply(404, b"File Not Found", "text/plain")

    def closed_within(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True as soon as serve closed the connection."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                readable, _, _ = select.select([self.connection], [], [], remaining)
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    return True
            except OSError:
                return True
            if readable:
                time.sleep(min(remaining, 0.05))

    def event(self, value: Dict[str, Any]) -> bool:
        """Send one server-sent event; False when serve has gone."""
        try:
            self.wfile.write(b"data: " + json.dumps(value, separators=(",", ":")).encode("utf-8") + b"\n\n")
            self.wfile.flush()
            return True
        except OSError:
            return False

    def completion(self, request: Dict[str, Any]) -> None:
        """Stream the tokens serve asked for, paced, until the last one or until serve goes."""
        plan = request.get("standin") or {}
        tokens = [str(token) for token in plan.get("tokens") or []]
        token_ms = float(plan.get("token_ms") or 0)
        self.close_connection = True
        self.send_response_only(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        started = time.monotonic()
        if self.closed_within(float(plan.get("delay_ms") or 0) / 1000.0):
            return
        if plan.get("hang"):
            while not self.closed_within(3600):
                pass
            return
        prompt_ms = (time.monotonic() - started) * 1000.0
        if self.server.state.fail_on_generate:
            for line in self.server.state.fail_on_generate:
                _say(line)
            sys.stderr.flush()
            os._exit(134)  # as abort() would, without a core dump
        for index, token in enumerate(tokens):
            if index and token_ms > 0 and self.closed_within(token_ms / 1000.0):
                return
            burn_cpu(self.server.state.cpu_ms)
            if not self.event({"content": token, "stop": False}):
                return
        timings = {
            "prompt_n": int(plan.get("prompt_n") or 1),
            "prompt_ms": prompt_ms,
            "predicted_n": len(tokens),
            "predicted_ms": (time.monotonic() - started) * 1000.0 - prompt_ms,
        }
        stop_type = "limit" if plan.get("done_reason") == "length" else "eos"
        self.event({"content": "", "stop": True, "stop_type": stop_type, "timings": timings})

    def embedding(self, request: Dict[str, Any]) -> None:
        """A deterministic unit vector for ``content``."""
        plan = request.get("standin") or {}
        if self.closed_within(float(plan.get("delay_ms") or 0) / 1000.0):
            return
        burn_cpu(self.server.state.cpu_ms)
        vector = embedding_vector(str(request.get("content") or ""), int(plan.get("dimensions") or 384))
        self.reply(200, json.dumps({"embedding": vector}).encode("utf-8"))


def act_out_oom(server: RunnerHTTPServer, model: str, oom: Dict[str, Any], llama_server: bool) -> None:
    """Print the kind's lines, then fail as asked: exit 1, report on /health, or (recoverable) carry on.

    Before exiting, the listener closes and in-flight health checks finish, so serve sees the exit
    (and the lines), not a health check cut off by it.
    """
    state = server.state
    kind = str(oom.get("kind") or "cuda")
    lines = OOM_LINES.get(kind, OOM_LINES["cuda"])
    if kind == "runtime":
        state.fail_on_generate = lines
        return
    exits = not (kind in ("recoverable", "health") or oom.get("via") == "health")
    if exits:
        server.shutdown()
        server.server_close()
        time.sleep(0.05)
    for line in lines:
        _say(line)
    if kind == "recoverable":
        state.fail("compute buffer allocation failed")
        time.sleep(RECOVERABLE_SECONDS)
        state.status = "loading"
        return
    if kind == "health" or oom.get("via") == "health":
        state.fail(lines[-1] if lines else "out of memory")
        while True:
            time.sleep(3600)
    if llama_server:
        _say("srv    load_model: failed to load model, '%s'" % model)
        _say("main: exiting due to model loading error")
    sys.stderr.flush()
    os._exit(1)


def run(model: str, port: int, llama_server: bool, model_is_name: bool = False) -> int:
    """Listen, load (memory, load time, the planned failure), then serve until killed."""
    plan = read_plan()
    state = RunnerState(float(plan.get("cpu_ms", DEFAULT_CPU_MS)))
    try:
        server = RunnerHTTPServer(("127.0.0.1", port), RunnerHandler)
    except OSError as error:
        _say("error: bind 127.0.0.1:%d: %s" % (port, error.strerror or error))
        return 1
    server.state = state
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True).start()
    if llama_server:
        _say("main: HTTP server is listening, hostname: 127.0.0.1, port: %d, http threads: 3" % port)
        _say("main: loading model")
        _say("srv    load_model: loading model '%s'" % model)
    else:
        _say(slog_line("INFO", "runner.go:1006", "Server listening on 127.0.0.1:%d" % port))
    problem = None if model_is_name else model_error(model)
    if problem:
        _say("llama_model_load: error loading model: %s" % problem)
        if llama_server:
            _say("srv    load_model: failed to load model, '%s'" % model)
            _say("main: exiting due to model loading error")
        return 1
    try:
        megabytes = int(os.environ.get("OLLAMA_STANDIN_RUNNER_MB", "64"))
    except ValueError:
        megabytes = 64
    held = hold_memory(max(0, megabytes))
    _say("llama_model_loader: loaded meta data from %s (%d MiB resident)" % (model, len(held) // MIB))
    if isinstance(plan.get("oom"), dict):
        act_out_oom(server, model, plan["oom"], llama_server)
    ready_at = float(plan.get("spawned") or time.time()) + float(plan.get("load_ms") or 0) / 1000.0
    time.sleep(max(0.0, ready_at - time.time()))
    state.status = "ok"
    if llama_server:
        _say("main: model loaded")
        _say("main: server is listening on http://127.0.0.1:%d - starting the main loop" % port)
        _say("srv  update_slots: all slots are idle")
    while True:
        time.sleep(3600)


def _start(name: str, argv: List[str]) -> Tuple[str, int]:
    """Name the process, die on SIGTERM/SIGINT, and read ``--model`` and ``--port``."""
    set_process_name(name)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    return _flag(argv, "--model") or "", int(_flag(argv, "--port") or 0)


def runner_main(argv: List[str]) -> int:
    """Entry point of the hidden ``ollama runner`` command (Ollama < 0.30, and the MLX engine's ``--mlx-engine``)."""
    model, port = _start("ollama", argv)
    _say(slog_line("INFO", "runner.go:963", "starting go runner"))
    return run(model, port, llama_server=False, model_is_name="--mlx-engine" in argv)


def llama_server_main(argv: List[str]) -> int:
    """Entry point of ``llama-server`` (Ollama >= 0.30)."""
    model, port = _start("llama-server", argv)
    _say("build: 0 (standin) with python %d.%d for %s" % (sys.version_info[0], sys.version_info[1], sys.platform))
    _say("system info: n_threads = %d, n_threads_batch = %d" % (os.cpu_count() or 1, os.cpu_count() or 1))
    return run(model, port, llama_server=True)


if __name__ == "__main__":
    sys.exit(llama_server_main(sys.argv[1:]))
