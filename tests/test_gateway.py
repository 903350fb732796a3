"""The cloud-fallback gateway: settings, key lookup and call planning (pure), then the
gateway against the stand-in Ollama and the stand-in cloud, both real processes."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from standin.harness import StandinEnv, free_port
from tests.support import manager
from tests.support.manager import in_thread
from tests.support.standin_cloud import StandinCloud
from tests.support.users import SYSTEM_PYTHON, Account, popen_as, run_as
from tray.core.health import BusySource, Health
from tray.core.status import BusyStatus, LoadedModelStatus, MonitorState, Status, make_status
from tray.gateway.app import Gateway, GatewayServer, ollama_origins, origin_allowed, relay_response_headers
from tray.gateway.breaker import Backend
from tray.gateway.client import ChatError, LocalFirstChat, chat
from tray.gateway.cloud import ApiKey, KeyStoreError, NotServed, SystemKeyStore, find_api_key, plan_cloud_call
from tray.gateway.commands import (
    cloud_set_key_command,
    gateway_command,
    gateway_for_monitor,
    same_address,
    serve_beside_monitor,
)
from tray.gateway.redact import StreamRedactor, redact_bytes
from tray.gateway.translate import Dialect
from tray.history import History
from tray.settings.config import ConfigError, load_table, settable_fields
from tray.settings.gateway import DEFAULT_ORIGINS, CloudSettings, GatewaySettings
from tray.settings.hosts import parse_ollama_host
from tray.system.paths import AppPaths

KEY = "sk-standin-0123456789"
KEY_ENV = "STANDIN_CLOUD_KEY"
HEADER = "x-ollama-manager-backend"
MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "hi there"}]
CHAT: dict[str, Any] = {"model": "llama3", "messages": MESSAGES}


# =========================================================================== pure parts


class TestSettings:
    def test_fallback_and_gateway_are_off_by_default(self) -> None:
        cloud, gateway = CloudSettings(), GatewaySettings()
        assert (cloud.enabled, gateway.enabled, gateway.port) == (False, False, 11435)
        assert (cloud.url, cloud.key_env) == ("https://api.openai.com/v1", "OPENAI_API_KEY")
        ollama = CloudSettings(provider="ollama")
        assert (ollama.url, ollama.key_env) == ("https://ollama.com", "OLLAMA_API_KEY")
        assert (
            CloudSettings(base_url="https://openrouter.ai/api/v1/", api_key_env="OR_KEY").url
            == "https://openrouter.ai/api/v1"
        )

    @pytest.mark.parametrize("cls", [CloudSettings, GatewaySettings])
    def test_every_field_has_help_and_a_type_the_config_loader_reads(self, cls: type) -> None:
        for f in settable_fields(cls):
            assert f.metadata["help"], f.name
            assert f.type in ("bool", "int", "float", "str", "tuple[str, ...]"), f.name

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"provider": "anthropic"}, "cloud.provider must be one of 'openai', 'ollama', got 'anthropic'"),
            ({"base_url": "ftp://x"}, "cloud.base_url must be an http:// or https:// address, got 'ftp://x'"),
            ({"enabled": True}, "cloud.model must be set when cloud.enabled is true"),
            ({"timeout": 0.5}, "cloud.timeout must be at least 1, got 0.5"),
        ],
    )
    def test_cloud_errors_are_one_line(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError) as error:
            CloudSettings(**kwargs)
        assert str(error.value) == message

    def test_a_key_pasted_as_the_variable_name_is_refused_without_echoing_it(self) -> None:
        with pytest.raises(ValueError) as error:
            CloudSettings(api_key_env="sk-proj-abc123")
        assert "sk-proj" not in str(error.value)
        assert str(error.value).startswith("cloud.api_key_env must be the name of an environment variable")

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"port": 70000}, "gateway.port must be at most 65535, got 70000"),
            ({"first_byte_timeout": 0}, "gateway.first_byte_timeout must be at least 0.1, got 0"),
            ({"first_byte_timeout": float("nan")}, "gateway.first_byte_timeout must be a finite number, got nan"),
            ({"breaker_failures": 0}, "gateway.breaker_failures must be at least 1, got 0"),
            ({"breaker_open_seconds": 60.0, "breaker_max_open_seconds": 30.0},
             "gateway.breaker_max_open_seconds must be at least gateway.breaker_open_seconds (30.0 < 60.0)"),
        ],
    )  # fmt: skip
    def test_gateway_errors_are_one_line(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError) as error:
            GatewaySettings(**kwargs)
        assert str(error.value) == message

    def test_loaded_through_the_config_machinery_with_env_overrides(self, tmp_path: Path) -> None:
        env = {"OLLAMA_MANAGER_CLOUD_ENABLED": "yes", "OLLAMA_MANAGER_CLOUD_TIMEOUT": "12"}
        values = load_table(
            CloudSettings, {"model": "gpt-4o-mini", "provider": "openai"}, env, tmp_path / "c.toml", "cloud."
        )
        assert CloudSettings(**values) == CloudSettings(enabled=True, model="gpt-4o-mini", timeout=12.0)
        with pytest.raises(ConfigError) as error:
            load_table(GatewaySettings, {"port": "x"}, {}, tmp_path / "c.toml", "gateway.")
        assert str(error.value) == f"{tmp_path / 'c.toml'}: key 'gateway.port' must be a whole number, got 'x'"


class TestRedaction:
    SECRET = "sk-proj-Abc123_secret"
    TEXTS: ClassVar[list[str]] = [
        f'data: {{"error": "bad key {SECRET}; Authorization: Bearer {SECRET}"}}\n\n',
        "BEARER\tabc.def unbearer kept, bearer  eyJ0eXAi.x-y/z= then sk-proj-Abc12 stays",
        f"{SECRET}{SECRET} Bearer",
    ]

    @pytest.mark.parametrize("text", TEXTS)
    def test_a_stream_split_anywhere_is_redacted_as_the_whole_text(self, text: str) -> None:
        data = text.encode()
        whole = redact_bytes(data, [self.SECRET])
        assert self.SECRET.encode() not in whole
        chooser = random.Random(text)
        for _ in range(500):
            cuts = sorted(chooser.sample(range(1, len(data)), chooser.randint(1, min(12, len(data) - 1))))
            redactor = StreamRedactor([self.SECRET])
            out = b"".join(redactor.feed(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True))
            assert out + redactor.close() == whole, cuts

    def test_text_without_a_secret_is_not_held_back(self) -> None:
        redactor = StreamRedactor([self.SECRET])
        assert redactor.feed(b'data: {"content": "Hello"}\n\n') == b'data: {"content": "Hello"}\n\n'
        assert redactor.feed(b"ends in s") == b"ends in "  # "s" may begin the key


class MemoryStore:
    """A key store kept in a dict (the OS keyring's stand-in)."""

    def __init__(self, keys: dict[str, str] | None = None, broken: bool = False) -> None:
        self.keys = dict(keys or {})
        self.broken = broken

    def get(self, account: str) -> str | None:
        if self.broken:
            raise KeyStoreError("the OS keyring is not available (no backend)")
        return self.keys.get(account)

    def set(self, account: str, secret: str) -> None:
        if self.broken:
            raise KeyStoreError("the OS keyring is not available (no backend)")
        self.keys[account] = secret


class TestApiKey:
    CLOUD = CloudSettings(base_url="https://api.groq.com/openai/v1", api_key_env="GROQ_KEY")

    def test_environment_first(self) -> None:
        key = find_api_key(self.CLOUD, {"GROQ_KEY": " gsk-1 "}, MemoryStore({self.CLOUD.url: "stored"}))
        assert key == ApiKey("gsk-1", "$GROQ_KEY")

    def test_keyring_when_the_variable_is_unset(self) -> None:
        key = find_api_key(self.CLOUD, {}, MemoryStore({"https://api.groq.com/openai/v1": "stored"}))
        assert key == ApiKey("stored", "the OS keyring")

    def test_none_when_nothing_or_the_keyring_is_broken(self) -> None:
        assert find_api_key(self.CLOUD, {}, MemoryStore()) is None
        assert find_api_key(self.CLOUD, {}, MemoryStore(broken=True)) is None
        assert find_api_key(self.CLOUD, {"GROQ_KEY": ""}, None) is None

    def test_repr_never_shows_the_key(self) -> None:
        assert "gsk-secret" not in repr(ApiKey("gsk-secret", "$GROQ_KEY"))


class TestPlanning:
    OPENAI = CloudSettings(enabled=True, model="gpt-x", embedding_model="emb-x")
    OLLAMA = CloudSettings(enabled=True, provider="ollama", model="llama3:70b")

    def test_ollama_chat_to_an_openai_provider_is_translated(self) -> None:
        call = plan_cloud_call(self.OPENAI, "/api/chat", dict(CHAT, stream=False))
        assert (call.path, call.stream, call.client, call.provider) == (
            "/chat/completions",
            False,
            Dialect.OLLAMA,
            Dialect.OPENAI,
        )
        assert call.body == {"model": "gpt-x", "messages": [{"role": "user", "content": "hi there"}], "stream": False}

    def test_openai_chat_to_an_openai_provider_only_swaps_the_model(self) -> None:
        body = dict(CHAT, stream=True, stream_options={"include_usage": True}, temperature=0.1)
        call = plan_cloud_call(self.OPENAI, "/v1/chat/completions", body)
        assert (call.path, call.stream, call.include_usage, call.same_dialect) == (
            "/chat/completions",
            True,
            True,
            True,
        )
        assert call.body == dict(body, model="gpt-x")

    def test_openai_chat_to_an_ollama_provider_is_translated(self) -> None:
        call = plan_cloud_call(self.OLLAMA, "/v1/chat/completions", dict(CHAT))
        assert (call.path, call.stream, call.client_content_type) == (
            "/api/chat",
            False,
            "application/json; charset=utf-8",
        )
        assert call.body == {
            "model": "llama3:70b",
            "messages": [{"role": "user", "content": "hi there"}],
            "stream": False,
        }

    def test_ollama_chat_to_an_ollama_provider_keeps_the_default_stream(self) -> None:
        call = plan_cloud_call(self.OLLAMA, "/api/chat", dict(CHAT))
        assert (call.path, call.stream, call.client_content_type) == ("/api/chat", True, "application/x-ndjson")
        assert call.body == dict(CHAT, model="llama3:70b")

    def test_embeddings_use_the_embedding_model(self) -> None:
        call = plan_cloud_call(self.OPENAI, "/api/embeddings", {"model": "all-minilm", "prompt": "hi"})
        assert (call.path, call.body, call.stream) == ("/embeddings", {"model": "emb-x", "input": "hi"}, False)

    @pytest.mark.parametrize(
        ("cloud", "path", "message"),
        [
            (OLLAMA, "/api/embed", "the cloud fallback has no embedding model (set cloud.embedding_model)"),
            (
                OLLAMA,
                "/v1/completions",
                "the cloud fallback serves /v1/completions only with an OpenAI-compatible provider",
            ),
            (OPENAI, "/api/pull", "the cloud fallback does not serve /api/pull"),
        ],
    )
    def test_what_the_fallback_does_not_serve(self, cloud: CloudSettings, path: str, message: str) -> None:
        with pytest.raises(NotServed) as error:
            plan_cloud_call(cloud, path, {"model": "x", "input": "y"})
        assert str(error.value) == message


# One of each kind of origin Ollama lets in by default (envconfig.AllowedOrigins), as browsers and shells send them.
DEFAULT_ORIGIN_KINDS = (
    "http://localhost", "https://localhost", "http://localhost:3000", "https://localhost:8443",
    "http://127.0.0.1", "http://127.0.0.1:8080", "https://127.0.0.1:5173", "http://0.0.0.0:8000", "https://0.0.0.0",
    "app://obsidian.md", "file://", "tauri://localhost", "vscode-webview://1n2b3c4d5e",
    "vscode-file://vscode-app",
)  # fmt: skip
# Ollama refuses these by default: a web page elsewhere, a lookalike host, a sandboxed or browser-opened file,
# a browser extension (until OLLAMA_ORIGINS lists it) and loopback names Ollama's list does not hold.
FOREIGN_ORIGINS = (
    "https://evil.example", "http://localhost.evil.example", "http://127.0.0.1.nip.io:8080", "null",
    "chrome-extension://abcdefghijklmnop", "moz-extension://4b1d", "http://[::1]:3000", "http://127.0.0.2",
)  # fmt: skip


def test_the_default_origins_are_ollamas_own() -> None:
    assert GatewaySettings().allowed_origins == DEFAULT_ORIGINS
    assert [o for o in DEFAULT_ORIGIN_KINDS if not origin_allowed(o, DEFAULT_ORIGINS)] == []
    assert [o for o in FOREIGN_ORIGINS if origin_allowed(o, DEFAULT_ORIGINS)] == []
    assert origin_allowed("VSCODE-WEBVIEW://ABC", DEFAULT_ORIGINS)  # letter case does not count
    assert origin_allowed("https://anything.example", ("*",))


@pytest.mark.parametrize("value", ["null", "http://*.a.*", "http://a b", "localhost:3000"])
def test_a_bad_origin_is_one_line_wherever_it_is_set(tmp_path: Path, value: str) -> None:
    problem = (
        "must be an origin such as 'http://localhost:3000' or a pattern with one '*' such as "
        f"'vscode-webview://*', got {value!r}"
    )
    with pytest.raises(ValueError, match=f"^gateway\\.allowed_origins {re.escape(problem)}$"):
        GatewaySettings(allowed_origins=(value,))
    file = tmp_path / "c.toml"
    env = {"OLLAMA_MANAGER_GATEWAY_ALLOWED_ORIGINS": f"vscode-webview://*, {value}"}
    with pytest.raises(
        ConfigError, match=f"^environment variable OLLAMA_MANAGER_GATEWAY_ALLOWED_ORIGINS {re.escape(problem)}$"
    ):
        load_table(GatewaySettings, {}, env, file, prefix="gateway.")
    with pytest.raises(
        ConfigError, match=f"^{re.escape(f'{file}: key ')}'gateway\\.allowed_origins' {re.escape(problem)}$"
    ):
        load_table(GatewaySettings, {"allowed_origins": [value]}, {}, file, prefix="gateway.")
    with pytest.raises(ConfigError, match=r"'gateway\.allowed_origins' must be an array of strings, got 'x'$"):
        load_table(GatewaySettings, {"allowed_origins": "x"}, {}, file, prefix="gateway.")


def test_origins_from_text_are_comma_separated_as_ollama_origins_is(tmp_path: Path) -> None:
    env = {"OLLAMA_MANAGER_GATEWAY_ALLOWED_ORIGINS": " chrome-extension://*,http://localhost:* ,"}
    loaded = load_table(GatewaySettings, {}, env, tmp_path / "c.toml", prefix="gateway.")
    assert loaded["allowed_origins"] == ("chrome-extension://*", "http://localhost:*")
    assert ollama_origins({"OLLAMA_ORIGINS": '"moz-extension://*, app://*"'}) == ("moz-extension://*", "app://*")


def test_the_gateway_refuses_to_forward_to_its_own_port() -> None:
    assert same_address("http://127.0.0.1:11434", 11434) is True
    assert same_address("http://localhost:11435", 11435) is True
    assert same_address("http://127.0.0.1:11434", 11435) is False
    assert same_address("http://10.0.0.5:11435", 11435) is False


def test_relayed_headers_lose_hop_by_hop_and_cors_fields() -> None:
    raw = [(b"Content-Type", b"application/x-ndjson"), (b"Transfer-Encoding", b"chunked"),
           (b"Connection", b"keep-alive"), (b"Access-Control-Allow-Origin", b"*"), (b"Content-Length", b"10"),
           (b"Date", b"x")]  # fmt: skip
    assert relay_response_headers(raw, Backend.LOCAL, keep_length=False) == [
        (b"content-type", b"application/x-ndjson"), (b"date", b"x"), (b"x-ollama-manager-backend", b"local"),
    ]  # fmt: skip


class TestSetKeyCommand:
    CONFIG = type(
        "Cfg", (), {"cloud": CloudSettings(base_url="https://api.together.xyz/v1", api_key_env="TOGETHER_KEY")}
    )()

    def test_piped_key_is_stored_and_never_printed(self, capsys: pytest.CaptureFixture[str]) -> None:
        store = MemoryStore()
        status = cloud_set_key_command(
            None, self.CONFIG, None, stdin=io.StringIO("tgp-secret-1\nignored\n"), key_store=store
        )
        out = capsys.readouterr()
        assert status == 0
        assert store.keys == {"https://api.together.xyz/v1": "tgp-secret-1"}
        assert out.out.splitlines()[0] == "Stored the API key for https://api.together.xyz/v1 in the OS keyring"
        assert "tgp-secret" not in out.out + out.err

    @pytest.mark.parametrize(
        ("text", "store", "message"),
        [
            ("\n", MemoryStore(), "ollama-manager: no key given (type it, or pipe it in on one line)"),
            ("two words\n", MemoryStore(), "ollama-manager: an API key has no spaces; nothing stored"),
            ("k\n", MemoryStore(broken=True),
             "ollama-manager: cannot store the key: the OS keyring is not available (no backend); "
             "set $TOGETHER_KEY instead"),
        ],
    )  # fmt: skip
    def test_failures_are_one_line(
        self, text: str, store: MemoryStore, message: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert (
            cloud_set_key_command(argparse.Namespace(), self.CONFIG, None, stdin=io.StringIO(text), key_store=store)
            == 1
        )
        assert capsys.readouterr().err == message + "\n"

    @pytest.mark.process
    def test_through_the_keyring_package(self) -> None:
        import keyring
        import keyring.backend

        class InMemory(keyring.backend.KeyringBackend):
            priority = 1  # type: ignore[assignment]
            data: ClassVar[dict[tuple[str, str], str]] = {}

            def get_password(self, service: str, username: str) -> str | None:
                return self.data.get((service, username))

            def set_password(self, service: str, username: str, password: str) -> None:
                self.data[(service, username)] = password

            def delete_password(self, service: str, username: str) -> None:
                self.data.pop((service, username), None)

        previous = keyring.get_keyring()
        keyring.set_keyring(InMemory())
        try:
            assert cloud_set_key_command(argparse.Namespace(), self.CONFIG, None, stdin=io.StringIO("tgp-2\n")) == 0
            assert InMemory.data == {("ollama-manager", "https://api.together.xyz/v1"): "tgp-2"}
            assert find_api_key(self.CONFIG.cloud, {}, SystemKeyStore()) == ApiKey("tgp-2", "the OS keyring")
        finally:
            keyring.set_keyring(previous)


# =========================================================================== real processes


class FakeNotifier:
    def __init__(self) -> None:
        self.shown: list[tuple[str, str, str | None]] = []

    def notify(self, title: str, message: str, *, key: str | None = None) -> bool:
        self.shown.append((title, message, key))
        return True


@dataclass
class Running:
    server: GatewayServer
    notifier: FakeNotifier
    history: History
    reports: list[str] = field(default_factory=list)  # what the gateway asked the monitor to check

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def gateway(self) -> Gateway:
        return self.server.gateway

    def post(self, path: str, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, **{"timeout": 30, **kwargs})

    def status(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/_gateway/status", timeout=5).json())


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    return manager.wait_until(condition, timeout, interval=0.02, what=what)


@pytest.fixture
def ollama(standin: StandinEnv) -> StandinEnv:
    standin.spawn_serve()
    standin.wait_ready()
    standin.pull("llama3")
    return standin


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[StandinCloud]:
    server = StandinCloud(str(tmp_path / "cloud"), api_key=KEY)
    yield server
    server.stop()


@pytest.fixture
def gateways() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(local_url: str, cloud: CloudSettings, *, env: dict[str, str] | None = None,
              store: MemoryStore | None = None, probe: bool = False, **settings: Any) -> Running:  # fmt: skip
        running = Running(server=None, notifier=FakeNotifier(), history=History(None))  # type: ignore[arg-type]
        gateway = Gateway(
            local_url=local_url,
            cloud=cloud,
            settings=GatewaySettings(**{"probe_interval": 0.1, **settings}),
            env={KEY_ENV: KEY} if env is None else env,
            key_store=store or MemoryStore(),
            report_problem=running.reports.append,
            history=running.history,
            notifier=running.notifier,
            probe=probe,
        )
        running.server = GatewayServer(gateway, 0)
        running.server.start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.server.stop()


def cloud_settings(cloud: StandinCloud, **kwargs: Any) -> CloudSettings:
    values = {
        "enabled": True,
        "base_url": cloud.base_url,
        "model": "cloud-model",
        "api_key_env": KEY_ENV,
        "timeout": 5.0,
        **kwargs,
    }
    return CloudSettings(**values)


TIMING = re.compile(rb'"(created_at|created|id)":("[^"]*"|\d+)|"(total|load|prompt_eval|eval)_duration":\d+')


def without_timing(data: bytes) -> bytes:
    return TIMING.sub(b"", data)


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def sse_events(response: httpx.Response) -> list[Any]:
    blocks = [b.removeprefix("data: ") for b in response.text.split("\n\n") if b.strip()]
    return [b if b == "[DONE]" else json.loads(b) for b in blocks]


@pytest.mark.process
class TestHealthyOllama:
    def test_answers_come_from_ollama_byte_identical(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud), probe=True)
        direct = httpx.Client(base_url=ollama.base_url, timeout=30)
        via = httpx.Client(base_url=gw.url, timeout=30)
        for method, path, body in [("GET", "/api/tags", None), ("GET", "/api/version", None),
                                   ("POST", "/api/show", {"model": "llama3"}), ("GET", "/v1/models", None),
                                   ("GET", "/", None), ("POST", "/api/show", {"model": "nope"})]:  # fmt: skip
            expected, got = direct.request(method, path, json=body), via.request(method, path, json=body)
            assert (got.status_code, got.content) == (expected.status_code, expected.content), path
            assert got.headers["content-type"] == expected.headers["content-type"]
            assert got.headers[HEADER] == "local"
        direct.post("/api/chat", json=CHAT)  # load the model first, so no answer below carries a load_duration
        for path, body in [("/api/chat", CHAT), ("/api/chat", dict(CHAT, stream=False)),
                           ("/api/generate", {"model": "llama3", "prompt": "a b"}),
                           ("/v1/chat/completions", dict(CHAT, stream=True)),
                           ("/v1/chat/completions", CHAT)]:  # fmt: skip
            expected, got = direct.post(path, json=body), via.post(path, json=body)
            assert got.headers[HEADER] == "local"
            assert got.headers["content-type"] == expected.headers["content-type"]
            assert without_timing(got.content) == without_timing(expected.content), path
        assert ndjson(via.post("/api/chat", json=CHAT))[-2]["message"]["content"] == " there"
        assert cloud.requests() == []
        assert gw.status()["calls"] == 6 and gw.status()["cloud_calls"] == 0

    def test_a_body_beyond_what_is_left_of_the_body_budget_gets_503_in_the_endpoints_format(
        self, ollama: StandinEnv, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, CloudSettings())
        budget = gw.server.body_budget
        small = json.dumps(dict(CHAT, stream=False)).encode()
        large = json.dumps(dict(CHAT, stream=False, messages=[{"role": "user", "content": "x" * 4096}])).encode()
        as_json = {"content-type": "application/json"}
        other_requests = budget.total - len(small)
        assert budget.take(other_requests)  # requests under way hold all but what the small body needs
        try:
            refused = {
                path: httpx.post(gw.url + path, content=large, headers=as_json, timeout=30)
                for path in ("/api/chat", "/v1/chat/completions")
            }
            fits = httpx.post(gw.url + "/api/chat", content=small, headers=as_json, timeout=30)
        finally:
            budget.give_back(other_requests)
        busy = "the server is busy: the requests under way hold 256 MiB of request bodies"
        for answer in refused.values():
            assert (answer.status_code, answer.headers["retry-after"], answer.headers[HEADER]) == (503, "5", "gateway")
        assert refused["/api/chat"].json()["error"].startswith(busy)
        assert refused["/v1/chat/completions"].json()["error"]["message"].startswith(busy)
        assert (fits.status_code, fits.headers[HEADER]) == (200, "local")
        wait_until(lambda: budget.in_use == 0, what="every request to give back what it held")
        assert httpx.post(gw.url + "/api/chat", content=large, headers=as_json, timeout=30).status_code == 200

    def test_foreign_host_and_web_page_origins_are_refused(
        self, ollama: StandinEnv, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, CloudSettings())
        rebound = httpx.get(gw.url + "/api/tags", headers={"Host": "evil.example:11435"})
        with socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])), timeout=10) as raw:
            raw.sendall(b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n")
            second_host = raw.recv(4096)
        assert second_host.startswith(b"HTTP/1.1 403 ")  # every Host field is looked at, not one of them
        page = httpx.post(gw.url + "/api/chat", json=CHAT, headers={"Origin": "https://evil.example"})
        local_page = httpx.get(gw.url + "/api/tags", headers={"Origin": "http://localhost:3000"})
        assert (rebound.status_code, rebound.json()) == (
            403,
            {"error": "forbidden: loopback clients and localhost names only"},
        )
        assert (page.status_code, page.json()) == (
            403,
            {"error": "forbidden: requests from this web page's origin are refused (see gateway.allowed_origins)"},
        )
        assert local_page.status_code == 200
        cors = {name: value for name, value in local_page.headers.items() if name.startswith("access-control-")}
        assert cors == {"access-control-allow-origin": "http://localhost:3000"}  # the gateway's, as Ollama's


@pytest.mark.process
class TestBrowserOrigins:
    """A request a browser sends (it has an Origin) is served as Ollama would serve it, and spends the cloud key
    only for an origin in gateway.allowed_origins; an unlisted origin gets nothing at all."""

    WHOLE: ClassVar[dict[str, Any]] = dict(CHAT, stream=False)

    def ask(self, gw: Running, origin: str | None, body: dict[str, Any] | None = None) -> httpx.Response:
        headers = {} if origin is None else {"Origin": origin}
        return gw.post("/api/chat", body or self.WHOLE, headers=headers)

    def test_each_default_kind_reaches_ollama_and_a_foreign_page_gets_nothing(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud))
        for origin in DEFAULT_ORIGIN_KINDS:
            response = self.ask(gw, origin)
            assert (response.status_code, response.headers[HEADER]) == (200, "local"), origin
        for origin in FOREIGN_ORIGINS:
            headers = {"Origin": origin}
            for response in (
                self.ask(gw, origin),
                httpx.get(gw.url + "/api/tags", headers=headers),
                httpx.request("DELETE", gw.url + "/api/delete", json={"model": "llama3"}, headers=headers),
            ):
                assert (response.status_code, response.headers[HEADER]) == (403, "gateway"), origin
        assert [m["name"] for m in ollama.client().get("/api/tags").json()["models"]] == ["llama3:latest"]
        assert cloud.requests() == []

    def test_an_unlisted_origin_never_gets_the_cloud_and_a_listed_editor_webview_does(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud))
        ollama.cleanup()
        for origin in ("https://evil.example", "null", "chrome-extension://abcdefghijklmnop"):
            refused = self.ask(gw, origin)
            assert (refused.status_code, refused.headers[HEADER]) == (403, "gateway"), origin
            assert self.ask(gw, origin, CHAT).status_code == 403
        assert cloud.requests() == []
        # An editor's webview is one of the user's programs, as the same extension without a browser would be.
        webview = self.ask(gw, "vscode-webview://1n2b3c4d5e")
        assert (webview.status_code, webview.headers[HEADER]) == (200, "cloud")
        assert (self.ask(gw, None).status_code, len(cloud.requests())) == (200, 2)

    def test_an_allowed_page_gets_ollamas_cors_answer_and_can_read_it(
        self, ollama: StandinEnv, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, CloudSettings())
        webview = "vscode-webview://1n2b3c4d5e"
        preflight = httpx.options(
            gw.url + "/api/chat",
            headers={
                "Origin": webview,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == webview
        assert "POST" in preflight.headers["access-control-allow-methods"].split(",")
        assert "content-type" in preflight.headers["access-control-allow-headers"].lower().split(",")
        answer = self.ask(gw, webview)
        assert (answer.status_code, answer.headers["access-control-allow-origin"]) == (200, webview)
        assert answer.headers["vary"] == "Origin"
        # A program (no Origin) gets no CORS fields; a foreign page's preflight is refused.
        assert not [name for name in self.ask(gw, None).headers if name.startswith("access-control-")]
        foreign = httpx.options(
            gw.url + "/api/chat", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert foreign.status_code == 403 and "access-control-allow-origin" not in foreign.headers

    def test_origins_in_ollama_origins_reach_ollama_as_they_would_directly_but_never_the_cloud(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        extension = "chrome-extension://abcdefghijklmnop"
        gw = gateways(
            ollama.base_url, cloud_settings(cloud), env={KEY_ENV: KEY, "OLLAMA_ORIGINS": "chrome-extension://*"}
        )
        served = self.ask(gw, extension)
        assert (served.status_code, served.headers[HEADER]) == (200, "local")
        assert self.ask(gw, "moz-extension://4b1d").status_code == 403
        ollama.cleanup()
        refused = self.ask(gw, extension)
        assert (refused.status_code, refused.headers[HEADER]) == (403, "gateway")
        assert refused.json()["error"].endswith(
            f"the cloud fallback answers only the browser origins in gateway.allowed_origins, "
            f"and this came from {extension!r}"
        )
        assert cloud.requests() == []

    def test_an_origin_listed_for_the_gateway_alone_is_answered_by_ollama_and_then_the_cloud(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        extension = "chrome-extension://abcdefghijklmnop"
        gw = gateways(ollama.base_url, cloud_settings(cloud), allowed_origins=(extension,))
        # Ollama itself refuses the extension (not in its default list): the gateway has judged the origin already.
        assert (
            httpx.post(ollama.base_url + "/api/chat", json=self.WHOLE, headers={"Origin": extension}).status_code == 403
        )
        served = self.ask(gw, extension)
        assert (served.status_code, served.headers[HEADER]) == (200, "local")
        assert self.ask(gw, "http://localhost:3000").status_code == 403  # the list replaces the default
        ollama.cleanup()
        answered = self.ask(gw, extension)
        assert (answered.status_code, answered.headers[HEADER]) == (200, "cloud")
        assert len(cloud.requests()) == 1


@pytest.mark.process
class TestOllamaDies:
    @pytest.mark.parametrize(
        ("path", "body", "check"),
        [
            ("/api/chat", CHAT, "ollama-stream"),
            ("/api/chat", dict(CHAT, stream=False), "ollama-whole"),
            ("/v1/chat/completions", dict(CHAT, stream=True), "openai-stream"),
            ("/v1/chat/completions", CHAT, "openai-whole"),
        ],
    )
    def test_the_next_request_is_served_by_the_cloud(
        self,
        path: str,
        body: dict[str, Any],
        check: str,
        ollama: StandinEnv,
        cloud: StandinCloud,
        gateways: Callable[..., Running],
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud))  # no probe: the request itself finds Ollama gone
        assert gw.post(path, body).headers[HEADER] == "local"
        ollama.cleanup()
        started = time.monotonic()
        response = gw.post(path, body)
        assert time.monotonic() - started < GatewaySettings().first_byte_timeout / 5  # no budget waited out
        assert (response.status_code, response.headers[HEADER]) == (200, "cloud")
        if check == "ollama-stream":
            assert response.headers["content-type"] == "application/x-ndjson"
            chunks = ndjson(response)
            assert [c["message"]["content"] for c in chunks] == ["Cloud", " answer", " to:", " hi", " there", ""]
            assert {k: v for k, v in chunks[-1].items() if k != "created_at"} == {
                "model": "cloud-model", "message": {"role": "assistant", "content": ""}, "done": True,
                "done_reason": "stop", "prompt_eval_count": 2, "eval_count": 5,
            }  # fmt: skip
        elif check == "ollama-whole":
            answer = response.json()
            assert (answer["message"], answer["done"], answer["model"]) == (
                {"role": "assistant", "content": "Cloud answer to: hi there"},
                True,
                "cloud-model",
            )
        elif check == "openai-stream":
            assert response.headers["content-type"] == "text/event-stream"
            events = sse_events(response)
            assert (
                "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "Cloud answer to: hi there"
            )
            assert events[-1] == "[DONE]"
        else:
            assert response.json()["choices"][0]["message"] == {
                "role": "assistant",
                "content": "Cloud answer to: hi there",
            }
        sent = cloud.requests()
        assert len(sent) == 1 and sent[0]["authorized"] is True
        assert sent[0]["body"]["model"] == "cloud-model"
        assert sent[0]["body"].get("stream", False) is check.endswith("stream")

    def test_fallback_announced_and_ollama_used_again_once_back(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud), probe=True)
        ollama.cleanup()
        wait_until(lambda: gw.status()["breaker"] == "open", what="the probe to notice")
        assert gw.post("/api/chat", CHAT).headers[HEADER] == "cloud"
        generate = gw.post("/api/generate", {"model": "llama3", "prompt": "yo", "stream": False})
        assert (generate.headers[HEADER], generate.json()["response"]) == ("cloud", "Cloud answer to: yo")
        tags = httpx.get(gw.url + "/api/tags").json()
        assert [m["name"] for m in tags["models"]] == ["cloud-model"]
        assert httpx.get(gw.url + "/").text == "Ollama is running"
        ollama.spawn_serve()
        ollama.wait_ready()
        wait_until(lambda: gw.status()["breaker"] == "closed", what="the probe to see Ollama back")
        tags = httpx.get(gw.url + "/api/tags")  # before any chat: the lists come from Ollama again at once
        assert (tags.headers[HEADER], [m["name"] for m in tags.json()["models"]]) == ("local", ["llama3:latest"])
        back = gw.post("/api/chat", dict(CHAT, stream=False))
        assert (back.headers[HEADER], back.json()["message"]["content"]) == ("local", "You said: hi there")
        wait_until(lambda: len(gw.notifier.shown) == 2, what="two notifications")
        assert [(t, k) for t, _, k in gw.notifier.shown] == [
            ("Cloud fallback active", "cloud-fallback-on"),
            ("Cloud fallback off", "cloud-fallback-off"),
        ]
        assert (
            gw.notifier.shown[0][1]
            == "Ollama is not answering (Ollama is down); requests through the gateway go to 127.0.0.1 (cloud-model)"
        )
        events = [(e.kind, e.data["active"]) for e in gw.history.events() if e.kind == "cloud"]
        assert events == [("cloud", True), ("cloud", False)]
        assert len(cloud.requests()) == 2

    def test_a_started_stream_is_never_switched(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud))
        ollama.set_faults(token_ms=300)
        body = {"model": "llama3", "messages": [{"role": "user", "content": "one two three four five"}]}
        with httpx.stream("POST", gw.url + "/api/chat", json=body, timeout=30) as response:
            lines = response.iter_lines()
            first = json.loads(next(lines))
            ollama.cleanup()
            rest = [json.loads(line) for line in lines if line.strip()]
        assert (response.headers[HEADER], first["message"]["content"]) == ("local", "You")
        assert rest[-1]["error"].startswith("Ollama broke off the answer")
        assert all("Cloud" not in json.dumps(item) for item in rest)
        assert cloud.requests() == []

    def test_a_stream_that_stalls_is_ended_with_an_error_and_reported_to_the_monitor(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud), idle_timeout=1.0)
        token_pause = 8.0
        ollama.set_faults(token_ms=token_pause * 1000)
        started = time.monotonic()
        response = gw.post("/api/generate", {"model": "llama3", "prompt": "one two"})
        elapsed = time.monotonic() - started
        chunks = ndjson(response)
        assert 1.0 <= elapsed < token_pause / 2  # after its idle budget, long before Ollama's next token
        assert (response.headers[HEADER], chunks[0]["response"], chunks[-1]) == (
            "local",
            "You",
            {"error": "Ollama stopped answering for 1 s"},
        )
        assert len(chunks) == 2
        wait_until(lambda: gw.reports == ["Ollama stopped answering for 1 s"], what="a report to the monitor")
        assert cloud.requests() == []

    def test_a_silent_stream_from_a_loaded_idle_model_goes_to_the_cloud_and_is_reported(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud), first_byte_timeout=0.5, breaker_failures=2)
        ollama.client().post("/api/chat", json=dict(CHAT, stream=False))  # the model is loaded, and idle
        ollama.set_faults(hang_inference=True)
        timings = []
        for _ in range(3):
            started = time.monotonic()
            response = gw.post("/api/chat", CHAT)
            timings.append(time.monotonic() - started)
            assert response.headers[HEADER] == "cloud"
            assert "".join(c["message"]["content"] for c in ndjson(response)) == "Cloud answer to: hi there"
        assert min(timings[:2]) >= 0.5
        assert timings[2] < min(timings[:2]) / 2  # the breaker is open: Ollama is not even tried
        status = gw.status()
        assert (status["breaker"], status["breaker_reason"], status["cloud_active"]) == (
            "open",
            "Ollama sent nothing for 0.5 s",
            True,
        )
        assert (status["calls"], status["cloud_calls"], status["fallback_ratio"]) == (3, 3, 1.0)
        # The monitor is asked to look (once: reports are spaced out); whether anything restarts is its call.
        wait_until(lambda: gw.reports, what="a report to the monitor")
        assert gw.reports == ["Ollama sent nothing for 0.5 s"]

    def test_ollama_5xx_before_the_first_byte_falls_back(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud))
        ollama.set_faults(
            http_error={
                "path": "/api/chat",
                "status": 500,
                "error": "model requires more system memory (8.0 GiB) than is available (4.0 GiB)",
            }
        )
        response = gw.post("/api/chat", dict(CHAT, stream=False))
        assert (response.headers[HEADER], response.json()["message"]["content"]) == (
            "cloud",
            "Cloud answer to: hi there",
        )
        assert (
            gw.gateway.last_local_problem
            == "Ollama answered 500: model requires more system memory (8.0 GiB) than is available (4.0 GiB)"
        )
        wait_until(lambda: gw.reports, what="a report to the monitor")
        assert gw.reports == [gw.gateway.last_local_problem]


