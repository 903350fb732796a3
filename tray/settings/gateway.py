"""The ``[cloud]`` and ``[gateway]`` config sections: the gateway apps point at and its cloud fallback.

Both are frozen dataclasses the config loader fills from the TOML file and
``OLLAMA_MANAGER_CLOUD_<KEY>`` / ``OLLAMA_MANAGER_GATEWAY_<KEY>`` variables.
A bad value raises ``ValueError`` with one line naming the key.

The cloud fallback is off until the user turns it on: a user who runs a
local model may not want prompts to leave the machine. The API key is never
a setting; ``api_key_env`` only names the environment variable that holds
it, and ``ollama-manager cloud set-key`` stores it in the OS keyring instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tray.settings.meta import DAY, MAX_PORT, check_fields, setting, shown

PROVIDERS = ("openai", "ollama")
DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1", "ollama": "https://ollama.com"}
DEFAULT_KEY_ENVS = {"openai": "OPENAI_API_KEY", "ollama": "OLLAMA_API_KEY"}
DEFAULT_GATEWAY_PORT = 11435

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ORIGIN_PATTERN = re.compile(r"[a-z][a-z0-9+.-]*://[^\s,*]*\*?[^\s,*]*", re.IGNORECASE)

# Ollama's own default (envconfig.AllowedOrigins), in its order: loopback pages on any port, then
# Electron apps, local files, Tauri, VS Code webviews and VS Code's file scheme.
DEFAULT_ORIGINS = (
    "http://localhost", "https://localhost", "http://localhost:*", "https://localhost:*",
    "http://127.0.0.1", "https://127.0.0.1", "http://127.0.0.1:*", "https://127.0.0.1:*",
    "http://0.0.0.0", "https://0.0.0.0", "http://0.0.0.0:*", "https://0.0.0.0:*",
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
)  # fmt: skip


def check_origin_pattern(value: str) -> None:
    """Raise ValueError unless ``value`` is a browser origin, or one with a single ``*`` standing for any text.

    Patterns are what Ollama's ``OLLAMA_ORIGINS`` takes: ``*`` alone is every origin.

    >>> check_origin_pattern("chrome-extension://*"), check_origin_pattern("https://*.example.com")
    (None, None)
    >>> check_origin_pattern("null")
    Traceback (most recent call last):
    ValueError: must be an origin such as 'http://localhost:3000' or a pattern with one '*' \
