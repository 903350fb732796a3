"""The few Ollama API calls the supervisor needs, turned into probe results.

Every call has an explicit timeout and never raises for network trouble:
the outcome is a :class:`~tray.core.health.ProbeResult` or ``None``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx

from tray.core.health import Failure, ProbeResult
from tray.core.text import describe_body, plain_line
from tray.ollama.errors import OllamaAPIError, OllamaError, OllamaUnreachable

OLLAMA_ROOT_TEXT = "Ollama is running"
STALE_CONNECTION = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)  # dropped before an answer
PROBE_PROMPT = "test"


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


def _failure_of(exc: Exception) -> tuple[Failure, str]:
    if isinstance(exc, httpx.TimeoutException):
        return Failure.TIMEOUT, "no answer in time"
    if isinstance(exc, httpx.ConnectError):
        return Failure.REFUSED, "connection refused"
    if isinstance(exc, STALE_CONNECTION):
        return Failure.REFUSED, "connection dropped"
    return Failure.BAD_RESPONSE, str(exc) or type(exc).__name__


def _error_text(response: httpx.Response) -> str:
    """One plain line for a failed answer: Ollama's ``error``, else the body described (an HTML page by its title)."""
    try:
        body = response.json()
    except ValueError:
        text = describe_body(response.text, response.headers.get("content-type", ""), response.status_code)
        return text or f"HTTP {response.status_code}"
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return plain_line(body["error"]) or f"HTTP {response.status_code}"
    return f"HTTP {response.status_code}"


