"""Runner processes of the stand-in: one real child per loaded model, scheduled as Ollama's ``Scheduler``.

Decisions (what expires, what to evict, which options force a reload, how a runner is
started) are pure functions of the runner table, the options and ``now``; the
:class:`Scheduler` applies them. What serve makes of a runner's output and exit is in
:mod:`standin_status`, in the words of the Ollama version the stand-in claims.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

import standin_common as common
from standin_common import FOREVER, MIB, append_event, debug, log, write_line
from standin_status import (
    LogTexts,
    StatusWriter,
    is_out_of_memory,
    is_recoverable_out_of_memory,
    load_timed_out,
    no_longer_running,
    oom_during_startup,
    runner_broke,
    terminated_while_loading,
)
from standin_store import LocalModel
from standin_wire import (
    ERROR,
    LOADING,
    NO_CLIENT,
    NO_SLOT,
    NOT_RESPONDING,
    READY,
    Cancelled,
    ClientWatch,
    DisconnectWatcher,
    RunnerCall,
    RunnerFailed,
    health,
)

LOAD_TIMEOUT_S = 300.0
ERR_MAX_QUEUE = "server busy, please try again.  maximum pending requests exceeded"
DEFAULT_LOAD_MS = 200.0
HEALTH_POLL_S = 0.05  # Ollama polls every 250 ms; faster here keeps loads short in the tests
HEALTH_TIMEOUT_S = 0.2
DEFAULT_PING_MS = 10000.0  # needsReload's ping of a loaded runner
# api.Runner: the options that shape the runner process, with Ollama's defaults (num_ctx aside).
RUNNER_DEFAULTS: Dict[str, Any] = {
    "num_batch": 512,
    "num_gpu": -1,
    "main_gpu": None,
    "use_mmap": None,
    "num_thread": 0,
    "draft_num_predict": 0,
}
STANDIN_DIR = os.path.dirname(os.path.abspath(__file__))
RUNNER_SCRIPT = os.path.join(STANDIN_DIR, "standin_runner.py")
# Ollama starts its Windows runners without a console window (llm/llama_server.go: CREATE_NO_WINDOW).
RUNNER_CREATION_FLAGS = 0x08000000 if sys.platform == "win32" else 0
# The ``oom`` fault's kinds: acted out by the runner during its load (or, for ``runtime``, at its first
# token), or answered by serve itself before any runner starts.
RUNNER_OOM_KINDS = ("cuda", "host", "windows", "metal", "vulkan", "compute", "health", "runtime", "recoverable")
SERVE_OOM_KINDS = ("mlx", "full")
OLD_RUNNER_OOM_KINDS = ("cuda", "host", "windows", "metal", "vulkan", "compute", "runtime")
OLD_SERVE_OOM_KINDS = ("system",)
MLX_OOM = "model requires 9.1 GiB but only 4.2 GiB are available (after 512.0 MiB overhead)"
FULL_OOM = "unable to load full model on GPU"
SYSTEM_OOM = "model requires more system memory (8.0 GiB) than is available (4.0 GiB)"
RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an internal error, "
    "check ollama server logs for details"
)


class ScheduleError(Exception):
    """A model could not be loaded; ``status`` and ``message`` are the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def out_of_memory(self) -> bool:
        """Whether Ollama would call this load failure an out-of-memory error."""
        return is_out_of_memory(self.message)


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
        options: Dict[str, Any],
        num_parallel: int = 1,
        llama_server: bool = True,
    ) -> None:
        self.model = model
        self.key = model.name.key
        self.model_path = model.model_path
        self.proc = proc
        self.port = port
        self.size = size
        self.options = options
        self.context_length = int(options["num_ctx"])
        self.num_parallel = max(1, num_parallel)
        self.refcount = 0
        self.busy = 0
        self.waiters: Deque[object] = collections.deque()
        self.session = 0.0
        self.expires_at = FOREVER
        self.status = StatusWriter(llama_server)
        self.reader: Optional[threading.Thread] = None

    @property
    def last_error(self) -> str:
        """The error text of the runner's output so far (Ollama's ``StatusWriter.LastError``)."""
        return self.status.last_error

    @property
    def alive(self) -> bool:
        """Whether the child has not exited (reaps it when it has)."""
        return self.proc.poll() is None


