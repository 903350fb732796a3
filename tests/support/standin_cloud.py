"""A stand-in cloud LLM: an OpenAI-compatible server on loopback, run as a real process (stdlib only).

    python tests/support/standin_cloud.py --port-file PATH --log PATH [--port N] [--api-key KEY]
                                  [--control PATH] [--models a,b] [--events PATH]

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (streamed as SSE
or whole), ``POST /v1/completions``, ``POST /v1/embeddings``. With
``--api-key`` every request needs ``Authorization: Bearer KEY`` (else 401 in
OpenAI's error shape).

The answer is deterministic: ``Cloud answer to: <last user words>``, one
token per word; ``max_tokens`` cuts it (``finish_reason: length``); a
``json_object`` response format gives ``{"reply": "<words>"}``; with tools and
a last user message ``call <words>`` the first tool is called with
``{"text": "<words>"}``.

Every request is appended to the ``--log`` file as one JSON line (method,
path, authorized, body) *before* any fault applies, so a test can assert
that no request ever reached the cloud. Like a real provider, the server
stops working on a request whose client has gone away (checked while it
waits: ``slow_ms``, ``token_ms``) and appends ``{"event": "client_gone",
...}`` to the ``--events`` file.

Faults come from the JSON ``--control`` file, re-read on every request:
``{"status": 503}`` answers that status; ``{"drop": true}`` closes the
connection without an answer; ``{"slow_ms": N}`` waits before answering;
``{"token_ms": N}`` waits between streamed tokens; ``{"break_after": N}``
closes a stream after N tokens; ``{"echo_auth": true}`` puts the received key
and ``Authorization`` header in fault errors and in an error event after a
stream's first token, as proxies such as LiteLLM do. SIGTERM/SIGINT stop the
server (exit 0).
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import select
import signal
import socket
import socketserver
import sys
import threading
import time
from typing import Any

CREATED = 1_700_000_000
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "api_error"), "param": None, "code": None}}


def last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(
                    str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text"
                )
            return str(content or "")
    return ""


def answer_tokens(prompt: str, max_tokens: Any, json_format: bool) -> tuple[list[str], str]:
    """The reply's tokens and finish reason."""
    words = prompt.split()
    parts = [dumps({"reply": " ".join(words)})] if json_format else ["Cloud", "answer", "to:", *words]
    tokens = [part if index == 0 else " " + part for index, part in enumerate(parts)]
    if isinstance(max_tokens, int) and 0 < max_tokens < len(tokens):
        return tokens[:max_tokens], "length"
    return tokens, "stop"


