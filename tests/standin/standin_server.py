"""``ollama serve`` of the stand-in: Ollama's HTTP API on a threaded stdlib server, with fault knobs.

Bodies, status codes and content types follow ollama.md §1. Answers are
deterministic: ``You said: <prompt words>``, one token per word. tests/standin/README.md
says how to use the knobs below for realistic load scenarios.

Realistic behaviour, always on (Ollama v0.33, server/sched.go and llm/llama_server.go):
  - a request for a loaded model takes its runner at once, then waits for one of its
    OLLAMA_NUM_PARALLEL slots (FIFO) before any byte is written; a request that needs a
    load or a reload waits in a queue of at most OLLAMA_MAX_QUEUE (beyond it: 503 ``server
    busy, please try again.  maximum pending requests exceeded``); one model loads at a time;
    load-only and unload requests never wait for a slot; embeddings take one
  - ``stream: false`` answers are written only when complete (not even the headers before)
  - the runner child loads the model (``/health``: ``{"status":"loading model"}``, then
    ``{"status":"ok"}``) and generates the tokens (serve relays them), spending a little CPU
    per token: a SIGSTOPped runner stalls loads and generation while /, /api/version,
    /api/tags and /api/ps keep answering
  - a client that closes its connection cancels its request at once, wherever it is:
    queued, loading (the load is aborted), waiting for a slot, generating (the runner stops);
    Ollama's log line for that stage is written and the events file gets request_cancelled
  - a request whose runner options (num_ctx, num_batch, num_gpu >= 0, main_gpu, use_mmap,
    num_thread, draft_num_predict) differ from the loaded runner's, or whose runner does not
    answer /health within the ping timeout, reloads the model once its requests are done
  - >= 0.30 the runner is <install>/lib/ollama/llama-server with Ollama's flags, messages and
    OOM handling; before, ``ollama runner`` and the old texts
Realistic timing is opt-in: loads take 200 ms and tokens come without delay unless asked.

Environment (read at start):
  OLLAMA_HOST, OLLAMA_MODELS, OLLAMA_KEEP_ALIVE, OLLAMA_NOPRUNE, OLLAMA_CONTEXT_LENGTH,
  OLLAMA_MAX_LOADED_MODELS, OLLAMA_LOAD_TIMEOUT, OLLAMA_DEBUG   as in Ollama
  OLLAMA_NUM_PARALLEL            request slots per loaded model (default 1; embedding models 1)
  OLLAMA_MAX_QUEUE               requests that may wait for a load or reload (default 512)
  OLLAMA_STANDIN_LOAD_MS         load time of a model in ms, when no ``load_ms`` fault (default 200)
  OLLAMA_STANDIN_TOKEN_MS        delay between tokens in ms, when no ``token_ms`` fault (default 0)
  OLLAMA_STANDIN_TOKENS          answer length in tokens, when no ``tokens`` fault (default 0: the echo)
  OLLAMA_STANDIN_PING_TIMEOUT_MS needsReload's ping of a loaded runner in ms (default 10000, Ollama's)
  OLLAMA_STANDIN_BLOB_MB         size of pulled weights in MiB (default 4)
  OLLAMA_STANDIN_RUNNER_MB       memory each runner child holds (default 64)
  OLLAMA_STANDIN_REGISTRY        extra pullable names, comma-separated
  OLLAMA_STANDIN_EVENTS          file receiving one JSON line per event (serve_start/exit, runner_start/
                                 ready/exit/reload, request_queued, request_cancelled, request_done)
  OLLAMA_STANDIN_EXIT_ON_START   exit at once with this code (message: OLLAMA_STANDIN_EXIT_MESSAGE,
                                 default ``mkdir <models>: permission denied``)
  OLLAMA_STANDIN_IGNORE_SIGTERM  1: SIGTERM is ignored
  OLLAMA_STANDIN_CRASH_AFTER     seconds, then exit 2 like a Go panic (runners are orphaned)
  OLLAMA_STANDIN_VERSION         version reported by server and CLI (default 0.33.0); below 0.30 the
                                 runner is ``ollama runner`` and the texts are v0.12's
  OLLAMA_STANDIN_MLX             1: runners are the MLX engine's ``ollama runner --mlx-engine --model <name>``

Faults in the JSON file named by OLLAMA_STANDIN_CONTROL (re-read on every request; times in ms):
  slow_ms          every API path but / waits this long before its handler
  hang             every request blocks for good (the socket stays open), as a deadlocked serve
  crash_on <path>  serve exits 2 like a Go panic when that path is requested
  http_error       {path, status, error} (or a list of them): that answer instead of the real one
  load_ms          load time of the next loads (from the runner's start to its first "ok")
  token_ms         delay between tokens, in the runner
  tokens           answer length: the echo padded with filler words (num_predict still caps it)
  slow_inference_ms  runner delay before the first token (or an embedding)
  hang_inference   the runner sends no token until the client goes
  oom              the next loads fail out of memory: true, a kind, or {kind, via: exit|health};
                   kinds cuda (default), host, windows, metal, vulkan, compute, health, runtime
                   (at the first token), mlx, full, recoverable (the load recovers); before 0.30:
                   system (default) and the runner kinds
  slow_pull_ms_per_mb
  pull_offline     pulls fail at the manifest as Ollama's do without a network (DNS lookup of the registry)
  pull_disk_full_after_mb  a pull's download fails with ENOSPC once this many MiB of a blob are written
  progress_lines   a list of objects a pull or create stream sends after its first line, as they come (a
                   registry or a newer Ollama can send a digest, total or completed of another shape)
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import itertools
import json
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import zlib
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

import standin_common as common
from standin_common import (
    FOREVER,
    MAX_DURATION_NS,
    MIB,
    VERSION,
    DurationError,
    ModelName,
    append_event,
    gib,
    gin_line,
    go_json,
    log,
    rfc3339nano,
    utc_now,
    write_line,
)
from standin_scheduler import PendingRequest, Runner, ScheduleError, Scheduler, runner_options
from standin_store import LocalModel, ModelMissing, ModelStore, Registry, StreamError
from standin_wire import Cancelled, ClientWatch, RunnerFailed

MAX_ECHO_WORDS = 200
FILLER = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
]


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- Faults -------------------------------------------------------------------------------


class Control:
    """The fault file, re-read on every call; a missing or unreadable file means no faults."""

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> Dict[str, Any]:
        """The current faults."""
        if not self.path:
            return {}
        try:
            with open(self.path, "r", encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def _with_injected_lines(items: Iterator[Dict[str, Any]], extra: List[Any]) -> Iterator[Dict[str, Any]]:
    """``items`` with the ``progress_lines`` fault's objects after the first one."""
    for index, item in enumerate(items):
        yield item
        if index == 0:
            yield from extra


def injected_error(faults: Dict[str, Any], path: str) -> Optional[Tuple[int, str]]:
    """The ``http_error`` fault (one object or a list) matching this path, as (status, message)."""
    entries = faults.get("http_error") or []
    for entry in entries if isinstance(entries, list) else [entries]:
        if isinstance(entry, dict) and entry.get("path") == path:
            return int(entry.get("status", 500)), str(entry.get("error", "injected error"))
    return None


