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


def test_liveness_asks_the_http_layer_only():
    client, seen = recording_client(
        {
            "/api/version": httpx.Response(200, json={"version": "0.33.0"}),
            "/api/tags": httpx.Response(200, json={"models": [{"name": "llama3:latest"}]}),
        }
    )
    result, names = client.probe_api(timeout=5)
    assert result.ok and result.kind == "api" and names == {"llama3:latest"}
    assert [r.url.path for r in seen] == ["/api/version", "/api/tags"]


def test_something_else_answering_version_is_not_ollama():
    client, _ = recording_client({"/api/version": httpx.Response(200, text="<html>hello</html>")})
    result, names = client.probe_api(timeout=5)
    assert (result.ok, result.failure, names) == (False, Failure.BAD_RESPONSE, None)


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
