"""Runner processes of the stand-in: one real child per loaded model, expired by keep-alive.

Decisions (what expires, what to evict, which error a dead runner means) are pure
functions of the runner table and ``now``; the :class:`Scheduler` applies them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import standin_common as common
from standin_common import FOREVER, MIB, append_event, log, write_line
from standin_store import LocalModel

LOAD_TIMEOUT_S = 300.0
ERROR_PREFIXES = (
    "error:",
    "CUDA error",
    "ROCm error",
    "cudaMalloc failed",
    '"ERR"',
    "error loading model",
    "GGML_ASSERT",
)


class ScheduleError(Exception):
    """A model could not be loaded; ``status`` and ``message`` are the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Runner:
    """A loaded model: its child process and keep-alive bookkeeping (times are monotonic)."""

    def __init__(
        self, model: LocalModel, proc: "subprocess.Popen[bytes]", port: int, size: int, context_length: int
    ) -> None:
        self.model = model
        self.key = model.name.key
        self.model_path = model.model_path
        self.proc = proc
        self.port = port
        self.size = size
        self.context_length = context_length
        self.refcount = 0
        self.expires_at = FOREVER
        self.last_error = ""

    @property
    def alive(self) -> bool:
        """Whether the child has not exited (reaps it when it has)."""
        return self.proc.poll() is None


# --- Pure decisions -----------------------------------------------------------------


def last_error_message(line: str, previous: str) -> str:
    """Ollama's ``StatusWriter``: remember the text after the last known error prefix in runner output."""
    found = previous
    for prefix in ERROR_PREFIXES:
        head, sep, tail = line.partition(prefix)
        if sep:
            found = prefix + tail.strip()
    return found


def termination_message(last_error: str, returncode: Optional[int]) -> str:
    """The error a request gets when its runner exited while loading."""
    if last_error:
        detail = last_error
    elif returncode is not None and returncode < 0:
        detail = "signal: %s" % _signal_name(-returncode)
    else:
        detail = "exit status %s" % returncode
    return "llama runner process has terminated: " + detail


def _signal_name(number: int) -> str:
    import signal

    try:
        return {signal.SIGKILL: "killed", signal.SIGTERM: "terminated", signal.SIGSEGV: "segmentation fault"}.get(
            signal.Signals(number), signal.Signals(number).name
        )
    except ValueError:
        return str(number)


def runners_to_expire(runners: List[Runner], now: float) -> List[Runner]:
    """Idle runners whose keep-alive has run out."""
    return [runner for runner in runners if runner.refcount == 0 and runner.expires_at <= now]


def eviction_candidate(runners: List[Runner], max_loaded: int) -> Optional[Runner]:
    """The idle runner to unload to make room for one more, or None when there is room (or none idle)."""
    if len(runners) < max_loaded:
        return None
    idle = [runner for runner in runners if runner.refcount == 0]
    return min(idle, key=lambda runner: runner.expires_at) if idle else None


def expiry(now: float, keep_alive: float) -> float:
    """When a runner released at ``now`` expires."""
    return FOREVER if keep_alive == FOREVER else now + keep_alive


def max_loaded_models() -> int:
    """OLLAMA_MAX_LOADED_MODELS, default 3 (Ollama's CPU default)."""
    try:
        value = int(common.env_var("OLLAMA_MAX_LOADED_MODELS") or 0)
    except ValueError:
        value = 0
    return value if value > 0 else 3


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- The scheduler --------------------------------------------------------------------


