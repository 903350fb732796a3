"""The gateway: a loopback HTTP server apps point at instead of Ollama.

It serves Ollama's API and the OpenAI API. Every request goes to Ollama
unchanged, its answer streamed back byte for byte as it arrives. The
configured cloud provider answers an inference request instead (translated
between NDJSON and SSE where client and provider speak different dialects)
only when:

- Ollama is down: the monitor's probe (run alone: the gateway's own) says
  so, or the circuit breaker skips it after repeated failures;
- Ollama hangs, as the monitor's probe declares: requests waiting with no
  byte back are answered at once, not after their budget;
- Ollama refuses the connection, or answers 5xx (or drops the connection)
  before any byte;
- a *streamed* request to a model that is already loaded, with no other
  request ahead of it, gets no byte within ``first_byte_timeout``.

It never does for slowness the work explains: a model load, a ``stream:
false`` answer (written only once complete; the default of the OpenAI API)
and a request queued behind another on the same model (Ollama serves one
at a time per model) wait up to ``local_timeout``, then get a clear error.
The gateway never restarts Ollama: what it sees it reports
(``report_problem``) and the monitor's probe decides. A stream that has
started is never switched: if Ollama breaks mid-way, the stream ends with
an error line in its own format, as Ollama itself does. A client that goes
away cancels its request to Ollama (or to the cloud) at once.

Every answer carries ``X-Ollama-Manager-Backend: local | cloud | gateway``.
:meth:`Gateway.local_activity` tells the monitor what is in flight.

Safety: only loopback clients with a loopback/localhost ``Host`` header
(DNS rebinding) are served, and of requests a browser sends (those with an
``Origin``) only those from ``gateway.allowed_origins`` (default: Ollama's
own list) or the user's ``OLLAMA_ORIGINS``; these get Ollama's CORS answer,
so the page can read it (Ollama's own CORS fields are dropped). The cloud key
is spent only on requests without an ``Origin`` or from
``gateway.allowed_origins`` (what only ``OLLAMA_ORIGINS`` lists reaches
Ollama, as it would directly, never the cloud), and only from the gateway's
own user where the OS shows who a connection belongs to (Linux; see
:mod:`tray.system.peers`), the server of a page on a loopback port included. The key is never relayed: provider text is
redacted (:mod:`tray.gateway.redact`).

Inference paths, all ``POST``: ``/api/chat``, ``/api/generate``,
``/api/embed``, ``/api/embeddings``, ``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings``. While Ollama is down and the cloud
fallback is on, the gateway itself answers ``/``, ``/api/version``,
``/api/tags``, ``/api/ps``, ``/api/show`` and ``/v1/models[/<id>]`` with the
local models last seen plus the cloud model; as soon as Ollama answers
again they come from Ollama. Every other path (pull, create, delete, blobs,
...) only goes to Ollama.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute
from starlette.types import Message, Receive, Scope, Send

from tray.core.names import model_key
from tray.core.status import GatewayStatus, Status
from tray.gateway import translate as tr
from tray.gateway.breaker import (
    Activation,
    Backend,
    BreakerPolicy,
    BreakerState,
    Budget,
    CircuitBreaker,
    FailureKind,
    FallbackUsage,
    FallbackWindow,
    LoadedModels,
    LocalActivity,
    LocalHealth,
    Route,
    Router,
    Target,
    Throttle,
    WaitPlan,
    choose_budget,
    health_from_status,
    loaded_names,
    plan_wait,
    requester_of,
    status_busy,
)
from tray.gateway.cloud import (
    CONNECT_TIMEOUT,
    INFERENCE_PATHS,
    ApiKey,
    CloudCall,
    KeyStore,
    NotServed,
    SystemKeyStore,
    describe_error,
    find_api_key,
    plan_cloud_call,
    provider_error,
    request_headers,
    streamed_request,
)
from tray.gateway.redact import RedactingFilter, StreamRedactor, redact, redact_bytes
from tray.gateway.translate import Dialect
from tray.gateway.upstream import UpstreamClient, UpstreamResponse
from tray.history import EventKind
from tray.ollama.client import OllamaClient, Timeouts
from tray.ollama.errors import OllamaAPIError, OllamaError, OllamaMalformed, OllamaUnreachable
from tray.settings.gateway import CloudSettings, GatewaySettings
from tray.system.peers import OWN_UID, Address, listener_uid, peer_lookup_available, peer_uid
from tray.web.loopback import AsgiEndpoint, BodyRefused, LoopbackOnly, read_body
from tray.web.server import LoopbackServer

log = logging.getLogger(__name__)

BACKEND_HEADER = "x-ollama-manager-backend"
STATUS_PATH = "/_gateway/status"
LOCAL_CONNECT_TIMEOUT = 2.0
METADATA_TIMEOUT = 5.0
PROBE_TIMEOUT = 2.0
PS_TIMEOUT = 1.0  # an /api/ps slower than this means a model is loading
LOADED_TTL = 5.0  # seconds what Ollama holds in memory is taken as known
REPORT_INTERVAL = 5.0  # least seconds between two reports to the monitor
BUFFER_LIMIT = 8 * 1024 * 1024  # answers with a Content-Length up to this are read whole before replying
# The largest JSON request the gateway reads (a chat with a few photos as base64 fits); above it a 413.
JSON_BODY_LIMIT = 32 * 1024 * 1024
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
}  # fmt: skip
FORWARD_DROPPED_WITH_LENGTH = frozenset(name.encode() for name in HOP_BY_HOP | {"host", "origin"})
FORWARD_DROPPED = FORWARD_DROPPED_WITH_LENGTH | {b"content-length"}
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
RELAYED_METHODS = frozenset(ALL_METHODS)


# --------------------------------------------------------------------------- pure helpers


def dialect_of(path: str) -> Dialect:
    """The API a path belongs to."""
    return Dialect.OPENAI if path.startswith("/v1/") else Dialect.OLLAMA


def is_metadata(method: str, path: str) -> bool:
    """Paths the gateway can answer by itself while Ollama is down."""
    if method in ("GET", "HEAD"):
        return path in ("/", "/api/version", "/api/tags", "/api/ps", "/v1/models") or path.startswith("/v1/models/")
    return method == "POST" and path == "/api/show"


def forward_request_headers(raw: list[tuple[bytes, bytes]], keep_length: bool) -> list[tuple[bytes, bytes]]:
    """A client's headers (as ASGI gives them: names lower-cased) as sent on to Ollama: no hop-by-hop fields, no
    Host, no Origin.

    The gateway has judged the Origin itself (``gateway.allowed_origins``, ``OLLAMA_ORIGINS``); an origin
    the user listed only for the gateway must not be refused again by Ollama's narrower default.

    >>> forward_request_headers([(b"host", b"x"), (b"connection", b"close"), (b"content-length", b"2")], False)
    []
    >>> forward_request_headers([(b"user-agent", b"curl"), (b"origin", b"app://x"), (b"content-length", b"2")], True)
    [(b'user-agent', b'curl'), (b'content-length', b'2')]
    """
    dropped = FORWARD_DROPPED_WITH_LENGTH if keep_length else FORWARD_DROPPED
    return [(name, value) for name, value in raw if name not in dropped]


def relay_response_headers(
    raw: list[tuple[bytes, bytes]], backend: Backend, keep_length: bool
) -> list[tuple[bytes, bytes]]:
    """Ollama's headers as passed to the client: no hop-by-hop or CORS fields, plus the backend header."""
    out = []
    for name, value in raw:
        lower = name.lower()
        if lower.decode("latin-1") in HOP_BY_HOP or lower.startswith(b"access-control-"):
            continue
        if lower == b"content-length" and not keep_length:
            continue
        out.append((lower, value))
    out.append((BACKEND_HEADER.encode(), backend.value.encode()))
    return out


