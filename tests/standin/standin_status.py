"""What serve makes of its runner's output and exit, in the words of the Ollama version it claims.

Ollama >= 0.30 runs llama.cpp's ``llama-server`` (llm/llama_server.go, llm/status.go);
older versions ran ``ollama runner`` (llm/server.go, llm/status.go of v0.12). Both read
the runner's output through a ``StatusWriter`` that keeps the error text, and wrap it in
their own messages. Everything here is pure: text in, text out.
"""

from __future__ import annotations

import signal
from typing import Optional, Tuple

# llm/status.go of v0.12, then of v0.33 (the same list with more around it).
OLD_ERROR_PREFIXES = (
    "error:",
    "CUDA error",
    "ROCm error",
    "cudaMalloc failed",
    '"ERR"',
    "error loading model",
    "GGML_ASSERT",
    "Deepseek2 does not support K-shift",
)
ERROR_PREFIXES = (
    "mlx:",
    "MLX:",
    "panic:",
    "fatal error:",
    "error:",
    "Error:",
    *OLD_ERROR_PREFIXES[1:],
    "signal arrived during cgo execution",
    "llama_init_from_model:",
)
OUT_OF_MEMORY_SUBSTRINGS = (
    "out of memory",
    "out of device memory",
    "cudamalloc failed",
    "hipmalloc failed",
    "failed to allocate",
    "allocation failed",
    "not enough memory",
    "insufficient memory",
    "vk_error_out_of_device_memory",
    "erroroutofmemory",
)
RECOVERABLE_OUT_OF_MEMORY_SUBSTRINGS = ("retrying without pipeline parallelism",)
MAX_CAPTURED_ERROR_BYTES = 8 * 1024


def is_out_of_memory(message: str) -> bool:
    """``IsOutOfMemoryMessage``.

    >>> is_out_of_memory("error: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)")
    True
    >>> is_out_of_memory("model loaded successfully")
    False
    """
    lowered = message.lower()
    return any(needle in lowered for needle in OUT_OF_MEMORY_SUBSTRINGS)


def is_recoverable_out_of_memory(message: str) -> bool:
    """``isRecoverableOutOfMemoryMessage``: the last non-empty line is an OOM llama.cpp retries by itself.

    >>> is_recoverable_out_of_memory("ggml_backend_sched_reserve: compute buffer allocation failed, "
    ...                              "retrying without pipeline parallelism")
    True
    >>> is_recoverable_out_of_memory("retrying without pipeline parallelism\\ncudaMalloc failed: out of memory")
    False
    """
    lines = [line.strip() for line in message.strip().split("\n") if line.strip()]
    last = lines[-1] if lines else ""
    return is_out_of_memory(last) and any(needle in last.lower() for needle in RECOVERABLE_OUT_OF_MEMORY_SUBSTRINGS)


def status_error_line(line: str) -> str:
    """``statusErrorLine``: the error a line of runner output carries ("" for none).

    >>> status_error_line("llama_model_load: error loading model: unable to allocate CUDA0 buffer")
    'error loading model: unable to allocate CUDA0 buffer'
    >>> status_error_line("alloc_tensor_range: failed to allocate CUDA0 buffer of size 4294967296")
    'alloc_tensor_range: failed to allocate CUDA0 buffer of size 4294967296'
    """
    start, found = -1, ""
    for prefix in ERROR_PREFIXES:
        index = line.find(prefix)
        if index >= 0 and (start < 0 or index < start):
            start, found = index, prefix
    if start >= 0:
        return found + line[start + len(found) :].rstrip(" \t\r")
    return line if is_out_of_memory(line) else ""


class StatusWriter:
    """Ollama's ``StatusWriter``: the error text of a runner's output, line by line.

    Since 0.30 every error line is appended (``\\n``-joined, the last 8 KiB kept); before,
    the last line with an error prefix replaced the previous one.
    """

    def __init__(self, llama_server: bool) -> None:
        self.llama_server = llama_server
        self.last_error = ""

    def write(self, line: str) -> None:
        """Take one line of runner output."""
        line = line.rstrip(" \t\r")
        if not line:
            return
        if not self.llama_server:
            for prefix in OLD_ERROR_PREFIXES:
                _head, sep, tail = line.partition(prefix)
                if sep:
                    self.last_error = prefix + tail.strip()
            return
        message = status_error_line(line)
        if not message:
            return
        if self.last_error:
            message = self.last_error + "\n" + message
        if len(message.encode("utf-8")) > MAX_CAPTURED_ERROR_BYTES:
            message = message.encode("utf-8")[-MAX_CAPTURED_ERROR_BYTES:].decode("utf-8", "ignore")
            if "\n" in message:
                message = message.split("\n", 1)[1]
        self.last_error = message

    def clear(self) -> None:
        """``SetLastError("")`` once the runner is ready."""
        self.last_error = ""