class Scheduler:
    """Loads models into runner children, hands them to requests and unloads them."""

    def __init__(
        self,
        control: Callable[[], Dict[str, Any]],
        runner_mb: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.control = control
        self.runner_mb = runner_mb
        self.clock = clock
        self.sleep = sleep
        self.max_loaded = max_loaded_models()
        self.loaded: Dict[str, Runner] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._children: Dict[int, "subprocess.Popen[bytes]"] = {}
        self._children_lock = threading.Lock()

    # requests

    def acquire(self, model: LocalModel, requested: str, keep_alive: float, num_ctx: int) -> Tuple[Runner, int]:
        """A runner for the model (loading it if needed) and the load time in ns (0 when already loaded)."""
        with self._load_lock:
            with self._lock:
                runner = self.loaded.get(model.name.key)
                if runner is not None and runner.alive and runner.model_path == model.model_path:
                    runner.refcount += 1
                    return runner, 0
            if runner is not None:
                self._unload(runner)
            self._make_room()
            started = self.clock()
            runner = self._load(model, requested, num_ctx)
            load_ns = int((self.clock() - started) * 1e9)
            with self._lock:
                runner.refcount = 1
                runner.expires_at = expiry(self.clock(), keep_alive)
                self.loaded[runner.key] = runner
            return runner, load_ns

    def release(self, runner: Runner, keep_alive: float) -> None:
        """A request is done with the runner; restart its keep-alive (0 unloads it now)."""
        with self._lock:
            runner.refcount = max(0, runner.refcount - 1)
            runner.expires_at = expiry(self.clock(), keep_alive)
            unload_now = runner.refcount == 0 and keep_alive == 0
        if unload_now:
            self._unload(runner)

    def expire(self, model: LocalModel) -> None:
        """Unload a model (``keep_alive: 0`` with an empty prompt); busy runners go when released."""
        with self._lock:
            runner = self.loaded.get(model.name.key)
            if runner is None:
                return
            runner.expires_at = self.clock()
            busy = runner.refcount > 0
        if not busy:
            self._unload(runner)

    def snapshot(self) -> List[Runner]:
        """The loaded runners."""
        with self._lock:
            return list(self.loaded.values())

    def drop_dead(self, runner: Runner) -> None:
        """Forget a runner whose process died under a request."""
        self._unload(runner)

    # periodic work and shutdown

    def reap(self) -> None:
        """Unload expired runners and forget ones that died on their own."""
        now = self.clock()
        with self._lock:
            runners = list(self.loaded.values())
        for runner in runners:
            if not runner.alive:
                log(
                    "WARN",
                    "sched.go:417",
                    "runner exited unexpectedly",
                    ("model", runner.model_path),
                    ("pid", runner.proc.pid),
                )
                self._unload(runner)
        for runner in runners_to_expire([r for r in runners if r.alive], now):
            self._unload(runner)
        with self._children_lock:
            orphans = [
                proc for proc in self._children.values() if proc.poll() is not None and not self._is_loaded(proc)
            ]
        for proc in orphans:
            self._forget_child(proc)

    def shutdown(self) -> None:
        """Kill every runner child and wait for it (what SIGTERM to serve does)."""
        with self._children_lock:
            children = list(self._children.values())
        for proc in children:
            self._kill(proc)

    # internals

    def _is_loaded(self, proc: "subprocess.Popen[bytes]") -> bool:
        with self._lock:
            return any(runner.proc is proc for runner in self.loaded.values())

    def _make_room(self) -> None:
        with self._lock:
            victim = eviction_candidate(list(self.loaded.values()), self.max_loaded)
        if victim is not None:
            self._unload(victim)

    def _unload(self, runner: Runner) -> None:
        with self._lock:
            if self.loaded.get(runner.key) is runner:
                del self.loaded[runner.key]
        self._kill(runner.proc)

    def _kill(self, proc: "subprocess.Popen[bytes]") -> None:
        if proc.poll() is None:
            try:
                proc.kill()
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return
        self._forget_child(proc)

    def _forget_child(self, proc: "subprocess.Popen[bytes]") -> None:
        with self._children_lock:
            known = self._children.pop(proc.pid, None)
        if known is not None:
            append_event({"event": "runner_exit", "pid": proc.pid, "code": proc.returncode, "time": time.time()})

    def _load(self, model: LocalModel, requested: str, num_ctx: int) -> Runner:
        if not model.model_path or not os.path.exists(model.model_path):
            raise ScheduleError(404, 'model "%s" not found, try pulling it first' % requested)
        port = free_port()
        command = [sys.executable, common.EXECUTABLE, "runner", "--model", model.model_path, "--port", str(port)]
        log("INFO", "server.go:438", "starting llama server", ("cmd", " ".join(command)))
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, close_fds=True)
        with self._children_lock:
            self._children[proc.pid] = proc
        append_event(
            {
                "event": "runner_start",
                "pid": proc.pid,
                "serve_pid": os.getpid(),
                "model": model.name.display,
                "blob": model.model_path,
                "port": port,
                "create_time": common.process_create_time(proc.pid),
                "time": time.time(),
            }
        )
        size = os.path.getsize(model.model_path) + self.runner_mb * MIB
        runner = Runner(model, proc, port, size, num_ctx)
        reader = threading.Thread(target=self._pump_stderr, args=(runner,), daemon=True)
        reader.start()
        started = self.clock()
        self._wait_until_listening(runner, reader, started)
        log("INFO", "server.go:637", "llama runner started in %.2f seconds" % (self.clock() - started))
        return runner

    def _wait_until_listening(self, runner: Runner, reader: threading.Thread, started: float) -> None:
        load_ms = float(self.control().get("load_ms", 200) or 0)
        while True:
            if runner.proc.poll() is not None:
                reader.join(timeout=2)
                self._forget_child(runner.proc)
                raise ScheduleError(500, termination_message(runner.last_error, runner.proc.returncode))
            if _accepts_connections(runner.port):
                break
            if self.clock() - started > LOAD_TIMEOUT_S:
                self._kill(runner.proc)
                raise ScheduleError(500, "timed out waiting for llama runner to start - progress 0.00 - ")
            self.sleep(0.01)
        remaining = load_ms / 1000.0 - (self.clock() - started)
        if remaining > 0:
            self.sleep(remaining)

    def _pump_stderr(self, runner: Runner) -> None:
        stream = runner.proc.stderr
        if stream is None:
            return
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            runner.last_error = last_error_message(line, runner.last_error)
            write_line(sys.stderr, line)
        stream.close()


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