class PendingRequest:
    """A request for a runner (Ollama's ``LlmRequest``): ``keep_alive`` is the request's own (None keeps
    the runner's), ``options`` its runner options, ``watch`` its client."""

    def __init__(
        self,
        model: LocalModel,
        requested: str,
        keep_alive: Optional[float],
        options: Dict[str, Any],
        watch: ClientWatch = NO_CLIENT,
    ) -> None:
        self.model = model
        self.requested = requested
        self.keep_alive = keep_alive
        self.options = options
        self.watch = watch
        self.runner: Optional[Runner] = None
        self.error: Optional[Exception] = None
        self.cancelled = False
        self.loading = False
        self.oom_retried = False

    def client_gone(self) -> bool:
        """Whether the client gave up on this request."""
        return self.cancelled or self.watch.gone()


# --- Pure decisions -----------------------------------------------------------------


def runner_options(options: Dict[str, Any], default_num_ctx: int, train_ctx: int) -> Dict[str, Any]:
    """The request's runner options (``api.Runner``) with defaults, num_ctx capped at the model's training size.

    >>> runner_options({"num_ctx": 9000, "num_gpu": 0, "temperature": 1}, 4096, 8192)["num_ctx"]
    8192
    >>> runner_options({}, 4096, 0) == dict(RUNNER_DEFAULTS, num_ctx=4096)
    True
    """
    values: Dict[str, Any] = dict(RUNNER_DEFAULTS, num_ctx=default_num_ctx)
    for key in values:
        value = options.get(key)
        if value is None:
            continue
        try:
            values[key] = bool(value) if key == "use_mmap" else int(value)
        except (TypeError, ValueError):
            continue
    values["num_ctx"] = max(4, values["num_ctx"])
    if 0 < train_ctx < values["num_ctx"]:
        values["num_ctx"] = train_ctx
    return values


def changed_options(loaded: Dict[str, Any], wanted: Dict[str, Any]) -> Dict[str, List[Any]]:
    """``needsReload``'s comparison: the runner options that differ as [loaded, wanted].

    A request's num_gpu below 0 (automatic) and an unset use_mmap match any loaded value.

    >>> changed_options(dict(RUNNER_DEFAULTS, num_ctx=4096), dict(RUNNER_DEFAULTS, num_ctx=2048))
    {'num_ctx': [4096, 2048]}
    >>> changed_options(dict(RUNNER_DEFAULTS, num_ctx=4096, num_gpu=0), dict(RUNNER_DEFAULTS, num_ctx=4096))
    {}
    """
    changed = {}
    for key, old in loaded.items():
        new = wanted.get(key)
        if key == "num_gpu" and isinstance(new, int) and new < 0:
            continue
        if key == "use_mmap" and new is None:
            continue
        if old != new:
            changed[key] = [old, new]
    return changed


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


def oom_plan(value: Any, llama_server: bool) -> Optional[Dict[str, str]]:
    """The ``oom`` fault as {kind, via}: true means the era's usual kind; None when unset.

    >>> oom_plan(True, True)
    {'kind': 'cuda', 'via': 'exit'}
    >>> oom_plan({"kind": "metal", "via": "health"}, True)
    {'kind': 'metal', 'via': 'health'}
    >>> oom_plan("system", False)
    {'kind': 'system', 'via': 'exit'}
    """
    if not value:
        return None
    plan = {"kind": "cuda" if llama_server else "system", "via": "exit"}
    if isinstance(value, str):
        plan["kind"] = value
    elif isinstance(value, dict):
        plan.update({key: str(value[key]) for key in ("kind", "via") if value.get(key)})
    known = RUNNER_OOM_KINDS + SERVE_OOM_KINDS if llama_server else OLD_RUNNER_OOM_KINDS + OLD_SERVE_OOM_KINDS
    if plan["kind"] not in known or plan["via"] not in ("exit", "health"):
        raise ScheduleError(500, "stand-in: unknown oom fault %s (kinds: %s)" % (go_repr(value), ", ".join(known)))
    return plan


def go_repr(value: Any) -> str:
    """A fault value as JSON, for error messages."""
    return json.dumps(value, sort_keys=True)