class OllamaClient:
    """A small synchronous client for one Ollama base URL."""

    def __init__(self, base_url: str, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        # No proxies: the manager only ever talks to its own local server. Its connection stays open between
        # checks however far apart they are (Ollama's server closes no idle connection): a check is its requests.
        self._http = httpx.Client(
            base_url=self.base_url,
            transport=transport,
            trust_env=False,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=None),
        )

    def close(self) -> None:
        self._http.close()

    def answers_as_ollama(self, timeout: float = 2.0) -> bool | None:
        """True: Ollama answers; False: something else answers; None: nothing answers."""
        try:
            response = self._http.get("/", timeout=timeout)
        except httpx.TimeoutException:
            return False  # something accepted the connection but does not speak HTTP like Ollama
        except httpx.HTTPError:
            return None
        return response.status_code == 200 and response.text.strip() == OLLAMA_ROOT_TEXT

    def version(self, timeout: float = 2.0) -> str | None:
        try:
            response = self._http.get("/api/version", timeout=timeout)
            response.raise_for_status()
            return str(response.json().get("version"))
        except (httpx.HTTPError, ValueError, AttributeError):
            return None

    def model_names(self, timeout: float = 5.0) -> set[str] | None:
        try:
            response = self._http.get("/api/tags", timeout=timeout)
            response.raise_for_status()
            return {m["name"] for m in response.json().get("models", [])}
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def loaded_models(self, timeout: float = 5.0) -> list[LoadedModel] | None:
        try:
            response = self._http.get("/api/ps", timeout=timeout)
            response.raise_for_status()
            return [
                LoadedModel(m["name"], int(m.get("size", 0)), int(m.get("size_vram", 0)))
                for m in response.json().get("models", [])
            ]
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def installed_models(self, timeout: float = 5.0) -> list[InstalledModel] | None:
        """``/api/tags``' models with their size, parameters and quantization; None when Ollama does not answer."""
        entries = self.tags(timeout)
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
        """Load ``model`` into memory without generating (an empty prompt); the error text, or None once loaded.

        ``keep_alive`` None leaves the server's own default in effect.
        """
        body: dict[str, Any] = {"model": model, "stream": False}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        try:
            response = self._http.post("/api/generate", json=body, timeout=timeout)
        except httpx.HTTPError as exc:
            return _failure_of(exc)[1]
        if response.status_code != 200:
            return _error_text(response)
        try:
            done = response.json().get("done") is True
        except (ValueError, AttributeError):
            done = False
        return None if done else "not an Ollama answer"

    def unload(self, model: str, timeout: float = 30.0) -> str | None:
        """Ask Ollama to unload ``model`` now (keep_alive 0); the error text, or None on success."""
        try:
            response = self._http.post(
                "/api/generate", json={"model": model, "keep_alive": 0, "stream": False}, timeout=timeout
            )
        except httpx.HTTPError as exc:
            return _failure_of(exc)[1]
        return None if response.status_code == 200 else _error_text(response)

    def probe_api(self, timeout: float) -> tuple[ProbeResult, set[str] | None]:
        """Liveness from the HTTP layer, and the model names: one GET /api/tags.

        Ollama answers it without its scheduler, so it stays fast while a
        model generates; it stops only when the whole server is stuck. An
        answer that is not Ollama's model list (another program on the port)
        is a bad response. Over the client's kept-alive connection this is
        one round trip per check.
        """
        started = time.monotonic()
        try:
            try:
                response = self._http.get("/api/tags", timeout=timeout)
            except STALE_CONNECTION:
                # The kept-alive connection was closed under the request (a server restarted since the last
                # check, a proxy's idle limit): only a fresh connection says whether the server is gone.
                started = time.monotonic()
                response = self._http.get("/api/tags", timeout=timeout)
        except httpx.HTTPError as exc:
            failure, detail = _failure_of(exc)
            return ProbeResult(False, time.monotonic() - started, "api", failure, detail), None
        latency = time.monotonic() - started
        if response.status_code != 200:
            return ProbeResult(False, latency, "api", Failure.HTTP_ERROR, _error_text(response)), None
        try:
            names = {m["name"] for m in response.json()["models"]}
        except (ValueError, KeyError, TypeError):
            return ProbeResult(False, latency, "api", Failure.BAD_RESPONSE, "not an Ollama answer"), None
        return ProbeResult(True, latency, "api"), names

    def tags(self, timeout: float = 5.0) -> list[dict[str, Any]] | None:
        """``/api/tags``' model entries (name, digest, ...); None when Ollama does not answer them."""
        try:
            response = self._http.get("/api/tags", timeout=timeout)
            models = response.json().get("models") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else None

    def ping(self, timeout: float) -> ProbeResult:
        """GET /api/version: does the server's HTTP layer answer, and how fast."""
        started = time.monotonic()
        try:
            response = self._http.get("/api/version", timeout=timeout)
        except httpx.HTTPError as exc:
            failure, detail = _failure_of(exc)
            return ProbeResult(False, time.monotonic() - started, "api", failure, detail)
        latency = time.monotonic() - started
        if response.status_code != 200:
            return ProbeResult(False, latency, "api", Failure.HTTP_ERROR, _error_text(response))
        try:
            valid = isinstance(response.json().get("version"), str)
        except (ValueError, AttributeError):
            valid = False
        if not valid:
            return ProbeResult(False, latency, "api", Failure.BAD_RESPONSE, "not an Ollama answer")
        return ProbeResult(True, latency, "api")

    def probe_inference(self, model: str, timeout: float) -> ProbeResult:
        """The design notes' test inference: prompt "test", one output token.

        It sends no runner options (``num_ctx``, ``num_gpu`` … make Ollama
        reload a loaded model) and no ``keep_alive`` (the loaded runner keeps
        its own). On a timeout the connection is closed, which cancels the
        request in Ollama and takes it out of the model's queue.
        """
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": PROBE_PROMPT}],
            "stream": False,
            "options": {"num_predict": 1},
        }
        started = time.monotonic()
        try:
            response = self._http.post("/api/chat", json=body, timeout=timeout)
        except httpx.HTTPError as exc:
            failure, detail = _failure_of(exc)
            return ProbeResult(False, time.monotonic() - started, "inference", failure, detail)
        latency = time.monotonic() - started
        if response.status_code == 404:
            return ProbeResult(False, latency, "inference", Failure.MODEL_ERROR, _error_text(response))
        if response.status_code != 200:
            return ProbeResult(False, latency, "inference", Failure.HTTP_ERROR, _error_text(response))
        try:
            payload = response.json()
            if "error" in payload:
                return ProbeResult(False, latency, "inference", Failure.HTTP_ERROR, str(payload["error"]))
            valid = isinstance(payload.get("message"), dict) and payload.get("done") is True
        except (ValueError, AttributeError):
            valid = False
        if not valid:
            return ProbeResult(False, latency, "inference", Failure.BAD_RESPONSE, "not a chat answer")
        load_seconds = float(payload.get("load_duration", 0)) / 1e9
        return ProbeResult(True, latency, "inference", load_seconds=load_seconds)


# --- the model builder's calls --------------------------------------------------------------------

UPLOAD_CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Timeouts:
    """Seconds. ``stream`` bounds the silence between two progress lines of a pull/create."""

    connect: float = 5.0
    api: float = 30.0
    stream: float = 600.0
    inference: float = 300.0  # a cold model load from disk can take minutes


DEFAULT_TIMEOUTS = Timeouts()


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "no details"


def _short_digest(digest: str) -> str:
    """``sha256:<first 12 hex>``, as ``ollama list`` shows a digest."""
    return digest.replace("sha256-", "sha256:", 1)[:19].lower()