def hang_forever() -> None:
    """Block this request thread for good, like a deadlocked handler."""
    never = threading.Event()
    while True:
        never.wait(3600)


def crash(reason: str) -> None:
    """Die the way a Go panic does (exit status 2), leaving runners orphaned."""
    write_line(sys.stderr, "panic: runtime error: invalid memory address or nil pointer dereference (%s)" % reason)
    write_line(sys.stderr, "[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x0]")
    append_event({"event": "serve_exit", "pid": os.getpid(), "code": 2, "reason": reason, "time": time.time()})
    os._exit(2)


# --- Pure request logic ---------------------------------------------------------------------

GO_TYPES = {"list": "array", "str": "string", "int": "number", "float": "number", "bool": "bool", "dict": "object"}
FIELD_TYPES = {
    "model": (str, "string"),
    "name": (str, "string"),
    "prompt": (str, "string"),
    "system": (str, "string"),
    "from": (str, "string"),
    "template": (str, "string"),
    "source": (str, "string"),
    "destination": (str, "string"),
    "stream": (bool, "bool"),
    "messages": (list, "[]api.Message"),
    "options": (dict, "map[string]interface {}"),
    "parameters": (dict, "map[string]interface {}"),
    "files": (dict, "map[string]string"),
}


def decode_request(body: bytes, type_name: str) -> Dict[str, Any]:
    """Decode a JSON body like gin's ``ShouldBindJSON`` (Go's messages for the usual mistakes)."""
    text = body.decode("utf-8", "replace")
    if not text.strip():
        raise ApiError(400, "missing request body")
    try:
        value, _end = json.JSONDecoder().raw_decode(text.lstrip())
    except json.JSONDecodeError as error:
        raise ApiError(400, go_syntax_error(error)) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(
            400, "json: cannot unmarshal %s into Go value of type api.%s" % (GO_TYPES[type(value).__name__], type_name)
        )
    for field, (expected, go_type) in FIELD_TYPES.items():
        item = value.get(field)
        if (item is not None and not isinstance(item, expected)) or (expected is not bool and isinstance(item, bool)):
            found = GO_TYPES.get(type(item).__name__, "value")
            raise ApiError(
                400,
                "json: cannot unmarshal %s into Go struct field %s.%s of type %s" % (found, type_name, field, go_type),
            )
    return value


def go_syntax_error(error: json.JSONDecodeError) -> str:
    """Go's ``encoding/json`` message for the syntax error Python found."""
    if error.pos >= len(error.doc):
        return "unexpected EOF"
    char = error.doc[error.pos]
    shown = "'\\''" if char == "'" else "'%s'" % char
    context = {
        "Expecting value": "looking for beginning of value",
        "Expecting ':' delimiter": "after object key",
        "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
    }.get(error.msg)
    if context is None and error.msg == "Expecting ',' delimiter":
        context = "after object key:value pair" if _inside_object(error.doc, error.pos) else "after array element"
    return "invalid character %s %s" % (shown, context or "looking for beginning of value")


def _inside_object(doc: str, pos: int) -> bool:
    depth: List[str] = []
    in_string = escaped = False
    for char in doc[:pos]:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
            continue
        if char == '"':
            in_string = True
        elif char in "[{":
            depth.append(char)
        elif char in "]}" and depth:
            depth.pop()
    return bool(depth) and depth[-1] == "{"


def host_allowed(host_header: str) -> bool:
    """Ollama's ``allowedHostsMiddleware`` for a loopback listener."""
    host = host_header
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":")[0]
    if not host:
        return True
    try:
        address = ipaddress.ip_address(host)
        return address.is_loopback or address.is_private or address.is_unspecified or address.is_link_local
    except ValueError:
        pass
    lowered = host.lower()
    return lowered in ("localhost", socket.gethostname().lower()) or lowered.endswith(
        (".localhost", ".local", ".internal")
    )