def exit_status(code: int) -> str:
    """``ExitStatus.String`` (Unix): OK, unknown (killed by a signal) or ``exit status N``."""
    if code == 0:
        return "OK"
    if code < 0:
        return "unknown"
    return "exit status %d" % code


def signal_text(number: int) -> str:
    """Go's ``signal: <name>`` for a process killed by a signal."""
    names = {"SIGKILL": "killed", "SIGTERM": "terminated", "SIGSEGV": "segmentation fault", "SIGABRT": "aborted"}
    try:
        name = signal.Signals(number).name
    except ValueError:
        return "signal: %d" % number
    return "signal: " + names.get(name, name)


def terminated_while_loading(llama_server: bool, returncode: int, message: str) -> str:
    """The error a request gets when its runner exited during the load (``WaitUntilRunning``).

    >>> terminated_while_loading(True, 1, "error loading model: x")
    'llama-server process has terminated: exit status 1: error loading model: x'
    >>> terminated_while_loading(True, -9, "")
    'llama-server process has terminated: signal: killed'
    >>> terminated_while_loading(False, 1, "error loading model: x")
    'llama runner process has terminated: error loading model: x'
    """
    if not llama_server:
        if message:
            return "llama runner process has terminated: " + message
        detail = signal_text(-returncode) if returncode < 0 else "exit status %d" % returncode
        return "llama runner process has terminated: " + detail
    prefix = "llama-server process has terminated: "
    if message:
        if returncode == 0:
            return prefix + message
        if returncode > 0:
            return prefix + "%s: %s" % (exit_status(returncode), message)
        return prefix + "%s: %s" % (message, message)
    if returncode >= 0:
        return prefix + exit_status(returncode)
    return prefix + signal_text(-returncode)


def no_longer_running(llama_server: bool, returncode: int, message: str) -> str:
    """``getServerStatus`` of a runner whose process has exited."""
    code = returncode if returncode >= 0 else -1
    if llama_server:
        return "llama-server process no longer running: %s %s" % (exit_status(code), message)
    return "llama runner process no longer running: %d %s" % (code, message)


def load_timed_out(llama_server: bool, message: str) -> str:
    """The error of a load that made no progress for OLLAMA_LOAD_TIMEOUT."""
    if llama_server:
        return "timed out waiting for llama-server to start - %s" % message
    return "timed out waiting for llama runner to start - progress 0.00 - %s" % message


def oom_during_startup(message: str) -> str:
    """A llama-server that reported an out-of-memory error on ``/health`` during its load."""
    return "llama-server reported out-of-memory during startup: %s" % message


def runner_broke(message: Optional[str]) -> str:
    """A completion whose runner connection ended early."""
    return "an error was encountered while running the model: %s" % (message or "unexpected EOF")


class LogTexts:
    """The serve-log lines (source, message) a runner's life produces, per era."""

    def __init__(self, llama_server: bool) -> None:
        if llama_server:
            self.starting = ("llama_server.go:433", "starting llama-server")
            self.waiting_start = ("llama_server.go:1295", "waiting for llama-server to start responding")
            self.waiting_available = ("llama_server.go:1350", "waiting for llama-server to become available")
            self.started = ("llama_server.go:1362", "llama-server started in %0.2f seconds")
            self.abort_load = (
                "llama_server.go:1301",
                "client connection closed before llama-server finished loading, aborting load",
            )
            self.abort_completion = ("llama_server.go:1538", ABORT_COMPLETION)
            self.abort_embedding: Optional[Tuple[str, str]] = None
        else:
            self.starting = ("server.go:399", "starting runner")
            self.waiting_start = ("server.go:1251", "waiting for llama runner to start responding")
            self.waiting_available = ("server.go:1285", "waiting for server to become available")
            self.started = ("server.go:1289", "llama runner started in %0.2f seconds")
            self.abort_load = (
                "server.go:1258",
                "client connection closed before server finished loading, aborting load",
            )
            self.abort_completion = ("server.go:1420", ABORT_COMPLETION)
            self.abort_embedding = ("server.go:1559", "aborting embedding request due to client closing the connection")


ABORT_COMPLETION = "aborting completion request due to client closing the connection"
