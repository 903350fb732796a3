"""The client's one error contract, against the stand-in ``ollama serve`` and against a program that is not Ollama.

Every failure is an OllamaError saying which of four things happened: nothing
listens, no answer in time, Ollama answered with an error (its status and its
own text), or the answer is not Ollama's. The monitor's calls turn the same
errors into their small results.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from standin.harness import StandinEnv, free_port
from tray.core.health import Failure
from tray.gateway.app import Gateway, GatewayServer
from tray.gateway.breaker import LocalHealth
from tray.ollama.client import OllamaClient
from tray.ollama.errors import OllamaAPIError, OllamaError, OllamaMalformed, OllamaTimeout, OllamaUnreachable
from tray.settings.gateway import CloudSettings, GatewaySettings

pytestmark = pytest.mark.process

BUSY = "server busy, please try again.  maximum pending requests exceeded"  # Ollama's ErrMaxQueue, two spaces


@pytest.fixture
def served(standin: StandinEnv) -> Iterator[OllamaClient]:
    standin.spawn_serve()
    standin.wait_ready()
    with OllamaClient(standin.base_url) as client:
        yield client


def test_nothing_listening_is_unreachable_and_refused():
    url = f"http://127.0.0.1:{free_port()}"
    with OllamaClient(url) as client:
        with pytest.raises(OllamaUnreachable) as caught:
            client.tags(timeout=5)
        assert not isinstance(caught.value, OllamaTimeout)
        assert caught.value.detail == "connection refused" and caught.value.status is None
        assert str(caught.value).startswith(f"cannot reach Ollama at {url} (listing models): ")
        assert client.ping(timeout=5).failure is Failure.REFUSED
        assert client.answers_as_ollama() is None
        assert client.loaded_models() is None and client.installed_models() is None
        assert client.preload("llama3", None, timeout=5) == "connection refused"


def test_a_hung_server_is_a_timeout(standin: StandinEnv, served: OllamaClient):
    standin.set_faults(hang=True)  # every request blocks with the socket open, as a deadlocked serve
    with pytest.raises(OllamaTimeout) as caught:
        served.version(timeout=0.5)
    assert caught.value.detail == "no answer in time" and caught.value.what == "asking the version"
    assert str(caught.value) == f"Ollama at {standin.base_url} stopped answering during asking the version"
    assert isinstance(caught.value, OllamaUnreachable)  # no answer, as far as a builder is concerned
    result = served.ping(timeout=0.5)
    assert (result.ok, result.failure, result.detail) == (False, Failure.TIMEOUT, "no answer in time")
    assert served.answers_as_ollama(timeout=0.5) is False  # something holds the port and does not answer


def test_an_http_error_carries_its_status_and_ollamas_text(standin: StandinEnv, served: OllamaClient):
    standin.set_faults(http_error={"path": "/api/ps", "status": 503, "error": BUSY})
    with pytest.raises(OllamaAPIError) as caught:
        served.running(timeout=5)
    error = caught.value
    assert not isinstance(error, OllamaMalformed)
    assert error.status == 503 and error.detail == "server busy, please try again. maximum pending requests exceeded"
    assert str(error) == f"listing loaded models failed: {error.detail} (HTTP 503)"
    assert served.loaded_models() is None  # the monitor's call: unknown, not an exception


def test_ollamas_own_not_found_is_an_http_error_for_the_builder_and_a_model_error_for_the_probe(
    served: OllamaClient,
):
    with pytest.raises(OllamaAPIError) as caught:
        served.show("nosuch")
    assert (caught.value.status, caught.value.detail) == (404, "model 'nosuch:latest' not found")
    assert str(caught.value) == "show nosuch failed: model 'nosuch:latest' not found (HTTP 404)"
    result = served.probe_inference("nosuch", timeout=5)
    assert (result.ok, result.failure) == (False, Failure.MODEL_ERROR)
    assert "nosuch" in result.detail and "not found" in result.detail


def test_an_error_line_in_a_200_stream_is_an_http_error_with_status_200(served: OllamaClient):
    with pytest.raises(OllamaAPIError) as caught:
        list(served.pull("nosuchmodel"))
    assert caught.value.status == 200
    assert str(caught.value) == "pull nosuchmodel failed: pull model manifest: file does not exist"
    assert caught.value.detail == "pull model manifest: file does not exist"


class NotOllama(http.server.BaseHTTPRequestHandler):
    """Another program on Ollama's port: a web page, and JSON cut short."""

    ANSWERS: ClassVar[dict[str, tuple[bytes, str]]] = {
        "/": (b"<html><title>Router login</title></html>", "text/html"),
        "/api/tags": (b"<html><title>Router login</title></html>", "text/html"),
        "/api/version": (b'{"version": "0.3', "application/json"),
        "/api/ps": (b'["a list, not an object"]', "application/json"),
    }

    def do_GET(self) -> None:
        body, kind = self.ANSWERS.get(self.path, (b"{}", "application/json"))
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_ollama_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotOllama)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def not_ollama(not_ollama_url: str) -> Iterator[OllamaClient]:
    with OllamaClient(not_ollama_url) as client:
        yield client


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.tags(timeout=5), "listing models: Ollama sent something that is not JSON"),
        (lambda c: c.version(timeout=5), "asking the version: Ollama sent something that is not JSON"),
        (lambda c: c.running(timeout=5), "listing loaded models: unexpected answer from Ollama"),
    ],
)
def test_an_answer_that_is_not_ollamas_is_malformed(not_ollama: OllamaClient, call, message):
    with pytest.raises(OllamaMalformed) as caught:
        call(not_ollama)
    assert str(caught.value) == message and caught.value.detail == "not an Ollama answer"


def test_the_monitor_reads_another_program_as_not_ollama(not_ollama: OllamaClient):
    result, names = not_ollama.probe_api(timeout=5)
    assert (result.ok, result.failure, result.detail, names) == (
        False,
        Failure.BAD_RESPONSE,
        "not an Ollama answer",
        None,
    )
    assert not_ollama.ping(timeout=5).failure is Failure.BAD_RESPONSE
    assert not_ollama.answers_as_ollama() is False


def test_every_failure_is_one_ollama_error(not_ollama: OllamaClient):
    """Callers that only need "it failed" catch one type."""
    url = f"http://127.0.0.1:{free_port()}"
    with OllamaClient(url) as refused:
        for client in (refused, not_ollama):
            with pytest.raises(OllamaError):
                client.tags(timeout=5)


def test_the_gateways_own_probe_reads_another_program_as_the_monitor_does(not_ollama_url: str):
    """A web page on Ollama's port is down for the gateway's probe too, not a healthy Ollama."""
    gateway = Gateway(
        local_url=not_ollama_url,
        cloud=CloudSettings(),
        settings=GatewaySettings(probe_interval=0.05),
        env={},
        probe=True,
    )
    server = GatewayServer(gateway, 0)
    server.start()
    try:
        deadline = threading.Event()
        for _ in range(200):  # each probe takes a round trip; the first answer decides
            if gateway.router.breaker.last_health is not LocalHealth.UNKNOWN:
                break
            deadline.wait(0.05)
        assert gateway.router.breaker.last_health is LocalHealth.DOWN
    finally:
        server.stop()