def embedding(text: str, size: int = 4) -> list[float]:
    total = sum(ord(c) for c in text)
    return [round(((total * (i + 7)) % 1000) / 1000.0, 3) for i in range(size)]


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], options: argparse.Namespace) -> None:
        super().__init__(address, Handler)
        self.options = options
        self.log_lock = threading.Lock()
        self.counter = 0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as real HTTP servers do; else headers and body wait on a delayed ACK
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    # plumbing

    def do_GET(self) -> None:
        self.dispatch()

    do_POST = do_GET

    def faults(self) -> dict[str, Any]:
        path = self.server.options.control
        if not path:
            return {}
        try:
            with open(path, encoding="utf-8") as handle:
                value = json.load(handle)
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def record(self, body: Any, authorized: bool) -> None:
        entry = {"time": time.time(), "method": self.command, "path": self.path, "authorized": authorized, "body": body}
        with self.server.log_lock, open(self.server.options.log, "a", encoding="utf-8") as handle:
            handle.write(dumps(entry) + "\n")

    def client_gone(self) -> bool:
        """Has the client closed its connection (an EOF waits to be read)?"""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless the client goes away first (then log it); False when it went away."""
        deadline = time.monotonic() + seconds
        while True:
            if self.client_gone():
                entry = {"time": time.time(), "event": "client_gone", "path": self.path}
                with self.server.log_lock, open(self.server.options.events, "a", encoding="utf-8") as handle:
                    handle.write(dumps(entry) + "\n")
                self.close_connection = True
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(0.02, left))

    def echoed_credentials(self, faults: dict[str, Any]) -> str:
        """What a proxy such as LiteLLM puts in its errors with ``echo_auth``: the key it received, in full."""
        if not faults.get("echo_auth"):
            return ""
        header = self.headers.get("Authorization", "")
        return f" (Received API Key = {header.removeprefix('Bearer ')}; Authorization: {header})"

    def send_json(self, status: int, value: Any) -> None:
        data = dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_event(self, value: Any) -> None:
        data = ("data: " + (value if isinstance(value, str) else dumps(value)) + "\n\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(2)

    # dispatch

    def dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        key = self.server.options.api_key
        authorized = not key or self.headers.get("Authorization", "") == f"Bearer {key}"
        self.record(body, authorized)
        faults = self.faults()
        if faults.get("drop"):
            self.drop()
            return
        if faults.get("slow_ms") and not self.wait(float(faults["slow_ms"]) / 1000.0):
            return
        if faults.get("status"):
            status = int(faults["status"])
            message = f"stand-in cloud fault {status}" + self.echoed_credentials(faults)
            self.send_json(status, error_body(status, message))
            return
        if not authorized:
            self.send_json(401, error_body(401, "Incorrect API key provided."))
            return
        routes = {
            ("GET", "/v1/models"): self.models,
            ("POST", "/v1/chat/completions"): self.chat,
            ("POST", "/v1/completions"): self.completions,
            ("POST", "/v1/embeddings"): self.embeddings,
        }
        handler = routes.get((self.command, self.path.split("?", 1)[0]))
        if handler is None:
            self.send_json(404, error_body(404, f"no route {self.command} {self.path}"))
            return
        if self.command == "POST" and not isinstance(body, dict):
            self.send_json(400, error_body(400, "the body must be a JSON object"))
            return
        handler(body, faults)

    # endpoints

    def models(self, body: Any, faults: dict[str, Any]) -> None:
        data = [
            {"id": name, "object": "model", "created": CREATED, "owned_by": "standin-cloud"}
            for name in self.server.options.models
        ]
        self.send_json(200, {"object": "list", "data": data})

    def next_id(self, prefix: str) -> str:
        with self.server.log_lock:
            self.server.counter += 1
            return f"{prefix}-{self.server.counter}"

    def check_model(self, body: dict[str, Any]) -> bool:
        model = body.get("model")
        if model not in self.server.options.models:
            self.send_json(404, error_body(404, f"The model `{model}` does not exist or you do not have access to it."))
            return False
        return True

    def chat(self, body: dict[str, Any], faults: dict[str, Any]) -> None:
        if not self.check_model(body):
            return
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            self.send_json(400, error_body(400, "'messages' must be a non-empty array"))
            return
        prompt = last_user_text(messages)
        json_format = (body.get("response_format") or {}).get("type") == "json_object"
        tools = body.get("tools") or []
        tool_call = None
        if tools and prompt.startswith("call "):
            name = ((tools[0] or {}).get("function") or {}).get("name", "")
            tool_call = {
                "id": "call_standin_1",
                "type": "function",
                "function": {"name": name, "arguments": dumps({"text": prompt[5:]})},
            }
        tokens, finish = answer_tokens(prompt, body.get("max_tokens", body.get("max_completion_tokens")), json_format)
        if tool_call is not None:
            tokens, finish = [], "tool_calls"
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages if isinstance(m, dict))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        head = {"id": self.next_id("chatcmpl"), "created": CREATED, "model": body["model"]}
        if body.get("stream") is not True:
            message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens) if tool_call is None else None}
            if tool_call is not None:
                message["tool_calls"] = [tool_call]
            choice = {"index": 0, "message": message, "finish_reason": finish}
            self.send_json(200, dict(head, object="chat.completion", choices=[choice], usage=usage))
            return
        self.stream_chat(head, tokens, finish, tool_call, usage, body, faults)

    def stream_chat(
        self,
        head: dict[str, Any],
        tokens: list[str],
        finish: str,
        tool_call: Any,
        usage: Any,
        body: dict[str, Any],
        faults: dict[str, Any],
    ) -> None:
        chunk = dict(head, object="chat.completion.chunk")
        token_ms = float(faults.get("token_ms") or 0)
        break_after = faults.get("break_after")
        self.start_stream()
        self.write_event(
            dict(chunk, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        )
        for index, token in enumerate(tokens):
            if break_after is not None and index >= int(break_after):
                self.drop()
                return
            if index and token_ms and not self.wait(token_ms / 1000.0):
                return
            self.write_event(dict(chunk, choices=[{"index": 0, "delta": {"content": token}, "finish_reason": None}]))
            if faults.get("echo_auth") and index == 0:  # an error event mid-stream, as OpenAI-style proxies send
                self.write_event(error_body(500, "upstream failed" + self.echoed_credentials(faults)))
        if tool_call is not None:
            arguments = tool_call["function"]["arguments"]
            half = len(arguments) // 2
            first = {
                "index": 0,
                "id": tool_call["id"],
                "type": "function",
                "function": {"name": tool_call["function"]["name"], "arguments": arguments[:half]},
            }
            second = {"index": 0, "function": {"arguments": arguments[half:]}}
            for part in (first, second):
                self.write_event(
                    dict(chunk, choices=[{"index": 0, "delta": {"tool_calls": [part]}, "finish_reason": None}])
                )
        self.write_event(dict(chunk, choices=[{"index": 0, "delta": {}, "finish_reason": finish}]))
        if (body.get("stream_options") or {}).get("include_usage"):
            self.write_event(dict(chunk, choices=[], usage=usage))
        self.write_event("[DONE]")
        self.end_stream()

    def completions(self, body: dict[str, Any], faults: dict[str, Any]) -> None:
        if not self.check_model(body):
            return
        tokens, finish = answer_tokens(str(body.get("prompt") or ""), body.get("max_tokens"), False)
        choice = {"index": 0, "text": "".join(tokens), "finish_reason": finish}
        self.send_json(
            200,
            {
                "id": self.next_id("cmpl"),
                "object": "text_completion",
                "created": CREATED,
                "model": body["model"],
                "choices": [choice],
            },
        )

    def embeddings(self, body: dict[str, Any], faults: dict[str, Any]) -> None:
        if not self.check_model(body):
            return
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        data = [
            {"object": "embedding", "embedding": embedding(str(text)), "index": index}
            for index, text in enumerate(texts)
        ]
        count = sum(len(str(text).split()) for text in texts)
        self.send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": count, "total_tokens": count},
            },
        )


# --------------------------------------------------------------------------- for tests: the server as a child process


class StandinCloud:
    """Runs this file as a child process in ``root``; :meth:`stop` kills and reaps it."""

    def __init__(self, root: str, api_key: str = "", models: str = "cloud-model,cloud-embed") -> None:
        import subprocess

        os.makedirs(root, exist_ok=True)
        self.root = root
        self.api_key = api_key
        self.log_path = os.path.join(root, "cloud-requests.jsonl")
        self.events_path = os.path.join(root, "cloud-events.jsonl")
        self.control_path = os.path.join(root, "cloud-control.json")
        port_file = os.path.join(root, "cloud-port")
        argv = [sys.executable, os.path.abspath(__file__), "--port-file", port_file, "--log", self.log_path,
                "--control", self.control_path, "--models", models, "--events", self.events_path]  # fmt: skip
        if api_key:
            argv += ["--api-key", api_key]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(port_file):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the stand-in cloud did not start")
            time.sleep(0.01)
        with open(port_file, encoding="utf-8") as handle:
            self.port = int(handle.read())
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def set_faults(self, **faults: Any) -> None:
        temp = self.control_path + ".tmp"
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(faults, handle)
        os.replace(temp, self.control_path)

    def requests(self) -> list[dict[str, Any]]:
        """Every request that reached the server, oldest first."""
        return _read_lines(self.log_path)

    def events(self) -> list[dict[str, Any]]:
        """What the server noticed, oldest first (``client_gone``)."""
        return _read_lines(self.events_path)

    def stop(self) -> None:
        """SIGKILL the server (a provider that is down) and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def _read_lines(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="stand-in OpenAI-compatible cloud")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--api-key", default="")
    parser.add_argument("--control", default="")
    parser.add_argument("--models", default="cloud-model,cloud-embed")
    parser.add_argument("--events", default=os.devnull)
    options = parser.parse_args(argv)
    options.models = [m for m in options.models.split(",") if m]
    server = Server(("127.0.0.1", options.port), options)
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    temp = options.port_file + ".tmp"
    with open(temp, "w", encoding="utf-8") as handle:
        handle.write(str(server.server_address[1]))
    os.replace(temp, options.port_file)
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