def allowed_origins(ollama_origins: str) -> List[str]:
    """``envconfig.AllowedOrigins``: ``OLLAMA_ORIGINS``' entries, then Ollama's defaults."""
    origins = ollama_origins.split(",") if ollama_origins else []
    for host in ("localhost", "127.0.0.1", "0.0.0.0"):
        origins += ["http://" + host, "https://" + host, "http://%s:*" % host, "https://%s:*" % host]
    return [*origins, "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]


def origin_allowed(origin: str, host_header: str, patterns: List[str]) -> bool:
    """gin-contrib/cors as Ollama configures it (wildcards on): a same-host origin is not a CORS request;
    else ``*``, an exact origin (the list lower-cased), or one ``*`` between a prefix and a suffix."""
    if origin in ("http://" + host_header, "https://" + host_header):
        return True
    for pattern in (entry.lower() for entry in patterns):
        if pattern == "*" or pattern == origin:
            return True
        if pattern.count("*") == 1:
            prefix, suffix = pattern.split("*")
            if origin.startswith(prefix) and origin.endswith(suffix):
                return True
    return False


def merged_options(model: LocalModel, request_options: Any) -> Dict[str, Any]:
    """Model parameters overridden by the request's ``options``."""
    options = dict(model.params)
    if isinstance(request_options, dict):
        options.update(request_options)
    return options


def num_predict_of(options: Dict[str, Any]) -> Optional[int]:
    """The token limit, or None for unlimited (-1, -2 or absent)."""
    try:
        value = int(options.get("num_predict", -1))
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def stop_words_of(options: Dict[str, Any]) -> List[str]:
    """``stop`` as a list of strings."""
    stop = options.get("stop") or []
    return [str(item) for item in (stop if isinstance(stop, list) else [stop]) if str(item)]


def reply_tokens(
    prompt: str, num_predict: Optional[int], stop: List[str], json_format: bool, length: int = 0
) -> Tuple[List[str], str]:
    """The deterministic answer: ``You said: <prompt words>``, one token per word, and its done_reason.

    ``length`` > 0 pads the answer with filler words to that many tokens (the ``tokens`` fault).

    >>> reply_tokens("hello  world", None, [], False)
    (['You', ' said:', ' hello', ' world'], 'stop')
    >>> reply_tokens("hello world", 2, [], False)
    (['You', ' said:'], 'length')
    >>> reply_tokens("hi", None, [], False, length=5)
    (['You', ' said:', ' hi', ' lorem', ' ipsum'], 'stop')
    """
    words = prompt.split()[:MAX_ECHO_WORDS]
    parts = [go_json({"reply": " ".join(words)})] if json_format else ["You", "said:", *words]
    tokens = [part if index == 0 else " " + part for index, part in enumerate(parts)]
    stopped = False
    for index, token in enumerate(tokens):
        if any(word in token for word in stop):
            tokens, stopped = tokens[:index], True
            break
    if not stopped and not json_format:
        tokens += [" " + FILLER[index % len(FILLER)] for index in range(max(0, length - len(tokens)))]
    if num_predict is not None and num_predict < len(tokens):
        return tokens[:num_predict], "length"
    return tokens, "stop"


def token_ids(words: Iterable[str]) -> List[int]:
    """Stable fake token ids for ``context``."""
    return [zlib.crc32(word.encode("utf-8")) % 128256 for word in words]


def metrics(total_ns: int, load_ns: int, prompt_count: int, eval_count: int, eval_ns: int) -> Dict[str, int]:
    """Ollama's omitempty metrics block."""
    values = {
        "total_duration": total_ns,
        "load_duration": load_ns,
        "prompt_eval_count": prompt_count,
        "prompt_eval_duration": prompt_count * 250_000,
        "eval_count": eval_count,
        "eval_duration": eval_ns if eval_count else 0,
    }
    return {key: value for key, value in values.items() if value}


def wall_expiry_ns(expires_at: float, now_monotonic: float, now_wall_ns: int) -> int:
    """A monotonic expiry as wall-clock ns (``forever`` is now plus Go's maximum duration)."""
    if expires_at == FOREVER:
        return now_wall_ns + MAX_DURATION_NS
    return now_wall_ns + int((expires_at - now_monotonic) * 1e9)


def openai_error(status: int, message: str) -> Dict[str, Any]:
    """The OpenAI-compatible error body."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


# --- An inference in progress ---------------------------------------------------------------


class Turn:
    """A prepared chat/generate request: the runner it holds and what it will answer."""

    def __init__(self, requested: str, model: LocalModel, runner: Runner, load_ns: int, started_ns: int) -> None:
        self.requested = requested
        self.model = model
        self.runner = runner
        self.load_ns = load_ns
        self.started_ns = started_ns
        self.prompt = ""
        self.tokens: List[str] = []
        self.done_reason = "stop"
        self.prompt_count = 1
        self.eval_started_ns = 0

    def final_metrics(self) -> Dict[str, int]:
        """Metrics for the last chunk."""
        now = time.monotonic_ns()
        return metrics(
            now - self.started_ns, self.load_ns, self.prompt_count, len(self.tokens), max(1, now - self.eval_started_ns)
        )


# --- The HTTP layer ---------------------------------------------------------------------------


class StandinServer(http.server.ThreadingHTTPServer):
    """Threaded HTTP server that binds like Go's listener (no reverse DNS).

    Go sets SO_REUSEADDR on Unix only: on Windows that option lets a second
    socket bind a port in use, so a second serve would not fail as Ollama's does.
    """

    daemon_threads = True
    allow_reuse_address = sys.platform != "win32"
    request_queue_size = 128

    app: "App"

    def __init__(self, address: Tuple[str, int], family: int) -> None:
        self.address_family = family
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        """Bind without the reverse-DNS lookup http.server does."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


ROUTES: Dict[str, Dict[str, str]] = {
    "/": {"GET": "root", "HEAD": "root"},
    "/api/version": {"GET": "version", "HEAD": "version"},
    "/api/status": {"GET": "status"},
    "/api/tags": {"GET": "tags", "HEAD": "tags"},
    "/api/ps": {"GET": "ps"},
    "/api/show": {"POST": "show"},
    "/api/create": {"POST": "create"},
    "/api/pull": {"POST": "pull"},
    "/api/push": {"POST": "push"},
    "/api/delete": {"DELETE": "delete"},
    "/api/copy": {"POST": "copy"},
    "/api/generate": {"POST": "generate"},
    "/api/chat": {"POST": "chat"},
    "/api/embed": {"POST": "embed"},
    "/api/embeddings": {"POST": "embeddings"},
    "/v1/chat/completions": {"POST": "openai_chat"},
    "/v1/completions": {"POST": "openai_completions"},
    "/v1/embeddings": {"POST": "openai_embeddings"},
    "/v1/models": {"GET": "openai_models"},
}
PATTERN_ROUTES = [
    (re.compile(r"^/api/blobs/([^/]+)$"), {"HEAD": "blob_head", "POST": "blob_upload"}),
    (re.compile(r"^/v1/models/([^/]+)$"), {"GET": "openai_model"}),
]
INFERENCE_PATHS = ("/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions")
STREAMING_BODY_ROUTES = ("blob_upload",)
_completion_ids = itertools.count(1)


def route(path: str, method: str) -> Tuple[Optional[str], List[str], bool]:
    """(handler name, path params, path known) like gin's router with HandleMethodNotAllowed."""
    methods = ROUTES.get(path)
    params: List[str] = []
    if methods is None:
        for pattern, candidate in PATTERN_ROUTES:
            match = pattern.match(path)
            if match:
                methods, params = candidate, list(match.groups())
                break
    if methods is None:
        return None, [], False
    return methods.get(method), params, True


class Handler(http.server.BaseHTTPRequestHandler):
    """One HTTP/1.1 connection; every method goes through :meth:`dispatch`."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; like Ollama (Go sets TCP_NODELAY), do not delay the second.
    disable_nagle_algorithm = True
    server: StandinServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence http.server's own log; gin-style lines are written instead."""

    def do_GET(self) -> None:
        """Every HTTP method is routed by :meth:`dispatch`."""
        self.dispatch()

    do_POST = do_HEAD = do_DELETE = do_PUT = do_PATCH = do_OPTIONS = do_GET

    # plumbing

    @property
    def app(self) -> "App":
        """The serve-wide state."""
        return self.server.app

    def dispatch(self) -> None:
        """Route one request: faults, host check, 404/405, handler, access log."""
        started = time.monotonic_ns()
        self.status_sent = 0
        self.headers_sent = False
        self.body = b""
        self.scheduled_model = ""
        path = urlsplit(self.path).path
        name, params, known = route(path, self.command)
        self.params = [unquote(param) for param in params]
        if name not in STREAMING_BODY_ROUTES:
            self.body = self.read_body()
        # Once the request is read, EOF on the socket means the client gave up (Go cancels the request context).
        self.watch = ClientWatch(self.connection)
        try:
            self.apply_faults(path)
            origin = self.headers.get("Origin")
            if origin and not origin_allowed(origin, self.headers.get("Host", ""), self.app.origins):
                self.send_bytes(403, b"", None)  # the CORS middleware runs first and aborts with no body
            elif not host_allowed(self.headers.get("Host", "")) and self.app.loopback:
                self.send_bytes(403, b"", None)
            elif name is None:
                code = 405 if known else 404
                self.send_bytes(
                    code, ("405 method not allowed" if known else "404 page not found").encode(), "text/plain"
                )
            else:
                getattr(self, "api_" + name)()
        except ApiError as error:
            if not self.headers_sent:
                self.send_json(error.status, {"error": error.message})
        except Cancelled as cancelled:
            self.cancelled(path, cancelled.stage)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            if self.scheduled_model:
                self.cancelled(path, "generating")
        except Exception as error:  # noqa: BLE001 - a handler bug must answer 500, not kill the connection silently
            log("ERROR", "routes.go:1", "request failed", ("path", path), ("error", repr(error)))
            self.close_connection = True
            if not self.headers_sent:
                self.send_json(500, {"error": str(error)})
        finally:
            self.app.access_log(
                self.status_sent or 200, time.monotonic_ns() - started, self.client_address[0], self.command, path
            )

    def cancelled(self, path: str, stage: str) -> None:
        """The client went away: nothing more is written; the access log shows what Ollama's does."""
        self.close_connection = True
        if not self.status_sent:
            self.status_sent = 499 if stage in ("queued", "loading") else 500
        append_event(
            {
                "event": "request_cancelled",
                "stage": stage,
                "path": path,
                "model": self.scheduled_model,
                "serve_pid": os.getpid(),
                "time": time.time(),
            }
        )

    def apply_faults(self, path: str) -> None:
        """Run-time faults that act before any handler (crash_on, hang, slow_ms, http_error)."""
        faults = self.app.control.read()
        if faults.get("crash_on") == path:
            crash("crash_on " + path)
        if faults.get("hang"):
            hang_forever()
        slow_ms = float(faults.get("slow_ms", 0) or 0)
        if slow_ms > 0 and path != "/":
            time.sleep(slow_ms / 1000.0)
        injected = injected_error(faults, path)
        if injected:
            self.close_connection = True
            raise ApiError(*injected)

    def read_body(self) -> bytes:
        """The whole request body."""
        return b"".join(self.body_chunks())

    def body_chunks(self) -> Iterator[bytes]:
        """The request body in pieces (Content-Length or chunked)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(MIB, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk

    def start_response(self, status: int, content_type: Optional[str], length: Optional[int]) -> None:
        """Status line and headers; ``length=None`` means a chunked stream."""
        self.send_response_only(status)
        self.send_header("Date", self.date_time_string())
        if content_type:
            self.send_header("Content-Type", content_type)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.status_sent = status
        self.headers_sent = True

    def send_bytes(self, status: int, body: bytes, content_type: Optional[str]) -> None:
        """A complete response (no body for HEAD)."""
        if content_type in ("text/plain", "application/json"):
            content_type += "; charset=utf-8"
        self.start_response(status, content_type, len(body))
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def send_json(self, status: int, value: Any) -> None:
        """A JSON response as gin's ``c.JSON`` writes it."""
        self.send_bytes(status, go_json(value).encode("utf-8"), "application/json")

    def send_empty(self, status: int) -> None:
        """A bodiless response (gin's ``c.Status``)."""
        self.send_bytes(status, b"", None)

    def write_chunk(self, data: bytes) -> None:
        """One chunk of a streamed response, sent at once."""
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunks(self) -> None:
        """Terminate a chunked response."""
        self.wfile.write(b"0\r\n\r\n")

    def request_json(self, type_name: str) -> Dict[str, Any]:
        """The request body decoded as the named api type."""
        return decode_request(self.body, type_name)

    def respond_progress(self, items: Iterator[Dict[str, Any]], stream: bool) -> None:
        """``streamResponse``/``waitForStream`` for pull and create."""
        latest: Dict[str, Any] = {}
        try:
            for item in _with_injected_lines(items, self.app.control.read().get("progress_lines") or []):
                latest = item
                if stream:
                    if not self.headers_sent:
                        self.start_response(200, "application/x-ndjson", None)
                    self.write_chunk((go_json(item) + "\n").encode("utf-8"))
        except StreamError as error:
            if not self.headers_sent:
                self.send_json(error.status or 500, {"error": error.message})
                return
            self.write_chunk((go_json({"error": error.message}) + "\n").encode("utf-8"))
        finally:
            if hasattr(items, "close"):
                items.close()  # type: ignore[attr-defined]
        if stream:
            if not self.headers_sent:
                self.start_response(200, "application/x-ndjson", None)
            self.end_chunks()
        else:
            self.send_json(200, latest)

    # --- basic endpoints

    def api_root(self) -> None:
        """``GET``/``HEAD /``."""
        self.send_bytes(200, b"Ollama is running", "text/plain")

    def api_version(self) -> None:
        """``GET``/``HEAD /api/version``."""
        self.send_json(200, {"version": VERSION})

    def api_status(self) -> None:
        """``GET /api/status``."""
        self.send_json(200, {"cloud": {"disabled": False, "source": "none"}})

    def api_tags(self) -> None:
        """``GET``/``HEAD /api/tags``: local models, newest first."""
        entries = []
        for model in self.app.store.list_models():
            entries.append(
                {
                    "name": model.name.display,
                    "model": model.name.display,
                    "modified_at": rfc3339nano(int(model.modified * 1e9)),
                    "size": model.size,
                    "digest": model.digest,
                    "details": model.details(with_parent=False),
                }
            )
        self.send_json(200, {"models": entries})

    def api_ps(self) -> None:
        """``GET /api/ps``: loaded models, longest-lived first."""
        now, wall = time.monotonic(), time.time_ns()
        runners = sorted(self.app.scheduler.snapshot(), key=lambda runner: runner.expires_at, reverse=True)
        entries = [
            {
                "name": runner.model.name.display,
                "model": runner.model.name.display,
                "size": runner.size,
                "digest": runner.model.digest,
                "details": runner.model.details(with_parent=True),
                "expires_at": rfc3339nano(wall_expiry_ns(runner.expires_at, now, wall)),
                "size_vram": 0,
                "context_length": runner.context_length,
            }
            for runner in runners
        ]
        self.send_json(200, {"models": entries})

    def api_push(self) -> None:
        """``POST /api/push``: there is no registry to push to."""
        raise ApiError(500, "push is not available offline")

    # --- model management

    def lookup(self, requested: str, shown: Optional[str] = None) -> LocalModel:
        """Resolve a model or raise the 404/500 Ollama gives."""
        name = ModelName.parse(requested)
        if not name.is_valid:
            raise ApiError(404, "model '%s' not found" % requested)
        try:
            return self.app.store.get_model(name)
        except ModelMissing:
            raise ApiError(404, "model '%s' not found" % (shown if shown is not None else requested)) from None
        except ValueError as error:
            raise ApiError(500, str(error)) from None

    def api_show(self) -> None:
        """``POST /api/show``."""
        request = self.request_json("ShowRequest")
        requested = str(request.get("model") or request.get("name") or "")
        if not requested:
            raise ApiError(400, "model is required")
        name = ModelName.parse(requested)
        if not name.is_valid:
            raise ApiError(400, "invalid model name")
        model = self.lookup(requested, shown=name.display)
        self.send_json(200, show_response(model))

    def api_create(self) -> None:
        """``POST /api/create`` (current request shape)."""
        request = self.request_json("CreateRequest")
        stream = request.get("stream") is not False
        with self.app.create_lock:
            self.respond_progress(self.app.store.create(request), stream)

    def api_pull(self) -> None:
        """``POST /api/pull`` from the fake registry."""
        request = self.request_json("PullRequest")
        name = ModelName.parse(str(request.get("model") or request.get("name") or ""))
        if not name.is_valid:
            raise ApiError(400, "invalid model name")
        self.respond_progress(self.app.store.pull(name), request.get("stream") is not False)

    def api_delete(self) -> None:
        """``DELETE /api/delete``: 200 with an empty body."""
        request = self.request_json("DeleteRequest")
        raw = str(request.get("model") or request.get("name") or "")
        name = ModelName.parse(raw)
        if not name.is_valid:
            raise ApiError(400, 'name "%s" is invalid' % raw)
        try:
            self.app.store.delete(name)
        except ModelMissing:
            raise ApiError(404, "model '%s' not found" % raw) from None
        self.send_empty(200)

    def api_copy(self) -> None:
        """``POST /api/copy``: 200 with an empty body."""
        request = self.request_json("CopyRequest")
        source, destination = str(request.get("source") or ""), str(request.get("destination") or "")
        if not ModelName.parse(source).is_valid:
            raise ApiError(400, 'source "%s" is invalid' % source)
        if not ModelName.parse(destination).is_valid:
            raise ApiError(400, 'destination "%s" is invalid' % destination)
        try:
            self.app.store.copy(ModelName.parse(source), ModelName.parse(destination))
        except ModelMissing:
            raise ApiError(404, 'model "%s" not found' % source) from None
        self.send_empty(200)

    def api_blob_head(self) -> None:
        """``HEAD /api/blobs/:digest``."""
        try:
            path = self.app.store.blob_path(self.params[0])
        except ValueError:
            raise ApiError(400, "invalid digest format") from None
        if not os.path.exists(path):
            raise ApiError(404, 'blob "%s" not found' % self.params[0])
        self.send_empty(200)

    def api_blob_upload(self) -> None:
        """``POST /api/blobs/:digest``: 201 created, 200 already there, 400 on mismatch."""
        digest = self.params[0]
        try:
            path = self.app.store.blob_path(digest)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "invalid digest format") from None
        if os.path.exists(path):
            for _ in self.body_chunks():
                pass
            self.send_empty(200)
            return
        layer = self.app.store.write_blob(self.body_chunks(), "")
        if layer.digest != digest:
            raise ApiError(400, 'digest mismatch, expected "%s", got "%s"' % (digest, layer.digest))
        self.send_empty(201)

    # --- inference

    def prepare_turn(self, requested: str, keep_alive_raw: Any) -> Tuple[LocalModel, Optional[float]]:
        """Resolve the model and parse keep_alive; returns the model and the request's keep-alive seconds, if any."""
        model = self.lookup(requested)
        try:
            keep_alive = common.keep_alive_seconds(keep_alive_raw, None)
        except (DurationError, TypeError) as error:
            raise ApiError(400, str(error)) from None
        return model, keep_alive

    @staticmethod
    def require_capability(model: LocalModel, requested: str, capability: str, verb: str) -> None:
        """400 ``"x" does not support <verb>`` unless the model has the capability."""
        if capability not in model.capabilities():
            raise ApiError(400, '"%s" does not support %s' % (requested, verb))

    def start_turn(
        self,
        requested: str,
        model: LocalModel,
        keep_alive: Optional[float],
        options: Dict[str, Any],
        started_ns: int,
    ) -> Turn:
        """Load (or reuse) the runner; load failures (the ``oom`` fault among them) become API errors."""
        wanted = runner_options(options, self.app.default_num_ctx, model.context_length())
        self.scheduled_model = model.name.display
        try:
            runner = self.app.scheduler.get_runner(PendingRequest(model, requested, keep_alive, wanted, self.watch))
        except ScheduleError as error:
            raise ApiError(error.status, error.message) from None
        # Like Ollama's load_duration: everything from the request's arrival until it had a runner.
        return Turn(requested, model, runner, time.monotonic_ns() - started_ns, started_ns)

    def compose_answer(self, turn: Turn, prompt: str, options: Dict[str, Any], json_format: bool) -> None:
        """Decide the turn's tokens and done_reason (the ``tokens`` fault pads the answer to that length)."""
        try:
            length = int(self.app.control.read().get("tokens", self.app.default_tokens) or 0)
        except (TypeError, ValueError):
            length = 0
        turn.prompt = prompt
        turn.tokens, turn.done_reason = reply_tokens(
            prompt, num_predict_of(options), stop_words_of(options), json_format, length
        )

    def produce_tokens(self, turn: Turn) -> Iterator[str]:
        """The answer's tokens as the runner generates them, once one of its slots is free.

        Raises :class:`RunnerFailed` when the runner cannot answer, :class:`Cancelled` when the client goes.
        """
        faults = self.app.control.read()
        request = {
            "prompt": turn.prompt,
            "n_predict": len(turn.tokens),
            "stream": True,
            "standin": {
                "tokens": turn.tokens,
                "done_reason": turn.done_reason,
                "prompt_n": turn.prompt_count,
                "token_ms": float(faults.get("token_ms", self.app.default_token_ms) or 0),
                "delay_ms": float(faults.get("slow_inference_ms", 0) or 0),
                "hang": bool(faults.get("hang_inference")),
            },
        }
        scheduler = self.app.scheduler
        with scheduler.slot(turn.runner, self.watch):
            turn.eval_started_ns = time.monotonic_ns()
            yield from scheduler.complete(turn.runner, request, self.watch)

    def stream_turn(
        self, turn: Turn, stream: bool, chunk: Callable[[str], Dict[str, Any]], final: Callable[[str], Dict[str, Any]]
    ) -> None:
        """Send the turn as NDJSON chunks or as one object (``stream:false``)."""
        text = []
        try:
            with contextlib.closing(self.produce_tokens(turn)) as tokens:
                for token in tokens:
                    text.append(token)
                    if stream:
                        if not self.headers_sent:
                            self.start_response(200, "application/x-ndjson", None)
                        self.write_chunk((go_json(chunk(token)) + "\n").encode("utf-8"))
        except RunnerFailed as failure:
            if not self.headers_sent:
                raise ApiError(500, failure.message) from None
            self.write_chunk((go_json({"error": failure.message}) + "\n").encode("utf-8"))
            self.end_chunks()
            return
        if stream:
            if not self.headers_sent:
                self.start_response(200, "application/x-ndjson", None)
            self.write_chunk((go_json(final("")) + "\n").encode("utf-8"))
            self.end_chunks()
        else:
            self.send_json(200, final("".join(text)))
        self.request_done(turn.model, prompt=turn.prompt, tokens=len(text))

    def request_done(self, model: LocalModel, **details: Any) -> None:
        """The events file's ``request_done``: an answer (or a load-only request) sent in full."""
        event = {"event": "request_done", "path": urlsplit(self.path).path, "model": model.name.display}
        append_event(dict(event, **details, time=time.time()))

    def api_generate(self) -> None:
        """``POST /api/generate``."""
        started = time.monotonic_ns()
        request = self.request_json("GenerateRequest")
        requested = str(request.get("model") or "")
        model, keep_alive = self.prepare_turn(requested, request.get("keep_alive"))
        prompt = str(request.get("prompt") or "")

        def base() -> Dict[str, Any]:
            return {"model": requested, "created_at": utc_now()}

        if not prompt and keep_alive == 0:
            self.app.scheduler.expire(model)
            self.send_json(200, dict(base(), response="", done=True, done_reason="unload"))
            return
        self.require_capability(model, requested, "completion", "generate")
        options = merged_options(model, request.get("options"))
        turn = self.start_turn(requested, model, keep_alive, options, started)
        try:
            if not prompt:
                self.send_json(200, dict(base(), response="", done=True, done_reason="load"))
                self.request_done(model, load_only=True, keep_alive=keep_alive)
                return
            system = str(request.get("system") or model.system)
            fmt = request.get("format")
            self.compose_answer(turn, prompt, options, bool(fmt))
            turn.prompt_count = max(1, len((system + " " + prompt).split()))
            context = token_ids(prompt.split() + "".join(turn.tokens).split())

            def chunk(token: str) -> Dict[str, Any]:
                return dict(base(), response=token, done=False)

            def final(text: str) -> Dict[str, Any]:
                entry = dict(base(), response=text, done=True, done_reason=turn.done_reason, context=context)
                entry.update(turn.final_metrics())
                return entry

            self.stream_turn(turn, request.get("stream") is not False, chunk, final)
        finally:
            self.app.scheduler.release(turn.runner)

    def api_chat(self) -> None:
        """``POST /api/chat``."""
        started = time.monotonic_ns()
        request = self.request_json("ChatRequest")
        requested = str(request.get("model") or "")
        if not requested:
            raise ApiError(400, "model is required")
        model, keep_alive = self.prepare_turn(requested, request.get("keep_alive"))
        messages = [m for m in request.get("messages") or [] if isinstance(m, dict)]

        def base() -> Dict[str, Any]:
            return {"model": requested, "created_at": utc_now()}

        empty_message = {"role": "assistant", "content": ""}
        if not messages and keep_alive == 0:
            self.app.scheduler.expire(model)
            self.send_json(200, dict(base(), message=empty_message, done_reason="unload", done=True))
            return
        self.require_capability(model, requested, "completion", "chat")
        if request.get("tools"):
            self.require_capability(model, requested, "tools", "tools")
        options = merged_options(model, request.get("options"))
        turn = self.start_turn(requested, model, keep_alive, options, started)
        try:
            if not messages:
                self.send_json(200, dict(base(), message=empty_message, done_reason="load", done=True))
                self.request_done(model, load_only=True, keep_alive=keep_alive)
                return
            self.run_chat(turn, messages, options, request, base)
        finally:
            self.app.scheduler.release(turn.runner)

    def run_chat(
        self,
        turn: Turn,
        messages: List[Dict[str, Any]],
        options: Dict[str, Any],
        request: Dict[str, Any],
        base: Callable[[], Dict[str, Any]],
    ) -> None:
        """Answer the last user message of a chat."""
        last = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
        self.compose_answer(turn, last, options, bool(request.get("format")))
        all_text = " ".join([turn.model.system] + [str(m.get("content") or "") for m in messages])
        turn.prompt_count = max(1, len(all_text.split()))

        def chunk(token: str) -> Dict[str, Any]:
            return dict(base(), message={"role": "assistant", "content": token}, done=False)

        def final(text: str) -> Dict[str, Any]:
            entry = dict(
                base(), message={"role": "assistant", "content": text}, done_reason=turn.done_reason, done=True
            )
            entry.update(turn.final_metrics())
            return entry

        self.stream_turn(turn, request.get("stream") is not False, chunk, final)

    def embed_inputs(self, value: Any) -> List[str]:
        """The ``input`` of an embed request as a list of strings."""
        if value is None:
            return []
        if isinstance(value, str):
            return [value] if value else []
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return list(value)
        raise ApiError(400, "invalid input type")

    def run_embed(
        self, requested: str, texts: List[str], keep_alive_raw: Any, options_raw: Any, dimensions: Any
    ) -> Tuple[List[List[float]], int, int]:
        """Embeddings for texts: (vectors, load ns, prompt token count)."""
        model, keep_alive = self.prepare_turn(requested, keep_alive_raw)
        options = merged_options(model, options_raw)
        turn = self.start_turn(requested, model, keep_alive, options, time.monotonic_ns())
        try:
            size = model.embedding_length()
            if isinstance(dimensions, int) and 0 < dimensions < size:
                size = dimensions
            vectors = []
            for text in texts:
                delay_ms = float(self.app.control.read().get("slow_inference_ms", 0) or 0)
                request = {"content": text, "standin": {"dimensions": size, "delay_ms": delay_ms}}
                with self.app.scheduler.slot(turn.runner, self.watch, embedding=True):
                    try:
                        vectors.append(self.app.scheduler.embed(turn.runner, request, self.watch))
                    except RunnerFailed as failure:
                        raise ApiError(500, failure.message) from None
        finally:
            self.app.scheduler.release(turn.runner)
        return vectors, turn.load_ns, sum(len(text.split()) for text in texts)

    def api_embed(self) -> None:
        """``POST /api/embed``."""
        started = time.monotonic_ns()
        request = self.request_json("EmbedRequest")
        requested = str(request.get("model") or "")
        texts = self.embed_inputs(request.get("input"))
        vectors, load_ns, count = self.run_embed(
            requested, texts, request.get("keep_alive"), request.get("options"), request.get("dimensions")
        )
        response: Dict[str, Any] = {"model": requested, "embeddings": vectors}
        if texts:
            response.update(
                {
                    key: value
                    for key, value in (
                        ("total_duration", time.monotonic_ns() - started),
                        ("load_duration", load_ns),
                        ("prompt_eval_count", count),
                    )
                    if value
                }
            )
        self.send_json(200, response)

    def api_embeddings(self) -> None:
        """``POST /api/embeddings`` (legacy)."""
        request = self.request_json("EmbeddingRequest")
        prompt = str(request.get("prompt") or "")
        vectors, _load, _count = self.run_embed(
            str(request.get("model") or ""),
            [prompt] if prompt else [],
            request.get("keep_alive"),
            request.get("options"),
            None,
        )
        self.send_json(200, {"embedding": vectors[0] if vectors else []})

    # --- OpenAI compatibility

    def openai_call(self, action: Callable[[], None]) -> None:
        """Run an OpenAI-compatible handler, answering errors in the OpenAI shape."""
        try:
            action()
        except ApiError as error:
            if self.headers_sent:
                raise
            self.send_json(error.status, openai_error(error.status, error.message))

    def api_openai_models(self) -> None:
        """``GET /v1/models``."""
        data = [
            {
                "id": model.name.display,
                "object": "model",
                "created": int(model.modified),
                "owned_by": model.name.namespace,
            }
            for model in self.app.store.list_models()
        ]
        self.send_json(200, {"object": "list", "data": data or None})

    def api_openai_model(self) -> None:
        """``GET /v1/models/:model``."""

        def action() -> None:
            model = self.lookup(self.params[0])
            self.send_json(
                200,
                {
                    "id": model.name.display,
                    "object": "model",
                    "created": int(model.modified),
                    "owned_by": model.name.namespace,
                },
            )

        self.openai_call(action)

    def api_openai_chat(self) -> None:
        """``POST /v1/chat/completions``."""
        self.openai_call(lambda: self.openai_text("chat"))

    def api_openai_completions(self) -> None:
        """``POST /v1/completions``."""
        self.openai_call(lambda: self.openai_text("completion"))

    def openai_text(self, kind: str) -> None:
        """Shared body of the OpenAI chat and completion endpoints."""
        started = time.monotonic_ns()
        request = self.request_json("ChatCompletionRequest")
        requested = str(request.get("model") or "")
        if kind == "chat" and not request.get("messages"):
            raise ApiError(400, "[] is too short - 'messages'")
        model, keep_alive = self.prepare_turn(requested, None)
        self.require_capability(model, requested, "completion", "chat" if kind == "chat" else "generate")
        options = merged_options(
            model, {"num_predict": request["max_tokens"]} if request.get("max_tokens") is not None else None
        )
        if kind == "chat":
            messages = [m for m in request.get("messages") or [] if isinstance(m, dict)]
            prompt = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
        else:
            prompt = str(request.get("prompt") or "")
        turn = self.start_turn(requested, model, keep_alive, options, started)
        try:
            self.compose_answer(turn, prompt, options, False)
            turn.prompt_count = max(1, len(prompt.split()))
            self.openai_stream(turn, kind, request.get("stream") is True)
        finally:
            self.app.scheduler.release(turn.runner)

    def openai_stream(self, turn: Turn, kind: str, stream: bool) -> None:
        """Answer a turn as one OpenAI object or as server-sent events."""
        ident = ("chatcmpl-%d" if kind == "chat" else "cmpl-%d") % next(_completion_ids)
        created = int(time.time())
        head = {
            "id": ident,
            "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": created,
            "model": turn.requested,
            "system_fingerprint": "fp_ollama",
        }
        finish_reason = "length" if turn.done_reason == "length" else "stop"
        if not stream:
            try:
                with contextlib.closing(self.produce_tokens(turn)) as tokens:
                    text = "".join(tokens)
            except RunnerFailed as failure:
                raise ApiError(500, failure.message) from None
            choice: Dict[str, Any] = {"index": 0}
            if kind == "chat":
                choice.update(message={"role": "assistant", "content": text})
            else:
                choice.update(text=text)
            choice["finish_reason"] = finish_reason
            usage = {
                "prompt_tokens": turn.prompt_count,
                "completion_tokens": len(turn.tokens),
                "total_tokens": turn.prompt_count + len(turn.tokens),
            }
            self.send_json(200, dict(head, choices=[choice], usage=usage))
            return
        chunk_object = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def event(content: str, reason: Optional[str]) -> bytes:
            if kind == "chat":
                choice = {"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": content, "finish_reason": reason}
            return ("data: " + go_json(dict(head, object=chunk_object, choices=[choice])) + "\n\n").encode("utf-8")

        try:
            with contextlib.closing(self.produce_tokens(turn)) as tokens:
                for token in tokens:
                    if not self.headers_sent:
                        self.start_response(200, "text/event-stream", None)
                    self.write_chunk(event(token, None))
        except RunnerFailed as failure:
            if not self.headers_sent:
                raise ApiError(500, failure.message) from None
            self.write_chunk(("data: " + go_json(openai_error(500, failure.message)) + "\n\n").encode("utf-8"))
            self.end_chunks()
            return
        if not self.headers_sent:
            self.start_response(200, "text/event-stream", None)
        self.write_chunk(event("", finish_reason))
        self.write_chunk(b"data: [DONE]\n\n")
        self.end_chunks()

    def api_openai_embeddings(self) -> None:
        """``POST /v1/embeddings``."""

        def action() -> None:
            request = self.request_json("EmbedRequest")
            requested = str(request.get("model") or "")
            texts = self.embed_inputs(request.get("input"))
            vectors, _load, count = self.run_embed(requested, texts, None, None, request.get("dimensions"))
            data = [
                {"object": "embedding", "embedding": vector, "index": index} for index, vector in enumerate(vectors)
            ]
            self.send_json(
                200,
                {
                    "object": "list",
                    "data": data,
                    "model": requested,
                    "usage": {"prompt_tokens": count, "total_tokens": count},
                },
            )

        self.openai_call(action)


