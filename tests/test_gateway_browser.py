"""The gateway seen from a web page in a real browser (headless Chromium): an allowed origin reads the answer,
as it would from Ollama; an origin that is not allowed gets nothing."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from standin.harness import StandinEnv
from tests.test_dashboard_browser import CHROMIUM, browser  # noqa: F401 - the headless Chromium fixture
from tests.test_gateway import ollama  # noqa: F401 - the stand-in Ollama with llama3 pulled
from tray.gateway.app import Gateway, GatewayServer
from tray.history import History
from tray.settings.gateway import CloudSettings, GatewaySettings

pytestmark = [
    pytest.mark.process,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"),
]
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

# What a chat page does: POST JSON (so the browser asks first with a preflight) and read the answer.
ASK = """async (url) => {
  try {
    const response = await fetch(url + "/api/chat", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: "llama3", messages: [{ role: "user", content: "hi there" }], stream: false }),
    });
    return { status: response.status, content: (await response.json()).message.content };
  } catch (error) {
    return { error: String(error) };
  }
}"""


class PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>a local chat page</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture
def page_url() -> Iterator[str]:
    """A page on a loopback port of its own: another origin than the gateway's."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def gateway(ollama: StandinEnv) -> Iterator[Callable[..., GatewayServer]]:
    started: list[GatewayServer] = []

    def start(**settings: Any) -> GatewayServer:
        gateway = Gateway(
            local_url=ollama.base_url, cloud=CloudSettings(), settings=GatewaySettings(**settings), env={},
            history=History(None),
        )  # fmt: skip
        server = GatewayServer(gateway, 0)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def ask_from_page(browser: Any, page_url: str, gateway_url: str) -> dict[str, Any]:
    page = browser.new_page()
    try:
        page.goto(page_url)
        return dict(page.evaluate(ASK, gateway_url))
    finally:
        page.close()


def test_a_page_of_an_allowed_origin_reads_the_answer(
    browser: Any, page_url: str, gateway: Callable[..., GatewayServer]
) -> None:
    server = gateway()  # the default: Ollama's list, loopback pages on any port among them
    assert ask_from_page(browser, page_url, server.url) == {"status": 200, "content": "You said: hi there"}


def test_a_page_of_another_origin_gets_nothing(
    browser: Any, page_url: str, gateway: Callable[..., GatewayServer], ollama: StandinEnv
) -> None:
    server = gateway(allowed_origins=("vscode-webview://*",))
    answer = ask_from_page(browser, page_url, server.url)
    assert answer == {"error": "TypeError: Failed to fetch"}
    assert not [e for e in ollama.events() if e.get("event") == "request_done" and e.get("path") == "/api/chat"]