LONG: dict[str, Any] = {"model": "llama3", "messages": [{"role": "user", "content": "one two three four five six"}]}
LONG_REPLY = "You said: one two three four five six"  # 8 tokens: 7 pauses of token_ms
LONG_PAUSES = 7


def cancelled(ollama: StandinEnv) -> list[dict[str, Any]]:
    """The requests Ollama stopped working on because their client went away."""
    return [e for e in ollama.events() if e.get("event") == "request_cancelled"]


@pytest.mark.process
class TestSlowIsNotBroken:
    """Silence that the work explains (a whole answer, a load, a queue) is waited for locally, never sent away."""

    def test_whole_answers_slower_than_the_first_byte_budget_are_answered_locally(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud), first_byte_timeout=0.5)
        ollama.client().post("/api/chat", json=dict(CHAT, stream=False))  # loaded and idle
        ollama.set_faults(token_ms=200)  # each answer takes 1.4 s, nothing sent before it is complete
        generate = {"model": "llama3", "prompt": LONG["messages"][0]["content"], "stream": False}
        requests = [
            ("/api/chat", dict(LONG, stream=False)),
            ("/v1/chat/completions", LONG),
            ("/api/generate", generate),
        ]
        for path, body in requests:
            started = time.monotonic()
            response = gw.post(path, body)
            elapsed = time.monotonic() - started
            assert (response.status_code, response.headers[HEADER]) == (200, "local"), path
            answer = response.json()
            text = answer.get("response") or answer.get("message", {}).get("content")
            text = text or answer["choices"][0]["message"]["content"]
            assert text == LONG_REPLY, path
            assert elapsed >= 2 * 0.5, path  # the answer took longer than the budget that used to send it away
        assert cloud.requests() == []
        assert (gw.gateway.last_local_problem, gw.status()["breaker"]) == ("", "closed")

    def test_a_cold_load_longer_than_the_first_byte_budget_is_answered_locally(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud), first_byte_timeout=0.5)
        ollama.set_faults(load_ms=1500)  # llama3 is pulled, not loaded: a streamed chat loads it first
        response = gw.post("/api/chat", CHAT)
        chunks = ndjson(response)
        assert response.headers[HEADER] == "local"
        assert "".join(c["message"]["content"] for c in chunks) == "You said: hi there"
        assert chunks[-1]["load_duration"] >= 1.5e9
        ollama.client().post("/api/generate", json={"model": "llama3", "keep_alive": 0})  # unloaded again
        stream = gw.post("/v1/chat/completions", dict(CHAT, stream=True))
        assert stream.headers[HEADER] == "local"
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in sse_events(stream)[:-1]) == (
            "You said: hi there"
        )
        assert cloud.requests() == []
        assert gw.gateway.last_local_problem == ""

    def test_a_silent_whole_answer_waits_its_local_budget_and_never_goes_to_the_cloud(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud), first_byte_timeout=0.5, local_timeout=2)
        ollama.client().post("/api/chat", json=dict(CHAT, stream=False))
        ollama.set_faults(hang_inference=True)
        started = time.monotonic()
        response = gw.post("/v1/chat/completions", CHAT)
        assert time.monotonic() - started >= 2
        message = (
            "Ollama sent nothing for 2 s (to wait longer for loads and whole answers, raise gateway.local_timeout)"
        )
        assert (response.status_code, response.headers[HEADER]) == (504, "gateway")
        assert response.json()["error"]["message"] == message
        assert cloud.requests() == []
        assert gw.status()["breaker"] == "closed"  # slow is not broken
        wait_until(lambda: gw.reports, what="a report to the monitor")
        assert gw.reports == [message]

    def test_work_the_monitor_sees_makes_a_stream_wait_its_turn_locally(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud), first_byte_timeout=0.5)
        ollama.client().post("/api/chat", json=dict(CHAT, stream=False))
        ollama.set_faults(slow_inference_ms=1500)  # the first token waits for work ahead of this request
        busy = BusyStatus("llama3:latest", None, None, 40.0, None, BusySource.RUNNER, False)  # a client of Ollama's own
        loaded = (LoadedModelStatus("llama3:latest", 4_661_224_676, 0),)
        gw.gateway.observe_status(make_status(busy=busy, loaded_models=loaded))
        queued = gw.post("/api/chat", CHAT)
        assert (queued.headers[HEADER], ndjson(queued)[0]["message"]["content"]) == ("local", "You")
        gw.gateway.observe_status(make_status(busy=None, loaded_models=loaded))
        idle = gw.post("/api/chat", CHAT)  # nothing ahead of it: silence past the budget means trouble
        assert idle.headers[HEADER] == "cloud"
        assert len(cloud.requests()) == 1

    def test_a_stream_routed_first_waits_locally_while_another_request_is_in_progress(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        """Two requests sent together reach Ollama in the order their connections do: either may be queued."""
        gw = gateways(ollama.base_url, cloud_settings(cloud), first_byte_timeout=0.5)
        ollama.client().post("/api/chat", json=dict(CHAT, stream=False))
        ollama.set_faults(slow_inference_ms=1500)
        streamed = in_thread(lambda: gw.post("/api/chat", CHAT))  # routed alone: the short budget
        wait_until(lambda: gw.gateway.local_activity().waiting == 1, what="a stream waiting for its first byte")
        whole = in_thread(lambda: gw.post("/api/chat", dict(CHAT, stream=False)))
        wait_until(lambda: gw.gateway.local_activity().waiting == 2, what="a second request in progress")
        answers = [streamed(), whole()]
        assert [answer.headers[HEADER] for answer in answers] == ["local", "local"]
        assert cloud.requests() == []


@pytest.mark.process
class TestHangFoundByTheMonitor:
    """When the monitor's probe finds Ollama down, requests with no byte back are answered at once."""

    def test_waiting_requests_are_answered_by_the_cloud_at_once(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        budget = 30.0
        gw = gateways(ollama.base_url, cloud_settings(cloud), first_byte_timeout=budget)
        ollama.client().post("/api/chat", json=dict(CHAT, stream=False))
        ollama.set_faults(hang_inference=True)
        whole = in_thread(lambda: gw.post("/api/chat", dict(CHAT, stream=False), timeout=60))
        streamed = in_thread(lambda: gw.post("/v1/chat/completions", dict(CHAT, stream=True), timeout=60))
        wait_until(lambda: gw.gateway.local_activity().waiting == 2, what="two requests waiting on Ollama")
        found_down = time.monotonic()
        gw.gateway.observe_status(make_status(health=Health.DOWN, state=MonitorState.RUNNING))
        answers = [whole(), streamed()]
        assert time.monotonic() - found_down < budget / 10  # at once, not when their budget runs out
        assert [a.headers[HEADER] for a in answers] == ["cloud", "cloud"]
        assert answers[0].json()["message"]["content"] == "Cloud answer to: hi there"
        assert sse_events(answers[1])[-1] == "[DONE]"
        assert gw.gateway.local_activity().in_flight == {}
        assert gw.gateway.last_local_problem == "Ollama stopped answering (the health check found it down)"
        assert gw.reports == []  # the monitor found it: nothing to tell it

    def test_without_the_cloud_they_get_a_clear_error_at_once(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud, enabled=False), first_byte_timeout=0.5)
        ollama.client().post("/api/chat", json=dict(CHAT, stream=False))
        ollama.set_faults(hang_inference=True)
        waiting = in_thread(lambda: gw.post("/api/generate", {"model": "llama3", "prompt": "hi"}, timeout=60))
        # Past its first-byte budget the streamed request is reported, and waits on: failing it helps nobody.
        wait_until(lambda: gw.reports, what="a report to the monitor")
        assert gw.reports == ["a streamed request to a loaded model got nothing from Ollama for 0.5 s"]
        assert gw.gateway.local_activity().waiting == 1
        gw.gateway.observe_status(make_status(health=Health.DOWN, state=MonitorState.RUNNING))
        answer = waiting()
        assert (answer.status_code, answer.headers[HEADER]) == (503, "gateway")
        assert answer.json() == {
            "error": "Ollama stopped answering (the health check found it down); the cloud fallback is off"
        }
        assert cloud.requests() == []

    def test_a_stream_already_under_way_is_left_alone(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud))
        ollama.set_faults(token_ms=150)
        with httpx.stream("POST", gw.url + "/api/chat", json=LONG, timeout=30) as response:
            lines = response.iter_lines()
            first = json.loads(next(lines))
            gw.gateway.observe_status(make_status(health=Health.DOWN, state=MonitorState.RUNNING))
            rest = [json.loads(line) for line in lines if line.strip()]
        assert (response.headers[HEADER], first["message"]["content"]) == ("local", "You")
        assert "".join(c["message"]["content"] for c in [first, *rest]) == LONG_REPLY
        assert rest[-1]["done"] is True
        assert cloud.requests() == []