def origin_allowed(origin: str, patterns: Iterable[str]) -> bool:
    """Does a browser ``Origin`` match one of ``patterns`` (as Ollama matches ``OLLAMA_ORIGINS``)?

    A pattern is an exact origin, ``*`` alone (every origin), or one ``*`` standing for any text
    between a prefix and a suffix. Letter case does not count. ``null`` (a sandboxed frame, or a
    file the browser opened) matches only an exact ``null`` or ``*``.

    >>> allowed = ("http://localhost:*", "vscode-webview://*", "https://*.example.com")
    >>> [origin_allowed(o, allowed) for o in ("http://localhost:3000", "vscode-webview://1a2b", "https://a.example.com")]
    [True, True, True]
    >>> [origin_allowed(o, allowed) for o in ("http://localhost", "https://evil.example", "null")]
    [False, False, False]
    """
    origin = origin.strip().lower()
    for pattern in (text.lower() for text in patterns):
        if pattern == "*" or pattern == origin:
            return True
        prefix, star, suffix = pattern.partition("*")
        if star and len(origin) >= len(prefix) + len(suffix) and origin.startswith(prefix) and origin.endswith(suffix):
            return True
    return False


def loopback_page_port(origin: str) -> int | None:
    """The port of a page served on this machine's loopback (``localhost``, ``127.0.0.1``, ``0.0.0.0``, ``[::1]``).

    >>> loopback_page_port("http://localhost:3000"), loopback_page_port("https://127.0.0.1"), loopback_page_port("x")
    (3000, 443, None)
    >>> loopback_page_port("vscode-webview://abc"), loopback_page_port("https://example.com:3000")
    (None, None)
    """
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or parts.hostname not in ("localhost", "127.0.0.1", "0.0.0.0", "::1"):
        return None
    return port or (443 if parts.scheme == "https" else 80)


def ollama_origins(env: Mapping[str, str]) -> tuple[str, ...]:
    """The extra origins the user gave Ollama in ``OLLAMA_ORIGINS`` (comma-separated, as Ollama reads it).

    >>> ollama_origins({"OLLAMA_ORIGINS": " chrome-extension://*, moz-extension://* "}), ollama_origins({})
    (('chrome-extension://*', 'moz-extension://*'), ())
    """
    text = env.get("OLLAMA_ORIGINS", "").strip().strip("'\"")
    return tuple(item.strip() for item in text.split(",") if item.strip())


@dataclass(frozen=True)
class Notice:
    """What the user is told; ``key`` groups repeats for the notifier's rate limit."""

    title: str
    message: str
    key: str


def activation_notice(change: Activation, reason: str, cloud: CloudSettings) -> Notice:
    """The notification for the fallback taking over or handing back.

    >>> activation_notice(Activation.DEACTIVATED, "", CloudSettings()).title
    'Cloud fallback off'
    """
    if change is Activation.ACTIVATED:
        message = (
            f"Ollama is not answering ({reason}); requests through the gateway go to {cloud.host_label} ({cloud.model})"
        )
        return Notice("Cloud fallback active", message, "cloud-fallback-on")
    return Notice(
        "Cloud fallback off",
        "Ollama answers again; requests through the gateway are served locally",
        "cloud-fallback-off",
    )


def tag_entry(name: str, modified_at: str) -> dict[str, Any]:
    """An ``/api/tags`` entry for a cloud model."""
    return {
        "name": name,
        "model": name,
        "modified_at": modified_at,
        "size": 0,
        "digest": "",
        "details": {
            "parent_model": "",
            "format": "",
            "family": "",
            "families": None,
            "parameter_size": "",
            "quantization_level": "",
        },
    }


def model_names(tags: list[dict[str, Any]]) -> list[str]:
    return [str(entry.get("name") or entry.get("model") or "") for entry in tags if isinstance(entry, dict)]


def openai_model_entry(name: str, owner: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": owner}


def show_entry(name: str, modified_at: str) -> dict[str, Any]:
    """An ``/api/show`` answer for a cloud model."""
    return {
        "modelfile": f"# {name} is served by the cloud fallback\nFROM {name}\n",
        "parameters": "",
        "template": "",
        "details": tag_entry(name, modified_at)["details"],
        "model_info": {},
        "capabilities": ["completion", "tools"],
        "modified_at": modified_at,
    }


# --------------------------------------------------------------------------- responses


class RawResponse(Response):
    """A whole body with exactly the given headers."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status_code = status
        self.body = body
        self.background = None
        self.raw_headers = headers


class RelayResponse(Response):
    """A body streamed from an async iterator, closed however the exchange ends."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], chunks: AsyncGenerator[bytes, None]) -> None:
        self.status_code = status
        self.raw_headers = headers
        self.background = None
        self._chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self._chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            log.debug("client went away during a streamed answer")
        finally:
            await self._chunks.aclose()


def json_response(status: int, value: Any, backend: Backend, content_type: str = tr.JSON) -> RawResponse:
    body = tr.dumps(value).encode()
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (BACKEND_HEADER.encode(), backend.value.encode()),
    ]
    return RawResponse(status, headers, body)


def error_response(dialect: Dialect, status: int, message: str) -> RawResponse:
    """A one-line error in the client's dialect, answered by the gateway."""
    kind = "invalid_request_error" if 400 <= status < 500 else "api_error"
    return json_response(status, tr.error_body(dialect, message, kind), Backend.GATEWAY)


class BackendFailure(Exception):
    """Ollama or the provider failed before the first byte reached the client; ``str()`` is one line."""

    def __init__(self, message: str, status: int, kind: FailureKind = FailureKind.BROKEN) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


async def _client_gone(receive: Receive) -> None:
    """Return once the client has disconnected (or the answer is complete), once the request body is read."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def run_until_disconnect(work: Awaitable[None], receive: Receive) -> bool:
    """Run ``work`` (which answers the client), cancelling it the moment the client goes away.

    uvicorn neither cancels a handler whose client left nor fails its
    sends, so without this an abandoned request would run to its end
    upstream. Call only once the request body has been read. True when
    ``work`` ran to its end.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = finished = False

    def client_left(watcher: asyncio.Future[None]) -> None:
        nonlocal gone
        if watcher.cancelled():
            return
        watcher.exception()  # a broken receive() means the client is gone as well
        if not finished:
            gone = True
            task.cancel()

    watcher = asyncio.ensure_future(_client_gone(receive))
    watcher.add_done_callback(client_left)
    try:
        await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            log.debug("client went away; its request was cancelled")
            return False
        raise
    finally:
        finished = True
        watcher.cancel()
    return True


