"""The cloud provider: its API key, and what to send it for a client's request.

The key comes from the environment variable named by ``cloud.api_key_env``
(default ``OPENAI_API_KEY`` / ``OLLAMA_API_KEY``), else from the OS keyring
(service ``ollama-manager``, account = the provider's base URL), where
``ollama-manager cloud set-key`` puts it. It is never written to the config
file or a log, and no message shows it.

:func:`plan_cloud_call` (pure) turns a client's request, in either dialect,
into the call the configured provider understands; :class:`CloudCall` then
translates the provider's answer back into the client's dialect.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tray.core.text import error_line
from tray.gateway import translate as tr
from tray.gateway.translate import Dialect
from tray.settings.gateway import CloudSettings

log = logging.getLogger(__name__)

KEYRING_SERVICE = "ollama-manager"
CONNECT_TIMEOUT = 5.0

# What a client path asks for: (dialect, kind)
INFERENCE_PATHS: dict[str, tuple[Dialect, str]] = {
    "/api/chat": (Dialect.OLLAMA, "chat"),
    "/api/generate": (Dialect.OLLAMA, "generate"),
    "/api/embed": (Dialect.OLLAMA, "embed"),
    "/api/embeddings": (Dialect.OLLAMA, "embeddings"),
    "/v1/chat/completions": (Dialect.OPENAI, "chat"),
    "/v1/completions": (Dialect.OPENAI, "completion"),
    "/v1/embeddings": (Dialect.OPENAI, "embed"),
}
EMBEDDING_KINDS = ("embed", "embeddings")


def streamed_request(path: str, body: dict[str, Any]) -> bool:
    """Will the answer to this inference request be streamed?

    Ollama's ``/api/chat`` and ``/api/generate`` stream unless told
    ``"stream": false``; OpenAI's paths only when told ``"stream": true``;
    embeddings never.

    >>> streamed_request("/api/chat", {}), streamed_request("/v1/chat/completions", {})
    (True, False)
    >>> streamed_request("/api/generate", {"stream": False}), streamed_request("/v1/completions", {"stream": True})
    (False, True)
    >>> streamed_request("/api/embed", {"stream": True})
    False
    """
    client, kind = INFERENCE_PATHS[path]
    if kind in EMBEDDING_KINDS:
        return False
    return tr.ollama_stream_requested(body) if client is Dialect.OLLAMA else tr.openai_stream_requested(body)


# --------------------------------------------------------------------------- the API key


class KeyStoreError(Exception):
    """The OS keyring cannot be used; ``str()`` is one line."""


class KeyStore(Protocol):
    def get(self, account: str) -> str | None: ...

    def set(self, account: str, secret: str) -> None: ...


class SystemKeyStore:
    """The OS keyring through the ``keyring`` package (imported on first use)."""

    def __init__(self, service: str = KEYRING_SERVICE) -> None:
        self.service = service

    def get(self, account: str) -> str | None:
        keyring, errors = self._modules()
        try:
            return keyring.get_password(self.service, account)
        except errors.KeyringError as exc:
            raise KeyStoreError(f"the OS keyring is not available ({error_line(exc)})") from None

    def set(self, account: str, secret: str) -> None:
        keyring, errors = self._modules()
        try:
            keyring.set_password(self.service, account, secret)
        except errors.KeyringError as exc:
            raise KeyStoreError(f"the OS keyring is not available ({error_line(exc)})") from None

    @staticmethod
    def _modules() -> tuple[Any, Any]:
        try:
            import keyring
            import keyring.errors
        except ImportError:
            raise KeyStoreError("the 'keyring' package is not installed") from None
        return keyring, keyring.errors


@dataclass(frozen=True)
class ApiKey:
    """A key and where it came from; ``repr`` never shows the key."""

    value: str = field(repr=False)
    source: str


def key_account(cloud: CloudSettings) -> str:
    """The keyring account a provider's key is stored under."""
    return cloud.url


def find_api_key(cloud: CloudSettings, env: Mapping[str, str], store: KeyStore | None) -> ApiKey | None:
    """The provider's key: the environment variable first, then the keyring; None when neither has one."""
    value = env.get(cloud.key_env, "").strip()
    if value:
        return ApiKey(value, f"${cloud.key_env}")
    if store is None:
        return None
    try:
        stored = store.get(key_account(cloud))
    except KeyStoreError as exc:
        log.debug("no key from the keyring: %s", exc)
        return None
    return ApiKey(stored.strip(), "the OS keyring") if stored and stored.strip() else None


def missing_key_hint(cloud: CloudSettings) -> str:
    return f"set ${cloud.key_env} or run: ollama-manager cloud set-key"


# --------------------------------------------------------------------------- planning a call


class NotServed(Exception):
    """The cloud fallback cannot take this request; ``str()`` is one line."""


