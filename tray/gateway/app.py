"""The gateway: a loopback HTTP server apps point at instead of Ollama.

It serves Ollama's API and the OpenAI API. While Ollama is healthy every
request is proxied to it unchanged, the answer streamed back byte for byte
as it arrives. When Ollama is down, skipped by the circuit breaker, or fails
before its first byte (refused connection, ``first_byte_timeout`` without a
byte, a 5xx answer), an inference request is answered by the configured
cloud provider instead, translated between NDJSON and SSE where the client
and the provider speak different dialects. A timeout also asks the
supervisor to restart Ollama. A stream that has started is never switched:
if Ollama breaks mid-way, the stream ends with an error line in its own
format, as Ollama itself does.

Every answer carries ``X-Ollama-Manager-Backend: local | cloud | gateway``.

Safety: only loopback clients with a loopback/localhost ``Host`` header
(DNS rebinding) and no foreign ``Origin`` (a web page in the user's browser)
are served; CORS headers are stripped, so no page can read an answer.

Inference paths, all ``POST``: ``/api/chat``, ``/api/generate``,
``/api/embed``, ``/api/embeddings``, ``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings``. While Ollama is down and the cloud
fallback is on, the gateway itself answers ``/``, ``/api/version``,
``/api/tags``, ``/api/ps``, ``/api/show`` and ``/v1/models[/<id>]`` with the
local models last seen plus the cloud model. Every other path (pull, create,
delete, blobs, ...) only goes to Ollama.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute
from starlette.types import Receive, Scope, Send

from tray.gateway import translate as tr
from tray.gateway.breaker import (
    Activation,
    Backend,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    FallbackUsage,
    FallbackWindow,
    LocalHealth,
    Route,
    Router,
    Target,
    health_from_status,
)
from tray.gateway.cloud import (
    CONNECT_TIMEOUT,
    INFERENCE_PATHS,
    ApiKey,
    CloudCall,
    KeyStore,
    NotServed,
    SystemKeyStore,
    find_api_key,
    plan_cloud_call,
    describe_error,
    provider_error,
    request_headers,
)
from tray.gateway.settings import CloudSettings, GatewaySettings
from tray.gateway.translate import Dialect
from tray.status_server import LoopbackOnly, host_allowed

log = logging.getLogger(__name__)

BACKEND_HEADER = "x-ollama-manager-backend"
STATUS_PATH = "/_gateway/status"
LOCAL_CONNECT_TIMEOUT = 2.0
METADATA_TIMEOUT = 5.0
PROBE_TIMEOUT = 2.0
BUFFER_LIMIT = 8 * 1024 * 1024  # answers with a Content-Length up to this are read whole before replying
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
}  # fmt: skip
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


# --------------------------------------------------------------------------- pure helpers


def dialect_of(path: str) -> Dialect:
    """The API a path belongs to."""
    return Dialect.OPENAI if path.startswith("/v1/") else Dialect.OLLAMA


def is_metadata(method: str, path: str) -> bool:
    """Paths the gateway can answer by itself while Ollama is down."""
    if method in ("GET", "HEAD"):
        return path in ("/", "/api/version", "/api/tags", "/api/ps", "/v1/models") or path.startswith("/v1/models/")
    return method == "POST" and path == "/api/show"


def forward_request_headers(headers: Mapping[str, str] | httpx.Headers, keep_length: bool) -> list[tuple[str, str]]:
    """A client's headers as sent on to Ollama: no hop-by-hop fields, no Host."""
    dropped = HOP_BY_HOP | {"host"} | (set() if keep_length else {"content-length"})
    return [(name, value) for name, value in headers.items() if name.lower() not in dropped]


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


