"""Runner processes of the stand-in: one real child per loaded model, expired by keep-alive.

Decisions (what expires, what to evict, which error a dead runner means) are pure
functions of the runner table and ``now``; the :class:`Scheduler` applies them.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional

import standin_common as common
from standin_common import FOREVER, MIB, append_event, debug, log, write_line
from standin_store import LocalModel
from standin_wire import (
    ERROR,
    LOADING,
    NO_CLIENT,
    NO_SLOT,
    READY,
    Cancelled,
    ClientWatch,
    RunnerCall,
    RunnerFailed,
    health,
)

LOAD_TIMEOUT_S = 300.0
ERR_MAX_QUEUE = "server busy, please try again.  maximum pending requests exceeded"
DEFAULT_LOAD_MS = 200.0
POLL_S = 0.05
HEALTH_POLL_S = 0.05  # Ollama polls every 250 ms; faster here keeps loads short in the tests
HEALTH_TIMEOUT_S = 0.2
RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an internal error, "
    "check ollama server logs for details"
)
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
    """A loaded model: its child process, its request slots and keep-alive bookkeeping (times are monotonic).

    ``refcount`` counts the requests scheduled on it (Ollama's ``runnerRef.refCount``); ``busy`` the
    ones holding one of its ``num_parallel`` slots (the semaphore inside Ollama's ``Completion``).
    """

    def __init__(
        self,
        model: LocalModel,
        proc: "subprocess.Popen[bytes]",
        port: int,
        size: int,
        context_length: int,
        num_parallel: int = 1,
    ) -> None:
        self.model = model
        self.key = model.name.key
        self.model_path = model.model_path
        self.proc = proc
        self.port = port
        self.size = size
        self.context_length = context_length
        self.num_parallel = max(1, num_parallel)
        self.refcount = 0
        self.busy = 0
        self.waiters: Deque[object] = collections.deque()
        self.session = 0.0
        self.expires_at = FOREVER
        self.last_error = ""

    @property
    def alive(self) -> bool:
        """Whether the child has not exited (reaps it when it has)."""
        return self.proc.poll() is None


class PendingRequest:
    """A request waiting in the scheduler's queue for a runner (Ollama's ``LlmRequest``)."""

    def __init__(
        self,
        model: LocalModel,
        requested: str,
        keep_alive: Optional[float],
        num_ctx: int,
        watch: ClientWatch = NO_CLIENT,
    ) -> None:
        self.model = model
        self.requested = requested
        self.keep_alive = keep_alive
        self.num_ctx = num_ctx
        self.watch = watch
        self.runner: Optional[Runner] = None
        self.error: Optional[Exception] = None
        self.cancelled = False
        self.loading = False

    def client_gone(self) -> bool:
        """Whether the client gave up on this request."""
        return self.cancelled or self.watch.gone()


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


def runner_to_unload(runners: List[Runner]) -> Optional[Runner]:
    """``findRunnerToUnload``: the first idle runner by (keep-alive, name), else the first busy one."""
    ordered = sorted(runners, key=lambda runner: (runner.session, runner.model_path))
    idle = [runner for runner in ordered if runner.refcount == 0]
    return (idle or ordered or [None])[0]


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


def load_timeout() -> float:
    """OLLAMA_LOAD_TIMEOUT in seconds (a Go duration or whole seconds; default 5 minutes, <= 0: no limit)."""
    text = common.env_var("OLLAMA_LOAD_TIMEOUT")
    seconds = LOAD_TIMEOUT_S
    if text:
        try:
            seconds = common.parse_go_duration(text) / 1e9
        except common.DurationError:
            try:
                seconds = float(int(text))
            except ValueError:
                pass
    return seconds if seconds > 0 else FOREVER


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- The scheduler --------------------------------------------------------------------


class Scheduler:
    """Loads models into runner children, hands them to requests and unloads them, as Ollama's ``Scheduler``.

    A request for a loaded model takes its runner at once (``getRunner``); any other waits in a
    queue of at most OLLAMA_MAX_QUEUE requests (beyond that: 503 ``ErrMaxQueue``) that one worker
    thread serves in order, loading one model at a time (``processPending``). Generation then
    waits for one of the runner's OLLAMA_NUM_PARALLEL slots (:meth:`slot`).
    """

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
        self.max_queue = common.uint_env("OLLAMA_MAX_QUEUE", 512)
        self.num_parallel = max(1, common.uint_env("OLLAMA_NUM_PARALLEL", 1))
        self.default_keep_alive = common.default_keep_alive()
        self.default_load_ms = common.ms_env("OLLAMA_STANDIN_LOAD_MS", DEFAULT_LOAD_MS)
        self.load_timeout = load_timeout()
        self.loaded: Dict[str, Runner] = {}
        self.pending: Deque[PendingRequest] = collections.deque()
        self._cond = threading.Condition()
        self._worker_idle = True
        self._children: Dict[int, "subprocess.Popen[bytes]"] = {}
        self._children_lock = threading.Lock()
        threading.Thread(target=self._process_pending, name="scheduler", daemon=True).start()

    # requests

    def get_runner(
        self,
        model: LocalModel,
        requested: str,
        keep_alive: Optional[float],
        num_ctx: int,
        watch: ClientWatch = NO_CLIENT,
    ) -> Runner:
        """A runner for the model, loading it if needed (``getRunner``); the caller must :meth:`release` it.

        ``keep_alive`` is the request's own (None keeps the runner's). Raises :class:`ScheduleError`,
        or :class:`Cancelled` (stage ``queued`` or ``loading``) when the client goes first.
        """
        request = PendingRequest(model, requested, keep_alive, num_ctx, watch)
        with self._cond:
            runner = self.loaded.get(model.name.key)
            if runner is not None and not self._needs_reload(runner, request):
                self._use_loaded(runner, request)
                return runner
            if len(self.pending) >= self.max_queue and not (self.max_queue == 0 and self._worker_idle):
                raise ScheduleError(503, ERR_MAX_QUEUE)
            self.pending.append(request)
            queued = len(self.pending)
            self._cond.notify_all()
        append_event({"event": "request_queued", "model": model.name.display, "queued": queued, "time": time.time()})
        while True:
            with self._cond:
                if request.runner is not None or request.error is not None:
                    break
                self._cond.wait(POLL_S)
            if watch.gone():
                with self._cond:
                    if request.runner is None and request.error is None:
                        request.cancelled = True
                        raise Cancelled("loading" if request.loading else "queued")
        if request.error is not None:
            raise request.error
        assert request.runner is not None
        return request.runner

    def release(self, runner: Runner) -> None:
        """A request is done with the runner (``processCompleted``): idle runners expire after their keep-alive."""
        with self._cond:
            runner.refcount = max(0, runner.refcount - 1)
            unload_now = False
            if runner.refcount == 0:
                runner.expires_at = expiry(self.clock(), runner.session)
                unload_now = runner.session <= 0
            self._cond.notify_all()
        if unload_now:
            self._unload(runner)

    @contextlib.contextmanager
    def slot(self, runner: Runner, watch: ClientWatch = NO_CLIENT, abort_log: str = "") -> Iterator[None]:
        """Hold one of the runner's request slots, waiting in order for a free one (``sem.Acquire``).

        Raises :class:`Cancelled` (stage ``waiting``) when the client goes while waiting, logging
        ``abort_log`` as Ollama does.
        """
        ticket = object()
        with self._cond:
            runner.waiters.append(ticket)
        while True:
            with self._cond:
                if runner.waiters[0] is ticket and runner.busy < runner.num_parallel:
                    runner.waiters.popleft()
                    runner.busy += 1
                    self._cond.notify_all()
                    break
                self._cond.wait(POLL_S)
            if watch.gone():
                with self._cond:
                    runner.waiters.remove(ticket)
                    self._cond.notify_all()
                if abort_log:
                    log("INFO", "server.go:1537", abort_log)
                raise Cancelled("waiting")
        try:
            yield
        finally:
            with self._cond:
                runner.busy -= 1
                self._cond.notify_all()

    def expire(self, model: LocalModel) -> None:
        """Unload a model (``keep_alive: 0`` with an empty prompt); busy runners go when released."""
        with self._cond:
            runner = self.loaded.get(model.name.key)
            if runner is None:
                return
            runner.session = 0.0
            runner.expires_at = self.clock()
            busy = runner.refcount > 0
        if not busy:
            self._unload(runner)

    def snapshot(self) -> List[Runner]:
        """The loaded runners."""
        with self._cond:
            return list(self.loaded.values())

    def drop_dead(self, runner: Runner) -> None:
        """Forget a runner whose process died under a request."""
        self._unload(runner)

    # periodic work and shutdown

    def reap(self) -> None:
        """Unload expired runners and forget ones that died on their own."""
        now = self.clock()
        with self._cond:
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

    # the queue

    def _process_pending(self) -> None:
        """The worker: one queued request at a time, each until it has a runner or an error."""
        while True:
            with self._cond:
                self._worker_idle = True
                while not self.pending:
                    self._cond.wait()
                self._worker_idle = False
                request = self.pending.popleft()
            if request.client_gone():
                debug("sched.go:239", "pending request cancelled or timed out, skipping scheduling")
                continue
            try:
                self._schedule(request)
            except (ScheduleError, Cancelled) as error:
                self._deliver(request, error=error)
            except Exception as error:  # noqa: BLE001 - a scheduler bug must fail the request, not the worker
                log("ERROR", "sched.go:1", "scheduling failed", ("error", repr(error)))
                self._deliver(request, error=ScheduleError(500, str(error)))

    def _schedule(self, request: PendingRequest) -> None:
        """``processPending`` for one request: use, reload, evict or load until it has a runner."""
        while True:
            if request.client_gone():
                return
            with self._cond:
                runner = self.loaded.get(request.model.name.key)
                loaded_count = len(self.loaded)
                if runner is not None and not self._needs_reload(runner, request):
                    self._use_loaded(runner, request)
                    return
            if runner is not None:
                victim: Optional[Runner] = runner
            elif loaded_count >= self.max_loaded:
                with self._cond:
                    victim = runner_to_unload(list(self.loaded.values()))
            else:
                self._deliver(request, runner=self._load(request))
                return
            if victim is not None:
                self._expire_and_wait(victim)

    def _needs_reload(self, runner: Runner, request: PendingRequest) -> bool:
        """Whether the loaded runner cannot serve this request (dead, or another blob under the name)."""
        return not runner.alive or runner.model_path != request.model.model_path

    def _use_loaded(self, runner: Runner, request: PendingRequest) -> None:
        """``useLoadedRunner`` (lock held): count the request and take its keep-alive."""
        if request.cancelled:
            return
        runner.refcount += 1
        if request.keep_alive is not None:
            runner.session = request.keep_alive
        request.runner = runner
        self._cond.notify_all()

    def _deliver(
        self, request: PendingRequest, runner: Optional[Runner] = None, error: Optional[Exception] = None
    ) -> None:
        with self._cond:
            abandoned = request.cancelled
            if not abandoned:
                request.runner = runner
                request.error = error
            self._cond.notify_all()
        if abandoned and runner is not None:
            self.release(runner)

    def _expire_and_wait(self, runner: Runner) -> None:
        """Unload the runner as soon as its requests are done, and wait until it is gone."""
        with self._cond:
            runner.session = 0.0
            runner.expires_at = self.clock()
            idle = runner.refcount == 0
        if idle:
            self._unload(runner)
        with self._cond:
            while self.loaded.get(runner.key) is runner:
                self._cond.wait(POLL_S)

    # internals

    def _is_loaded(self, proc: "subprocess.Popen[bytes]") -> bool:
        with self._cond:
            return any(runner.proc is proc for runner in self.loaded.values())

    def _unload(self, runner: Runner) -> None:
        with self._cond:
            if self.loaded.get(runner.key) is runner:
                del self.loaded[runner.key]
            self._cond.notify_all()
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

    def _load(self, request: PendingRequest) -> Runner:
        """Start a runner for the request's model and wait until it is ready (``load`` + ``WaitUntilRunning``)."""
        model = request.model
        if not model.model_path or not os.path.exists(model.model_path):
            raise ScheduleError(404, 'model "%s" not found, try pulling it first' % request.requested)
        with self._cond:
            request.loading = True
        port = free_port()
        faults = self.control()
        plan = {
            "load_ms": float(faults.get("load_ms", self.default_load_ms) or 0),
            "spawned": time.time(),
        }
        command = [sys.executable, common.EXECUTABLE, "runner", "--model", model.model_path, "--port", str(port)]
        log("INFO", "server.go:438", "starting llama server", ("cmd", " ".join(command)))
        env = dict(os.environ, OLLAMA_STANDIN_RUNNER_PLAN=json.dumps(plan))
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, close_fds=True, env=env
        )
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
        runner = Runner(model, proc, port, size, request.num_ctx, self.num_parallel)
        reader = threading.Thread(target=self._pump_output, args=(runner,), daemon=True)
        reader.start()
        started = self.clock()
        self._wait_until_running(runner, reader, request, started)
        log("INFO", "server.go:637", "llama runner started in %.2f seconds" % (self.clock() - started))
        with self._cond:
            runner.refcount = 1
            runner.session = self.default_keep_alive if request.keep_alive is None else request.keep_alive
            runner.expires_at = expiry(self.clock(), runner.session)
            self.loaded[runner.key] = runner
        append_event(
            {"event": "runner_ready", "pid": proc.pid, "model": model.name.display, "time": time.time()}
        )
        return runner

    def _wait_until_running(
        self, runner: Runner, reader: threading.Thread, request: PendingRequest, started: float
    ) -> None:
        """Poll the runner's ``/health`` until it is ready; fail on its exit, a stalled load or the client going."""
        deadline = started + self.load_timeout
        last_status = ""
        while True:
            if request.client_gone():
                log("WARN", "server.go:1392", "client connection closed before server finished loading, aborting load")
                self._kill(runner.proc)
                raise Cancelled("loading")
            if runner.proc.poll() is not None:
                reader.join(timeout=2)
                self._forget_child(runner.proc)
                raise ScheduleError(500, termination_message(runner.last_error, runner.proc.returncode))
            if self.clock() > deadline:
                self._kill(runner.proc)
                raise ScheduleError(500, "timed out waiting for llama runner to start - progress 0.00 - ")
            status, _detail = health(runner.port, NO_CLIENT, HEALTH_TIMEOUT_S, "loading")
            if status != last_status and status != READY:
                log("INFO", "server.go:1434", "waiting for server to become available", ("status", status))
            if status == LOADING and status != last_status:
                deadline = self.clock() + self.load_timeout
            if status == READY:
                runner.last_error = ""
                return
            last_status = status
            self.sleep(HEALTH_POLL_S)

    # generation

    def runner_status(self, runner: Runner, watch: ClientWatch, stage: str) -> None:
        """``getServerStatusRetry`` before a completion: raise :class:`RunnerFailed` unless the runner is ready."""
        for _attempt in range(11):
            if runner.proc.poll() is not None:
                raise RunnerFailed(
                    "llama runner process no longer running: %d %s" % (runner.proc.returncode, runner.last_error)
                )
            status, detail = health(runner.port, watch, None, stage)
            if status == ERROR:
                raise RunnerFailed(detail)
            if status != NO_SLOT:
                break
            time.sleep(0.005)
        else:
            raise RunnerFailed("no slots available after 10 retries")
        if status != READY:
            raise RunnerFailed("unexpected server status: %s" % status)

    def complete(self, runner: Runner, request: Dict[str, Any], watch: ClientWatch) -> Iterator[str]:
        """Ollama's ``Completion`` once a slot is held: the runner's tokens as it sends them.

        Raises :class:`Cancelled` (stage ``generating``) when the client goes, which closes the
        connection to the runner so it stops; :class:`RunnerFailed` when the runner cannot answer.
        """
        self.runner_status(runner, watch, "generating")
        try:
            call = RunnerCall(runner.port, "POST", "/completion", request, watch, "generating")
        except ConnectionRefusedError:
            message = RUNNER_STOPPED + (": " + runner.last_error if runner.last_error else "")
            raise RunnerFailed(message) from None
        except OSError:
            raise RunnerFailed(self._runner_broke(runner)) from None
        try:
            if call.status >= 400:
                raise RunnerFailed(call.read_all().decode("utf-8", "replace"))
            for line in call.lines():
                if not line.startswith(b"data: "):
                    continue
                event = json.loads(line[len(b"data: ") :])
                if event.get("stop"):
                    return
                if event.get("content"):
                    yield str(event["content"])
            raise RunnerFailed(self._runner_broke(runner))
        finally:
            call.close()

    def embed(self, runner: Runner, request: Dict[str, Any], watch: ClientWatch) -> List[float]:
        """Ollama's ``Embedding`` once a slot is held: the runner's vector for one input."""
        self.runner_status(runner, watch, "generating")
        try:
            call = RunnerCall(runner.port, "POST", "/embedding", request, watch, "generating")
        except OSError:
            raise RunnerFailed(RUNNER_STOPPED) from None
        try:
            body = call.read_all()
        finally:
            call.close()
        try:
            return [float(value) for value in json.loads(body)["embedding"]]
        except (ValueError, KeyError, TypeError):
            raise RunnerFailed(self._runner_broke(runner)) from None

    def _runner_broke(self, runner: Runner) -> str:
        """The runner's answer ended early: stop it, and say what it last reported (``s.Close()``)."""
        self._kill(runner.proc)
        return "an error was encountered while running the model: %s" % (runner.last_error or "unexpected EOF")

    def _pump_output(self, runner: Runner) -> None:
        stream = runner.proc.stdout
        if stream is None:
            return
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            runner.last_error = last_error_message(line, runner.last_error)
            write_line(sys.stderr, line)
        stream.close()