def llama_server_args(
    model: LocalModel, port: int, options: Dict[str, Any], num_parallel: int, embedding: bool
) -> List[str]:
    """The flags Ollama's ``startLlamaServer`` passes for these options (CPU only, no projector or draft).

    >>> args = llama_server_args(_Model("/m/blobs/sha256-1"), 5000, dict(RUNNER_DEFAULTS, num_ctx=4096), 1, False)
    >>> " ".join(args[:12])
    '--model /m/blobs/sha256-1 --port 5000 --host 127.0.0.1 --no-webui --offline -c 4096 -np 1'
    """
    args = [
        "--model",
        model.model_path,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--no-webui",
        "--offline",
        "-c",
        str(options["num_ctx"] * num_parallel),
        "-np",
        str(num_parallel),
        "--log-verbosity",
        "4",
        "--no-log-prefix",
        "--no-log-timestamps",
    ]
    if model.template:
        args += ["--no-jinja", "--chat-template", "chatml"]
    for adapter in model.adapter_paths:
        args += ["--lora", adapter]
    if options["use_mmap"] is False:
        args += ["--load-mode", "none"]
    args += ["--flash-attn", "off"]
    batch = options["num_batch"]
    if embedding:
        args.append("--embedding")
        batch = min(batch, options["num_ctx"] * num_parallel)
    if batch > 0:
        args += ["-b", str(batch), "-ub", str(batch)]
    if options["num_gpu"] >= 0:
        args += ["-ngl", str(options["num_gpu"])]
    if options["num_thread"] > 0:
        args += ["-t", str(options["num_thread"])]
    if options["main_gpu"] is not None:
        args += ["--split-mode", "none", "--main-gpu", str(options["main_gpu"])]
    if not embedding:
        num_keep = int(model.params.get("num_keep", 4) or 0)
        args += ["--context-shift"] + (["--keep", str(num_keep)] if num_keep > 0 else [])
    return args


class _Model:
    """A stand-in for :class:`LocalModel` in doctests."""

    def __init__(self, path: str) -> None:
        self.model_path, self.template, self.adapter_paths, self.params = path, "", [], {}


def llama_server_executable() -> List[str]:
    """How to start ``llama-server``: ``<install>/lib/ollama/llama-server`` and the runner script.

    ``<install>`` is the directory above the one serve was started from (``bin/ollama`` gives
    ``lib/ollama``, as Ollama's Linux layout), else a per-user temporary one; ``llama-server``
    is a symbolic link to this Python, so the process's name and ``argv[0]`` are llama-server's.
    Where no link can be made (Windows without the privilege) the interpreter itself is used.
    """
    name = "llama-server.exe" if sys.platform == "win32" else "llama-server"
    if common.FROZEN:
        # The frozen stand-in (tests/standin/freeze.py) ships a real llama-server executable beside ollama.
        return [os.path.join(os.path.dirname(sys.executable), name)]
    target = os.path.realpath(sys.executable)
    invoked = os.path.dirname(os.path.abspath(sys.argv[0] if sys.argv and sys.argv[0] else STANDIN_DIR))
    candidates = []
    if os.path.realpath(invoked) != os.path.realpath(STANDIN_DIR):
        candidates.append(os.path.join(os.path.dirname(invoked), "lib", "ollama"))
    owner = str(os.getuid()) if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    candidates.append(os.path.join(tempfile.gettempdir(), "ollama-standin-" + owner, "lib", "ollama"))
    for directory in candidates:
        path = os.path.join(directory, name)
        try:
            if not (os.path.islink(path) and os.readlink(path) == target):
                os.makedirs(directory, exist_ok=True)
                temporary = "%s.%d" % (path, os.getpid())
                os.symlink(target, temporary)
                os.replace(temporary, path)
            return [path, RUNNER_SCRIPT]
        except (OSError, NotImplementedError):
            continue
    return [sys.executable, RUNNER_SCRIPT]


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