def origin_allowed(origin: str) -> bool:
    """Is a browser ``Origin`` a loopback page? ``null`` (sandboxed or file pages) is not.

    >>> origin_allowed("http://localhost:3000"), origin_allowed("https://evil.example"), origin_allowed("null")
    (True, False, False)
    """
    parts = urlsplit(origin.strip())
    return parts.scheme in ("http", "https") and bool(parts.netloc) and host_allowed(parts.netloc)


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

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], chunks: AsyncIterator[bytes]) -> None:
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
            await self._chunks.aclose()  # type: ignore[attr-defined]


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

    def __init__(self, message: str, status: int, *, timed_out: bool = False, refused: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.timed_out = timed_out
        self.refused = refused


class ForeignOriginRefused:
    """ASGI middleware refusing requests sent by a web page that is not on this machine."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            origin = dict(scope.get("headers") or []).get(b"origin")
            if origin is not None and not origin_allowed(origin.decode("latin-1")):
                response = json_response(
                    403, {"error": "forbidden: requests from web pages are refused"}, Backend.GATEWAY
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------- the gateway


class Gateway:
    """Routing state and the ASGI app; health comes from :meth:`observe_status` or the built-in probe."""

    def __init__(
        self,
        *,
        local_url: str,
        cloud: CloudSettings,
        settings: GatewaySettings,
        env: Mapping[str, str] | None = None,
        key_store: KeyStore | None = None,
        request_restart: Callable[[], None] | None = None,
        history: Any = None,
        notifier: Any = None,
        probe: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.local_url = local_url.rstrip("/")
        self.cloud = cloud
        self.settings = settings
        self.env = os.environ if env is None else env
        self.key_store = key_store if key_store is not None else SystemKeyStore()
        self.request_restart = request_restart
        self.history = history
        self.notifier = notifier
        self.probe = probe
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
            restart_interval=settings.restart_interval,
        )
        self._lock = threading.Lock()
        self._local: httpx.AsyncClient | None = None
        self._cloud: httpx.AsyncClient | None = None
        self._key: ApiKey | None = None
        self._local_models: list[dict[str, Any]] = []
        self._local_version: str | None = None
        self.last_local_problem = ""

    # -- health feeds (any thread)

    def observe_status(self, status: Mapping[str, Any]) -> None:
        """A monitor status dict (subscribe this to :meth:`Monitor.subscribe`)."""
        self.observe_health(health_from_status(status))

    def observe_health(self, health: LocalHealth) -> None:
        with self._lock:
            self.router.observe_health(health, self.clock())
        self._announce_changes()

    # -- reading (any thread)

    def fallback_usage(self) -> FallbackUsage:
        """Calls in the window and the cloud's share, for the design notes' > 50 % alert."""
        with self._lock:
            return self.router.usage(self.clock())

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = self.clock()
            usage = self.router.usage(now)
            retry_at = self.router.breaker.retry_at(now)
            return {
                "breaker": str(self.router.breaker.state(now)),
                "breaker_reason": self.router.breaker.reason,
                "retry_in": None if retry_at is None else round(max(0.0, retry_at - now), 3),
                "cloud_enabled": self.cloud.enabled,
                "cloud_active": self.router.cloud_active(now),
                "cloud_provider": self.cloud.host_label if self.cloud.enabled else None,
                "cloud_model": self.cloud.model if self.cloud.enabled else None,
                "calls": usage.calls,
                "cloud_calls": usage.cloud_calls,
                "fallback_ratio": usage.ratio,
                "ollama_url": self.local_url,
            }

    # -- the ASGI app

    def asgi_app(self) -> Any:
        """The app with its loopback, Host and Origin checks."""
        app = Starlette(
            routes=[
                StarletteRoute(STATUS_PATH, self._status_endpoint, methods=["GET"]),
                StarletteRoute("/{path:path}", self._handle, methods=ALL_METHODS),
            ],
            lifespan=self._lifespan,
        )
        return LoopbackOnly(ForeignOriginRefused(app))

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        self._local = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=LOCAL_CONNECT_TIMEOUT, read=None, write=self.settings.idle_timeout, pool=None
            ),
            trust_env=False,
        )
        self._cloud = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=CONNECT_TIMEOUT, read=self.cloud.timeout, write=self.cloud.timeout, pool=None
            ),
        )
        probe_task = asyncio.create_task(self._probe_loop()) if self.probe else None
        try:
            yield
        finally:
            if probe_task is not None:
                probe_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probe_task
            await self._local.aclose()
            await self._cloud.aclose()

    async def _status_endpoint(self, request: Request) -> Response:
        return json_response(200, self.snapshot(), Backend.GATEWAY)

    async def _handle(self, request: Request) -> Response:
        path, method = request.url.path, request.method
        if method == "POST" and path in INFERENCE_PATHS:
            return await self._inference(request, path)
        if is_metadata(method, path):
            return await self._metadata(request, path)
        return await self._passthrough(request, path)

    # -- inference

    async def _inference(self, request: Request, path: str) -> Response:
        dialect = dialect_of(path)
        body = await request.body()
        with self._lock:
            route = self.router.route(self.clock())
        if route.target is Target.REFUSE:
            return error_response(dialect, 503, self._skipped_message(route) + "; the cloud fallback is off")
        if route.target is Target.CLOUD:
            return await self._from_cloud(path, dialect, body, self._skipped_message(route))
        budget = self.settings.first_byte_timeout if route.can_fall_back else self.settings.local_timeout
        try:
            response = await self._from_local(request, body, route, budget, fall_back_on_5xx=route.can_fall_back)
        except BackendFailure as failure:
            self._local_failed(route, failure)
            if not route.can_fall_back:
                suffix = "; the cloud fallback is off" if not self.cloud.enabled else ""
                return error_response(dialect, failure.status, f"{failure}{suffix}")
            return await self._from_cloud(path, dialect, body, str(failure))
        except BaseException:
            with self._lock:
                self.router.local_abandoned(route)
            raise
        self._served(Backend.LOCAL)
        return response

    async def _from_local(
        self, request: Request, body: bytes, route: Route, budget: float, *, fall_back_on_5xx: bool
    ) -> Response:
        """Send to Ollama; the answer once its first byte is in, else :class:`BackendFailure`."""
        upstream = await self._send_local(request, body, budget)
        if fall_back_on_5xx and upstream.status_code >= 500:
            detail = tr.error_message(await _read_some(upstream, self.settings.idle_timeout))
            await upstream.aclose()
            raise BackendFailure(f"Ollama answered {upstream.status_code}: {detail}", 502)
        with self._lock:
            self.router.local_succeeded(route, self.clock())
        self._announce_changes()
        return await self._relay_local(upstream, route, self.settings.idle_timeout)

    async def _send_local(self, request: Request, content: Any, budget: float | None) -> httpx.Response:
        assert self._local is not None
        query = request.url.query
        url = self.local_url + request.url.path + (f"?{query}" if query else "")
        keep_length = not isinstance(content, (bytes, bytearray))
        outgoing = self._local.build_request(
            request.method, url, headers=forward_request_headers(request.headers, keep_length), content=content
        )
        try:
            return await asyncio.wait_for(self._local.send(outgoing, stream=True), budget)
        except (TimeoutError, httpx.TimeoutException):
            raise BackendFailure(f"Ollama sent nothing for {budget:g} s", 504, timed_out=True) from None
        except httpx.ConnectError as exc:
            raise BackendFailure(
                f"Ollama is not reachable at {self.local_url} ({describe_error(exc)})", 503, refused=True
            ) from None
        except httpx.HTTPError as exc:
            raise BackendFailure(f"Ollama failed: {describe_error(exc)}", 502) from None

    async def _relay_local(self, upstream: httpx.Response, route: Route | None, idle: float | None) -> Response:
        """Ollama's answer for the client; ``route`` None: outcomes do not count for the breaker."""
        length = upstream.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) <= BUFFER_LIMIT:
            try:
                body = await asyncio.wait_for(upstream.aread(), idle)
            except (TimeoutError, httpx.HTTPError) as exc:
                timed_out = isinstance(exc, (TimeoutError, httpx.TimeoutException))
                raise BackendFailure(
                    f"Ollama broke off its answer ({describe_error(exc)})", 502, timed_out=timed_out
                ) from None
            finally:
                await upstream.aclose()
            return RawResponse(
                upstream.status_code, relay_response_headers(upstream.headers.raw, Backend.LOCAL, True), body
            )
        headers = relay_response_headers(upstream.headers.raw, Backend.LOCAL, False)
        return RelayResponse(upstream.status_code, headers, self._local_chunks(upstream, route, idle))

    async def _local_chunks(
        self, upstream: httpx.Response, route: Route | None, idle: float | None
    ) -> AsyncIterator[bytes]:
        """Ollama's body as it arrives; a break mid-way ends it with an error in its own format."""
        content_type = upstream.headers.get("content-type", "")
        chunks = upstream.aiter_raw()
        loop = asyncio.get_running_loop()
        last = b"\n"
        try:
            # One deadline, moved for each read and lifted while the client takes the chunk.
            async with asyncio.timeout(None) as deadline:
                while True:
                    deadline.reschedule(None if idle is None else loop.time() + idle)
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        return
                    deadline.reschedule(None)
                    if chunk:
                        last = chunk
                        yield chunk
        except (TimeoutError, httpx.HTTPError) as exc:
            timed_out = isinstance(exc, (TimeoutError, httpx.TimeoutException))
            message = (
                f"Ollama stopped answering for {idle:g} s" if timed_out
                else f"Ollama broke off the answer ({describe_error(exc)})"
            )  # fmt: skip
            if route is not None:
                self._local_failed(route, BackendFailure(message, 502, timed_out=timed_out))
            if content_type.startswith((tr.NDJSON, tr.SSE)):
                yield tr.stream_error_tail(content_type, message, ended_mid_line=not last.endswith(b"\n"))
        finally:
            await upstream.aclose()

    # -- the cloud

    async def _from_cloud(self, path: str, dialect: Dialect, body: bytes, local_problem: str) -> Response:
        if not self.cloud.enabled:
            return error_response(dialect, 503, f"{local_problem}; the cloud fallback is off")
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return error_response(dialect, 400, "the request body is not a JSON object")
        try:
            call = plan_cloud_call(self.cloud, path, payload)
        except NotServed as exc:
            return error_response(dialect, 503, f"{local_problem}; {exc}")
        try:
            upstream = await self._send_cloud(call)
        except BackendFailure as failure:
            return error_response(dialect, failure.status, f"{local_problem}, and the cloud fallback failed: {failure}")
        if upstream.status_code >= 400:
            detail = provider_error(self.cloud, upstream.status_code, await _read_some(upstream, self.cloud.timeout))
            await upstream.aclose()
            if upstream.status_code in (401, 403):
                self._key = None
            status = (
                upstream.status_code
                if 400 <= upstream.status_code < 500 and upstream.status_code not in (401, 403)
                else 502
            )
            return error_response(dialect, status, f"{local_problem}, and the cloud fallback failed: {detail}")
        self._served(Backend.CLOUD)
        log.info("served %s by the cloud fallback (%s)", path, local_problem)
        if call.stream:
            headers = [(b"content-type", call.client_content_type.encode()), (BACKEND_HEADER.encode(), b"cloud")]
            return RelayResponse(200, headers, self._cloud_chunks(upstream, call))
        return await self._cloud_whole(upstream, call, dialect, local_problem)

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
            return error_response(
                dialect, 502, f"{local_problem}, and the cloud fallback failed: {describe_error(exc)}"
            )
        finally:
            await upstream.aclose()
        if call.same_dialect:
            content_type = upstream.headers.get("content-type", tr.JSON)
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

    async def _cloud_chunks(self, upstream: httpx.Response, call: CloudCall) -> AsyncIterator[bytes]:
        translator = call.stream_translator(self._timestamp, _completion_id(), int(self.wall_clock()))
        last = b"\n"
        try:
            async for chunk in upstream.aiter_raw():
                out = translator.feed(chunk) if translator is not None else chunk
                if out:
                    last = out
                    yield out
            if translator is not None:
                tail = translator.close()
                if tail:
                    yield tail
        except httpx.HTTPError as exc:
            message = f"{self.cloud.host_label} broke off the answer ({describe_error(exc)})"
            yield tr.stream_error_tail(call.client_content_type, message, ended_mid_line=not last.endswith(b"\n"))
        finally:
            await upstream.aclose()

    async def _api_key(self) -> ApiKey | None:
        if self._key is None:
            self._key = await asyncio.to_thread(find_api_key, self.cloud, self.env, self.key_store)
        return self._key

    # -- metadata and everything else

    async def _metadata(self, request: Request, path: str) -> Response:
        dialect = dialect_of(path)
        body = await request.body()
        with self._lock:
            now = self.clock()
            skip_local = self.cloud.enabled and self.router.breaker.state(now) is not BreakerState.CLOSED
            permit = self.router.breaker.passive_permit(now)
        problem = f"Ollama is skipped after failing ({self.router.breaker.reason})"
        if not skip_local:
            try:
                upstream = await self._send_local(request, body, METADATA_TIMEOUT)
                response = await self._relay_local(upstream, None, METADATA_TIMEOUT)
            except BackendFailure as failure:
                problem = str(failure)
                if failure.refused and permit.allowed:
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
        if path == "/api/tags" and isinstance(value, dict) and isinstance(value.get("models"), list):
            self._local_models = [m for m in value["models"] if isinstance(m, dict)]
        elif path == "/api/version" and isinstance(value, dict) and value.get("version"):
            self._local_version = str(value["version"])

    def _synthesized(self, method: str, path: str, body: bytes) -> Response:
        """What the gateway answers for model lists while Ollama is down and the cloud is on."""
        stamp = self._timestamp()
        cloud_models = [m for m in (self.cloud.model, self.cloud.embedding_model) if m]
        local_names = model_names(self._local_models)
        tags = self._local_models + [tag_entry(m, stamp) for m in cloud_models if m not in local_names]
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
            found = next((e for e in entries if e["id"] == wanted), None)
            if found is None:
                return error_response(Dialect.OPENAI, 404, f"model '{wanted}' not found")
            return json_response(200, found, Backend.GATEWAY)
        return json_response(200, show_entry(_requested_model(body) or self.cloud.model, stamp), Backend.GATEWAY)

    async def _passthrough(self, request: Request, path: str) -> Response:
        dialect = dialect_of(path)
        length = request.headers.get("content-length")
        content: Any = (
            await request.body()
            if length is not None and length.isdigit() and int(length) <= BUFFER_LIMIT
            else request.stream()
        )
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
            restart = self.router.local_failed(route, self.clock(), str(failure), timed_out=failure.timed_out)
        if restart and self.request_restart is not None:
            log.warning("asking for a restart of Ollama: %s", failure)
            threading.Thread(target=self._call_restart, name="gateway-restart", daemon=True).start()
        self._announce_changes()

    def _call_restart(self) -> None:
        try:
            self.request_restart()  # type: ignore[misc]
        except Exception as exc:  # the gateway keeps serving whatever the supervisor says
            log.warning("could not ask for a restart of Ollama: %s", exc)

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
            self.history.record("cloud", notice.message, data)
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
        """Standalone health feed: ``GET /api/version`` every ``probe_interval`` seconds."""
        assert self._local is not None
        while True:
            try:
                response = await self._local.get(
                    self.local_url + "/api/version", timeout=httpx.Timeout(PROBE_TIMEOUT, connect=LOCAL_CONNECT_TIMEOUT)
                )
                health = LocalHealth.UP if response.status_code == 200 else LocalHealth.SLOW
                if response.status_code == 200:
                    self._remember("/api/version", response.content)
            except httpx.HTTPError:
                health = LocalHealth.DOWN
            self.observe_health(health)
            await asyncio.sleep(self.settings.probe_interval)


