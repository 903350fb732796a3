"""The one client of Ollama's HTTP API: the monitor's probes, the model builder's calls, the gateway's own lookups.

One error contract: every call that fails raises an :class:`~tray.ollama.errors.OllamaError`
saying whether nothing answered (refused, dropped), nothing answered in time,
Ollama answered with an error (its status and its own ``error`` text) or
something answered that is not Ollama. Every call has an explicit timeout.

The monitor's calls, which must never raise, give an explicit small result
instead: a :class:`~tray.core.health.ProbeResult`, ``None`` for "unknown", or
the error text; they catch the contract's error in one place each
(:func:`failure_of` maps it to the probe's :class:`~tray.core.health.Failure`).

The manager's own client, not the ``ollama`` package: that one sets its
timeout per client, not per call; raises ``ConnectionError`` with a download
hint for a refused connection and leaves timeouts as bare ``httpx`` errors;
has no ``HEAD /``, ``/api/version`` or blob check; and would bring pydantic
into the bundle.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import httpx

from tray.core.health import Failure, ProbeResult
from tray.core.text import describe_body, plain_line
from tray.ollama.errors import (
    OllamaAPIError,
    OllamaError,
    OllamaMalformed,
    OllamaTimeout,
    OllamaUnreachable,
)

OLLAMA_ROOT_TEXT = "Ollama is running"
STALE_CONNECTION = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)  # dropped before an answer
PROBE_PROMPT = "test"
NOT_OLLAMA = "not an Ollama answer"
NOT_A_CHAT = "not a chat answer"
UPLOAD_CHUNK_SIZE = 1024 * 1024

T = TypeVar("T")


@dataclass(frozen=True)
class LoadedModel:
    name: str
    size: int
    size_vram: int


@dataclass(frozen=True)
class InstalledModel:
    name: str
    size: int
    parameter_size: str | None
    quantization: str | None


@dataclass(frozen=True)
class Timeouts:
    """Seconds, for the calls that take no timeout of their own. ``stream`` bounds the silence between two
    progress lines of a pull/create."""

    connect: float = 5.0
    api: float = 30.0
    stream: float = 600.0
    inference: float = 300.0  # a cold model load from disk can take minutes


DEFAULT_TIMEOUTS = Timeouts()


def keep_alive_value(text: str) -> int | str | None:
    """A ``keep_alive`` for the API from the ``OLLAMA_KEEP_ALIVE`` form (plain seconds or a Go duration).

    Ollama reads a JSON number as seconds and a string as a Go duration only, so plain seconds go as a number.

    >>> keep_alive_value("5m"), keep_alive_value("-1"), keep_alive_value("3600"), keep_alive_value(" ")
    ('5m', -1, 3600, None)
    """
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def failure_of(error: OllamaError) -> Failure:
    """The probe's reading of a failed call.

    >>> failure_of(OllamaTimeout("x")), failure_of(OllamaMalformed("x")), failure_of(OllamaAPIError("x", 500))
    (<Failure.TIMEOUT: 'timeout'>, <Failure.BAD_RESPONSE: 'bad_response'>, <Failure.HTTP_ERROR: 'http_error'>)
    """
    if isinstance(error, OllamaTimeout):
        return Failure.TIMEOUT
    if isinstance(error, OllamaUnreachable):
        return Failure.REFUSED
    if isinstance(error, OllamaMalformed):
        return Failure.BAD_RESPONSE
    return Failure.HTTP_ERROR


def _short_digest(digest: str) -> str:
    """``sha256:<first 12 hex>``, as ``ollama list`` shows a digest.

    >>> _short_digest("sha256-" + "AB" * 32)
    'sha256:abababababab'
    """
    return digest.replace("sha256-", "sha256:", 1)[:19].lower()


def _answer_error(what: str, response: httpx.Response) -> OllamaAPIError:
    """A failed answer: Ollama's ``error`` text, else the body described (an HTML page by its title)."""
    status = response.status_code
    text = describe_body(response.text, response.headers.get("content-type", ""), status)
    try:
        body = json.loads(response.text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        text = plain_line(body["error"])
    return OllamaAPIError(
        f"{what} failed: {text or 'no details'} (HTTP {status})", status, what=what, detail=text or f"HTTP {status}"
    )


def tls_for(base_url: str) -> ssl.SSLContext | bool:
    """The ``verify`` of a client that only calls ``base_url``: httpx's own (the CA bundle) for an ``https`` server.

    httpx loads the whole CA bundle into every client's TLS context, whether or not its server speaks TLS:
    about 3 MiB held for good by a process that checks a plain-http Ollama. That server gets a bare client
    context instead, never used, which would refuse every certificate if it were.

    >>> tls_for("https://ollama.example.com")
    True
    >>> tls_for("http://127.0.0.1:11434").verify_mode == ssl.CERT_REQUIRED
    True
    """
    if urlsplit(base_url).scheme.lower() == "https":
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class OllamaClient:
    """A synchronous client for one Ollama base URL (``http://host:port``, IPv6 hosts in brackets).

    ``http`` is a caller's own ``httpx.Client`` (left open on :meth:`close`);
    otherwise the client makes one, with no proxies (the manager talks to
    its own server) and connections kept open between checks however far
    apart they are (Ollama closes no idle connection): a check is its requests.
    """

    def __init__(
        self,
        base_url: str,
        transport: httpx.BaseTransport | None = None,
        *,
        http: httpx.Client | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts
        self._own_http = http is None
        self._http = http or httpx.Client(
            transport=transport,
            trust_env=False,
            verify=tls_for(self.base_url),
            timeout=httpx.Timeout(timeouts.api, connect=timeouts.connect),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=None),
        )

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the contract

    def _timeout(self, read: float) -> httpx.Timeout:
        return httpx.Timeout(read, connect=self.timeouts.connect)

    def _transport_error(self, what: str, exc: httpx.HTTPError) -> OllamaError:
        reason = plain_line(str(exc)) or type(exc).__name__
        if isinstance(exc, httpx.ConnectError):
            message = f"cannot reach Ollama at {self.base_url} ({what}): {reason}"
            return OllamaUnreachable(message, what=what, detail="connection refused")
        if isinstance(exc, httpx.TimeoutException):
            message = f"Ollama at {self.base_url} stopped answering during {what}"
            return OllamaTimeout(message, what=what, detail="no answer in time")
        if isinstance(exc, STALE_CONNECTION):
            message = f"connection to Ollama lost during {what}: {reason}"
            return OllamaUnreachable(message, what=what, detail="connection dropped")
        if isinstance(exc, httpx.TransportError):
            return OllamaUnreachable(f"connection to Ollama lost during {what}: {reason}", what=what, detail=reason)
        return OllamaMalformed(f"{what}: Ollama's answer could not be read: {reason}", 0, what=what, detail=reason)

    def _send(
        self,
        method: str,
        path: str,
        what: str,
        *,
        timeout: float | httpx.Timeout | None = None,
        retry_stale: bool = False,
        check: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request; an error status raises unless ``check`` is off (a HEAD's answer has no body to tell)."""
        url = self.base_url + path
        timeout = self._timeout(self.timeouts.api) if timeout is None else timeout
        try:
            try:
                response = self._http.request(method, url, timeout=timeout, **kwargs)
            except STALE_CONNECTION:
                if not retry_stale:
                    raise
                # The kept-alive connection was closed under the request (a server restarted since the last
                # check, a proxy's idle limit): only a fresh connection says whether the server is gone.
                response = self._http.request(method, url, timeout=timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise self._transport_error(what, exc) from None
        if check and response.status_code >= 400:
            raise _answer_error(what, response)
        return response

    @staticmethod
    def _json(response: httpx.Response, what: str, detail: str = NOT_OLLAMA) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            message = f"{what}: Ollama sent something that is not JSON"
            raise OllamaMalformed(message, response.status_code, what=what, detail=detail) from None
        if not isinstance(body, dict):
            message = f"{what}: unexpected answer from Ollama"
            raise OllamaMalformed(message, response.status_code, what=what, detail=detail)
        return body

    def _stream(self, path: str, payload: dict[str, Any], what: str) -> Iterator[dict[str, Any]]:
        """POST and yield each NDJSON object; a streamed ``{"error": ...}`` raises."""
        try:
            with self._http.stream(
                "POST", self.base_url + path, json=payload, timeout=self._timeout(self.timeouts.stream)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _answer_error(what, response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        item = json.loads(line)
                    except ValueError:
                        message = f"{what}: Ollama sent a line that is not JSON"
                        raise OllamaMalformed(message, 200, what=what, detail=NOT_OLLAMA) from None
                    if isinstance(item, dict) and item.get("error"):
                        status = item.get("status")
                        detail = plain_line(str(item["error"])) or "no details"
                        status = status if isinstance(status, int) else 200
                        raise OllamaAPIError(f"{what} failed: {detail}", status, what=what, detail=detail)
                    if isinstance(item, dict):
                        yield item
        except httpx.HTTPError as exc:
            raise self._transport_error(what, exc) from None

    @staticmethod
    def _until_success(items: Iterator[dict[str, Any]], what: str) -> Iterator[dict[str, Any]]:
        finished = False
        for item in items:
            finished = finished or str(item.get("status", "")) == "success"
            yield item
        if not finished:
            detail = "the stream ended before 'success'"
            raise OllamaAPIError(f"{what} failed: {detail}", 200, what=what, detail=detail)

    # -- calls that raise OllamaError

    def version(self, timeout: float = 2.0) -> str:
        """``/api/version``: the server's version (answered without the scheduler, so fast while it works)."""
        what = "asking the version"
        version = self._json(self._send("GET", "/api/version", what, timeout=timeout), what).get("version")
        if not isinstance(version, str):
            raise OllamaMalformed(f"{what}: unexpected answer from Ollama", 200, what=what, detail=NOT_OLLAMA)
        return version

    def tags(self, timeout: float | None = None, *, retry_stale: bool = False) -> list[dict[str, Any]]:
        """The installed models, as ``/api/tags`` lists them; an answer without a model list is not Ollama's."""
        what = "listing models"
        response = self._send("GET", "/api/tags", what, timeout=timeout, retry_stale=retry_stale)
        models = self._json(response, what).get("models")
        if not isinstance(models, list):
            raise OllamaMalformed(f"{what}: unexpected answer from Ollama", 200, what=what, detail=NOT_OLLAMA)
        return [item for item in models if isinstance(item, dict)]

    def running(self, timeout: float) -> list[LoadedModel]:
        """``/api/ps``: the models in memory, with their total and GPU bytes."""
        what = "listing loaded models"
        models = self._json(self._send("GET", "/api/ps", what, timeout=timeout), what).get("models")
        if not isinstance(models, list):
            raise OllamaMalformed(f"{what}: unexpected answer from Ollama", 200, what=what, detail=NOT_OLLAMA)
        try:
            return [LoadedModel(m["name"], int(m.get("size", 0)), int(m.get("size_vram", 0))) for m in models]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise OllamaMalformed(f"{what}: unexpected answer from Ollama", 200, what=what, detail=NOT_OLLAMA) from None

    def show(self, model: str) -> dict[str, Any]:
        """``/api/show``: details, model_info, template, parameters of an installed model."""
        what = f"show {model}"
        return self._json(self._send("POST", "/api/show", what, json={"model": model}), what)

    def pull(self, model: str) -> Iterator[dict[str, Any]]:
        """Pull a model: its progress lines as Ollama sends them; raise unless they end in ``success``."""
        what = f"pull {model}"
        return self._until_success(self._stream("/api/pull", {"model": model, "stream": True}, what), what)

    def has_blob(self, digest: str) -> bool:
        """Whether the server already holds the blob (``HEAD /api/blobs/<digest>``)."""
        what = f"checking blob {_short_digest(digest)}"
        response = self._send("HEAD", f"/api/blobs/{digest}", what, check=False)
        if response.status_code in (200, 404):
            return response.status_code == 200
        status = response.status_code
        raise OllamaAPIError(f"{what} failed (HTTP {status})", status, what=what, detail=f"HTTP {status}")

    def upload_blob(self, digest: str, path: Path, sent: Callable[[int, int], None]) -> None:
        """Send a local file to ``POST /api/blobs/<digest>``; Ollama hashes it and rejects a mismatch.

        ``sent(done, size)`` is called with the bytes handed over so far, from 0 on.
        """
        size = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            done = 0
            sent(0, size)
            with open(path, "rb") as handle:
                while chunk := handle.read(UPLOAD_CHUNK_SIZE):
                    done += len(chunk)
                    sent(done, size)
                    yield chunk

        self._send(
            "POST",
            f"/api/blobs/{digest}",
            f"upload of {path}",
            timeout=self._timeout(self.timeouts.stream),
            content=chunks(),
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
        )

    def create(self, request: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """POST ``/api/create``: its progress lines as Ollama sends them; raise unless they end in ``success``."""
        what = f"create {request.get('model')}"
        return self._until_success(self._stream("/api/create", dict(request, stream=True), what), what)

    def chat_test(self, model: str, timeout: float | None = None) -> dict[str, Any]:
        """The design notes' test inference: prompt ``test``, one output token, not streamed.

        It sends no runner options (``num_ctx``, ``num_gpu`` … make Ollama
        reload a loaded model) and no ``keep_alive`` (the loaded runner keeps
        its own). On a timeout the connection is closed, which cancels the
        request in Ollama and takes it out of the model's queue.
        """
        payload = {
            "model": model,
            "messages": [{"role": "user", "content": PROBE_PROMPT}],
            "stream": False,
            "options": {"num_predict": 1},
        }
        what = f"test inference with {model}"
        limit = self._timeout(self.timeouts.inference) if timeout is None else timeout
        body = self._json(self._send("POST", "/api/chat", what, json=payload, timeout=limit), what, NOT_A_CHAT)
        if "error" in body:
            detail = plain_line(str(body["error"])) or "no details"
            raise OllamaAPIError(f"{what} failed: {detail}", 200, what=what, detail=detail)
        if not isinstance(body.get("message"), dict) or body.get("done") is not True:
            raise OllamaMalformed(f"{what}: the answer has no message", 200, what=what, detail=NOT_A_CHAT)
        return body

    def delete(self, model: str) -> None:
        """Remove a model; Ollama deletes the blobs no other model uses."""
        self._send("DELETE", "/api/delete", f"delete {model}", json={"model": model})

    def load(self, model: str, keep_alive: int | str | None, timeout: float) -> None:
        """Load ``model`` into memory without generating (an empty prompt).

        ``keep_alive`` None leaves the server's own default in effect.
        """
        body: dict[str, Any] = {"model": model, "stream": False}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        what = f"loading {model}"
        answer = self._json(self._send("POST", "/api/generate", what, json=body, timeout=timeout), what)
        if answer.get("done") is not True:
            raise OllamaMalformed(f"{what}: unexpected answer from Ollama", 200, what=what, detail=NOT_OLLAMA)

    def evict(self, model: str, timeout: float = 30.0) -> None:
        """Ask Ollama to unload ``model`` now (keep_alive 0)."""
        body = {"model": model, "keep_alive": 0, "stream": False}
        self._send("POST", "/api/generate", f"unloading {model}", json=body, timeout=timeout)

    # -- the monitor's calls: an explicit small result, never an exception

    def answers_as_ollama(self, timeout: float = 2.0) -> bool | None:
        """True: Ollama answers; False: something else answers; None: nothing answers."""
        try:
            response = self._send("GET", "/", "checking who answers", timeout=timeout, check=False)
        except OllamaTimeout:
            return False  # something accepted the connection but does not speak HTTP like Ollama
        except OllamaUnreachable:
            return None
        except OllamaError:
            return False
        return response.status_code == 200 and response.text.strip() == OLLAMA_ROOT_TEXT

    def loaded_models(self, timeout: float = 5.0) -> list[LoadedModel] | None:
        """``/api/ps``' models; None when Ollama does not answer them."""
        return or_none(lambda: self.running(timeout))

    def installed_models(self, timeout: float = 5.0) -> list[InstalledModel] | None:
        """``/api/tags``' models with their size, parameters and quantization; None when Ollama does not answer."""
        entries = or_none(lambda: self.tags(timeout))
        if entries is None:
            return None
        models = []
        for entry in entries:
            details = entry.get("details")
            details = details if isinstance(details, dict) else {}
            name, size = entry.get("name"), entry.get("size")
            if not isinstance(name, str):
                continue
            parameters, quantization = details.get("parameter_size"), details.get("quantization_level")
            models.append(
                InstalledModel(
                    name,
                    size if isinstance(size, int) else 0,
                    parameters if isinstance(parameters, str) and parameters else None,
                    quantization if isinstance(quantization, str) and quantization else None,
                )
            )
        return models

    def preload(self, model: str, keep_alive: int | str | None, timeout: float) -> str | None:
        """Load ``model`` without generating; the error text, or None once loaded."""
        return _error_text(lambda: self.load(model, keep_alive, timeout))

    def unload(self, model: str, timeout: float = 30.0) -> str | None:
        """Unload ``model`` now; the error text, or None on success."""
        return _error_text(lambda: self.evict(model, timeout))

    def probe_api(self, timeout: float) -> tuple[ProbeResult, set[str] | None]:
        """Liveness from the HTTP layer, and the model names: one GET /api/tags.

        Ollama answers it without its scheduler, so it stays fast while a
        model generates; it stops only when the whole server is stuck. An
        answer that is not Ollama's model list (another program on the port)
        is a bad response. Over the client's kept-alive connection this is
        one round trip per check.
        """
        result, entries = _probe("api", lambda: self.tags(timeout, retry_stale=True))
        if entries is None:
            return result, None
        return result, {m["name"] for m in entries if isinstance(m.get("name"), str)}

    def ping(self, timeout: float) -> ProbeResult:
        """GET /api/version: does the server's HTTP layer answer, and how fast."""
        return _probe("api", lambda: self.version(timeout))[0]

    def probe_inference(self, model: str, timeout: float) -> ProbeResult:
        """The test inference (:meth:`chat_test`) as a probe: a 404 is the model's trouble, not the server's."""
        result, body = _probe("inference", lambda: self.chat_test(model, timeout))
        if body is None:
            return result
        load_seconds = float(body.get("load_duration", 0)) / 1e9
        return ProbeResult(True, result.latency, "inference", load_seconds=load_seconds)


def or_none(call: Callable[[], T]) -> T | None:
    """``call()``, or None when Ollama does not give its answer."""
    try:
        return call()
    except OllamaError:
        return None


def _error_text(call: Callable[[], object]) -> str | None:
    """None when ``call()`` went through, else what went wrong, as one short line."""
    try:
        call()
    except OllamaError as error:
        return error.detail
    return None


def _probe(kind: str, call: Callable[[], T]) -> tuple[ProbeResult, T | None]:
    """Time ``call()``: a good probe result and its value, or the failure and None."""
    started = time.monotonic()
    try:
        value = call()
    except OllamaError as error:
        failure = Failure.MODEL_ERROR if kind == "inference" and error.status == 404 else failure_of(error)
        return ProbeResult(False, time.monotonic() - started, kind, failure, error.detail), None
    return ProbeResult(True, time.monotonic() - started, kind), value