@pytest.mark.process
class TestClientGoesAway:
    """A client that disconnects cancels what the gateway sent for it, at once."""

    def test_while_ollama_streams_the_answer(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud))
        ollama.set_faults(token_ms=1000)
        with httpx.stream("POST", gw.url + "/api/chat", json=LONG, timeout=30) as response:
            lines = response.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)
            assert gw.gateway.local_activity().in_flight == {"llama3:latest": 1}
        gone = time.time()  # the stand-in stamps its events with the wall clock
        event = wait_until(lambda: cancelled(ollama), what="Ollama to cancel the request")[0]
        assert (event["stage"], event["path"]) == ("generating", "/api/chat")
        assert event["time"] - gone < LONG_PAUSES * 1.0 / 2  # long before the answer would have ended
        wait_until(lambda: gw.gateway.local_activity().in_flight == {}, what="the gateway to let go of it")

    def test_while_waiting_for_a_whole_answer(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud))
        ollama.client().post("/api/chat", json=dict(CHAT, stream=False))
        ollama.set_faults(token_ms=1000)  # a 7 s answer, nothing sent before it is complete
        with pytest.raises(httpx.ReadTimeout):
            gw.post("/api/chat", dict(LONG, stream=False), timeout=httpx.Timeout(30, read=0.5))
        gone = time.time()
        event = wait_until(lambda: cancelled(ollama), what="Ollama to cancel the request")[0]
        assert (event["stage"], event["path"]) == ("generating", "/api/chat")
        assert event["time"] - gone < LONG_PAUSES * 1.0 / 2  # long before the answer would have ended
        assert cloud.requests() == []

    def test_while_queued_behind_another_request(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud))
        ollama.client().post("/api/chat", json=dict(CHAT, stream=False))
        ollama.set_faults(token_ms=500)
        first = {"model": "llama3", "prompt": "a b c d e f", "stream": False}
        ahead = in_thread(lambda: gw.post("/api/generate", first))
        wait_until(lambda: gw.gateway.local_activity().waiting == 1, what="a first answer being generated")
        with pytest.raises(httpx.ReadTimeout):
            gw.post("/api/chat", LONG, timeout=httpx.Timeout(30, read=0.5))
        event = wait_until(lambda: cancelled(ollama), what="Ollama to drop the queued request")[0]
        assert (event["stage"], event["path"]) == ("waiting", "/api/chat")  # for the model's one slot
        assert gw.gateway.local_activity().in_flight == {"llama3:latest": 1}  # the first one goes on
        assert ahead().json()["response"] == "You said: a b c d e f"
        done = [e for e in ollama.events() if e.get("event") == "request_done" and e["path"] == "/api/generate"]
        assert event["time"] < done[0]["time"]  # dropped while the request ahead was still answered
        assert cloud.requests() == []

    @pytest.mark.parametrize("stream", [False, True])
    def test_while_the_cloud_answers(
        self, stream: bool, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud, timeout=30))
        ollama.cleanup()
        cloud.set_faults(slow_ms=0 if stream else 10_000, token_ms=1000)  # either way, more than 7 s to go
        if stream:
            with httpx.stream("POST", gw.url + "/v1/chat/completions", json=dict(LONG, stream=True), timeout=30) as r:
                assert r.headers[HEADER] == "cloud"
                lines = r.iter_lines()
                next(lines)
                assert cloud.events() == []
        else:
            with pytest.raises(httpx.ReadTimeout):
                gw.post("/v1/chat/completions", LONG, timeout=httpx.Timeout(30, read=0.5))
        gone = time.time()  # the stand-in cloud stamps its events with the wall clock
        event = wait_until(cloud.events, what="the cloud to see the client gone")[0]
        assert (event["event"], event["path"]) == ("client_gone", "/v1/chat/completions")
        assert event["time"] - gone < LONG_PAUSES * 1.0 / 2  # long before the answer would have ended