def show_response(model: LocalModel) -> Dict[str, Any]:
    """The ``/api/show`` body for a model."""
    metadata = model.metadata()
    model_info = {key: value for key, value in metadata.items() if not isinstance(value, list)}
    if not model_info:
        model_info = {"general.architecture": model.config.get("model_family", "")}
    response: Dict[str, Any] = {}
    if model.licenses:
        response["license"] = "\n".join(model.licenses)
    response["modelfile"] = modelfile_text(model)
    parameters = parameters_text(model.params)
    if parameters:
        response["parameters"] = parameters
    if model.template:
        response["template"] = model.template
    if model.system:
        response["system"] = model.system
    response["details"] = model.details(with_parent=True)
    if model.messages:
        response["messages"] = model.messages
    response["model_info"] = model_info
    response["capabilities"] = model.capabilities()
    response["modified_at"] = rfc3339nano(int(model.modified * 1e9))
    return response


def _go_quote(text: str) -> str:
    """Go's ``%#v`` of a string."""
    return json.dumps(text, ensure_ascii=False)


def _go_value(value: Any) -> str:
    """Go's ``%v``/``%#v`` of a decoded JSON scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def parameters_text(params: Dict[str, Any]) -> str:
    """``show``'s parameters block: ``%-30s %#v`` per value, lists expanded."""
    lines = []
    for key in sorted(params):
        values = params[key] if isinstance(params[key], list) else [params[key]]
        for value in values:
            shown = _go_quote(value) if isinstance(value, str) else _go_value(value)
            lines.append("%-30s %s" % (key, shown))
    return "\n".join(lines)


