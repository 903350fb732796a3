"""``chat(messages, ...)``: the design notes' call, with the gateway's routing, in-process.

For Python callers that want the local model with the cloud as a safety
net without running the gateway::

    from tray.gateway.client import chat
    reply = chat([{"role": "user", "content": "test"}])
    print(reply.content, reply.backend)   # "...", Backend.LOCAL

The answer is always in Ollama's ``/api/chat`` format, whoever served it.
Routing is the gateway's (:class:`~tray.gateway.breaker.Router`): Ollama
first; the cloud (when ``[cloud] enabled``) if Ollama refuses the
connection or answers 5xx, or if a streamed chat with a loaded model and
nothing ahead of it gets no first byte within ``first_byte_timeout``;
Ollama skipped for a while after repeated failures. A whole (non-streamed)
answer, a model load or a chat queued behind another of this client waits
up to ``local_timeout`` and is never sent to the cloud for being slow. A
stream that has started is never switched. Failures raise
:class:`ChatError` (one line); ``report_problem(why)`` hears about them.

Known limit: httpx has one read timeout per request, so here the
first-byte budget also bounds each pause inside a streamed answer.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

import httpx

from tray.core.names import model_key
from tray.gateway import translate as tr
from tray.gateway.breaker import (
    Backend,
    BreakerPolicy,
    Budget,
    CircuitBreaker,
    FailureKind,
    FallbackWindow,
    LoadedModels,
    Route,
    Router,
    Target,
    Throttle,
    choose_budget,
)
from tray.gateway.cloud import (
    CONNECT_TIMEOUT,
    ApiKey,
    KeyStore,
    NotServed,
    SystemKeyStore,
    describe_error,
    find_api_key,
    plan_cloud_call,
    provider_error,
    request_headers,
)
from tray.ollama.client import OllamaClient, Timeouts
from tray.ollama.errors import OllamaError
from tray.settings.gateway import CloudSettings, GatewaySettings

LOCAL_CONNECT_TIMEOUT = 2.0
PS_TIMEOUT = 1.0
LOADED_TTL = 5.0
REPORT_INTERVAL = 5.0


class ChatError(Exception):
    """Neither Ollama nor the cloud answered; ``str()`` is one line."""


@dataclass(frozen=True)
class ChatReply:
    """A whole answer: Ollama's final ``/api/chat`` object and who served it."""

    response: dict[str, Any]
    backend: Backend

    @property
    def message(self) -> dict[str, Any]:
        return dict(self.response.get("message") or {})

    @property
    def content(self) -> str:
        return str(self.message.get("content") or "")


class ChatStream:
    """A streamed answer: iterate for Ollama ``/api/chat`` chunks; ``backend`` is known up front."""

    def __init__(self, chunks: Iterator[dict[str, Any]], backend: Backend, close: Callable[[], None]) -> None:
        self.backend = backend
        self._chunks = chunks
        self._close = close

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            yield from self._chunks
        finally:
            self._close()

    def close(self) -> None:
        self._close()


class _Failure(Exception):
    def __init__(self, message: str, kind: FailureKind) -> None:
        super().__init__(message)
        self.kind = kind