class OllamaModelAPI:
    """The Ollama endpoints model management needs; every failure raises an :class:`OllamaError`."""

    def __init__(
        self, base_url: str, client: httpx.Client | None = None, timeouts: Timeouts = DEFAULT_TIMEOUTS
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts
        self._own_client = client is None
        self._client = client or httpx.Client(timeout=httpx.Timeout(timeouts.api, connect=timeouts.connect))

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _timeout(self, read: float) -> httpx.Timeout:
        return httpx.Timeout(read, connect=self.timeouts.connect)

    def _transport_error(self, what: str, exc: httpx.HTTPError) -> OllamaError:
        if isinstance(exc, httpx.ConnectError):
            return OllamaUnreachable(f"cannot reach Ollama at {self.base_url} ({what}): {_one_line(str(exc))}")
        if isinstance(exc, httpx.TimeoutException):
            return OllamaUnreachable(f"Ollama at {self.base_url} stopped answering during {what}")
        return OllamaUnreachable(
            f"connection to Ollama lost during {what}: {_one_line(str(exc)) or type(exc).__name__}"
        )

    @staticmethod
    def _status_error(what: str, response: httpx.Response) -> OllamaAPIError:
        message = describe_body(response.text, response.headers.get("content-type", ""), response.status_code)
        try:
            body = json.loads(response.text)
            if isinstance(body, dict) and isinstance(body.get("error"), str):
                message = plain_line(body["error"])
        except ValueError:
            pass
        return OllamaAPIError(
            f"{what} failed: {_one_line(message)} (HTTP {response.status_code})", response.status_code
        )

    def _call(
        self, method: str, path: str, what: str, *, read_timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        timeout = self._timeout(read_timeout or self.timeouts.api)
        try:
            response = self._client.request(method, self.base_url + path, timeout=timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise self._transport_error(what, exc) from None
        if response.status_code >= 400 and method != "HEAD":
            raise self._status_error(what, response)
        return response

    def _json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise OllamaAPIError(f"{what}: Ollama sent something that is not JSON", response.status_code) from None
        if not isinstance(body, dict):
            raise OllamaAPIError(f"{what}: unexpected answer from Ollama", response.status_code)
        return body

    def _stream(self, path: str, payload: dict[str, Any], what: str) -> Iterator[dict[str, Any]]:
        """POST and yield each NDJSON object; a streamed ``{"error": ...}`` raises."""
        try:
            with self._client.stream(
                "POST", self.base_url + path, json=payload, timeout=self._timeout(self.timeouts.stream)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._status_error(what, response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        item = json.loads(line)
                    except ValueError:
                        raise OllamaAPIError(f"{what}: Ollama sent a line that is not JSON", 200) from None
                    if isinstance(item, dict) and item.get("error"):
                        status = item.get("status")
                        raise OllamaAPIError(
                            f"{what} failed: {_one_line(plain_line(str(item['error'])))}",
                            status if isinstance(status, int) else 200,
                        )
                    if isinstance(item, dict):
                        yield item
        except httpx.HTTPError as exc:
            raise self._transport_error(what, exc) from None

    def _until_success(self, items: Iterator[dict[str, Any]], what: str) -> Iterator[dict[str, Any]]:
        finished = False
        for item in items:
            finished = finished or str(item.get("status", "")) == "success"
            yield item
        if not finished:
            raise OllamaAPIError(f"{what} failed: the stream ended before 'success'", 200)

    def tags(self) -> list[dict[str, Any]]:
        """The installed models, as ``/api/tags`` lists them."""
        body = self._json(self._call("GET", "/api/tags", "listing models"), "listing models")
        models = body.get("models") or []
        return [item for item in models if isinstance(item, dict)]

    def show(self, model: str) -> dict[str, Any]:
        """``/api/show``: details, model_info, template, parameters of an installed model."""
        return self._json(self._call("POST", "/api/show", f"show {model}", json={"model": model}), f"show {model}")

    def pull(self, model: str) -> Iterator[dict[str, Any]]:
        """Pull a model: its progress lines as Ollama sends them; raise unless they end in ``success``."""
        what = f"pull {model}"
        return self._until_success(self._stream("/api/pull", {"model": model, "stream": True}, what), what)

    def has_blob(self, digest: str) -> bool:
        """Whether the server already holds the blob (``HEAD /api/blobs/<digest>``)."""
        response = self._call("HEAD", f"/api/blobs/{digest}", f"checking blob {_short_digest(digest)}")
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise OllamaAPIError(
            f"checking blob {_short_digest(digest)} failed (HTTP {response.status_code})", response.status_code
        )

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

        self._call(
            "POST",
            f"/api/blobs/{digest}",
            f"upload of {path}",
            read_timeout=self.timeouts.stream,
            content=chunks(),
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
        )

    def create(self, request: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """POST ``/api/create``: its progress lines as Ollama sends them; raise unless they end in ``success``."""
        what = f"create {request.get('model')}"
        return self._until_success(self._stream("/api/create", dict(request, stream=True), what), what)

    def chat_test(self, model: str) -> dict[str, Any]:
        """A one-token, non-streamed chat with the prompt ``test``."""
        payload = {
            "model": model,
            "messages": [{"role": "user", "content": PROBE_PROMPT}],
            "stream": False,
            "options": {"num_predict": 1},
        }
        what = f"test inference with {model}"
        body = self._json(
            self._call("POST", "/api/chat", what, json=payload, read_timeout=self.timeouts.inference), what
        )
        if not isinstance(body.get("message"), dict):
            raise OllamaAPIError(f"{what}: the answer has no message", 200)
        return body

    def delete(self, model: str) -> None:
        """Remove a model; Ollama deletes the blobs no other model uses."""
        self._call("DELETE", "/api/delete", f"delete {model}", json={"model": model})