def _modelfile_quote(text: str) -> str:
    if "\n" in text or text.startswith(" ") or text.endswith(" "):
        return '"""%s"""' % text if '"' in text else '"%s"' % text
    return text


def modelfile_text(model: LocalModel) -> str:
    """``show --modelfile`` output."""
    lines = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        "# FROM %s" % model.name.display,
        "",
        "FROM %s" % model.model_path,
    ]
    lines += ["ADAPTER %s" % path for path in model.adapter_paths]
    if model.template:
        lines.append("TEMPLATE %s" % _modelfile_quote(model.template))
    if model.system:
        lines.append("SYSTEM %s" % _modelfile_quote(model.system))
    for key in sorted(model.params):
        values = model.params[key] if isinstance(model.params[key], list) else [model.params[key]]
        lines += ["PARAMETER %s %s" % (key, _modelfile_quote(_go_value(value))) for value in values]
    lines += ["LICENSE %s" % _modelfile_quote(text) for text in model.licenses]
    lines += [
        "MESSAGE %s %s" % (m.get("role", ""), _modelfile_quote(str(m.get("content", "")))) for m in model.messages
    ]
    return "\n".join(lines) + "\n"


# --- The process --------------------------------------------------------------------------------


class App:
    """Everything a request handler needs: store, scheduler, faults and logging."""

    def __init__(self, store: ModelStore, scheduler: Scheduler, control: Control, loopback: bool) -> None:
        self.store = store
        self.scheduler = scheduler
        self.control = control
        self.loopback = loopback
        self.origins = allowed_origins(common.env_var("OLLAMA_ORIGINS"))
        self.default_keep_alive = common.default_keep_alive()
        self.default_num_ctx = _int_env("OLLAMA_CONTEXT_LENGTH", 4096)
        self.default_token_ms = common.ms_env("OLLAMA_STANDIN_TOKEN_MS", 0.0)
        self.default_tokens = common.uint_env("OLLAMA_STANDIN_TOKENS", 0)
        # Creates run one at a time, as Ollama serializes them per name.
        self.create_lock = threading.Lock()

    def access_log(self, status: int, latency_ns: int, client_ip: str, method: str, path: str) -> None:
        """Gin's access line on stdout."""
        write_line(sys.stdout, gin_line(status, latency_ns, client_ip, method, path))