@pytest.mark.process
class TestWhatTheMonitorSees:
    def test_local_activity_counts_requests_sent_to_ollama(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        from tray.gateway.breaker import LocalActivity

        gw = gateways(ollama.base_url, cloud_settings(cloud))
        assert gw.gateway.local_activity() == LocalActivity({}, 0, None)
        ollama.client().post("/api/chat", json=dict(CHAT, stream=False))
        ollama.set_faults(token_ms=300)
        whole = in_thread(lambda: gw.post("/api/chat", dict(LONG, model="llama3:latest", stream=False)))
        wait_until(lambda: gw.gateway.local_activity().waiting == 1, what="a whole answer being generated")
        assert gw.gateway.local_activity() == LocalActivity({"llama3:latest": 1}, 1, None)
        streamed = in_thread(lambda: gw.post("/api/chat", LONG))  # Ollama queues it behind the whole answer
        wait_until(lambda: gw.gateway.local_activity().waiting == 2, what="a second request, queued")
        assert gw.gateway.local_activity() == LocalActivity({"llama3:latest": 2}, 2, None)
        assert whole().json()["message"]["content"] == LONG_REPLY
        first = wait_until(
            lambda: (a := gw.gateway.local_activity()).waiting == 0 and a.in_flight and a, what="bytes streaming"
        )
        assert first.in_flight == {"llama3:latest": 1}
        assert first.last_progress is not None and first.last_progress <= time.monotonic()  # the monitor's clock
        later = wait_until(
            lambda: (a := gw.gateway.local_activity()).last_progress != first.last_progress and a, what="more bytes"
        )
        assert later.last_progress > first.last_progress  # type: ignore[operator]
        assert "".join(c["message"]["content"] for c in ndjson(streamed())) == LONG_REPLY
        wait_until(lambda: gw.gateway.local_activity().in_flight == {}, what="nothing in flight")
        cloud_only = gateways(ollama.base_url, cloud_settings(cloud))
        cloud_only.gateway.observe_status(make_status(health=Health.DOWN, state=MonitorState.FAILED))
        assert cloud_only.post("/api/chat", dict(CHAT, stream=False)).headers[HEADER] == "cloud"
        assert cloud_only.gateway.local_activity() == LocalActivity({}, 0, None)  # nothing went to Ollama


@pytest.mark.process
class TestModelLists:
    def test_lists_come_from_ollama_as_soon_as_the_monitor_says_it_answers(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud))
        assert httpx.get(gw.url + "/api/tags").headers[HEADER] == "local"
        gw.gateway.observe_status(make_status(health=Health.DOWN, state=MonitorState.RESTARTING))
        assert httpx.get(gw.url + "/api/tags").headers[HEADER] == "gateway"
        gw.gateway.observe_status(make_status(health=Health.HEALTHY, state=MonitorState.RUNNING, loaded_models=()))
        assert gw.status()["breaker"] == "closed"
        for path in ("/api/tags", "/api/ps", "/api/version"):
            assert httpx.get(gw.url + path).headers[HEADER] == "local", path
        assert gw.notifier.shown[-1][0] == "Cloud fallback off"

    def test_show_while_down_knows_only_models_that_exist(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud))
        httpx.get(gw.url + "/api/tags")  # llama3 seen
        ollama.cleanup()
        gw.gateway.observe_status(make_status(health=Health.DOWN, state=MonitorState.RUNNING))
        names = ("Llama3", "cloud-model", "nope:7b")
        answers = {name: httpx.post(gw.url + "/api/show", json={"model": name}) for name in names}
        assert {n: (a.status_code, a.headers[HEADER]) for n, a in answers.items()} == {
            "Llama3": (200, "gateway"), "cloud-model": (200, "gateway"), "nope:7b": (404, "gateway"),
        }  # fmt: skip
        assert answers["nope:7b"].json() == {"error": "model 'nope:7b' not found"}
        assert httpx.post(gw.url + "/api/show", json={}).json() == {"error": "model is required"}
        assert httpx.get(gw.url + "/v1/models/LLAMA3").json()["id"] == "llama3:latest"