such as 'vscode-webview://*', got 'null'
    """
    if value != "*" and not _ORIGIN_PATTERN.fullmatch(value):
        raise ValueError(
            "must be an origin such as 'http://localhost:3000' or a pattern with one '*' "
            f"such as 'vscode-webview://*', got {shown(value)}"
        )


def check_http_url(value: str) -> None:
    """Raise ValueError unless ``value`` is empty (the provider's default) or an http(s) address with a host.

    >>> check_http_url("https://openrouter.ai/api/v1")
    >>> check_http_url("https://box:99999/v1")
    Traceback (most recent call last):
    ValueError: must have a port from 1 to 65535, got 'https://box:99999/v1'
    """
    if not value:
        return
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:  # an unclosed [IPv6] bracket, a port that is no number or out of range
        parts, port = None, -1
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
        if port == -1 and value.startswith(("http://", "https://")):
            raise ValueError(f"must have a port from 1 to {MAX_PORT}, got {shown(value)}")
        raise ValueError(f"must be an http:// or https:// address, got {shown(value)}")
    if port is not None and not 1 <= port <= MAX_PORT:
        raise ValueError(f"must have a port from 1 to {MAX_PORT}, got {shown(value)}")


def check_env_name(value: str) -> None:
    """Raise ValueError unless ``value`` is empty or an environment variable's name.

    The value is not echoed: a user may have pasted the key itself here.

    >>> check_env_name("OPENROUTER_API_KEY")
    >>> check_env_name("sk-abc123")
    Traceback (most recent call last):
    ValueError: must be the name of an environment variable, not the key itself (store the key with: \
ollama-manager cloud set-key)
    """
    if value and not _ENV_NAME.fullmatch(value):
        raise ValueError(
            "must be the name of an environment variable, not the key itself "
            "(store the key with: ollama-manager cloud set-key)"
        )


@dataclass(frozen=True)
class CloudSettings:
    """Where requests go when Ollama cannot answer; field names are the ``[cloud]`` keys."""

    enabled: bool = field(
        default=False,
        metadata=setting("Answer with the cloud provider while Ollama is down (prompts then leave this machine)"),
    )
    provider: str = field(
        default="openai",
        metadata=setting(
            "'openai' for any OpenAI-compatible API (OpenAI, OpenRouter, Groq, vLLM, ...), "
            "'ollama' for an Ollama-API host",
            choices=PROVIDERS,
        ),
    )
    base_url: str = field(
        default="",
        metadata=setting(
            "Provider address; default: https://api.openai.com/v1 (openai) or https://ollama.com (ollama)",
            check=check_http_url,
            command_only="https://api.openai.com/v1",
        ),
    )
    model: str = field(default="", metadata=setting("Model the provider answers with; required when enabled"))
    embedding_model: str = field(
        default="",
        metadata=setting("Model for embeddings while Ollama is down; empty: embeddings are not sent to the cloud"),
    )
    api_key_env: str = field(
        default="",
        metadata=setting(
            "Environment variable holding the API key (default OPENAI_API_KEY / OLLAMA_API_KEY); "
            "without it the OS keyring entry from 'ollama-manager cloud set-key' is used",
            check=check_env_name,
            command_only="OPENAI_API_KEY",
        ),
    )
    timeout: float = field(
        default=30.0,
        metadata=setting("Seconds the provider may stay silent before the request fails", minimum=1, maximum=DAY),
    )

    def __post_init__(self) -> None:
        check_fields(self, "cloud.")
        if self.enabled and not self.model.strip():
            raise ValueError("cloud.model must be set when cloud.enabled is true")

    @property
    def url(self) -> str:
        """The provider's base URL without a trailing slash."""
        return (self.base_url or DEFAULT_BASE_URLS[self.provider]).rstrip("/")

    @property
    def key_env(self) -> str:
        """The environment variable that holds the API key."""
        return self.api_key_env or DEFAULT_KEY_ENVS[self.provider]

    @property
    def host_label(self) -> str:
        """The provider's host name, for messages."""
        return urlsplit(self.url).hostname or self.url


@dataclass(frozen=True)
class GatewaySettings:
    """The local gateway apps point at instead of Ollama; field names are the ``[gateway]`` keys."""

    enabled: bool = field(default=False, metadata=setting("Run the gateway inside the monitor and the tray app"))
    port: int = field(
        default=DEFAULT_GATEWAY_PORT,
        metadata=setting("Loopback port of the gateway (0 = any free port)", minimum=0, maximum=MAX_PORT),
    )
    first_byte_timeout: float = field(
        default=15.0,
        metadata=setting(
            "Seconds a streamed request to a loaded, idle model may wait for its first byte before the cloud "
            "takes it (without the cloud: before the monitor is asked to check Ollama)",
            minimum=0.1,
            maximum=DAY,
        ),
    )
    local_timeout: float = field(
        default=600.0,
        metadata=setting(
            "Seconds a model load, a stream:false answer or a request queued behind another may wait for "
            "Ollama's first byte; then a clear error, never the cloud",
            minimum=1,
            maximum=DAY,
        ),
    )
    idle_timeout: float = field(
        default=60.0,
        metadata=setting("Seconds Ollama may pause inside an answer it has started", minimum=1, maximum=DAY),
    )
    probe_interval: float = field(
        default=3.0,
        metadata=setting(
            "Seconds between the gateway's own health checks when it runs without the monitor",
            minimum=0.05,
            maximum=DAY,
        ),
    )
    breaker_failures: int = field(
        default=3,
        metadata=setting("Failures in a row after which Ollama is skipped for a while", minimum=1, maximum=1000),
    )
    breaker_open_seconds: float = field(
        default=30.0,
        metadata=setting(
            "Seconds Ollama is skipped after it failed; doubles on each new failure", minimum=0.1, maximum=DAY
        ),
    )
    breaker_max_open_seconds: float = field(
        default=300.0,
        metadata=setting("Longest time Ollama is skipped before it is tried again", minimum=0.1, maximum=DAY),
    )
    restart_interval: float = field(
        default=120.0,
        metadata=setting(
            "Deprecated and ignored: the gateway never restarts Ollama; it asks the monitor to check it",
            minimum=0,
            maximum=DAY,
        ),
    )
    fallback_window_seconds: float = field(
        default=600.0,
        metadata=setting("Seconds of calls the cloud share (the >50 % alert) is computed over", minimum=1, maximum=DAY),
    )
    allowed_origins: tuple[str, ...] = field(
        default=DEFAULT_ORIGINS,
        metadata=setting(
            "Browser origins (web pages, editor webviews, app shells) whose requests the gateway serves, "
            "the cloud fallback included; '*' in a pattern matches any text. Default: Ollama's own list. "
            "Requests without an Origin (programs, scripts) are always served",
            check=check_origin_pattern,
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self, "gateway.")
        if self.breaker_max_open_seconds < self.breaker_open_seconds:
            raise ValueError(
                "gateway.breaker_max_open_seconds must be at least gateway.breaker_open_seconds "
                f"({self.breaker_max_open_seconds!r} < {self.breaker_open_seconds!r})"
            )