def _int_env(key: str, default: int) -> int:
    try:
        value = int(common.env_var(key) or 0)
    except ValueError:
        return default
    return value if value > 0 else default


def _float_env(key: str) -> float:
    try:
        return float(common.env_var(key) or 0)
    except ValueError:
        return 0.0


def _die(message: str, code: int) -> None:
    write_line(sys.stderr, "Error: " + message)
    append_event({"event": "serve_exit", "pid": os.getpid(), "code": code, "time": time.time()})
    sys.stdout.flush()
    os._exit(code)


def listen(host: common.HostSpec) -> StandinServer:
    """Bind OLLAMA_HOST first, as ``net.Listen`` does; failures exit 1 with Go's message."""
    family = socket.AF_INET6 if ":" in host.host else socket.AF_INET
    try:
        return StandinServer((host.host, host.port), family)
    except socket.gaierror:
        _die("listen tcp: lookup %s: no such host" % host.host, 1)
    except OSError as error:
        _die("listen tcp %s: bind: %s" % (host.hostport, bind_error_text(error)), 1)
    raise AssertionError("unreachable")


WSAEADDRINUSE = 10048
WINDOWS_ADDRESS_IN_USE = "Only one usage of each socket address (protocol/network address/port) is normally permitted."


def bind_error_text(error: OSError) -> str:
    """Go's text for a failed bind: the C library's message on Unix, the Winsock one on Windows."""
    if getattr(error, "winerror", None) == WSAEADDRINUSE:
        return WINDOWS_ADDRESS_IN_USE
    return os.strerror(error.errno).lower() if error.errno else str(error)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_main(argv: List[str]) -> int:
    """``ollama serve``: bind, log, serve until SIGTERM/SIGINT, then kill runners and exit 0."""
    common.set_process_name("ollama")
    models = common.models_dir_from_env()
    exit_code = common.env_var("OLLAMA_STANDIN_EXIT_ON_START")
    if exit_code:
        message = common.env_var("OLLAMA_STANDIN_EXIT_MESSAGE") or "mkdir %s: permission denied" % models
        _die(message, int(exit_code))
    host = common.host_from_env()
    server = listen(host)
    control = Control(os.environ.get("OLLAMA_STANDIN_CONTROL", ""))
    blob_size = int(float(os.environ.get("OLLAMA_STANDIN_BLOB_MB", "4") or 4) * MIB)
    store = ModelStore(models, Registry(os.environ.get("OLLAMA_STANDIN_REGISTRY", ""), blob_size), control.read)
    scheduler = Scheduler(control.read, _int_env("OLLAMA_STANDIN_RUNNER_MB", 64))
    loopback = host.host in ("localhost", "") or _is_loopback(host.host)
    app = App(store, scheduler, control, loopback)
    server.app = app
    try:
        app.store.ensure_dirs()
    except OSError as error:
        _die(
            "mkdir %s: %s: ensure path elements are traversable"
            % (error.filename or models, (error.strerror or "").lower()),
            1,
        )
    log_startup(app, host, server, models)
    append_event(
        {
            "event": "serve_start",
            "pid": os.getpid(),
            "port": server.server_address[1],
            "host": host.hostport,
            "models": models,
            "create_time": common.process_create_time(os.getpid()),
            "time": time.time(),
        }
    )
    stop = install_signal_handlers(app.scheduler.wake_upkeep)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": None}, daemon=True).start()
    crash_after = _float_env("OLLAMA_STANDIN_CRASH_AFTER")
    deadline = time.monotonic() + crash_after if crash_after > 0 else FOREVER
    while not stop:
        # Asleep until a keep-alive runs out, a runner exits, a signal comes or the crash is due.
        app.scheduler.wait_for_upkeep(deadline)
        app.scheduler.reap()
        if time.monotonic() >= deadline:
            crash("OLLAMA_STANDIN_CRASH_AFTER")
    return shutdown(server, app, stop[0])