def model_file_error(path: str) -> bool:
    """Whether serve's own GGUF decode (``llm.LoadModel``) rejects the file: it lacks the GGUF magic."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) not in (b"GGUF", b"FUGG")
    except OSError:
        return False


def wait_for_bell(bell: socket.socket, timeout: Optional[float]) -> bool:
    """Wait until ``bell`` is readable (True) or ``timeout`` seconds pass (None: no limit)."""
    try:
        readable, _, _ = select.select([bell], [], [], timeout)
    except InterruptedError:
        return True  # a signal: its handler rang, or the caller looks again
    return bool(readable)


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
        self.ping_timeout = common.ms_env("OLLAMA_STANDIN_PING_TIMEOUT_MS", DEFAULT_PING_MS) / 1000.0
        self.llama_server = common.uses_llama_server()
        self.texts = LogTexts(self.llama_server)
        self.loaded: Dict[str, Runner] = {}
        self.pending: Deque[PendingRequest] = collections.deque()
        self._cond = threading.Condition()
        self._clients = DisconnectWatcher(self._wake_waiters)
        self._upkeep_bell = socket.socketpair()
        self._upkeep_bell[1].setblocking(False)
        self._worker_idle = True
        self._children: Dict[int, "subprocess.Popen[bytes]"] = {}
        self._children_lock = threading.Lock()
        threading.Thread(target=self._process_pending, name="scheduler", daemon=True).start()

    # requests

    def get_runner(self, request: PendingRequest) -> Runner:
        """A runner for the request's model, loaded if needed (``getRunner``); the caller must :meth:`release` it.

        Raises :class:`ScheduleError`, or :class:`Cancelled` (stage ``queued`` or ``loading``) when the
        client goes first.
        """
        model, watch = request.model, request.watch
        with self._cond:
            runner = self.loaded.get(model.name.key)
        if runner is not None and self._reload_reason(runner, request, "queued") is None:
            with self._cond:
                if self.loaded.get(model.name.key) is runner:
                    self._use_loaded(runner, request)
                    return runner
        with self._cond:
            if len(self.pending) >= self.max_queue and not (self.max_queue == 0 and self._worker_idle):
                raise ScheduleError(503, ERR_MAX_QUEUE)
            self.pending.append(request)
            queued = len(self.pending)
            self._cond.notify_all()
        append_event({"event": "request_queued", "model": model.name.display, "queued": queued, "time": time.time()})
        with self._clients.watching(watch), self._cond:
            while request.runner is None and request.error is None:
                if watch.gone():
                    request.cancelled = True
                    raise Cancelled("loading" if request.loading else "queued")
                self._cond.wait()
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
        elif runner.refcount == 0:
            self.wake_upkeep()  # a new keep-alive deadline

    @contextlib.contextmanager
    def slot(self, runner: Runner, watch: ClientWatch = NO_CLIENT, embedding: bool = False) -> Iterator[None]:
        """Hold one of the runner's request slots, waiting in order for a free one (``sem.Acquire``).

        Raises :class:`Cancelled` (stage ``waiting``) when the client goes while waiting, with
        Ollama's log line for an aborted completion (or embedding, before 0.30).
        """
        ticket = object()
        with self._clients.watching(watch), self._cond:
            runner.waiters.append(ticket)
            while not (runner.waiters[0] is ticket and runner.busy < runner.num_parallel):
                if watch.gone():
                    runner.waiters.remove(ticket)
                    self._cond.notify_all()
                    abort_log = self.texts.abort_embedding if embedding else self.texts.abort_completion
                    if abort_log:
                        log("INFO", *abort_log)
                    raise Cancelled("waiting")
                self._cond.wait()
            runner.waiters.popleft()
            runner.busy += 1
            self._cond.notify_all()
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

    # upkeep and shutdown

    def wake_upkeep(self) -> None:
        """Have :meth:`wait_for_upkeep` return now (any thread, and signal handlers)."""
        try:
            self._upkeep_bell[1].send(b"\0")
        except OSError:
            pass  # full: a wake-up is pending anyway

    def wait_for_upkeep(self, until: float = FOREVER) -> None:
        """Sleep until there is upkeep to do: a keep-alive ran out, a runner's output ended (it exited),
        :meth:`wake_upkeep` was called, or the clock reached ``until``. Nothing wakes it otherwise."""
        with self._cond:
            due = min([until] + [runner.expires_at for runner in self.loaded.values() if runner.refcount == 0])
        timeout = None if due == FOREVER else max(0.0, due - self.clock())
        bell = self._upkeep_bell[0]
        if wait_for_bell(bell, timeout):
            bell.recv(4096)

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
            reason = None if runner is None else self._reload_reason(runner, request, "queued")
            if runner is not None and reason is None:
                with self._cond:
                    if self.loaded.get(runner.key) is runner:
                        self._use_loaded(runner, request)
                        return
                continue
            if runner is not None and reason is not None:
                self._log_reload(runner, *reason)
                victim: Optional[Runner] = runner
            elif loaded_count >= self.max_loaded:
                with self._cond:
                    victim = runner_to_unload(list(self.loaded.values()))
            else:
                try:
                    loaded = self._load(request)
                except ScheduleError as error:
                    others = self.snapshot()
                    if not (self.llama_server and others and error.out_of_memory and not request.oom_retried):
                        raise
                    request.oom_retried = True
                    log(
                        "WARN",
                        "sched.go:667",
                        "llama-server load failed; evicting all other models and retrying once",
                        ("model", request.model.model_path),
                        ("error", error.message),
                    )
                    for other in others:
                        self._expire_and_wait(other)
                    continue
                self._deliver(request, runner=loaded)
                return
            if victim is not None:
                self._expire_and_wait(victim)

    def _reload_reason(
        self, runner: Runner, request: PendingRequest, stage: str
    ) -> Optional[Tuple[str, Dict[str, List[Any]]]]:
        """``needsReload``: why the loaded runner cannot serve this request (None: it can).

        Another blob under the name, other runner options, or a runner that does not answer its
        ``/health`` within 10 s (dead, stopped or hung).
        """
        if runner.model_path != request.model.model_path:
            return "model", {}
        changed = changed_options(runner.options, request.options)
        if changed:
            return "options", changed
        if not runner.alive:
            return "unresponsive", {}
        status, _detail = health(runner.port, request.watch, self.ping_timeout, stage)
        if status in (ERROR, NOT_RESPONDING):
            return "unresponsive", {}
        return None

    def _log_reload(self, runner: Runner, reason: str, changed: Dict[str, List[Any]]) -> None:
        """Ollama's debug line for a reload, and an event so tests can count reloads."""
        debug("sched.go:259", "reloading", ("runner", runner.model_path), ("reason", reason))
        append_event(
            {
                "event": "runner_reload",
                "model": runner.model.name.display,
                "pid": runner.proc.pid,
                "reason": reason,
                "changed": changed,
                "time": time.time(),
            }
        )

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
                self._cond.wait()  # _unload notifies

    # internals

    def _wake_waiters(self) -> None:
        """A waiting request's client went: its waiter looks."""
        with self._cond:
            self._cond.notify_all()

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
        if model_file_error(model.model_path):
            if self.llama_server:
                log(
                    "INFO",
                    "sched.go:529",
                    "failed to load model metadata",
                    ("model", model.model_path),
                    ("error", "invalid file magic"),
                )
            raise ScheduleError(500, "invalid file magic")
        with self._cond:
            request.loading = True
        faults = self.control()
        oom = oom_plan(faults.get("oom"), self.llama_server)
        if oom is not None and oom["kind"] in SERVE_OOM_KINDS + OLD_SERVE_OOM_KINDS:
            self._refuse_load(model, oom["kind"])
        embedding = "embedding" in model.capabilities()
        num_parallel = 1 if embedding else self.num_parallel
        port = free_port()
        plan: Dict[str, Any] = {
            "load_ms": float(faults.get("load_ms", self.default_load_ms) or 0),
            "spawned": time.time(),
        }
        if oom is not None:
            plan["oom"] = oom
        if common.env_var("OLLAMA_STANDIN_MLX") in ("1", "true"):
            # The MLX engine's runner names the model, not a blob (x/imagegen, x/mlxrunner).
            command = [sys.executable, common.EXECUTABLE, "runner", "--mlx-engine", "--model", model.name.display]
            command += ["--port", str(port)]
            shown = command[1:]
        elif self.llama_server:
            args = llama_server_args(model, port, request.options, num_parallel, embedding)
            prefix = llama_server_executable()
            command, shown = prefix + args, [prefix[0], *args]
        else:
            runner = [sys.executable] if common.FROZEN else [sys.executable, common.EXECUTABLE]
            command = [*runner, "runner", "--model", model.model_path, "--port", str(port)]
            shown = command[len(runner) - 1 :]
        log("INFO", self.texts.starting[0], self.texts.starting[1], ("cmd", " ".join(shown)))
        env = dict(os.environ, OLLAMA_STANDIN_RUNNER_PLAN=json.dumps(plan))
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            close_fds=True,
            env=env,
            creationflags=RUNNER_CREATION_FLAGS,
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
        runner = Runner(model, proc, port, size, request.options, num_parallel, self.llama_server)
        reader = threading.Thread(target=self._pump_output, args=(runner,), daemon=True)
        runner.reader = reader
        reader.start()
        started = self.clock()
        try:
            self._wait_until_running(runner, reader, request, started)
        except ScheduleError as error:
            log("INFO", "sched.go:641", "Load failed", ("model", model.model_path), ("error", error.message))
            raise
        with self._cond:
            runner.refcount = 1
            runner.session = self.default_keep_alive if request.keep_alive is None else request.keep_alive
            runner.expires_at = expiry(self.clock(), runner.session)
            self.loaded[runner.key] = runner
            count = len(self.loaded)
        log("INFO", "sched.go:728", "loaded runners", ("count", count))
        append_event({"event": "runner_ready", "pid": proc.pid, "model": model.name.display, "time": time.time()})
        return runner

    def _refuse_load(self, model: LocalModel, kind: str) -> None:
        """The out-of-memory answers serve gives before starting any runner."""
        if kind == "mlx":
            log("INFO", "sched.go:641", "Load failed", ("model", model.model_path), ("error", MLX_OOM))
            raise ScheduleError(500, MLX_OOM)
        if kind == "full":
            log("INFO", "sched.go:632", "model is too large for system memory", ("requireFull", "false"))
            raise ScheduleError(500, FULL_OOM)
        log(
            "WARN",
            "server.go:168",
            "model request too large for system",
            ("requested", "8.0 GiB"),
            ("available", "4.0 GiB"),
        )
        log("INFO", "sched.go:453", "NewLlamaServer failed", ("model", model.model_path), ("error", SYSTEM_OOM))
        raise ScheduleError(500, SYSTEM_OOM)

    def _wait_until_running(
        self, runner: Runner, reader: threading.Thread, request: PendingRequest, started: float
    ) -> None:
        """``WaitUntilRunning``: poll ``/health`` until ready; fail on exit, an OOM report, a stall or a gone client."""
        texts = self.texts
        log("INFO", *texts.waiting_start)
        deadline = started + self.load_timeout
        last_status = ""
        while True:
            if request.client_gone():
                log("WARN", *texts.abort_load)
                self._kill(runner.proc)
                raise Cancelled("loading")
            if runner.proc.poll() is not None:
                reader.join(timeout=2)
                self._forget_child(runner.proc)
                message = terminated_while_loading(self.llama_server, runner.proc.returncode, runner.last_error)
                raise ScheduleError(500, message)
            if self.clock() > deadline:
                self._kill(runner.proc)
                raise ScheduleError(500, load_timed_out(self.llama_server, runner.last_error))
            status, detail = health(runner.port, NO_CLIENT, HEALTH_TIMEOUT_S, "loading")
            if status != last_status and status != READY:
                log("INFO", texts.waiting_available[0], texts.waiting_available[1], ("status", status))
            if status == LOADING and status != last_status:
                deadline = self.clock() + self.load_timeout
            if status == READY:
                runner.status.clear()
                log("INFO", texts.started[0], texts.started[1] % (self.clock() - started))
                return
            if status == ERROR and self.llama_server:
                message = runner.last_error
                recoverable = is_recoverable_out_of_memory(message) or is_recoverable_out_of_memory(detail)
                if not recoverable and (is_out_of_memory(message) or is_out_of_memory(detail)):
                    self._kill(runner.proc)
                    raise ScheduleError(500, oom_during_startup(message if is_out_of_memory(message) else detail))
            last_status = status
            self.sleep(HEALTH_POLL_S)

    # generation

    def runner_status(self, runner: Runner, watch: ClientWatch, stage: str) -> None:
        """``getServerStatusRetry`` before a completion: raise :class:`RunnerFailed` unless the runner is ready."""
        for _attempt in range(11):
            if runner.proc.poll() is not None:
                raise RunnerFailed(no_longer_running(self.llama_server, runner.proc.returncode, runner.last_error))
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
        """The runner's answer ended early: stop it, say what it last reported (``s.Close()``), and after an
        out-of-memory error expire every loaded model (``expireRunnersForRuntimeOOM``)."""
        self._kill(runner.proc)
        if runner.reader is not None:
            runner.reader.join(timeout=2)  # Ollama's cmd.Wait waits for the runner's output to be read
        message = runner_broke(runner.last_error)
        if self.llama_server and is_out_of_memory(message):
            log(
                "WARN",
                "sched.go:1648",
                "runtime OOM detected; expiring loaded models to clear memory before next request",
                ("model", runner.model_path),
                ("error", message),
            )
            for other in self.snapshot():
                with self._cond:
                    other.session = 0.0
                    other.expires_at = self.clock()
                    idle = other.refcount == 0
                if idle:
                    self._unload(other)
        return message

    def _pump_output(self, runner: Runner) -> None:
        stream = runner.proc.stdout
        if stream is None:
            return
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            runner.status.write(line)
            write_line(sys.stderr, line)
        stream.close()
        self.wake_upkeep()  # the runner exited (or closed its output): reap it now