@pytest.mark.process
class TestNobodyAnswers:
    @pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
    @pytest.mark.parametrize("stream", [True, False])
    def test_cloud_down_too_gives_a_clear_error_at_once(
        self, path: str, stream: bool, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud))
        ollama.cleanup()
        cloud.stop()
        started = time.monotonic()
        response = gw.post(path, dict(CHAT, stream=stream))
        assert time.monotonic() - started < GatewaySettings().first_byte_timeout / 5  # no budget waited out
        message = (
            f"Ollama is not reachable at {ollama.base_url} (connection refused), "
            f"and the cloud fallback failed: cannot reach 127.0.0.1 (connection refused)"
        )
        assert (response.status_code, response.headers[HEADER]) == (502, "gateway")
        assert response.json() == (
            {"error": message}
            if path == "/api/chat"
            else {"error": {"message": message, "type": "api_error", "param": None, "code": None}}
        )

    def test_cloud_errors_and_slowness_are_reported_not_waited_on(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud, timeout=1.0))
        ollama.cleanup()
        cloud.set_faults(status=503)
        busy = gw.post("/api/chat", CHAT)
        assert (busy.status_code, busy.json()["error"].split(", and ")[1]) == (
            502,
            "the cloud fallback failed: 127.0.0.1 answered 503: stand-in cloud fault 503",
        )
        cloud_pause = 8.0
        cloud.set_faults(slow_ms=cloud_pause * 1000)
        started = time.monotonic()
        slow = gw.post("/v1/chat/completions", CHAT)
        assert time.monotonic() - started < cloud_pause / 2  # given up after its 1 s, not waited on
        assert (slow.status_code, slow.json()["error"]["message"].split(", and ")[1]) == (
            504,
            "the cloud fallback failed: 127.0.0.1 sent nothing for 1 s",
        )
        cloud.set_faults(break_after=2)
        cut = gw.post("/api/chat", CHAT)
        assert cut.status_code == 200
        assert [c.get("message", {}).get("content") for c in ndjson(cut)[:2]] == ["Cloud", " answer"]
        assert ndjson(cut)[-1]["error"].startswith("127.0.0.1 broke off the answer")

    def test_a_provider_that_echoes_the_key_is_relayed_logged_and_recorded_without_it(
        self,
        ollama: StandinEnv,
        cloud: StandinCloud,
        gateways: Callable[..., Running],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud))
        ollama.cleanup()
        cloud.set_faults(status=400, echo_auth=True)
        with caplog.at_level(logging.DEBUG):
            failed = gw.post("/api/chat", CHAT)
            assert failed.status_code == 400
            assert failed.json()["error"].endswith(
                "127.0.0.1 answered 400: stand-in cloud fault 400 "
                "(Received API Key = [redacted]; Authorization: Bearer [redacted])"
            )
            cloud.set_faults(echo_auth=True)
            streamed = gw.post("/v1/chat/completions", dict(CHAT, stream=True))
            assert streamed.headers[HEADER] == "cloud"
            events = sse_events(streamed)
            assert events[2]["error"]["message"] == (
                "upstream failed (Received API Key = [redacted]; Authorization: Bearer [redacted])"
            )
            whole = gw.post("/v1/chat/completions", CHAT)
        assert cloud.requests()[-1]["authorized"]  # the provider did get the key
        for text in (failed.text, streamed.text, whole.text, caplog.text, repr(gw.history.events())):
            assert KEY not in text

    def test_a_refused_key_is_named_never_shown_and_keeps_its_meaning(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        import openai

        gw = gateways(ollama.base_url, cloud_settings(cloud), env={KEY_ENV: "sk-wrong-key"})
        ollama.cleanup()
        response = gw.post("/api/chat", CHAT)
        assert (response.status_code, response.headers[HEADER]) == (401, "gateway")
        assert response.json()["error"].endswith(
            f"the cloud fallback failed: 127.0.0.1 refused the API key (401); set ${KEY_ENV} or run: "
            "ollama-manager cloud set-key"
        )
        assert "sk-wrong" not in response.text
        # An OpenAI client sees an authentication error, in its own format, and does not retry it.
        compat = openai.OpenAI(base_url=gw.url + "/v1", api_key="not-needed", max_retries=2)
        with pytest.raises(openai.AuthenticationError) as error:
            compat.chat.completions.create(model="llama3", messages=MESSAGES)
        assert error.value.status_code == 401
        assert "refused the API key (401)" in error.value.message
        assert len(cloud.requests()) == 2  # one per call, no retries
        cloud.set_faults(status=403)
        forbidden = gw.post("/v1/chat/completions", CHAT)
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["message"].endswith(
            f"127.0.0.1 refused the API key (403); set ${KEY_ENV} or run: ollama-manager cloud set-key"
        )

    def test_fallback_disabled_never_reaches_the_cloud(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        off = cloud_settings(cloud, enabled=False)
        gw = gateways(ollama.base_url, off, probe=True, breaker_open_seconds=0.5, breaker_max_open_seconds=0.5)
        assert gw.post("/api/chat", CHAT).headers[HEADER] == "local"
        ollama.cleanup()
        answers = [
            gw.post(path, dict(CHAT, stream=stream))
            for path in ("/api/chat", "/v1/chat/completions")
            for stream in (True, False)
        ]
        answers += [gw.post("/api/embed", {"model": "all-minilm", "input": "x"}), httpx.get(gw.url + "/api/tags")]
        assert [a.status_code for a in answers] == [503] * 6
        assert answers[0].json()["error"].endswith("; the cloud fallback is off")
        assert all(a.headers[HEADER] == "gateway" for a in answers)
        assert gw.status()["cloud_active"] is False
        assert gw.notifier.shown == []
        assert cloud.requests() == []


@pytest.mark.process
class TestClients:
    def test_official_ollama_and_openai_libraries_work_unmodified(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        import ollama as ollama_lib
        import openai

        gw = gateways(ollama.base_url, cloud_settings(cloud))
        native = ollama_lib.Client(host=gw.url)
        compat = openai.OpenAI(base_url=gw.url + "/v1", api_key="not-needed", max_retries=0)

        def ask_all() -> list[str]:
            answers = [native.chat(model="llama3", messages=MESSAGES).message.content or ""]
            answers.append(
                "".join(
                    part.message.content or "" for part in native.chat(model="llama3", messages=MESSAGES, stream=True)
                )
            )
            answers.append(native.generate(model="llama3", prompt="hi there").response)
            answers.append(
                compat.chat.completions.create(model="llama3", messages=MESSAGES).choices[0].message.content or ""
            )
            stream = compat.chat.completions.create(model="llama3", messages=MESSAGES, stream=True)
            answers.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
            return answers

        assert ask_all() == ["You said: hi there"] * 5
        assert [m.model for m in native.list().models] == ["llama3:latest"]
        ollama.cleanup()
        assert ask_all() == ["Cloud answer to: hi there"] * 5
        assert [m.model for m in native.list().models] == ["llama3:latest", "cloud-model"]
        assert [m.id for m in compat.models.list()] == ["llama3:latest", "cloud-model"]

    def test_an_ollama_api_host_as_the_cloud(
        self, ollama: StandinEnv, tmp_path: Path, gateways: Callable[..., Running]
    ) -> None:
        remote = StandinEnv(tmp_path / "remote")
        try:
            remote.spawn_serve()
            remote.wait_ready()
            remote.pull("mistral")
            settings = CloudSettings(
                enabled=True, provider="ollama", base_url=remote.base_url, model="mistral", api_key_env=KEY_ENV
            )
            gw = gateways(ollama.base_url, settings)
            ollama.cleanup()
            whole = gw.post("/v1/chat/completions", CHAT)
            assert (whole.headers[HEADER], whole.json()["choices"][0]["message"]["content"]) == (
                "cloud",
                "You said: hi there",
            )
            assert whole.json()["model"] == "mistral"
            stream = gw.post("/v1/chat/completions", dict(CHAT, stream=True, stream_options={"include_usage": True}))
            events = sse_events(stream)
            assert "".join(e["choices"][0]["delta"]["content"] for e in events[:-3]) == "You said: hi there"
            assert (
                events[-3]["choices"][0]["finish_reason"],
                events[-2]["usage"]["completion_tokens"],
                events[-1],
            ) == ("stop", 4, "[DONE]")
            native = gw.post("/api/chat", CHAT)
            assert [c["message"]["content"] for c in ndjson(native)] == ["You", " said:", " hi", " there", ""]
            assert ndjson(native)[0]["model"] == "mistral"
        finally:
            remote.cleanup()

    def test_embeddings_through_the_cloud(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running]
    ) -> None:
        gw = gateways(
            ollama.base_url,
            cloud_settings(cloud, embedding_model="cloud-embed"),
            store=MemoryStore({cloud.base_url: KEY}),
            env={},
        )
        ollama.cleanup()
        embed = gw.post("/api/embed", {"model": "all-minilm", "input": ["ab", "c"]})
        assert embed.json() == {
            "model": "cloud-embed",
            "embeddings": [[0.365, 0.56, 0.755, 0.95], [0.693, 0.792, 0.891, 0.99]],
            "prompt_eval_count": 2,
        }
        legacy = gw.post("/api/embeddings", {"model": "all-minilm", "prompt": "c"})
        assert legacy.json() == {"embedding": [0.693, 0.792, 0.891, 0.99]}
        openai_style = gw.post("/v1/embeddings", {"model": "x", "input": "c"})
        assert openai_style.json()["data"][0]["embedding"] == [0.693, 0.792, 0.891, 0.99]
        assert all(r["authorized"] for r in cloud.requests())

    def test_python_chat_api_uses_the_same_routing(self, ollama: StandinEnv, cloud: StandinCloud) -> None:
        reports: list[str] = []
        client = LocalFirstChat(
            local_url=ollama.base_url, model="llama3", cloud=cloud_settings(cloud), env={KEY_ENV: KEY},
            key_store=MemoryStore(), report_problem=reports.append,
        )  # fmt: skip
        try:
            reply = chat(MESSAGES, client=client)
            assert (reply.content, reply.backend) == ("You said: hi there", Backend.LOCAL)
            ollama.cleanup()
            reply = client.chat(MESSAGES)
            assert (reply.content, reply.backend, reply.response["model"]) == (
                "Cloud answer to: hi there",
                Backend.CLOUD,
                "cloud-model",
            )
            stream = client.chat(MESSAGES, stream=True)
            assert stream.backend is Backend.CLOUD
            assert [c["message"]["content"] for c in stream] == ["Cloud", " answer", " to:", " hi", " there", ""]
            client.chat(MESSAGES)
            assert client.router.breaker.state(time.monotonic()).value == "open"
            wait_until(lambda: reports, what="a report")
            assert reports == [f"Ollama is not reachable at {ollama.base_url} (connection refused)"]
            cloud.stop()
            with pytest.raises(ChatError) as error:
                client.chat(MESSAGES)
            assert str(error.value).startswith("Ollama is skipped after failing (Ollama is not reachable at")
            assert str(error.value).endswith(
                "and the cloud fallback failed: cannot reach 127.0.0.1 (connection refused)"
            )
        finally:
            client.close()

    def test_python_chat_api_waits_for_slow_answers_and_loads(self, ollama: StandinEnv, cloud: StandinCloud) -> None:
        reports: list[str] = []
        client = LocalFirstChat(
            local_url=ollama.base_url, model="llama3", cloud=cloud_settings(cloud), env={KEY_ENV: KEY},
            key_store=MemoryStore(), report_problem=reports.append,
            settings=GatewaySettings(first_byte_timeout=0.5, local_timeout=30),
        )  # fmt: skip
        try:
            ollama.set_faults(load_ms=1500)
            cold = client.chat(MESSAGES, stream=True)  # llama3 is not in memory: its load comes first
            assert cold.backend is Backend.LOCAL
            assert "".join(c["message"]["content"] for c in cold) == "You said: hi there"
            ollama.set_faults(token_ms=300)
            whole = client.chat(LONG["messages"])  # 2.1 s, nothing sent before it is complete
            assert (whole.backend, whole.content) == (Backend.LOCAL, LONG_REPLY)
            assert cloud.requests() == [] and reports == []
        finally:
            client.close()


@pytest.mark.process
class TestWiring:
    def test_gateway_command_serves_until_stopped_and_reports_a_taken_port(
        self, ollama: StandinEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from standin.harness import free_port

        port = free_port()
        config = type("Cfg", (), {"host": parse_ollama_host(ollama.base_url), "notifications": False,
                                  "cloud": CloudSettings(), "gateway": GatewaySettings(port=port)})()  # fmt: skip
        paths = AppPaths(
            config_dir=tmp_path / "c", log_dir=tmp_path / "l", data_dir=tmp_path / "d", state_dir=tmp_path / "s"
        )
        stop = threading.Event()
        statuses: list[int] = []
        thread = threading.Thread(
            target=lambda: statuses.append(gateway_command(type("A", (), {"port": None})(), config, paths, stop=stop))
        )
        thread.start()
        try:
            answer = wait_until(lambda: _try_get(f"http://127.0.0.1:{port}/api/version"), what="the gateway")
            assert answer.headers[HEADER] == "local"
            assert gateway_command(type("A", (), {"port": None})(), config, paths, stop=threading.Event()) == 1
        finally:
            stop.set()
            thread.join(15)
        out = capsys.readouterr()
        assert statuses == [0]
        assert (
            out.out.splitlines()[0]
            == f"Gateway on http://127.0.0.1:{port} for Ollama at {ollama.base_url}; cloud fallback off"
        )
        assert (
            out.err == f"ollama-manager: the gateway cannot listen on 127.0.0.1:{port} (Address already in use); "
            "set gateway.port to a free port\n"
        )

    def test_inside_the_monitor_it_follows_the_monitors_health(self, ollama: StandinEnv, cloud: StandinCloud) -> None:
        class FakeMonitor:
            def __init__(self) -> None:
                self.subscribers: list[Callable[[Status], None]] = []
                self.requests: list[str] = []

            def subscribe(self, callback: Callable[[Status], None]) -> Callable[[], None]:
                self.subscribers.append(callback)
                return lambda: self.subscribers.remove(callback)

            def snapshot(self) -> Status:
                return make_status()

            def request(self, action: str) -> None:
                self.requests.append(action)

        monitor = FakeMonitor()
        off = type("Cfg", (), {"host": parse_ollama_host(ollama.base_url), "gateway": GatewaySettings()})()
        assert gateway_for_monitor(off, lambda: monitor.request("check")) is None
        config = type("Cfg", (), {"host": parse_ollama_host(ollama.base_url), "cloud": cloud_settings(cloud),
                                  "gateway": GatewaySettings(enabled=True, port=0)})()  # fmt: skip
        gateway = gateway_for_monitor(config, lambda: monitor.request("check"))
        assert gateway is not None
        server = serve_beside_monitor(gateway, 0, monitor)
        try:
            server.gateway.env = {KEY_ENV: KEY}
            monitor.subscribers[0](make_status(health=Health.DOWN, state=MonitorState.FAILED))
            answer = httpx.post(server.url + "/api/chat", json=dict(CHAT, stream=False), timeout=30)
            assert answer.headers[HEADER] == "cloud"  # Ollama is up, but the monitor said it is not
            monitor.subscribers[0](make_status(health=Health.HEALTHY, state=MonitorState.RUNNING))
            assert (
                httpx.post(server.url + "/api/chat", json=dict(CHAT, stream=False), timeout=30).headers[HEADER]
                == "local"
            )
            ollama.cleanup()  # gone before the monitor's next probe: the gateway tells it what it saw
            assert httpx.post(server.url + "/api/chat", json=CHAT, timeout=30).headers[HEADER] == "cloud"
            wait_until(lambda: monitor.requests, what="a request to the monitor")
            assert monitor.requests == ["check"]  # never "restart": the monitor's probe decides
        finally:
            server.stop()
        assert monitor.subscribers == []


def _try_get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


@pytest.mark.process
class TestOtherUsers:
    """Another local user's program reaches the gateway on loopback like any other; the key is the owner's."""

    POST = (
        "import json, sys, urllib.request, urllib.error\n"
        "headers = {'Content-Type': 'application/json'}\n"
        "# BORROW\n"
        "request = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), headers=headers)\n"
        "try:\n"
        "    answer = urllib.request.urlopen(request, timeout=30)\n"
        "except urllib.error.HTTPError as error:\n"
        "    answer = error\n"
        "print(json.dumps([answer.status, answer.headers['x-ollama-manager-backend'], answer.read().decode()]))\n"
    )

    # Instead of its own, names in X-Forwarded-For the address of a connection the gateway's owner holds open to it,
    # found in /proc/net/tcp (which every user may read; the listener's uid is the owner's).
    BORROW_ADDRESS = (
        "import urllib.parse\n"
        "port = urllib.parse.urlsplit(sys.argv[1]).port\n"
        "rows = [line.split() for line in open('/proc/net/tcp').read().splitlines()[1:]]\n"
        "def port_of(field): return int(field.rsplit(':', 1)[1], 16)\n"
        "owner = next(r[7] for r in rows if r[3] == '0A' and port_of(r[1]) == port)\n"
        "borrowed = next(port_of(r[1]) for r in rows if r[3] == '01' and port_of(r[2]) == port and r[7] == owner)\n"
        "headers['X-Forwarded-For'] = f'127.0.0.1:{borrowed}'\n"
    )

    def post_as(
        self, account: Account, url: str, body: dict[str, Any], *, borrow_address: bool = False
    ) -> tuple[int, str, str]:
        script = self.POST.replace("# BORROW\n", self.BORROW_ADDRESS if borrow_address else "")
        done = run_as(
            account,
            [str(SYSTEM_PYTHON), "-c", script, url, json.dumps(body)],
            env=account.env({"PATH": "/usr/bin:/bin"}),
        )
        assert done.returncode == 0, done.stderr
        status, backend, text = json.loads(done.stdout)
        return status, backend, text

    @pytest.mark.slow
    def test_another_user_is_served_locally_but_never_spends_the_key(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running], desktop_user: Account
    ) -> None:
        assert desktop_user.uid != os.getuid()
        gw = gateways(ollama.base_url, cloud_settings(cloud))
        request = dict(CHAT, stream=False)
        status, backend, _ = self.post_as(desktop_user, gw.url + "/api/chat", request)
        assert (status, backend) == (200, "local")

        ollama.cleanup()
        for _ in range(2):
            status, backend, text = self.post_as(desktop_user, gw.url + "/api/chat", request)
            assert (status, backend) == (403, "gateway")
            assert json.loads(text)["error"].endswith(
                "the cloud fallback answers only its owner's programs, "
                f"and this came from another user (uid {desktop_user.uid})"
            )
        assert cloud.requests() == []
        # The owner's own programs still get the cloud.
        own = gw.post("/api/chat", request)
        assert (own.status_code, own.headers[HEADER]) == (200, "cloud")
        assert len(cloud.requests()) == 1
        refused = [e for e in gw.history.events() if (e.data or {}).get("refused_uid") is not None]
        assert [(e.data or {})["refused_uid"] for e in refused] == [desktop_user.uid]  # recorded once
        assert refused[0].message == (
            f"The gateway kept a request from user id {desktop_user.uid} from the cloud fallback: "
            "only your programs may use your key"
        )

    @pytest.mark.slow
    def test_a_forwarded_for_header_cannot_borrow_the_address_of_the_owners_connection(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running], desktop_user: Account
    ) -> None:
        gw = gateways(ollama.base_url, cloud_settings(cloud))
        ollama.cleanup()
        # The owner's editor is sending a chat: its connection to the gateway is open.
        own = socket.create_connection(("127.0.0.1", gw.server.port or 0), timeout=30)
        try:
            own.sendall(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{")
            status, backend, text = self.post_as(
                desktop_user, gw.url + "/api/chat", dict(CHAT, stream=False), borrow_address=True
            )
        finally:
            own.close()
        assert (status, backend) == (403, "gateway"), text
        assert json.loads(text)["error"].endswith(f"and this came from another user (uid {desktop_user.uid})")
        assert cloud.requests() == []

    @pytest.mark.slow
    def test_a_page_another_user_serves_on_localhost_never_spends_the_key(
        self, ollama: StandinEnv, cloud: StandinCloud, gateways: Callable[..., Running], desktop_user: Account
    ) -> None:
        # The request comes from the owner's browser, but the page that sent it from another user's server.
        port = free_port()
        server = popen_as(
            desktop_user,
            [str(SYSTEM_PYTHON), "-m", "http.server", "--bind", "127.0.0.1", str(port)],
            env=desktop_user.env({"PATH": "/usr/bin:/bin"}),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        own_page = socket.create_server(("127.0.0.1", 0))
        try:
            wait_until(lambda: _try_get(f"http://127.0.0.1:{port}/") is not None, what="the other user's page")
            gw = gateways(ollama.base_url, cloud_settings(cloud))
            request = dict(CHAT, stream=False)
            foreign = gw.post("/api/chat", request, headers={"Origin": f"http://127.0.0.1:{port}"})
            assert (foreign.status_code, foreign.headers[HEADER]) == (200, "local")  # Ollama serves it, as directly
            ollama.cleanup()
            refused = gw.post("/api/chat", request, headers={"Origin": f"http://localhost:{port}"})
            assert (refused.status_code, refused.headers[HEADER]) == (403, "gateway")
            assert refused.json()["error"].endswith(
                f"the cloud fallback answers only its owner's programs, and the page 'http://localhost:{port}' "
                "is not served by one"
            )
            assert cloud.requests() == []
            events = [e for e in gw.history.events() if (e.data or {}).get("refused_uid") is not None]
            assert [(e.data or {})["refused_uid"] for e in events] == [desktop_user.uid]
            # A page the owner serves gets the cloud like the owner's other programs.
            own_origin = f"http://127.0.0.1:{own_page.getsockname()[1]}"
            own = gw.post("/api/chat", request, headers={"Origin": own_origin})
            assert (own.status_code, own.headers[HEADER]) == (200, "cloud")
        finally:
            own_page.close()
            server.kill()
            server.wait(10)