def install_signal_handlers(wake: Callable[[], None]) -> List[int]:
    """SIGINT/SIGTERM (and on Windows the console's Ctrl+Break, SIGBREAK) set a flag the main loop acts on.

    Go maps both console events, Ctrl+C and Ctrl+Break, to ``os.Interrupt``; a serve started in its own
    process group (as Ollama's app and the manager start it) only ever receives Ctrl+Break. SIGTERM is
    ignored when asked. ``wake`` wakes the main loop.
    """
    received: List[int] = []

    def on_signal(number: int, _frame: Any) -> None:
        received.append(number)
        wake()

    signal.signal(signal.SIGINT, on_signal)
    if hasattr(signal, "SIGBREAK"):
        signal.signal(signal.SIGBREAK, on_signal)
    if common.env_var("OLLAMA_STANDIN_IGNORE_SIGTERM") in ("1", "true", "yes"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, on_signal)
    return received


def shutdown(server: StandinServer, app: App, signal_number: int) -> int:
    """Close the listener at once (in-flight streams are cut), kill runners, exit 0."""
    try:
        server.socket.close()
    except OSError:
        pass
    app.scheduler.shutdown()
    append_event({"event": "serve_exit", "pid": os.getpid(), "code": 0, "signal": signal_number, "time": time.time()})
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)
    return 0


