"""The probes' requests: what they ask Ollama, and that a timed-out probe leaves Ollama's queue at once."""

from __future__ import annotations

import json
import socket
import threading

import httpx

from tray.core.health import Failure
from tray.ollama.client import OllamaClient


def recording_client(answers: dict[str, httpx.Response]) -> tuple[OllamaClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[request.url.path]

    return OllamaClient("http://ollama.test", transport=httpx.MockTransport(handle)), seen


def test_the_inference_probe_sends_no_runner_options_and_no_keep_alive():
    answer = httpx.Response(200, json={"message": {"role": "assistant", "content": "ok"}, "done": True})
    client, seen = recording_client({"/api/chat": answer})
    assert client.probe_inference("llama3", timeout=5).ok
    body = json.loads(seen[0].content)
    # Runner options (num_ctx, num_gpu …) differing from the loaded runner's make Ollama reload the model;
    # keep_alive would replace the session length the user's client chose.
    assert body == {
        "model": "llama3",
        "messages": [{"role": "user", "content": "test"}],
        "stream": False,
        "options": {"num_predict": 1},
    }


def test_liveness_asks_the_http_layer_once():
    client, seen = recording_client(
        {
            "/api/version": httpx.Response(200, json={"version": "0.33.0"}),
            "/api/tags": httpx.Response(200, json={"models": [{"name": "llama3:latest"}]}),
        }
    )
    result, names = client.probe_api(timeout=5)
    assert result.ok and result.kind == "api" and names == {"llama3:latest"}
    assert [r.url.path for r in seen] == ["/api/tags"]  # the model list answers for the HTTP layer too


def test_something_else_answering_the_model_list_is_not_ollama():
    client, _ = recording_client({"/api/tags": httpx.Response(200, text="<html>hello</html>")})
    result, names = client.probe_api(timeout=5)
    assert (result.ok, result.failure, names) == (False, Failure.BAD_RESPONSE, None)
    client, _ = recording_client({"/api/tags": httpx.Response(200, json={"version": "0.33.0"})})
    assert client.probe_api(timeout=5)[0].failure is Failure.BAD_RESPONSE


def test_a_probe_that_times_out_closes_its_connection_at_once():
    """Ollama cancels a request whose client went away, which takes it out of the model's queue."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    closed = threading.Event()

    def never_answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            while conn.recv(65536):  # the request, then nothing until the client hangs up
                pass
            closed.set()

    server = threading.Thread(target=never_answer, daemon=True)
    server.start()
    client = OllamaClient(f"http://127.0.0.1:{port}")
    try:
        result = client.probe_inference("llama3", timeout=0.3)
        assert (result.ok, result.failure) == (False, Failure.TIMEOUT)
        assert closed.wait(2), "the probe's connection stayed open after its timeout"
    finally:
        client.close()
        listener.close()
        server.join(5)


class KeptAliveServer:
    """A loopback HTTP/1.1 server answering /api/tags on kept-alive connections; counts its connections.

    The requests numbered in ``drop`` (1-based, over all connections) are read and answered by closing
    the connection, as a server that restarted would leave a client's kept-alive connection.
    """

    BODY = b'{"models":[{"name":"llama3:latest"}]}'

    def __init__(self, drop: tuple[int, ...] = ()) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.drop = drop
        self.connections = 0
        self.requests = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            pending = b""
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                _, pending = pending.split(b"\r\n\r\n", 1)
                self.requests += 1
                if self.requests in self.drop:
                    return
                head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(self.BODY)}\r\n\r\n"
                conn.sendall(head.encode() + self.BODY)

    def close(self) -> None:
        self.listener.close()


def test_checks_however_far_apart_use_one_kept_alive_connection(monkeypatch):
    import time
    import types

    import httpcore._sync.http11

    server = KeptAliveServer()
    hours = [0.0]
    later = types.SimpleNamespace(monotonic=lambda: time.monotonic() + hours[0] * 3600)
    monkeypatch.setattr(httpcore._sync.http11, "time", later)  # when a kept-alive connection counts as expired
    client = OllamaClient(server.url)
    try:
        for _ in range(3):
            assert client.probe_api(timeout=5)[0].ok
            hours[0] += 1  # an hour between checks
    finally:
        client.close()
        server.close()
    assert (server.requests, server.connections) == (3, 1)


def test_a_kept_alive_connection_closed_under_the_check_is_not_taken_for_a_dead_server():
    server = KeptAliveServer(drop=(2,))
    client = OllamaClient(server.url)
    try:
        assert client.probe_api(timeout=5)[0].ok
        result, names = client.probe_api(timeout=5)  # the server closes the connection instead of answering
        assert result.ok and names == {"llama3:latest"}
    finally:
        client.close()
        server.close()
    assert server.connections == 2


def test_a_server_that_is_gone_is_still_down():
    server = KeptAliveServer(drop=(2, 3))
    client = OllamaClient(server.url)
    try:
        assert client.probe_api(timeout=5)[0].ok
        server.close()
        result, _ = client.probe_api(timeout=5)
    finally:
        client.close()
    assert (result.ok, result.failure) == (False, Failure.REFUSED)
