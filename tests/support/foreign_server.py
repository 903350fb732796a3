"""A web server that is not Ollama, as found on Ollama's port: every path answers an HTML error page.

Run as ``python3 tests/support/foreign_server.py PORT [STATUS]``; it serves on 127.0.0.1 until killed.
"""

from __future__ import annotations

import http.server
import sys

PAGE = (
    "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title>"
    "<script>alert('x')</script></head>\r\n<body><h1>Bad Gateway</h1>\x1b[31m"
    "<p>The proxy server received an invalid response from an upstream server.<br/>"
    '<a href="http://example.invalid/">retry</a></p></body></html>\n'
)


class Handler(http.server.BaseHTTPRequestHandler):
    status = 502

    def _answer(self, body: bool) -> None:
        data = PAGE.encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(True)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    if len(sys.argv) > 2:
        Handler.status = int(sys.argv[2])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