# Ollama's CORS answer to a page it lets in (server/routes.go: gin-contrib/cors' defaults, its header list).
CORS_METHODS = b"GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
CORS_HEADERS = (
    b"Authorization,Content-Type,User-Agent,Accept,X-Requested-With,OpenAI-Beta,x-stainless-arch,"
    b"x-stainless-async,x-stainless-custom-poll-interval,x-stainless-helper-method,x-stainless-lang,"
    b"x-stainless-os,x-stainless-package-version,x-stainless-poll-helper,x-stainless-retry-count,"
    b"x-stainless-runtime,x-stainless-runtime-version,x-stainless-timeout"
)
CORS_MAX_AGE = b"43200"  # seconds a browser may reuse a preflight's answer, as Ollama's 12 hours


class BrowserOrigins:
    """ASGI middleware for requests a browser sends (they carry an ``Origin``), as Ollama's CORS handling does.

    An origin ``allowed`` refuses gets a 403 and nothing else. An allowed one gets its preflight answered
    here (204) and ``Access-Control-Allow-Origin`` on every answer, so the page can read it; the relay
    drops Ollama's own CORS fields, so these are the only ones.
    """

    def __init__(self, app: Any, allowed: Callable[[str], bool]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fields = scope.get("headers") or () if scope["type"] == "http" else ()
        origin = next((value for name, value in fields if name == b"origin"), None)
        if origin is None:
            await self.app(scope, receive, send)
            return
        headers = dict(fields)
        if not self.allowed(origin.decode("latin-1")):
            message = "forbidden: requests from this web page's origin are refused (see gateway.allowed_origins)"
            await json_response(403, {"error": message}, Backend.GATEWAY)(scope, receive, send)
            return
        cors = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            preflight = [
                (b"access-control-allow-methods", CORS_METHODS),
                (b"access-control-allow-headers", CORS_HEADERS),
                (b"access-control-max-age", CORS_MAX_AGE),
                (BACKEND_HEADER.encode(), Backend.GATEWAY.value.encode()),
            ]
            await RawResponse(204, cors + preflight, b"")(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        await self.app(scope, receive, send_with_cors)


class RelayFirst:
    """ASGI: requests for Ollama's paths go straight to the relay, the rest (status, lifespan) to ``app``.

    The relay answers every path with its own errors, so Starlette's routing
    and error middlewares, which run on every request, only cost it time.
    """

    def __init__(self, app: Any, relay: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in RELAYED_METHODS and scope["path"] != STATUS_PATH:
            await self.relay(scope, receive, send)
        else:
            await self.app(scope, receive, send)


# --------------------------------------------------------------------------- the gateway


class _Exchange:
    """One inference request sent to Ollama and not finished (see :meth:`Gateway.local_activity`)."""

    def __init__(self, model: str, found_down: asyncio.Future[None]) -> None:
        self.model = model
        self.found_down = found_down  # done when the monitor declares Ollama down while no byte came back
        self.answered = False  # a byte came back
        self.progress_at: float | None = None  # the gateway's clock when the last byte came back
        self.model_loaded = False  # Ollama answered 200: the model is in memory
        self.loaded_when_sent: asyncio.Future[bool] | None = None  # was the model in memory as the request left?


class Gateway:
    """Routing state and the ASGI app; health comes from :meth:`observe_status` or the built-in probe.

    ``report_problem(why)`` is called (on a thread of its own, at most every
    few seconds) when a request to Ollama fails in a way the monitor should
    check now; the gateway itself never restarts anything. ``status_source``
    (standalone, with ``probe``) returns a running monitor's status, which is
    then followed instead of the gateway's own probe; None when there is none.
    """

    def __init__(
        self,
        *,
        local_url: str,
        cloud: CloudSettings,
        settings: GatewaySettings,
        env: Mapping[str, str] | None = None,
        key_store: KeyStore | None = None,
        report_problem: Callable[[str], None] | None = None,
        status_source: Callable[[], Status | None] | None = None,
        history: Any = None,
        notifier: Any = None,
        probe: bool = False,
        own_uid: int | None = OWN_UID,
        find_peer_uid: Callable[[Address, Address], int | None] = peer_uid,
        find_listener_uid: Callable[[int], int | None] = listener_uid,
        peer_lookup: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.local_url = local_url.rstrip("/")
        self.cloud = cloud
        self.settings = settings
        self.env = os.environ if env is None else env
        self.key_store = key_store if key_store is not None else SystemKeyStore()
        self.report_problem = report_problem
        self.status_source = status_source
        self.history = history
        self.notifier = notifier
        self.probe = probe
        self.own_uid = own_uid
        self.find_peer_uid = find_peer_uid
        self.find_listener_uid = find_listener_uid
        self.peer_lookup = peer_lookup_available() if peer_lookup is None else peer_lookup
        self.clock = clock
        self.wall_clock = wall_clock
        policy = BreakerPolicy(
            failure_threshold=settings.breaker_failures,
            open_seconds=settings.breaker_open_seconds,
            max_open_seconds=settings.breaker_max_open_seconds,
        )
        self.router = Router(
            cloud_enabled=cloud.enabled,
            breaker=CircuitBreaker(policy),
            window=FallbackWindow(settings.fallback_window_seconds),
        )
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._local: UpstreamClient | None = None
        self._ollama: OllamaClient | None = None  # the gateway's own questions (/api/ps, /api/version)
        self._cloud: httpx.AsyncClient | None = None
        self._key: ApiKey | None = None
        self._sent_keys: frozenset[str] = frozenset()  # keys sent to the provider: never relayed, logged, recorded
        self._local_models: list[dict[str, Any]] = []
        self._local_version: str | None = None
        self._loaded = LoadedModels(LOADED_TTL)
        self._monitor_loaded: frozenset[str] | None = None  # what the monitor's last status listed
        self._server_busy = False  # the monitor's status says Ollama is working on something
        self._exchanges: set[_Exchange] = set()
        self._last_progress: float | None = None
        self._down_reports = 0  # how many times Ollama was reported down (requests routed before see it)
        self._reports = Throttle(REPORT_INTERVAL)
        self._refused_peers: set[int | None] = set()  # users whose requests were kept from the cloud
        # What Ollama itself lets in (the user's OLLAMA_ORIGINS) reaches Ollama through the gateway too;
        # only gateway.allowed_origins may spend the cloud key.
        self.served_origins = (*settings.allowed_origins, *ollama_origins(self.env))
        self.last_local_problem = ""

    # -- health feeds (any thread)

    def observe_status(self, status: Status) -> None:
        """A monitor's status (subscribe this to :meth:`Monitor.subscribe`).

        Read: ``health``, ``state``, ``loaded_models`` and ``busy`` (None when
        idle; work whose ``source`` is not the gateway makes new requests wait
        their turn on the long budget).
        """
        health = health_from_status(status)
        with self._lock:
            self._server_busy = status_busy(status)
            if health.answering:
                self._monitor_loaded = frozenset(model_key(model.name) for model in status.loaded_models)
        self.observe_health(health)

    def observe_health(self, health: LocalHealth) -> None:
        with self._lock:
            self.router.observe_health(health, self.clock())
            waiting: list[_Exchange] = []
            if health in (LocalHealth.DOWN, LocalHealth.REFUSED):
                self._down_reports += 1
                waiting = [e for e in self._exchanges if not e.answered]
        if waiting and self._loop is not None:
            log.warning("Ollama was found down; answering %d waiting request(s) now", len(waiting))
            for exchange in waiting:
                self._loop.call_soon_threadsafe(_settle, exchange.found_down)
        self._announce_changes()

    def local_activity(self) -> LocalActivity:
        """The inference requests the gateway has sent to Ollama and not finished (any thread)."""
        with self._lock:
            in_flight: dict[str, int] = {}
            for exchange in self._exchanges:
                in_flight[exchange.model] = in_flight.get(exchange.model, 0) + 1
            waiting = sum(1 for e in self._exchanges if not e.answered)
            stamps = [e.progress_at for e in self._exchanges if e.progress_at is not None]
            if self._last_progress is not None:
                stamps.append(self._last_progress)
            return LocalActivity(in_flight, waiting, max(stamps, default=None))

    # -- reading (any thread)

    def fallback_usage(self) -> FallbackUsage:
        """Calls in the window and the cloud's share, for the design notes' > 50 % alert."""
        with self._lock:
            return self.router.usage(self.clock())

    def snapshot(self) -> GatewayStatus:
        with self._lock:
            now = self.clock()
            usage = self.router.usage(now)
            retry_at = self.router.breaker.retry_at(now)
            return GatewayStatus(
                breaker=str(self.router.breaker.state(now)),
                breaker_reason=self.router.breaker.reason,
                retry_in=None if retry_at is None else round(max(0.0, retry_at - now), 3),
                cloud_enabled=self.cloud.enabled,
                cloud_active=self.router.cloud_active(now),
                cloud_provider=self.cloud.host_label if self.cloud.enabled else None,
                cloud_model=self.cloud.model if self.cloud.enabled else None,
                calls=usage.calls,
                cloud_calls=usage.cloud_calls,
                fallback_ratio=usage.ratio,
                ollama_url=self.local_url,
            )

    # -- the ASGI app

    def asgi_app(self) -> Any:
        """The app with its loopback, Host and Origin checks."""
        app = Starlette(
            routes=[
                StarletteRoute(STATUS_PATH, self._status_endpoint, methods=["GET"]),
                StarletteRoute("/{path:path}", AsgiEndpoint(self._serve), methods=ALL_METHODS),
            ],
            lifespan=self._lifespan,
        )
        return LoopbackOnly(
            BrowserOrigins(RelayFirst(app, self._serve), lambda origin: origin_allowed(origin, self.served_origins))
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        self._local = UpstreamClient(
            self.local_url, connect_timeout=LOCAL_CONNECT_TIMEOUT, write_timeout=self.settings.idle_timeout
        )
        self._ollama = OllamaClient(self.local_url, timeouts=Timeouts(connect=LOCAL_CONNECT_TIMEOUT))
        self._cloud = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=CONNECT_TIMEOUT, read=self.cloud.timeout, write=self.cloud.timeout, pool=None
            ),
        )
        probe_task = asyncio.create_task(self._probe_loop()) if self.probe else None
        log_filter = RedactingFilter(self.sent_keys)
        log.addFilter(log_filter)
        try:
            yield
        finally:
            log.removeFilter(log_filter)
            if probe_task is not None:
                probe_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probe_task
            await self._local.aclose()
            self._ollama.close()
            await self._cloud.aclose()

    async def _status_endpoint(self, request: Request) -> Response:
        return json_response(200, self.snapshot().to_json(), Backend.GATEWAY)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request; a client that goes away cancels it, and what it started upstream."""
        request = Request(scope, receive)
        try:
            content = await self._request_content(request)
        except BodyRefused as exc:
            refusal = error_response(dialect_of(request.url.path), exc.status, str(exc))
            refusal.raw_headers += [(name.lower().encode(), value.encode()) for name, value in exc.headers.items()]
            await refusal(scope, receive, send)
            return

        async def answer() -> None:
            async with contextlib.AsyncExitStack() as after_answer:
                response = await self._handle(request, content, after_answer)
                await response(scope, receive, send)

        if isinstance(content, bytes):
            await run_until_disconnect(answer(), receive)
        else:  # a large upload, still being read from the client: the client going away ends it
            await answer()

    async def _request_content(self, request: Request) -> bytes | AsyncIterator[bytes]:
        """The request body: read whole, unless it is a large or chunked upload passed through as it comes.

        What the gateway reads itself (inference, metadata) is JSON, refused
        above JSON_BODY_LIMIT (BodyTooLarge); what it only relays is read whole
        when its Content-Length is at most BUFFER_LIMIT, streamed otherwise
        (blob uploads, of any size). What is read whole is held against the
        server's body budget (BodyBudgetSpent: 503 when it is spent).
        """
        path, method = request.scope["path"], request.scope["method"]
        if (method == "POST" and path in INFERENCE_PATHS) or is_metadata(method, path):
            return await read_body(request, JSON_BODY_LIMIT)
        length = request.headers.get("content-length")
        chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
        small = not chunked and (length is None or (length.isdigit() and int(length) <= BUFFER_LIMIT))
        if small:
            return await read_body(request, BUFFER_LIMIT)
        return request.stream()

    async def _handle(
        self, request: Request, content: bytes | AsyncIterator[bytes], after_answer: contextlib.AsyncExitStack
    ) -> Response:
        path, method = request.scope["path"], request.scope["method"]
        if isinstance(content, bytes) and method == "POST" and path in INFERENCE_PATHS:
            return await self._inference(request, path, content, after_answer)
        if isinstance(content, bytes) and is_metadata(method, path):
            return await self._metadata(request, path, content)
        return await self._passthrough(request, path, content)

    # -- inference

    async def _inference(
        self, request: Request, path: str, body: bytes, after_answer: contextlib.AsyncExitStack
    ) -> Response:
        dialect = dialect_of(path)
        payload = _json_object(body)
        with self._lock:
            route = self.router.route(self.clock())
            down_reports = self._down_reports
        if route.target is Target.REFUSE:
            return error_response(dialect, 503, self._skipped_message(route) + "; the cloud fallback is off")
        if route.target is Target.CLOUD:
            return await self._from_cloud(request, path, dialect, body, self._skipped_message(route))
        model = model_key(str(payload.get("model") or "")) if payload is not None else ""
        exchange: _Exchange | None = None
        try:
            plan, loaded = self._wait_plan(path, payload, model)
            exchange = self._begin_exchange(model, down_reports)
            after_answer.callback(self._end_exchange, exchange)
            if plan.budget is Budget.FIRST_BYTE and loaded is None:  # asked alongside, for the deadline
                exchange.loaded_when_sent = asyncio.ensure_future(self._look_up_loaded(model))
            response = await self._from_local(request, body, route, plan, exchange)
        except BackendFailure as failure:
            if exchange is not None:
                self._end_exchange(exchange)
            self._local_failed(route, failure)
            if failure.kind.cloud_may_answer and self.cloud.enabled:
                return await self._from_cloud(request, path, dialect, body, str(failure))
            suffix = "; the cloud fallback is off" if failure.kind.cloud_may_answer else ""
            return error_response(dialect, failure.status, f"{failure}{suffix}")
        except BaseException:
            with self._lock:
                self.router.local_abandoned(route)
            raise
        self._served(Backend.LOCAL)
        return response

    def _wait_plan(self, path: str, payload: dict[str, Any] | None, model: str) -> tuple[WaitPlan, bool | None]:
        """How long this request may wait for Ollama's first byte (see :func:`choose_budget`), from what is known.

        The short budget is provisional while it is not known whether the
        model is in memory (None): the deadline settles it, never a lookup
        the request would wait for.
        """
        streamed = streamed_request(path, payload or {})
        with self._lock:
            queued = self._server_busy or any(e.model == model for e in self._exchanges)
            loaded = self._loaded.is_loaded(model, self.clock())
            if loaded is None and self._monitor_loaded is not None and model not in self._monitor_loaded:
                loaded = False  # not loaded at the monitor's last look: a load is likely, the long budget is safe
        budget = choose_budget(streamed=streamed, loaded=loaded is not False, queued=queued)
        plan = plan_wait(
            budget,
            first_byte_timeout=self.settings.first_byte_timeout,
            local_timeout=self.settings.local_timeout,
            cloud_enabled=self.cloud.enabled,
        )
        return plan, loaded

    async def _look_up_loaded(self, model: str) -> bool:
        """Is ``model`` in Ollama's memory now? False when ``/api/ps`` does not say so quickly.

        ``/api/ps`` is answered by the HTTP server without waiting for
        generations; while a model loads it waits for the load (Ollama holds
        the runner's lock), so a slow answer means a load is under way.
        """
        assert self._ollama is not None
        try:
            running = await asyncio.to_thread(self._ollama.running, PS_TIMEOUT)
        except OllamaUnreachable:  # no answer in time included
            return False
        except OllamaError:
            running = None
        with self._lock:
            if running is not None:
                self._loaded.saw_list([entry.name for entry in running], self.clock())
            return bool(self._loaded.is_loaded(model, self.clock()))

    async def _silence_means_trouble(self, exchange: _Exchange) -> bool:
        """At the first-byte deadline: was the model in memory when the request was sent, is it still, and is
        nothing else through the gateway in progress?

        If the model was not in memory, this request is loading it (what was
        known had gone stale), and the silence is the load's. If another
        request is in progress, Ollama may be answering it first: requests
        sent at nearly the same time reach it in the order their connections
        do, not the order they were routed in, so the one routed first may be
        the one queued.
        """
        with self._lock:
            if any(other is not exchange for other in self._exchanges):
                return False
        if exchange.loaded_when_sent is not None and not await exchange.loaded_when_sent:
            return False
        return await self._look_up_loaded(exchange.model)

    def _begin_exchange(self, model: str, down_reports: int) -> _Exchange:
        exchange = _Exchange(model, asyncio.get_running_loop().create_future())
        with self._lock:
            self._exchanges.add(exchange)
            if self._down_reports != down_reports:  # found down since this request was routed
                _settle(exchange.found_down)
        return exchange

    def _progress(self, exchange: _Exchange) -> None:
        """Ollama's answer to ``exchange`` began (or came whole); its bytes then mark progress without a lock."""
        with self._lock:
            exchange.answered = True
            exchange.progress_at = self.clock()

    def _end_exchange(self, exchange: _Exchange) -> None:
        with self._lock:
            if exchange not in self._exchanges:
                return
            self._exchanges.discard(exchange)
            if exchange.progress_at is not None:
                self._last_progress = max(self._last_progress or exchange.progress_at, exchange.progress_at)
            if exchange.model_loaded:
                self._loaded.saw_answer(exchange.model, self.clock())

    async def _from_local(
        self, request: Request, body: bytes, route: Route, plan: WaitPlan, exchange: _Exchange
    ) -> Response:
        """Send to Ollama; the answer once its first byte is in, else :class:`BackendFailure`."""
        upstream = await self._first_byte(request, body, plan, exchange)
        self._progress(exchange)
        if upstream.status_code >= 500:
            if self.cloud.enabled:
                detail = tr.error_message(await _read_some(upstream, self.settings.idle_timeout))
                await upstream.aclose()
                raise BackendFailure(f"Ollama answered {upstream.status_code}: {detail}", 502, FailureKind.BROKEN)
        else:
            exchange.model_loaded = upstream.status_code == 200
            with self._lock:
                self.router.local_succeeded(route, self.clock())
            self._announce_changes()
        return await self._relay_local(upstream, route, self.settings.idle_timeout, exchange)

    async def _first_byte(self, request: Request, body: bytes, plan: WaitPlan, exchange: _Exchange) -> UpstreamResponse:
        """Send to Ollama and wait for its answer to begin, as ``plan`` says; else :class:`BackendFailure`.

        At the first-byte deadline, the silence counts only if the model was
        in memory when the request was sent and still is; otherwise this very
        request is loading it, and it keeps waiting on the long budget.
        Whatever ends the wait early (a mark of the plan, the monitor finding
        Ollama down, the client going away) cancels the request, which closes
        its connection: Ollama then stops working on it.
        """
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        why_ended: list[BackendFailure] = []  # what ended the wait early, once it cancelled the request
        finished = False
        timers: dict[str, asyncio.TimerHandle] = {}
        judging: set[asyncio.Task[None]] = set()

        def end(failure: BackendFailure) -> None:
            if not finished and not why_ended:
                why_ended.append(failure)
                task.cancel()

        def found_down(_: asyncio.Future[None]) -> None:
            end(
                BackendFailure("Ollama stopped answering (the health check found it down)", 503, FailureKind.FOUND_DOWN)
            )

        async def judge(what: str, at: float) -> None:
            if not await self._silence_means_trouble(exchange):
                # A load (or /api/ps too slow to say), or a queue: the work explains the silence.
                log.debug("a request for %s waits for a load or its turn", exchange.model)
            elif what == "report":
                self._report(f"a streamed request to a loaded model got nothing from Ollama for {at:g} s")
            else:
                end(BackendFailure(f"Ollama sent nothing for {at:g} s", 504, FailureKind.FIRST_BYTE))

        def mark(what: str, at: float) -> None:
            timers.pop(what, None)
            if what == "give up":
                end(
                    BackendFailure(
                        f"Ollama sent nothing for {at:g} s (to wait longer for loads and whole answers, "
                        "raise gateway.local_timeout)",
                        504,
                        FailureKind.NO_ANSWER,
                    )
                )
            else:
                judging.add(loop.create_task(judge(what, at)))

        # The request goes out on this task; the plan's marks are timers and the monitor's news a callback,
        # which cancel it (closing its connection) with the reason why.
        started = loop.time()
        for at, what in (
            (plan.report_after, "report"),
            (plan.fall_back_after, "fall back"),
            (plan.give_up_after, "give up"),
        ):
            if at is not None:
                timers[what] = loop.call_at(started + at, mark, what, at)
        exchange.found_down.add_done_callback(found_down)
        try:
            return await self._to_local(request, body)
        except asyncio.CancelledError:
            if why_ended and task.uncancel() == 0:
                raise why_ended[0] from None
            raise
        except httpx.HTTPError as error:
            raise self._send_failure(error) from None
        finally:
            finished = True
            exchange.found_down.remove_done_callback(found_down)
            for timer in timers.values():
                timer.cancel()
            for job in judging:
                job.cancel()
            if exchange.loaded_when_sent is not None:
                exchange.loaded_when_sent.cancel()

    def _send_failure(self, exc: httpx.HTTPError) -> BackendFailure:
        """What a failed send to Ollama means."""
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return BackendFailure(
                f"Ollama is not reachable at {self.local_url} ({describe_error(exc)})", 503, FailureKind.REFUSED
            )
        return BackendFailure(f"Ollama failed: {describe_error(exc)}", 502, FailureKind.BROKEN)

    async def _to_local(self, request: Request, content: bytes | AsyncIterator[bytes]) -> UpstreamResponse:
        """Send the client's request on to Ollama: its method, path, query and headers (hop-by-hop ones left out)."""
        assert self._local is not None
        scope = request.scope
        raw_path, query = scope.get("raw_path"), scope.get("query_string")
        target = raw_path.decode("latin-1") if raw_path else scope["path"]  # as the client wrote it
        if query:
            target += "?" + query.decode("latin-1")
        keep_length = not isinstance(content, (bytes, bytearray))
        headers = forward_request_headers(scope["headers"], keep_length)
        return await self._local.send(scope["method"], target, headers, content)

    async def _send_local(
        self, request: Request, content: bytes | AsyncIterator[bytes], budget: float | None
    ) -> UpstreamResponse:
        """Send a request that is not inference (model lists, pulls, ...) to Ollama."""
        try:
            async with asyncio.timeout(budget):
                return await self._to_local(request, content)
        except TimeoutError:
            raise BackendFailure(f"Ollama sent nothing for {budget:g} s", 504, FailureKind.NO_ANSWER) from None
        except httpx.HTTPError as exc:
            raise self._send_failure(exc) from None

    async def _relay_local(
        self, upstream: UpstreamResponse, route: Route | None, idle: float | None, exchange: _Exchange | None = None
    ) -> Response:
        """Ollama's answer for the client; ``route`` None: outcomes do not count for the breaker."""
        length = upstream.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) <= BUFFER_LIMIT:
            try:
                async with asyncio.timeout(idle):
                    body = await upstream.aread()
            except (TimeoutError, httpx.HTTPError) as exc:
                raise BackendFailure(
                    f"Ollama broke off its answer ({describe_error(exc)})", 502, FailureKind.STALLED
                ) from None
            finally:
                await upstream.aclose()
            if exchange is not None:
                self._progress(exchange)
            return RawResponse(
                upstream.status_code, relay_response_headers(upstream.headers.raw, Backend.LOCAL, True), body
            )
        headers = relay_response_headers(upstream.headers.raw, Backend.LOCAL, False)
        return RelayResponse(upstream.status_code, headers, self._local_chunks(upstream, route, idle, exchange))

    async def _local_chunks(
        self, upstream: UpstreamResponse, route: Route | None, idle: float | None, exchange: _Exchange | None
    ) -> AsyncGenerator[bytes, None]:
        """Ollama's body as it arrives; a break mid-way ends it with an error in its own format.

        Per chunk: the bytes, and two stamps (the idle watch's, the
        exchange's progress) that take no lock and set no timer; the watch's
        one timer is moved at most once per ``idle`` seconds.
        """
        content_type = upstream.headers.get("content-type", "")
        watch = _IdleWatch(idle) if idle is not None else None
        last = b"\n"
        try:
            chunks = upstream.aiter_raw()
            while True:
                if watch is not None:
                    watch.reading()
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if watch is not None and watch.timed_out():
                        raise TimeoutError from None
                    raise
                if watch is not None:
                    watch.delivering()  # the time the client takes the chunk is not Ollama's silence
                if exchange is not None:
                    exchange.progress_at = self.clock()
                last = chunk
                yield chunk
        except (TimeoutError, httpx.HTTPError) as exc:
            timed_out = isinstance(exc, (TimeoutError, httpx.TimeoutException))
            message = (
                f"Ollama stopped answering for {idle:g} s" if timed_out
                else f"Ollama broke off the answer ({describe_error(exc)})"
            )  # fmt: skip
            if route is not None:
                self._local_failed(route, BackendFailure(message, 502, FailureKind.STALLED))
            if content_type.startswith((tr.NDJSON, tr.SSE)):
                yield tr.stream_error_tail(content_type, message, ended_mid_line=not last.endswith(b"\n"))
        finally:
            if watch is not None:
                watch.stop()
            await upstream.aclose()

    # -- the cloud

    async def _from_cloud(
        self, request: Request, path: str, dialect: Dialect, body: bytes, local_problem: str
    ) -> Response:
        if not self.cloud.enabled:
            return error_response(dialect, 503, f"{local_problem}; the cloud fallback is off")
        origin = request.headers.get("origin")
        if origin is not None and not origin_allowed(origin, self.settings.allowed_origins):
            message = (
                f"{local_problem}; the cloud fallback answers only the browser origins in gateway.allowed_origins, "
                f"and this came from {origin[:100]!r}"
            )
            return error_response(dialect, 403, message)
        page_owner = await self._page_owner(origin)
        if origin is not None and not requester_of(page_owner, self.own_uid, self.peer_lookup).may_spend_key:
            # The user's browser sent it, but another user's program serves the page that made it do so.
            self._refused_other_user(page_owner)
            message = (
                f"{local_problem}; the cloud fallback answers only its owner's programs, "
                f"and the page {origin[:100]!r} is not served by one"
            )
            return error_response(dialect, 403, message)
        peer = await self._peer_uid(request)
        if not requester_of(peer, self.own_uid, self.peer_lookup).may_spend_key:
            self._refused_other_user(peer)
            who = "another user" if peer is None else f"another user (uid {peer})"
            message = f"{local_problem}; the cloud fallback answers only its owner's programs, and this came from {who}"
            return error_response(dialect, 403, message)
        payload = _json_object(body)
        if payload is None:
            return error_response(dialect, 400, "the request body is not a JSON object")
        try:
            call = plan_cloud_call(self.cloud, path, payload)
        except NotServed as exc:
            return error_response(dialect, 503, f"{local_problem}; {exc}")
        try:
            upstream = await self._send_cloud(call)
        except BackendFailure as failure:
            message = f"{local_problem}, and the cloud fallback failed: {failure}"
            return error_response(dialect, failure.status, self.redacted(message))
        if upstream.status_code >= 400:
            detail = provider_error(self.cloud, upstream.status_code, await _read_some(upstream, self.cloud.timeout))
            detail = self.redacted(detail)
            await upstream.aclose()
            if upstream.status_code in (401, 403):
                self._key = None
            # A 4xx keeps its meaning (401/403: the key was refused, so an OpenAI client does not retry); 5xx: 502.
            status = upstream.status_code if 400 <= upstream.status_code < 500 else 502
            return error_response(dialect, status, f"{local_problem}, and the cloud fallback failed: {detail}")
        self._served(Backend.CLOUD)
        log.info("served %s by the cloud fallback (%s)", path, local_problem)
        if call.stream:
            headers = [(b"content-type", call.client_content_type.encode()), (BACKEND_HEADER.encode(), b"cloud")]
            return RelayResponse(200, headers, self._cloud_chunks(upstream, call))
        return await self._cloud_whole(upstream, call, dialect, local_problem)

    async def _page_owner(self, origin: str | None) -> int | None:
        """For a page on a loopback port, the uid of the program serving it; else the gateway's own (nothing to ask)."""
        port = None if origin is None else loopback_page_port(origin)
        if port is None or not self.peer_lookup:
            return self.own_uid
        return await asyncio.to_thread(self.find_listener_uid, port)

    async def _peer_uid(self, request: Request) -> int | None:
        client, server = request.scope.get("client"), request.scope.get("server")
        if not self.peer_lookup or not client or not server:
            return None
        return await asyncio.to_thread(self.find_peer_uid, (client[0], client[1]), (server[0], server[1]))

    def _refused_other_user(self, peer: int | None) -> None:
        """Log and record, once per user, that another user's request was kept from the cloud."""
        with self._lock:
            if peer in self._refused_peers:
                return
            self._refused_peers.add(peer)
        who = "a connection whose owner the OS does not show" if peer is None else f"user id {peer}"
        message = f"The gateway kept a request from {who} from the cloud fallback: only your programs may use your key"
        log.warning("%s", message)
        if self.history is not None:
            self.history.record(EventKind.CLOUD, message, {"refused_uid": peer})

    async def _send_cloud(self, call: CloudCall) -> httpx.Response:
        assert self._cloud is not None
        key = await self._api_key()
        outgoing = self._cloud.build_request(
            "POST", self.cloud.url + call.path, json=call.body, headers=request_headers(key)
        )
        budget = self.cloud.timeout + CONNECT_TIMEOUT
        try:
            return await asyncio.wait_for(self._cloud.send(outgoing, stream=True), budget)
        except (TimeoutError, httpx.TimeoutException):
            raise BackendFailure(f"{self.cloud.host_label} sent nothing for {self.cloud.timeout:g} s", 504) from None
        except httpx.HTTPError as exc:
            raise BackendFailure(f"cannot reach {self.cloud.host_label} ({describe_error(exc)})", 502) from None

    async def _cloud_whole(
        self, upstream: httpx.Response, call: CloudCall, dialect: Dialect, local_problem: str
    ) -> Response:
        try:
            raw = await upstream.aread()
        except httpx.HTTPError as exc:
            message = f"{local_problem}, and the cloud fallback failed: {describe_error(exc)}"
            return error_response(dialect, 502, self.redacted(message))
        finally:
            await upstream.aclose()
        raw = redact_bytes(raw, self._sent_keys)
        if call.same_dialect:
            content_type = self.redacted(upstream.headers.get("content-type", tr.JSON))
            return RawResponse(
                200,
                [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(raw)).encode()),
                    (BACKEND_HEADER.encode(), b"cloud"),
                ],
                raw,
            )
        try:
            answer = json.loads(raw)
        except ValueError:
            return error_response(
                dialect, 502, f"{local_problem}, and the cloud fallback answered something that is not JSON"
            )
        translated = call.translate_body(answer, self._timestamp(), _completion_id(), int(self.wall_clock()))
        return json_response(200, translated, Backend.CLOUD)

    async def _cloud_chunks(self, upstream: httpx.Response, call: CloudCall) -> AsyncGenerator[bytes, None]:
        translator = call.stream_translator(self._timestamp, _completion_id(), int(self.wall_clock()))
        redactor = StreamRedactor(self._sent_keys)
        last = b"\n"
        try:
            async for chunk in upstream.aiter_raw():
                out = redactor.feed(translator.feed(chunk) if translator is not None else chunk)
                if out:
                    last = out
                    yield out
            tail = redactor.feed(translator.close()) if translator is not None else b""
            tail += redactor.close()
            if tail:
                yield tail
        except httpx.HTTPError as exc:
            held = redactor.close()
            if held:
                last = held
                yield held
            message = self.redacted(f"{self.cloud.host_label} broke off the answer ({describe_error(exc)})")
            yield tr.stream_error_tail(call.client_content_type, message, ended_mid_line=not last.endswith(b"\n"))
        finally:
            await upstream.aclose()

    async def _api_key(self) -> ApiKey | None:
        if self._key is None:
            self._key = await asyncio.to_thread(find_api_key, self.cloud, self.env, self.key_store)
            if self._key is not None:
                self._sent_keys = self._sent_keys | {self._key.value}
        return self._key

    def sent_keys(self) -> frozenset[str]:
        """The keys sent to the provider so far (any thread)."""
        return self._sent_keys

    def redacted(self, text: str) -> str:
        """``text`` without any key sent to the provider or any ``Bearer`` token."""
        return redact(text, self.sent_keys())

    # -- metadata and everything else

    async def _metadata(self, request: Request, path: str, body: bytes) -> Response:
        dialect = dialect_of(path)
        with self._lock:
            now = self.clock()
            breaker = self.router.breaker
            # As soon as Ollama answers again (a health report, a good answer) the lists come from it.
            skip_local = breaker.refused or (
                self.cloud.enabled
                and (breaker.state(now) is BreakerState.OPEN or breaker.last_health is LocalHealth.DOWN)
            )
            permit = breaker.passive_permit(now)
        problem = f"Ollama is skipped after failing ({self.router.breaker.reason})"
        if not skip_local:
            try:
                upstream = await self._send_local(request, body, METADATA_TIMEOUT)
                response = await self._relay_local(upstream, None, METADATA_TIMEOUT)
            except BackendFailure as failure:
                problem = str(failure)
                if failure.kind is FailureKind.REFUSED and permit.allowed:
                    # A refused connection is sure news; a slow model list is not worth opening the breaker for.
                    self._local_failed(Route(Target.LOCAL, permit), failure)
            else:
                if isinstance(response, RawResponse) and response.status_code == 200:
                    self._remember(path, bytes(response.body))
                return response
        if not self.cloud.enabled:
            return error_response(dialect, 503, f"{problem}; the cloud fallback is off")
        return self._synthesized(request.method, path, body)

    def _remember(self, path: str, body: bytes) -> None:
        try:
            value = json.loads(body)
        except ValueError:
            return
        if not isinstance(value, dict):
            return
        if path == "/api/tags" and isinstance(value.get("models"), list):
            self._local_models = [m for m in value["models"] if isinstance(m, dict)]
        elif path == "/api/ps" and isinstance(value.get("models"), list):
            with self._lock:
                self._loaded.saw_list(loaded_names(value["models"]), self.clock())
        elif path == "/api/version" and value.get("version"):
            self._local_version = str(value["version"])

    def _synthesized(self, method: str, path: str, body: bytes) -> Response:
        """What the gateway answers for model lists while Ollama is down and the cloud is on."""
        stamp = self._timestamp()
        cloud_models = [m for m in (self.cloud.model, self.cloud.embedding_model) if m]
        local_names = {model_key(name) for name in model_names(self._local_models)}
        tags = self._local_models + [tag_entry(m, stamp) for m in cloud_models if model_key(m) not in local_names]
        if path == "/":
            text = b"Ollama is running"
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(text)).encode()),
                (BACKEND_HEADER.encode(), b"gateway"),
            ]
            return RawResponse(200, headers, b"" if method == "HEAD" else text)
        if path == "/api/version":
            return json_response(200, {"version": self._local_version or "0.0.0"}, Backend.GATEWAY)
        if path == "/api/tags":
            return json_response(200, {"models": tags}, Backend.GATEWAY)
        if path == "/api/ps":
            return json_response(200, {"models": []}, Backend.GATEWAY)
        owner = self.cloud.host_label
        entries = [openai_model_entry(name, "library" if name in local_names else owner) for name in model_names(tags)]
        if path == "/v1/models":
            return json_response(200, {"object": "list", "data": entries}, Backend.GATEWAY)
        if path.startswith("/v1/models/"):
            wanted = path.removeprefix("/v1/models/")
            found = next((e for e in entries if model_key(e["id"]) == model_key(wanted)), None)
            if found is None:
                return error_response(Dialect.OPENAI, 404, f"model '{wanted}' not found")
            return json_response(200, found, Backend.GATEWAY)
        requested = _requested_model(body)
        if not requested:
            return error_response(Dialect.OLLAMA, 400, "model is required")
        if model_key(requested) not in {model_key(name) for name in model_names(tags)}:
            return error_response(Dialect.OLLAMA, 404, f"model '{requested}' not found")  # Ollama's own words
        return json_response(200, show_entry(requested, stamp), Backend.GATEWAY)

    async def _passthrough(self, request: Request, path: str, content: bytes | AsyncIterator[bytes]) -> Response:
        dialect = dialect_of(path)
        try:
            upstream = await self._send_local(request, content, None)
            return await self._relay_local(upstream, None, None)
        except BackendFailure as failure:
            suffix = f"; the cloud fallback does not serve {path}" if self.cloud.enabled else ""
            return error_response(dialect, failure.status, f"{failure}{suffix}")

    # -- bookkeeping

    def _local_failed(self, route: Route, failure: BackendFailure) -> None:
        self.last_local_problem = str(failure)
        with self._lock:
            self.router.local_failed(route, self.clock(), str(failure), failure.kind)
        if failure.kind.worth_reporting:
            self._report(str(failure))
        self._announce_changes()

    def _report(self, why: str) -> None:
        """Ask the monitor to check Ollama now, because of what a request saw (at most every few seconds)."""
        if self.report_problem is None:
            return
        with self._lock:
            if not self._reports.allow(self.clock()):
                return
        log.warning("asking the monitor to check Ollama: %s", why)
        threading.Thread(target=self._call_report, args=(why,), name="gateway-report", daemon=True).start()

    def _call_report(self, why: str) -> None:
        report = self.report_problem
        if report is None:
            return
        try:
            report(why)
        except Exception as exc:  # noqa: BLE001 - the gateway keeps serving whatever the monitor says
            log.warning("could not ask the monitor to check Ollama: %s", exc)

    def _served(self, backend: Backend) -> None:
        with self._lock:
            self.router.served(backend, self.clock())

    def _skipped_message(self, route: Route) -> str:
        reason = self.router.breaker.reason or "it failed"
        wait = "" if route.retry_at is None else f", next try in {max(0.0, route.retry_at - self.clock()):.0f} s"
        return f"Ollama is skipped ({reason}{wait})"

    def _announce_changes(self) -> None:
        with self._lock:
            change = self.router.activation_change(self.clock())
            reason = self.router.breaker.reason
        if change is None:
            return
        notice = activation_notice(change, reason, self.cloud)
        if change is Activation.ACTIVATED:
            log.warning("%s", notice.message)
        else:
            log.info("%s", notice.message)
        if self.history is not None:
            data = {
                "active": change is Activation.ACTIVATED,
                "provider": self.cloud.host_label,
                "model": self.cloud.model,
            }
            self.history.record(EventKind.CLOUD, self.redacted(notice.message), data)
        if self.notifier is not None:
            threading.Thread(
                target=self.notifier.notify,
                args=(notice.title, notice.message),
                kwargs={"key": notice.key},
                name="gateway-notify",
                daemon=True,
            ).start()

    def _timestamp(self) -> str:
        return tr.rfc3339_nano(self.wall_clock())

    async def _probe_loop(self) -> None:
        """Standalone health feed, every ``probe_interval`` seconds.

        A running monitor's status (``status_source``) is followed when there
        is one; otherwise ``GET /api/version`` (answered without the scheduler,
        so a busy Ollama stays up) is the gateway's own probe.
        """
        assert self._local is not None
        while True:
            status = await asyncio.to_thread(self.status_source) if self.status_source is not None else None
            if status is not None:
                self.observe_status(status)
            else:
                self.observe_health(await self._probe_version())
            await asyncio.sleep(self.settings.probe_interval)

    async def _probe_version(self) -> LocalHealth:
        assert self._ollama is not None
        try:
            self._local_version = await asyncio.to_thread(self._ollama.version, PROBE_TIMEOUT)
        except OllamaMalformed:  # another program on the port: down, as the monitor reads it
            return LocalHealth.DOWN
        except OllamaAPIError:  # Ollama answers, not well
            return LocalHealth.SLOW
        except OllamaError:  # refused, dropped or no answer in time
            return LocalHealth.DOWN
        return LocalHealth.UP