async def _read_some(response: httpx.Response, timeout: float, limit: int = 64 * 1024) -> bytes:
    """At most ``limit`` bytes of an error body, given at most ``timeout`` seconds."""
    data = b""

    async def read() -> None:
        nonlocal data
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) >= limit:
                return

    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        await asyncio.wait_for(read(), timeout)
    return data[:limit]


def _completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def _requested_model(body: bytes) -> str:
    try:
        value = json.loads(body) if body else {}
    except ValueError:
        return ""
    return str(value.get("model") or value.get("name") or "") if isinstance(value, dict) else ""


# --------------------------------------------------------------------------- the server


class GatewayServer:
    """Runs a :class:`Gateway` with uvicorn in a background thread, on a loopback socket."""

    def __init__(self, gateway: Gateway, port: int, host: str = "127.0.0.1") -> None:
        self.gateway = gateway
        self.host = host
        self.requested_port = port
        config = uvicorn.Config(
            gateway.asgi_app(),
            log_level="warning",
            access_log=False,
            lifespan="on",
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)  # off the main thread, uvicorn leaves signal handlers alone
        self._thread: threading.Thread | None = None
        self._on_stop: list[Callable[[], None]] = []
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when the server stops (e.g. to unsubscribe from the monitor)."""
        self._on_stop.append(callback)

    def start(self, timeout: float = 10.0) -> int:
        """Listen and serve; the port. OSError (one line) when the port cannot be had."""
        sock = socket.socket(
            socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
        )  # asyncio sets TCP_NODELAY only then
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.requested_port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise OSError(
                f"the gateway cannot listen on {self.host}:{self.requested_port} ({exc.strerror or exc})"
            ) from None
        self.port = int(sock.getsockname()[1])
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="gateway", daemon=True
        )
        self._thread.start()
        ready = threading.Event()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            ready.wait(0.02)
        if not self._server.started:
            self._server.should_exit = True
            raise OSError(f"the gateway did not start on {self.host}:{self.port}")
        return self.port

    def stop(self) -> None:
        for callback in self._on_stop:
            try:
                callback()
            except Exception as exc:  # stopping goes on regardless
                log.warning("gateway stop hook failed: %s", exc)
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