class LocalFirstChat:
    """Chat with Ollama, falling back to the cloud, with the gateway's routing policy."""

    def __init__(
        self,
        *,
        local_url: str,
        model: str,
        cloud: CloudSettings,
        settings: GatewaySettings | None = None,
        env: Mapping[str, str] | None = None,
        key_store: KeyStore | None = None,
        report_problem: Callable[[str], None] | None = None,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.local_url = local_url.rstrip("/")
        self.model = model
        self.cloud = cloud
        self.settings = settings or GatewaySettings()
        self.env = os.environ if env is None else env
        self.key_store = key_store if key_store is not None else SystemKeyStore()
        self.report_problem = report_problem
        self.http = http or httpx.Client(trust_env=False)
        self._cloud_http = http or httpx.Client()
        self._ollama = OllamaClient(self.local_url, http=self.http, timeouts=Timeouts(connect=LOCAL_CONNECT_TIMEOUT))
        self.clock = clock
        self.wall_clock = wall_clock
        policy = BreakerPolicy(
            failure_threshold=self.settings.breaker_failures,
            open_seconds=self.settings.breaker_open_seconds,
            max_open_seconds=self.settings.breaker_max_open_seconds,
        )
        self.router = Router(
            cloud_enabled=cloud.enabled,
            breaker=CircuitBreaker(policy),
            window=FallbackWindow(self.settings.fallback_window_seconds),
        )
        self._lock = threading.Lock()
        self._key: ApiKey | None = None
        self._loaded = LoadedModels(LOADED_TTL)
        self._in_flight: dict[str, int] = {}  # model key -> chats of this client not finished
        self._reports = Throttle(REPORT_INTERVAL)

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> LocalFirstChat:
        """A client for the app's settings (``Config``)."""
        return cls(
            local_url=config.host.url,
            model=config.model_in_use,
            cloud=getattr(config, "cloud", CloudSettings()),
            settings=getattr(config, "gateway", GatewaySettings()),
            **kwargs,
        )

    def close(self) -> None:
        self.http.close()
        self._cloud_http.close()

    @overload
    def chat(
        self,
        messages: Iterable[Mapping[str, Any]],
        *,
        model: str | None = None,
        stream: Literal[False] = False,
        options: Mapping[str, Any] | None = None,
        tools: list[Any] | None = None,
        format: str | dict[str, Any] | None = None,
        keep_alive: str | float | None = None,
    ) -> ChatReply: ...

    @overload
    def chat(
        self,
        messages: Iterable[Mapping[str, Any]],
        *,
        model: str | None = None,
        stream: Literal[True],
        options: Mapping[str, Any] | None = None,
        tools: list[Any] | None = None,
        format: str | dict[str, Any] | None = None,
        keep_alive: str | float | None = None,
    ) -> ChatStream: ...

    def chat(
        self,
        messages: Iterable[Mapping[str, Any]],
        *,
        model: str | None = None,
        stream: bool = False,
        options: Mapping[str, Any] | None = None,
        tools: list[Any] | None = None,
        format: str | dict[str, Any] | None = None,  # noqa: A002 - Ollama's field name
        keep_alive: str | float | None = None,
    ) -> ChatReply | ChatStream:
        """Answer ``messages`` (Ollama's chat format); a :class:`ChatStream` when ``stream``."""
        body: dict[str, Any] = {"model": model or self.model, "messages": [dict(m) for m in messages], "stream": stream}
        extras = {"options": options, "tools": tools, "format": format, "keep_alive": keep_alive}
        body.update({key: value for key, value in extras.items() if value is not None})
        with self._lock:
            route = self.router.route(self.clock())
        if route.target is Target.REFUSE:
            raise ChatError(
                f"Ollama is skipped after failing ({self.router.breaker.reason}); the cloud fallback is off"
            )
        if route.target is Target.CLOUD:
            return self._from_cloud(body, f"Ollama is skipped after failing ({self.router.breaker.reason})")
        model = model_key(str(body["model"]))
        budget = self._budget(model, stream)
        with self._lock:
            self._in_flight[model] = self._in_flight.get(model, 0) + 1
        handed_over = False
        try:
            reply = self._from_local(body, route, budget, lambda: self._done(model))
            handed_over = isinstance(reply, ChatStream)
            return reply
        except _Failure as failure:
            self._local_failed(route, failure)
            if not (failure.kind.cloud_may_answer and self.cloud.enabled):
                suffix = "; the cloud fallback is off" if failure.kind.cloud_may_answer else ""
                raise ChatError(f"{failure}{suffix}") from None
            return self._from_cloud(body, str(failure))
        finally:
            if not handed_over:
                self._done(model)

    # -- Ollama

    def _budget(self, model: str, stream: bool) -> Budget:
        """The first-byte budget of a chat (see :func:`~tray.gateway.breaker.choose_budget`)."""
        with self._lock:
            queued = self._in_flight.get(model, 0) > 0
            loaded = self._loaded.is_loaded(model, self.clock())
        if stream and not queued and loaded is None:
            loaded = self._look_up_loaded(model)
        return choose_budget(streamed=stream, loaded=bool(loaded), queued=queued)

    def _look_up_loaded(self, model: str) -> bool:
        try:
            names: list[str] | None = [entry.name for entry in self._ollama.running(PS_TIMEOUT)]
        except OllamaError:
            names = None
        with self._lock:
            if names is not None:
                self._loaded.saw_list(names, self.clock())
            return bool(self._loaded.is_loaded(model, self.clock()))

    def _done(self, model: str) -> None:
        with self._lock:
            left = self._in_flight.get(model, 0) - 1
            if left > 0:
                self._in_flight[model] = left
            else:
                self._in_flight.pop(model, None)

    def _from_local(
        self, body: dict[str, Any], route: Route, budget: Budget, done: Callable[[], None]
    ) -> ChatReply | ChatStream:
        fall_back = budget is Budget.FIRST_BYTE and self.cloud.enabled
        wait = self.settings.first_byte_timeout if fall_back else self.settings.local_timeout
        timeout = httpx.Timeout(connect=LOCAL_CONNECT_TIMEOUT, read=wait, write=wait, pool=wait)
        request = self.http.build_request("POST", self.local_url + "/api/chat", json=body, timeout=timeout)
        try:
            response = self.http.send(request, stream=True)
        except httpx.ConnectError as exc:
            raise _Failure(
                f"Ollama is not reachable at {self.local_url} ({describe_error(exc)})", FailureKind.REFUSED
            ) from None
        except httpx.TimeoutException:
            kind = FailureKind.FIRST_BYTE if fall_back else FailureKind.NO_ANSWER
            raise _Failure(f"Ollama sent nothing for {wait:g} s", kind) from None
        except httpx.HTTPError as exc:
            raise _Failure(f"Ollama failed: {describe_error(exc)}", FailureKind.BROKEN) from None
        if response.status_code >= 500 and self.cloud.enabled:
            detail = tr.error_message(_read(response))
            raise _Failure(f"Ollama answered {response.status_code}: {detail}", FailureKind.BROKEN)
        with self._lock:
            if response.status_code < 500:
                self.router.local_succeeded(route, self.clock())
            if response.status_code == 200:
                self._loaded.saw_answer(str(body["model"]), self.clock())
            self.router.served(Backend.LOCAL, self.clock())
        if response.status_code >= 400:
            raise ChatError(f"Ollama answered {response.status_code}: {tr.error_message(_read(response))}")
        if not body["stream"]:
            try:
                return ChatReply(json.loads(_read(response, limit=None)), Backend.LOCAL)
            except (ValueError, httpx.HTTPError) as exc:
                raise _Failure(f"Ollama broke off its answer ({describe_error(exc)})", FailureKind.STALLED) from None

        finished = threading.Event()

        def close() -> None:
            response.close()
            if not finished.is_set():
                finished.set()
                done()

        return ChatStream(self._local_chunks(response, route), Backend.LOCAL, close)

    def _local_chunks(self, response: httpx.Response, route: Route) -> Iterator[dict[str, Any]]:
        try:
            for line in response.iter_lines():
                if line.strip():
                    yield _chunk(line)
        except httpx.HTTPError as exc:
            failure = _Failure(f"Ollama broke off the answer ({describe_error(exc)})", FailureKind.STALLED)
            self._local_failed(route, failure)
            raise ChatError(str(failure)) from None
        finally:
            response.close()

    def _local_failed(self, route: Route, failure: _Failure) -> None:
        with self._lock:
            self.router.local_failed(route, self.clock(), str(failure), failure.kind)
            report = failure.kind.worth_reporting and self._reports.allow(self.clock())
        if report and self.report_problem is not None:
            threading.Thread(target=self.report_problem, args=(str(failure),), name="chat-report", daemon=True).start()

    # -- the cloud

    def _from_cloud(self, body: dict[str, Any], problem: str) -> ChatReply | ChatStream:
        if not self.cloud.enabled:
            raise ChatError(f"{problem}; the cloud fallback is off")
        try:
            call = plan_cloud_call(self.cloud, "/api/chat", body)
        except NotServed as exc:
            raise ChatError(f"{problem}; {exc}") from None
        if self._key is None:
            self._key = find_api_key(self.cloud, self.env, self.key_store)
        timeout = httpx.Timeout(
            connect=CONNECT_TIMEOUT, read=self.cloud.timeout, write=self.cloud.timeout, pool=self.cloud.timeout
        )
        request = self._cloud_http.build_request(
            "POST", self.cloud.url + call.path, json=call.body, headers=request_headers(self._key), timeout=timeout
        )
        try:
            response = self._cloud_http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise ChatError(
                f"{problem}, and the cloud fallback failed: "
                f"cannot reach {self.cloud.host_label} ({describe_error(exc)})"
            ) from None
        if response.status_code >= 400:
            if response.status_code in (401, 403):
                self._key = None
            detail = provider_error(self.cloud, response.status_code, _read(response))
            raise ChatError(f"{problem}, and the cloud fallback failed: {detail}")
        with self._lock:
            self.router.served(Backend.CLOUD, self.clock())
        stamp = tr.rfc3339_nano(self.wall_clock())
        if not call.stream:
            try:
                answer = json.loads(_read(response, limit=None))
            except (ValueError, httpx.HTTPError) as exc:
                raise ChatError(f"{problem}, and the cloud fallback failed: {describe_error(exc)}") from None
            return ChatReply(call.translate_body(answer, stamp, "", int(self.wall_clock())), Backend.CLOUD)
        return ChatStream(self._cloud_chunks(response, call), Backend.CLOUD, response.close)

    def _cloud_chunks(self, response: httpx.Response, call: Any) -> Iterator[dict[str, Any]]:
        translator = call.stream_translator(lambda: tr.rfc3339_nano(self.wall_clock()), "", int(self.wall_clock()))
        lines = tr.LineSplitter()
        try:
            for raw in response.iter_raw():
                data = translator.feed(raw) if translator is not None else raw
                yield from (_chunk(line) for line in lines.feed(data) if line.strip())
            tail = translator.close() if translator is not None else b""
            yield from (_chunk(line) for line in lines.feed(tail) + lines.close() if line.strip())
        except httpx.HTTPError as exc:
            raise ChatError(f"{self.cloud.host_label} broke off the answer ({describe_error(exc)})") from None
        finally:
            response.close()


def _chunk(line: bytes | str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        raise ChatError("the answer stream held a line that is not JSON") from None
    if isinstance(value, dict) and "error" in value:
        raise ChatError(tr.error_message(value))
    return value if isinstance(value, dict) else {}


def _read(response: httpx.Response, limit: int | None = 64 * 1024) -> bytes:
    try:
        data = response.read()
    except httpx.HTTPError:
        data = b""
    finally:
        response.close()
    return data if limit is None else data[:limit]


_default: LocalFirstChat | None = None
_default_lock = threading.Lock()


def default_client() -> LocalFirstChat:
    """The process-wide client for the app's settings, created on first use."""
    global _default  # noqa: PLW0603 - one client per process, made on first use
    with _default_lock:
        if _default is None:
            from tray.settings.config import load_config
            from tray.system.paths import AppPaths

            _default = LocalFirstChat.from_config(load_config(paths=AppPaths.default()))
        return _default


@overload
def chat(
    messages: Iterable[Mapping[str, Any]],
    *,
    model: str | None = None,
    stream: Literal[False] = False,
    options: Mapping[str, Any] | None = None,
    tools: list[Any] | None = None,
    format: str | dict[str, Any] | None = None,
    client: LocalFirstChat | None = None,
) -> ChatReply: ...


@overload
def chat(
    messages: Iterable[Mapping[str, Any]],
    *,
    model: str | None = None,
    stream: Literal[True],
    options: Mapping[str, Any] | None = None,
    tools: list[Any] | None = None,
    format: str | dict[str, Any] | None = None,
    client: LocalFirstChat | None = None,
) -> ChatStream: ...


def chat(
    messages: Iterable[Mapping[str, Any]],
    *,
    model: str | None = None,
    stream: bool = False,
    options: Mapping[str, Any] | None = None,
    tools: list[Any] | None = None,
    format: str | dict[str, Any] | None = None,  # noqa: A002 - Ollama's field name
    client: LocalFirstChat | None = None,
) -> ChatReply | ChatStream:
    """Chat with the local model, the cloud fallback taking over when Ollama fails.

    ``model`` defaults to the active model (``active_model``, else ``ollama_model``); ``client`` to
    :func:`default_client`. Raises :class:`ChatError` when nobody answers.
    """
    chosen = client or default_client()
    if stream:
        return chosen.chat(messages, model=model, stream=True, options=options, tools=tools, format=format)
    return chosen.chat(messages, model=model, options=options, tools=tools, format=format)