class _IdleWatch:
    """Cancels the task reading an answer once one read has waited ``idle`` seconds for Ollama.

    One timer, moved only when it fires: each read stamps when it began
    (:meth:`reading`) and each chunk that it ended (:meth:`delivering`), so
    the time the client takes a chunk never counts, and a stream sets no
    timer per chunk. Made and used on the task that reads.
    """

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._began = self._loop.time()
        self._waiting = False
        self._fired = False
        self._timer = self._loop.call_at(self._began + idle, self._check)

    def reading(self) -> None:
        self._began = self._loop.time()
        self._waiting = True

    def delivering(self) -> None:
        self._waiting = False

    def timed_out(self) -> bool:
        """Was the task's cancellation this watch's doing? It is then taken back."""
        return self._fired and self._task.uncancel() == 0

    def stop(self) -> None:
        self._timer.cancel()

    def _check(self) -> None:
        now = self._loop.time()
        if self._waiting and now - self._began >= self.idle:
            self._fired = True
            self._task.cancel()
            return
        self._timer = self._loop.call_at((self._began if self._waiting else now) + self.idle, self._check)


def _settle(future: asyncio.Future[None]) -> None:
    """Complete ``future`` unless it is already done (a thread's news may come twice)."""
    if not future.done():
        future.set_result(None)


async def _read_some(response: httpx.Response | UpstreamResponse, timeout: float, limit: int = 64 * 1024) -> bytes:
    """At most ``limit`` bytes of an error body, given at most ``timeout`` seconds."""
    data = b""

    async def read() -> None:
        nonlocal data
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) >= limit:
                return

    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(timeout):
            await read()
    return data[:limit]


def _completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The request body as a JSON object; None when it is not one."""
    try:
        value = json.loads(body) if body else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _requested_model(body: bytes) -> str:
    value = _json_object(body) or {}
    return str(value.get("model") or value.get("name") or "")


# --------------------------------------------------------------------------- the server


class GatewayServer(LoopbackServer):
    """Runs a :class:`Gateway` with uvicorn in a background thread, on a loopback socket."""

    def __init__(self, gateway: Gateway, port: int, host: str = "127.0.0.1") -> None:
        self.gateway = gateway
        super().__init__(
            gateway.asgi_app(),
            port,
            what="the gateway",
            host=host,
            lifespan="on",
            graceful_seconds=2,
            thread_name="gateway",
        )