@dataclass(frozen=True)
class CloudCall:
    """One request to the provider, and how its answer goes back to the client."""

    client: Dialect
    provider: Dialect
    kind: str
    path: str  # appended to the provider's base URL
    body: dict[str, Any]
    stream: bool
    include_usage: bool = False  # an OpenAI client asked for a usage chunk

    @property
    def same_dialect(self) -> bool:
        return self.client is self.provider

    @property
    def client_content_type(self) -> str:
        if not self.stream:
            return tr.JSON
        return tr.NDJSON if self.client is Dialect.OLLAMA else tr.SSE

    def translate_body(self, answer: dict[str, Any], created_at: str, ident: str, created: int) -> dict[str, Any]:
        """The provider's whole (non-streamed) answer in the client's dialect."""
        model = str(self.body.get("model") or "")
        if self.same_dialect:
            return answer
        if self.client is Dialect.OLLAMA:
            if self.kind in EMBEDDING_KINDS:
                return tr.openai_embeddings_to_ollama(answer, model, legacy=self.kind == "embeddings")
            return tr.openai_response_to_ollama(answer, self.kind, model, created_at)
        if self.kind in EMBEDDING_KINDS:
            return tr.ollama_embeddings_to_openai(answer, model)
        return tr.ollama_response_to_openai(answer, ident, created)

    def stream_translator(
        self, timestamp: tr.Timestamp, ident: str, created: int
    ) -> tr.SseToNdjson | tr.NdjsonToSse | None:
        """The incremental translator for a streamed answer (None: bytes pass through)."""
        model = str(self.body.get("model") or "")
        if self.same_dialect:
            return None
        if self.client is Dialect.OLLAMA:
            return tr.SseToNdjson(self.kind, model, timestamp)
        return tr.NdjsonToSse(ident, created, model, include_usage=self.include_usage)


def plan_cloud_call(cloud: CloudSettings, path: str, body: dict[str, Any]) -> CloudCall:
    """The provider call that answers a client's ``POST path`` with ``body``.

    Raises :class:`NotServed` for what the fallback cannot answer.
    """
    if path not in INFERENCE_PATHS:
        raise NotServed(f"the cloud fallback does not serve {path}")
    client, kind = INFERENCE_PATHS[path]
    provider = Dialect.OPENAI if cloud.provider == "openai" else Dialect.OLLAMA
    model = cloud.model
    if kind in EMBEDDING_KINDS:
        if not cloud.embedding_model:
            raise NotServed("the cloud fallback has no embedding model (set cloud.embedding_model)")
        model = cloud.embedding_model
    stream = streamed_request(path, body)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage")) if client is Dialect.OPENAI else False
    if client is provider:
        return CloudCall(
            client, provider, kind, _same_dialect_path(provider, path), _with_model(body, model), stream, include_usage
        )
    if client is Dialect.OLLAMA:
        translated = _ollama_to_openai(kind, body, model)
        target = "/embeddings" if kind in EMBEDDING_KINDS else "/chat/completions"
        return CloudCall(client, provider, kind, target, translated, stream)
    if kind == "completion":
        raise NotServed("the cloud fallback serves /v1/completions only with an OpenAI-compatible provider")
    if kind == "embed":
        return CloudCall(client, provider, kind, "/api/embed", tr.openai_embed_to_ollama(body, model), False)
    return CloudCall(client, provider, kind, "/api/chat", tr.openai_chat_to_ollama(body, model), stream, include_usage)


def _same_dialect_path(provider: Dialect, path: str) -> str:
    # An OpenAI base URL already ends in /v1 (https://api.openai.com/v1).
    return path.removeprefix("/v1") if provider is Dialect.OPENAI else path


def _with_model(body: dict[str, Any], model: str) -> dict[str, Any]:
    return dict(body, model=model)


def _ollama_to_openai(kind: str, body: dict[str, Any], model: str) -> dict[str, Any]:
    if kind == "chat":
        return tr.ollama_chat_to_openai(body, model)
    if kind == "generate":
        return tr.ollama_generate_to_openai(body, model)
    return tr.ollama_embed_to_openai(body, model)


def request_headers(key: ApiKey | None) -> dict[str, str]:
    """Headers for a provider call; the key goes only here."""
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, application/x-ndjson, text/event-stream",
    }
    if key is not None:
        headers["Authorization"] = f"Bearer {key.value}"
    return headers


def provider_error(cloud: CloudSettings, status: int, body: bytes) -> str:
    """One line about a provider's error answer (never containing the key)."""
    if status in (401, 403):
        return f"{cloud.host_label} refused the API key ({status}); {missing_key_hint(cloud)}"
    detail = tr.error_message(body) if body else ""
    return f"{cloud.host_label} answered {status}" + (f": {detail}" if detail else "")


def describe_error(exc: BaseException) -> str:
    """A transport error in a few words ("connection refused", "timed out", else its text)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or "refused" in str(seen).lower():
            return "connection refused"
        if isinstance(seen, TimeoutError) or type(seen).__name__.endswith("Timeout"):
            return "timed out"
        seen = seen.__cause__ or seen.__context__
    return error_line(exc)
