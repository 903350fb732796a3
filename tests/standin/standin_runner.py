"""``ollama runner --model <blob> --port N``: the child that holds a loaded model's memory.

It checks the GGUF magic (a bad file makes it exit 1 with llama.cpp's error line,
which serve turns into ``llama runner process has terminated: ...``), allocates and
touches OLLAMA_STANDIN_RUNNER_MB MiB so its RSS is real, then answers health
checks on its port until killed. It does not watch its parent: when serve is
SIGKILLed it lives on as an orphan, as Ollama's runners do.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import List, Optional

from standin_common import MIB, set_process_name, slog_line, write_line

PAGE = 4096
HEALTH_REPLY = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{"status":"ok"}'


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


def serve_health(port: int) -> None:
    """Accept connections forever, answering each with ``{"status":"ok"}``."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    _say(slog_line("INFO", "runner.go:1006", "Server listening on 127.0.0.1:%d" % port))
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:
            continue
        try:
            connection.settimeout(1.0)
            connection.recv(4096)
            connection.sendall(HEALTH_REPLY)
        except OSError:
            pass
        finally:
            connection.close()


def runner_main(argv: List[str]) -> int:
    """Entry point of the hidden ``runner`` command."""
    set_process_name("ollama")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    model = _flag(argv, "--model") or ""
    port = int(_flag(argv, "--port") or 0)
    _say(slog_line("INFO", "runner.go:963", "starting go runner"))
    problem = model_error(model)
    if problem:
        _say("llama_model_load: error loading model: %s" % problem)
        return 1
    try:
        megabytes = int(os.environ.get("OLLAMA_STANDIN_RUNNER_MB", "64"))
    except ValueError:
        megabytes = 64
    held = hold_memory(max(0, megabytes))
    _say("llama_model_loader: loaded meta data from %s (%d MiB resident)" % (model, len(held) // MIB))
    try:
        serve_health(port)
    except OSError as error:
        _say("error: bind 127.0.0.1:%d: %s" % (port, error.strerror or error))
        return 1
    return 0