def log_startup(app: App, host: common.HostSpec, server: StandinServer, models: str) -> None:
    """The slog lines Ollama prints once it is listening."""
    keep_alive = app.default_keep_alive
    keep_alive_text = (
        "2562047h47m16.854775807s" if keep_alive == FOREVER else common.go_duration_string(int(keep_alive * 1e9))
    )
    env_map = (
        "map[OLLAMA_CONTEXT_LENGTH:%d OLLAMA_HOST:%s://%s OLLAMA_KEEP_ALIVE:%s OLLAMA_MAX_LOADED_MODELS:%d "
        "OLLAMA_MODELS:%s OLLAMA_NOPRUNE:%s]"
        % (
            app.default_num_ctx,
            host.scheme,
            host.hostport,
            keep_alive_text,
            app.scheduler.max_loaded,
            models,
            str(bool(common.env_var("OLLAMA_NOPRUNE"))).lower(),
        )
    )
    log("INFO", "routes.go:1331", "server config", ("env", env_map))
    total, removed = app.store.prune_at_start(time.time())
    log("INFO", "images.go:477", "total blobs: %d" % total)
    log("INFO", "images.go:484", "total unused blobs removed: %d" % removed)
    bound_host, bound_port = server.server_address[:2]
    log(
        "INFO",
        "routes.go:1384",
        "Listening on %s (version %s)" % (common.join_host_port(str(bound_host), int(bound_port)), VERSION),
    )
    log("INFO", "gpu.go:217", "looking for compatible GPUs")
    log("INFO", "gpu.go:377", "no compatible GPUs were discovered")
    total_mem, available = common.memory_info()
    log(
        "INFO",
        "types.go:130",
        "inference compute",
        ("id", "0"),
        ("library", "cpu"),
        ("variant", ""),
        ("compute", ""),
        ("driver", "0.0"),
        ("name", ""),
        ("total", gib(total_mem)),
        ("available", gib(available)),
    )
