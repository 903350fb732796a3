"""The dashboard's routes, views, settings page, live stream and metrics, without a browser."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.testclient import TestClient

from standin.harness import free_port
from tray import __version__
from tray.core.health import BusySource, Health
from tray.core.status import (
    Activity,
    ActivityKind,
    BusyStatus,
    GatewayStatus,
    LoadedModelStatus,
    ModelInfo,
    MonitorState,
    Status,
    make_status,
)
from tray.dashboard.routes import STATIC_DIR, Dashboard, mount_dashboard
from tray.dashboard.settings_form import ApplyPlan, SettingsService, command_only_keys, patched_config, setting_specs
from tray.dashboard.stream import StreamHub, sse_frames
from tray.dashboard.views import action_views, bucket_samples, gateway_view, history_view, status_view
from tray.history import Event, History
from tray.service.monitor import ModelChoiceError, not_installed_line
from tray.settings.config import load_config
from tray.settings.meta import setting
from tray.settings.server import OllamaServerSettings
from tray.system.paths import AppPaths
from tray.system.resources import GpuStats, ResourceSample
from tray.web.status_api import build_app

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = 1_800_000_000.0  # wall time of the fake clock

CONFIG_TEXT = """# My Ollama Manager settings.
health_check_interval = 30  # every half minute

[alerts]
# Tell me early.
memory_mb = 4096
"""


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def healthy_status(**changes: Any) -> Status:
    return make_status(
        **{
            "uptime_seconds": 7500,
            "memory_usage_mb": 4608,
            "loaded_models": (LoadedModelStatus("uncensored-llama3:latest", 4_661_224_676, 0),),
            "model_info": ModelInfo(4_661_224_676, "8.0B", "Q4_0", NOW - 300),
            **changes,
        }
    )


class FakeMonitor:
    """The parts of Monitor the dashboard and the status API use."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.applied: list[Any] = []  # the settings it was given, in turn
        self.status = healthy_status()
        self.sample: ResourceSample | None = None
        self.subscribers: list[Any] = []
        self.requested: list[str] = []

    def snapshot(self) -> Status:
        return self.status

    def subscribe(self, callback: Any) -> Any:
        self.subscribers.append(callback)
        return lambda: callback in self.subscribers and self.subscribers.remove(callback)

    def publish(self, **changes: Any) -> None:
        self.status = healthy_status(**changes)
        for callback in list(self.subscribers):
            callback(self.status)

    def request(self, action: str) -> concurrent.futures.Future[str]:
        self.requested.append(action)
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        future.set_result(f"{action} done")
        return future

    def use_model(self, name: str) -> concurrent.futures.Future[str]:
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        if name == "tinyllama":
            future.set_exception(ModelChoiceError(not_installed_line(name)))
        else:
            self.config = replace(self.config, active_model=name)
            future.set_result(f"Using {name}")
        return future

    def apply_settings(self, config: Any) -> concurrent.futures.Future[str]:
        self.config = config
        self.applied.append(config)
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        future.set_result("settings in use")
        return future


class FakeGateway:
    def __init__(self, calls: int, cloud_calls: int) -> None:
        self.calls, self.cloud_calls = calls, cloud_calls

    def snapshot(self) -> GatewayStatus:
        ratio = self.cloud_calls / self.calls if self.calls else None
        return GatewayStatus("closed", "", None, True, False, "openai", "gpt-4o-mini", self.calls, self.cloud_calls,
                             ratio, "http://127.0.0.1:11434")  # fmt: skip


class Notifier:
    enabled = True


class Setup:
    """A config file, history, fake monitor, dashboard and the status app with it mounted."""

    def __init__(self, tmp_path: Path, env: dict[str, str] | None = None, **dashboard_options: Any) -> None:
        self.config_path = tmp_path / "config" / "config.toml"
        self.config_path.parent.mkdir()
        self.config_path.write_text(CONFIG_TEXT)
        paths = AppPaths(tmp_path / "config", tmp_path / "log", tmp_path / "data", tmp_path / "state")
        self.clock = FakeClock(NOW)
        self.monitor = FakeMonitor(load_config(self.config_path, env={}, paths=paths))
        self.history = History(tmp_path / "history.sqlite3", wall_clock=self.clock)
        self.dashboard = Dashboard(
            self.monitor, self.history, TOKEN, env=env or {}, wall_clock=self.clock, **dashboard_options
        )
        self.app = mount_dashboard(build_app(self.monitor, self.history, TOKEN), self.dashboard)  # type: ignore[arg-type]

    def client(self, host: str = "127.0.0.1") -> TestClient:
        return TestClient(self.app, base_url=f"http://{host}:11436", client=("127.0.0.1", 50123))


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    built = Setup(tmp_path)
    yield built
    built.dashboard.close()
    built.history.close()


# --------------------------------------------------------------------------- pages and access


def test_pages_are_served_from_the_package_with_a_strict_policy(setup: Setup) -> None:
    client = setup.client()
    for path, marker in (("/", 'src="/static/dashboard.js"'), ("/settings", 'src="/static/settings.js"')):
        page = client.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert marker in page.text
        assert TOKEN not in page.text
        assert "http://" not in page.text and "https://" not in page.text  # nothing from the internet
        assert page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
    script = client.get("/static/dashboard.js")
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert client.get("/static/chart.js").status_code == 200
    assert client.get("/static/style.css").headers["content-type"] == "text/css; charset=utf-8"
    assert client.get("/static/nothing.js").status_code == 404


@pytest.mark.parametrize("path", ["/", "/metrics", "/api/settings", "/api/history"])
def test_foreign_host_names_are_refused(setup: Setup, path: str) -> None:
    response = setup.client(host="attacker.example").get(path)
    assert response.status_code == 403


def test_remote_clients_are_refused(setup: Setup) -> None:
    remote = TestClient(setup.app, base_url="http://127.0.0.1:11436", client=("192.168.1.20", 50123))
    assert remote.get("/metrics").status_code == 403


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer "}, {"X-Token": TOKEN}]
)
def test_changing_endpoints_refuse_a_request_without_the_token(setup: Setup, headers: dict[str, str]) -> None:
    client = setup.client()
    saved = client.post("/api/settings", json={"values": {"health_check_interval": 12}}, headers=headers)
    assert (saved.status_code, saved.json()) == (401, {"ok": False, "error": "missing or wrong token"})
    assert setup.config_path.read_text() == CONFIG_TEXT
    action = client.post("/api/actions/restart", headers=headers)
    assert action.status_code == 401
    assert setup.monitor.requested == []
    switch = client.post("/api/model", json={"model": "mistral:latest"}, headers=headers)
    assert switch.status_code == 401
    assert setup.monitor.config.active_model == ""


def test_the_page_runs_the_menu_actions_with_the_token(setup: Setup) -> None:
    response = setup.client().post("/api/actions/restart", headers=AUTH)
    assert response.json() == {"ok": True, "message": "restart done"}
    assert setup.monitor.requested == ["restart"]


def test_the_page_switches_models_with_the_token_and_a_missing_model_gets_one_line(setup: Setup) -> None:
    client = setup.client()
    used = client.post("/api/model", json={"model": "mistral:latest"}, headers=AUTH)
    assert used.json() == {"ok": True, "message": "Using mistral:latest"}
    missing = client.post("/api/model", json={"model": "tinyllama"}, headers=AUTH)
    assert (missing.status_code, missing.json()) == (
        400,
        {"ok": False, "error": "model tinyllama is not installed: run `ollama-manager model pull tinyllama`"},
    )
    bad = client.post("/api/model", json={"name": 3}, headers=AUTH)
    assert (bad.status_code, bad.json()["ok"]) == (400, False)


def test_a_settings_save_keeps_a_model_chosen_elsewhere(setup: Setup) -> None:
    client = setup.client()
    client.post("/api/model", json={"model": "mistral:latest"}, headers=AUTH)
    saved = client.post("/api/settings", json={"values": {"health_check_interval": 12}}, headers=AUTH)
    assert saved.json()["ok"] is True
    assert (setup.monitor.config.active_model, setup.monitor.config.health_check_interval) == ("mistral:latest", 12)


def test_mount_dashboard_takes_a_plain_starlette_app_too(setup: Setup) -> None:
    app = Starlette()
    assert mount_dashboard(app, setup.dashboard) is app
    assert {getattr(route, "path", None) for route in app.routes} >= {"/", "/settings", "/api/stream", "/metrics"}


# --------------------------------------------------------------------------- settings


def test_settings_list_every_key_with_value_help_and_when_it_applies(setup: Setup) -> None:
    page = setup.client().get("/api/settings", headers=AUTH).json()
    assert page["path"] == str(setup.config_path)
    assert page["error"] is None
    assert [row["key"] for row in page["settings"]] == [spec.key for spec in setting_specs()]
    assert [section["name"] for section in page["sections"]][:2] == ["", "alerts"]
    rows = {row["key"]: row for row in page["settings"]}
    assert rows["health_check_interval"] == {
        "key": "health_check_interval",
        "section": "",
        "name": "health_check_interval",
        "kind": "float",
        "help": "Seconds between health checks",
        "value": 30.0,
        "default": 30.0,
        "minimum": 0.1,
        "maximum": 86400.0,
        "choices": [],
        "applies": "now",
        "env_override": None,
        "pending_restart": False,
        "read_only": False,
        "command": None,
    }
    assert rows["alerts.memory_mb"]["value"] == 4096
    assert rows["alerts.memory_mb"]["applies"] == "app_restart"
    assert rows["alerts.memory_mb"]["help"] == "Alert when Ollama (server + runners) uses more MB"
    assert rows["health_probe"]["choices"] == ["inference", "api"]
    assert all(row["help"] for row in page["settings"])


def test_a_valid_save_keeps_comments_writes_once_and_applies_what_it_can(setup: Setup) -> None:
    setup.config_path.chmod(0o600)
    response = setup.client().post(
        "/api/settings",
        json={"values": {"health_check_interval": 12, "alerts.memory_mb": "8192", "health_probe": "api"}},
        headers=AUTH,
    )
    assert response.status_code == 200
    assert response.json() == {
        "ok": True,
        "saved": ["alerts.memory_mb", "health_check_interval", "health_probe"],
        "applies": {
            "now": ["health_check_interval", "health_probe"],
            "ollama_start": [],
            "app_restart": ["alerts.memory_mb"],
        },
        "message": (
            f"Saved 3 settings to {setup.config_path}. Applied now: health_check_interval, health_probe. "
            "After the app restarts: alerts.memory_mb."
        ),
    }
    assert setup.config_path.read_text() == (
        "# My Ollama Manager settings.\n"
        "health_check_interval = 12  # every half minute\n"
        'health_probe = "api"\n'
        "\n"
        "[alerts]\n"
        "# Tell me early.\n"
        "memory_mb = 8192\n"
    )
    assert stat.S_IMODE(setup.config_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in setup.config_path.parent.iterdir()) == ["config.toml"]
    assert len(setup.monitor.applied) == 1  # one new Config, handed to the monitor's thread
    config = setup.monitor.config
    assert (config.health_check_interval, config.health_probe) == (12.0, "api")
    assert config.alerts.memory_mb == 4096  # applies after the app restarts
    rows = {row["key"]: row for row in setup.client().get("/api/settings", headers=AUTH).json()["settings"]}
    assert (rows["health_check_interval"]["pending_restart"], rows["alerts.memory_mb"]["pending_restart"]) == (
        False,
        True,
    )


def test_a_list_is_shown_as_a_list_and_saved_from_comma_separated_text(setup: Setup) -> None:
    client = setup.client()
    rows = {row["key"]: row for row in client.get("/api/settings", headers=AUTH).json()["settings"]}
    origins = rows["gateway.allowed_origins"]
    assert (origins["kind"], origins["value"][-2:]) == ("list", ["vscode-webview://*", "vscode-file://*"])
    saved = client.post(
        "/api/settings", json={"values": {"gateway.allowed_origins": " vscode-webview://*, tauri://* "}}, headers=AUTH
    )
    assert saved.json()["ok"] is True
    assert 'allowed_origins = ["vscode-webview://*", "tauri://*"]' in setup.config_path.read_text()
    rows = {row["key"]: row for row in client.get("/api/settings", headers=AUTH).json()["settings"]}
    assert rows["gateway.allowed_origins"]["value"] == ["vscode-webview://*", "tauri://*"]


def test_each_save_reports_only_its_own_keys(setup: Setup) -> None:
    client = setup.client()
    first = client.post("/api/settings", json={"values": {"alerts.memory_mb": 8192}}, headers=AUTH).json()
    assert first["applies"] == {"now": [], "ollama_start": [], "app_restart": ["alerts.memory_mb"]}
    second = client.post("/api/settings", json={"values": {"stop_timeout": 2}}, headers=AUTH).json()
    assert second["message"] == f"Saved 1 setting to {setup.config_path}. Applied now: stop_timeout."
    assert setup.monitor.config.stop_timeout == 2.0
    assert setup.monitor.config.alerts.memory_mb == 4096  # saved, but applies after the app restarts


# What chooses a program the app runs, an address, or where data or the cloud key goes.
COMMAND_ONLY = {
    "ollama_host": "0.0.0.0:11434",
    "ollama_binary": "/tmp/evil/ollama",
    "modelfile": "/tmp/evil.Modelfile",
    "cloud.base_url": "https://collector.example/v1",
    "cloud.api_key_env": "HOME",
    "ollama_server.models_dir": "/tmp/evil-models",
    "ollama_server.expose": True,
}


def test_the_command_only_keys_are_one_list_in_the_settings_metadata() -> None:
    assert command_only_keys() == list(COMMAND_ONLY)


@pytest.mark.parametrize(("key", "value"), list(COMMAND_ONLY.items()))
def test_the_web_api_refuses_a_command_only_key_with_the_command_even_with_the_token(
    setup: Setup, key: str, value: Any
) -> None:
    before = setup.monitor.config
    response = setup.client().post("/api/settings", json={"values": {key: value}}, headers=AUTH)
    assert response.status_code == 403
    shown = {True: "true", "HOME": "HOME"}.get(value, value)
    line = (
        f"{key} is changed only from a terminal on this machine: "
        f"ollama-manager --config {setup.config_path} config set {key} {shown}"
    )
    assert response.json() == {"ok": False, "errors": {key: line}, "error": line}
    assert setup.config_path.read_text() == CONFIG_TEXT
    assert (setup.monitor.applied, setup.monitor.config) == ([], before)


def test_a_command_only_key_refuses_the_whole_save(setup: Setup) -> None:
    values = {"stop_timeout": 2, "ollama_server.keep_alive": "1h", "ollama_binary": "/tmp/evil/ollama"}
    response = setup.client().post("/api/settings", json={"values": values}, headers=AUTH)
    assert (response.status_code, list(response.json()["errors"])) == (403, ["ollama_binary"])
    assert setup.config_path.read_text() == CONFIG_TEXT
    assert setup.monitor.applied == []


def test_a_refused_value_that_is_no_argument_gets_the_keys_example_quoted(setup: Setup) -> None:
    values = {"ollama_binary": "/opt/my ollama/ollama", "modelfile": ["x"], "cloud.base_url": "a\nb"}
    errors = setup.client().post("/api/settings", json={"values": values}, headers=AUTH).json()["errors"]
    command = f"ollama-manager --config {setup.config_path} config set"
    assert errors == {
        "ollama_binary": f"ollama_binary is changed only from a terminal on this machine: "
        f"{command} ollama_binary '/opt/my ollama/ollama'",
        "modelfile": f"modelfile is changed only from a terminal on this machine: "
        f"{command} modelfile /path/to/uncensored.Modelfile",
        "cloud.base_url": f"cloud.base_url is changed only from a terminal on this machine: "
        f"{command} cloud.base_url https://api.openai.com/v1",
    }


def test_the_page_shows_command_only_keys_read_only_with_the_command(setup: Setup) -> None:
    rows = {row["key"]: row for row in setup.client().get("/api/settings", headers=AUTH).json()["settings"]}
    read_only = {key: row["command"] for key, row in rows.items() if row["read_only"]}
    command = f"ollama-manager --config {setup.config_path} config set"
    assert read_only == {
        "ollama_host": f"{command} ollama_host 127.0.0.1:11434",
        "ollama_binary": f"{command} ollama_binary /path/to/ollama",
        "modelfile": f"{command} modelfile /path/to/uncensored.Modelfile",
        "ollama_server.models_dir": f"{command} ollama_server.models_dir /path/to/models",
        "ollama_server.expose": f"{command} ollama_server.expose true",
        "cloud.base_url": f"{command} cloud.base_url https://api.openai.com/v1",
        "cloud.api_key_env": f"{command} cloud.api_key_env OPENAI_API_KEY",
    }
    assert all(row["command"] is None for row in rows.values() if not row["read_only"])


def test_the_settings_script_renders_command_only_keys_read_only_and_never_sends_them() -> None:
    script = (STATIC_DIR / "settings.js").read_text()
    assert "readonly: setting.read_only" in script
    assert "if (setting.read_only) continue;" in script  # changedValues() leaves them out of a save


def test_the_readme_lists_the_command_only_keys() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    paragraph = readme[readme.index("changed only from a terminal") :].split("\n\n")[0]
    assert [key for key in COMMAND_ONLY if f"`{key}`" in paragraph] == list(COMMAND_ONLY)


@pytest.mark.parametrize(
    ("values", "errors"),
    [
        (
            {"health_check_interval": -1},
            {"health_check_interval": "health_check_interval must be at least 0.1, got -1"},
        ),
        ({"health_check_interval": ""}, {"health_check_interval": "health_check_interval must be a number, got ''"}),
        (
            {"auto_restart_attempts": 1.5},
            {"auto_restart_attempts": "auto_restart_attempts must be a whole number, got 1.5"},
        ),
        ({"status_port": "eleven"}, {"status_port": "status_port must be a whole number, got 'eleven'"}),
        ({"health_probe": "ping"}, {"health_probe": "health_probe must be one of 'inference', 'api', got 'ping'"}),
        ({"notifications": "maybe"}, {"notifications": "notifications must be true or false, got 'maybe'"}),
        ({"colour": "blue"}, {"colour": "colour is not a setting"}),
        ({"alerts.clear_ratio": 2}, {"alerts.clear_ratio": "alerts.clear_ratio must be at most 1, got 2"}),
        ({"alerts.clear_ratio": 0}, {"alerts.clear_ratio": "alerts.clear_ratio must be in (0, 1], got 0.0"}),
        ({"alerts.memory_mb": -5}, {"alerts.memory_mb": "alerts.memory_mb must be at least 0, got -5"}),
    ],
)
def test_invalid_values_are_refused_with_the_loaders_message(
    setup: Setup, values: dict[str, Any], errors: dict[str, str]
) -> None:
    response = setup.client().post("/api/settings", json={"values": values}, headers=AUTH)
    assert response.status_code == 400
    assert response.json() == {"ok": False, "errors": errors, "error": next(iter(errors.values()))}
    assert setup.config_path.read_text() == CONFIG_TEXT
    assert setup.monitor.config.health_check_interval == 30.0


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        # Non-finite and huge numbers stopped supervision; typed in the form or sent as JSON numbers, they are refused.
        ("health_check_interval", "nan", "must be a finite number, got nan"),
        ("health_check_timeout", "NaN", "must be a finite number, got nan"),
        ("health_check_interval", 1e308, "must be at most 86400, got 1e+308"),
        ("stop_timeout", "inf", "must be a finite number, got inf"),
        ("gateway.first_byte_timeout", "nan", "must be a finite number, got nan"),
        # Values that were saved and broke the next start.
        ("status_port", 70000, "must be at most 65535, got 70000"),
        ("ollama_model", "a/b/c/d", "must be a model name such as 'llama3' or 'namespace/model:tag', got 'a/b/c/d'"),
        (
            "gateway.allowed_origins",
            "vscode-webview://*, null",
            "must be an origin such as 'http://localhost:3000' or a pattern with one '*' such as "
            "'vscode-webview://*', got 'null'",
        ),
        ("gateway.allowed_origins", ["app://*", 5], "must be an array of strings, got an array"),
    ],
)
def test_unusable_values_are_refused_before_they_are_saved(setup: Setup, key: str, value: Any, problem: str) -> None:
    response = setup.client().post("/api/settings", json={"values": {key: value}}, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["errors"] == {key: f"{key} {problem}"}
    assert setup.config_path.read_text() == CONFIG_TEXT
    assert setup.monitor.config.health_check_interval == 30.0


def test_one_bad_value_refuses_the_whole_save(setup: Setup) -> None:
    response = setup.client().post(
        "/api/settings", json={"values": {"stop_timeout": 9, "startup_timeout": 0}}, headers=AUTH
    )
    assert response.json()["errors"] == {"startup_timeout": "startup_timeout must be at least 1, got 0"}
    assert setup.config_path.read_text() == CONFIG_TEXT


def test_form_text_is_converted_like_environment_values(setup: Setup) -> None:
    response = setup.client().post(
        "/api/settings", json={"values": {"stop_timeout": " 2.5 ", "notifications": "off"}}, headers=AUTH
    )
    assert response.status_code == 200
    assert setup.config_path.read_text().endswith(
        "health_check_interval = 30  # every half minute\nstop_timeout = 2.5\nnotifications = false\n\n"
        "[alerts]\n# Tell me early.\nmemory_mb = 4096\n"
    )


def test_notifications_apply_at_once_when_the_dashboard_has_the_notifier(tmp_path: Path) -> None:
    notifier = Notifier()
    built = Setup(tmp_path, notifier=notifier)
    answer = built.client().post("/api/settings", json={"values": {"notifications": False}}, headers=AUTH).json()
    assert answer["applies"]["now"] == ["notifications"]
    assert notifier.enabled is False
    built.dashboard.close()


def test_without_the_notifier_notifications_wait_for_a_restart(setup: Setup) -> None:
    answer = setup.client().post("/api/settings", json={"values": {"notifications": False}}, headers=AUTH).json()
    assert answer["applies"] == {"now": [], "ollama_start": [], "app_restart": ["notifications"]}


def test_a_key_the_environment_overrides_is_saved_but_changes_nothing_running(tmp_path: Path) -> None:
    built = Setup(tmp_path, env={"OLLAMA_MANAGER_HEALTH_CHECK_INTERVAL": "5"})
    rows = {row["key"]: row for row in built.client().get("/api/settings", headers=AUTH).json()["settings"]}
    assert rows["health_check_interval"]["env_override"] == "OLLAMA_MANAGER_HEALTH_CHECK_INTERVAL"
    assert rows["health_check_interval"]["value"] == 5.0
    answer = built.client().post("/api/settings", json={"values": {"health_check_interval": 12}}, headers=AUTH).json()
    assert answer["applies"] == {"now": [], "ollama_start": [], "app_restart": []}
    assert "health_check_interval = 12" in built.config_path.read_text()
    assert built.monitor.config.health_check_interval == 30.0
    built.dashboard.close()


def test_a_broken_file_is_reported_and_not_overwritten(setup: Setup) -> None:
    setup.config_path.write_text("health_check_interval = [\n")
    page = setup.client().get("/api/settings", headers=AUTH).json()
    assert page["error"].startswith(f"{setup.config_path}: invalid TOML: ")
    assert {row["key"]: row["value"] for row in page["settings"]}["alerts.memory_mb"] == 4096  # what is in effect
    response = setup.client().post("/api/settings", json={"values": {"stop_timeout": 2}}, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"].startswith(f"{setup.config_path}: invalid TOML: ")
    assert setup.config_path.read_text() == "health_check_interval = [\n"


def test_a_lone_surrogate_in_a_value_is_refused_not_a_server_error(setup: Setup) -> None:
    body = b'{"values": {"ollama_model": "llama\\ud800"}}'
    response = setup.client().post("/api/settings", content=body, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["errors"] == {"ollama_model": "ollama_model must be valid text, got a lone surrogate"}
    assert setup.config_path.read_text() == CONFIG_TEXT


def test_json_nan_and_infinity_literals_are_refused(setup: Setup) -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"values": {"health_check_timeout": ' + literal + b"}}"
        response = setup.client().post("/api/settings", content=body, headers=AUTH)
        assert response.status_code == 400
        assert response.json()["error"].startswith("health_check_timeout must be a finite number, got ")
    assert setup.config_path.read_text() == CONFIG_TEXT


@pytest.mark.parametrize("body", [b"not json", b'["values"]', b'{"values": 3}'])
def test_a_malformed_save_request_is_one_line(setup: Setup, body: bytes) -> None:
    response = setup.client().post("/api/settings", content=body, headers=AUTH)
    assert (response.status_code, response.json()) == (
        400,
        {"ok": False, "error": 'expected a JSON object {"values": {"key": value}}'},
    )


@dataclass(frozen=True)
class WithServerSection:
    """A config with an [ollama_server] section, as Config has once it is wired in."""

    stop_timeout: float = field(default=5.0, metadata=setting("Seconds between SIGTERM and SIGKILL", minimum=0.1))
    ollama_server: OllamaServerSettings = field(default_factory=OllamaServerSettings, metadata=setting("Server"))


def test_server_settings_apply_when_ollama_next_starts_and_the_models_folder_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[ollama_server]\nkeep_alive = "5m"  # the default, written down\n')
    running = {"config": WithServerSection(ollama_server=OllamaServerSettings(keep_alive="5m"))}

    def apply_live(plan: ApplyPlan, wanted: Any) -> None:
        running["config"] = patched_config(running["config"], wanted, (*plan.now, *plan.ollama_start))

    service = SettingsService(path, {}, apply_live, cls=WithServerSection)
    status, answer = service.save({"ollama_server.keep_alive": "-1", "ollama_server.gpu_devices": "cpu"})
    assert (status, answer["applies"]) == (
        200,
        {"now": [], "ollama_start": ["ollama_server.gpu_devices", "ollama_server.keep_alive"], "app_restart": []},
    )
    rows = {row["key"]: row for row in service.page()["settings"]}
    assert rows["ollama_server.models_dir"]["applies"] == "app_restart"  # set with config set, used after a restart
    assert running["config"] == WithServerSection(
        ollama_server=OllamaServerSettings(gpu_devices="cpu", keep_alive="-1")
    )
    assert path.read_text() == '[ollama_server]\nkeep_alive = "-1"  # the default, written down\ngpu_devices = "cpu"\n'


def test_a_sections_own_check_refuses_the_value_beside_its_field(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    service = SettingsService(path, {}, lambda plan, wanted: None, cls=WithServerSection)
    status, answer = service.save({"ollama_server.gpu_devices": "all of them"})
    message = (
        "ollama_server.gpu_devices must be 'cpu' or comma-separated GPU indices or UUIDs (e.g. '0,1'), "
        "got 'all of them'"
    )
    assert (status, answer) == (400, {"ok": False, "errors": {"ollama_server.gpu_devices": message}, "error": message})
    assert not path.exists()


# --------------------------------------------------------------------------- history and views


def test_history_gives_chart_points_and_the_timeline_for_the_range(setup: Setup) -> None:
    setup.clock.now = NOW - 1000
    setup.history.record_sample({"health": "healthy", "latency_ms": 200.0, "memory_mb": 100.0})
    setup.clock.now = NOW - 995
    setup.history.record_sample({"health": "down", "latency_ms": None, "memory_mb": 300.0})
    setup.history.record("crash", "Ollama exited unexpectedly (status -9)")
    setup.clock.now = NOW - 10
    setup.history.record_sample({"health": "healthy", "latency_ms": 100.0, "cpu_percent": 5.0})
    setup.history.record("restart", "restart attempt 1 succeeded", {"reason": "down", "ok": True})
    setup.clock.now = NOW - 4000
    setup.history.record_sample({"health": "healthy", "latency_ms": 999.0})  # before the range
    setup.clock.now = NOW

    data = setup.client().get("/api/history?range=1h").json()
    assert (data["since"], data["until"], data["bucket_seconds"]) == (NOW - 3600, NOW, 10.0)
    empty = {"ram_used_mb": None, "gpu_memory_mb": None, "gpu_percent": None}
    assert data["samples"] == [
        {"time": NOW - 997.5, "health": "down", "latency_ms": 200.0, "memory_mb": 200.0, "cpu_percent": None, **empty},
        {"time": NOW - 10, "health": "healthy", "latency_ms": 100.0, "memory_mb": None, "cpu_percent": 5.0, **empty},
    ]
    assert [(e["t"], e["kind"]) for e in data["events"]] == [(NOW - 10, "restart"), (NOW - 995, "crash")]
    assert data["events"][0]["data"] == {"reason": "down", "ok": True}


def test_an_unknown_range_is_refused(setup: Setup) -> None:
    response = setup.client().get("/api/history?range=2h")
    assert (response.status_code, response.json()) == (400, {"error": "range must be one of 1h, 1d, got '2h'"})


def test_bucket_samples_averages_per_bucket_and_keeps_gaps() -> None:
    rows = [
        {"time": 100.0, "health": "healthy", "latency_ms": 10.0, "memory_mb": None},
        {"time": 109.0, "health": "unhealthy", "latency_ms": 30.0, "memory_mb": 50.0},
        {"time": 150.0, "health": None, "latency_ms": None, "memory_mb": None},
    ]
    points = bucket_samples(rows, since=100.0, width=10.0)
    assert [(p["time"], p["health"], p["latency_ms"], p["memory_mb"]) for p in points] == [
        (104.5, "unhealthy", 20.0, 50.0),
        (150.0, None, None, None),
    ]


def test_history_view_uses_360_points_per_range() -> None:
    view = history_view([], [Event(NOW - 5, "alert", "Memory high", None)], 86400.0, NOW)
    assert (view["bucket_seconds"], view["samples"]) == (240.0, [])
    assert view["events"] == [
        {"t": NOW - 5, "time": "2027-01-15T07:59:55.000+00:00", "kind": "alert", "message": "Memory high"}
    ]


def test_status_view_shows_what_the_page_needs(setup: Setup) -> None:
    view = status_view(healthy_status(gateway=FakeGateway(calls=8, cloud_calls=2).snapshot()), NOW)
    assert view == {
        "health": "healthy",
        "summary": "Ollama: healthy · 245 ms",
        "latency": "245 ms",
        "uptime": "2 h 5 min",
        "state": "running, started by this manager (pid 4242)",
        "memory": "4.5 GB",
        "cpu": "12.5 %",
        "gpu": "none",
        "host": "http://127.0.0.1:11434",
        "last_error": None,
        "cloud_active": False,
        "busy": {"text": "idle", "stuck": False, "source": None},
        "actions": [
            {"id": "stop", "label": "Stop Ollama", "enabled": True},
            {"id": "restart", "label": "Restart Ollama", "enabled": True},
            {"id": "rebuild", "label": "Rebuild model", "enabled": True},
            {"id": "unload", "label": "Unload models", "enabled": True},
        ],
        "model": {
            "name": "uncensored-llama3",
            "present": True,
            "status": "ok",
            "size": "4.7 GB",
            "parameters": "8.0B",
            "quantization": "Q4_0",
            "last_verified": "5 min ago",
            "last_verified_at": "2027-01-15T07:55:00Z",
            "loaded": ["uncensored-llama3:latest 4.7 GB · 100% CPU"],
        },
        "gateway": {
            "enabled": True,
            "text": "6 local · 2 cloud (25 % cloud)",
            "local": 6,
            "cloud": 2,
            "cloud_share": 0.25,
        },
        "models": {"rows": [], "modelfile": "uncensored-llama3", "modelfile_active": True, "loading": None},
        "settings_note": None,
    }


def test_the_state_names_a_systemd_servers_unit_and_account_and_the_drop_in() -> None:
    note = "[ollama_server] does not reach Ollama run by ollama.service; …"
    status = healthy_status(managed_by="systemd", unit="ollama.service", owner="ollama", server_settings_note=note)
    view = status_view(status, NOW)
    assert view["state"].endswith("managed by systemd (ollama.service), run by ollama (pid 4242)")
    assert view["settings_note"] == note


BUSY = BusyStatus("uncensored-llama3:latest", None, None, 80.0, 0.0, BusySource.RUNNER, stuck=False)


def test_the_live_panel_says_what_ollama_is_busy_with() -> None:
    view = status_view(healthy_status(busy=BUSY), NOW)
    assert view["summary"] == "Ollama: healthy · 245 ms · busy: generating on uncensored-llama3:latest for 1 min"
    assert view["busy"] == {
        "text": "generating on uncensored-llama3:latest for 1 min",
        "stuck": False,
        "source": "runner",
    }
    stuck = replace(BUSY, stuck=True, progress_seconds_ago=None, since_seconds=960.0, source=BusySource.PROBE)
    view = status_view(healthy_status(busy=stuck), NOW)
    assert view["busy"] == {
        "text": "stuck: no progress on uncensored-llama3:latest for 16 min",
        "stuck": True,
        "source": "probe",
    }
    assert view["health"] == "healthy"  # busy, even stuck, is not a health value


def test_metrics_show_busy_and_a_stuck_runner(setup: Setup) -> None:
    idle = metric_samples(setup.client().get("/metrics").text)
    assert [idle[(f"ollama_manager_{name}", ())] for name in ("busy", "busy_seconds", "stuck_runner")] == [0, 0, 0]
    setup.monitor.status = healthy_status(busy=replace(BUSY, since_seconds=930.5, stuck=True))
    busy = metric_samples(setup.client().get("/metrics").text)
    assert [busy[(f"ollama_manager_{name}", ())] for name in ("busy", "busy_seconds", "stuck_runner")] == [1, 930.5, 1]
    assert busy[("ollama_manager_restarts_total", (("reason", "stuck_runner"),))] == 0.0


def test_a_stopped_server_offers_start_and_nothing_that_needs_it_running() -> None:
    stopped = healthy_status(
        ollama_running=False, health=Health.DOWN, state=MonitorState.STOPPED, loaded_models=(), pid=None
    )
    assert action_views(stopped) == [
        {"id": "start", "label": "Start Ollama", "enabled": True},
        {"id": "restart", "label": "Restart Ollama", "enabled": False},
        {"id": "rebuild", "label": "Rebuild model", "enabled": False},
        {"id": "unload", "label": "Unload models", "enabled": False},
    ]
    view = status_view(stopped, NOW)
    assert (view["memory"], view["uptime"], view["state"]) == ("—", "—", "stopped, started by this manager")


def test_a_build_under_way_blocks_the_server_actions() -> None:
    building = healthy_status(activity=Activity(ActivityKind.BUILD, "Building model", 0.4))
    assert [a["enabled"] for a in action_views(building)] == [False, False, False, False]


def test_the_gateway_split_or_gateway_off() -> None:
    assert gateway_view(None) == {
        "enabled": False,
        "text": "gateway off",
        "local": None,
        "cloud": None,
        "cloud_share": None,
    }
    assert gateway_view(FakeGateway(calls=0, cloud_calls=0).snapshot())["text"] == "no calls yet"


def test_the_status_message_carries_the_gateway_split_of_the_status(setup: Setup) -> None:
    assert setup.dashboard.status_message(healthy_status())["view"]["gateway"]["text"] == "gateway off"
    with_gateway = healthy_status(gateway=FakeGateway(calls=4, cloud_calls=1).snapshot())
    assert setup.dashboard.status_message(with_gateway)["view"]["gateway"]["text"] == "3 local · 1 cloud (25 % cloud)"


# --------------------------------------------------------------------------- metrics


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_parse_and_carry_health_latency_restarts_alerts_and_resources(tmp_path: Path) -> None:
    built = Setup(tmp_path)
    built.monitor.status = healthy_status(gateway=FakeGateway(calls=8, cloud_calls=2).snapshot())
    built.monitor.sample = ResourceSample(
        taken_at=5.0,
        server_pid=4242,
        tree_pids=(4242, 4243),
        tree_rss_bytes=3 * 2**30,
        tree_cpu_percent=37.5,
        tree_gpu_memory_bytes=None,
        ram_total_bytes=16 * 2**30,
        ram_used_bytes=8 * 2**30,
        cpu_percent=40.0,
        gpu_available=True,
        gpus=(GpuStats(0, "RTX 4090", 81.0, 12 * 2**30, 24 * 2**30, 60.0),),
        disk_free_bytes=None,
        disk_total_bytes=None,
    )
    history = built.history
    built.clock.now = NOW + 1
    history.record_sample({"health": "healthy", "latency_ms": 245.0})
    history.record_sample({"health": "healthy", "latency_ms": 7000.0})
    history.record_sample({"health": "down", "latency_ms": None})
    history.record("crash", "Ollama exited unexpectedly (status -9)")
    history.record("restart", "restart attempt 1 succeeded", {"reason": "down", "ok": True})
    history.record("restart", "Ollama restarted by the user", {"reason": "user", "ok": True})
    history.record("restart", "restart attempt 2 failed", {"reason": "not responding", "ok": False})
    history.record("alert", "Memory high: 7 GB", {"kind": "memory", "state": "raised", "severity": "warning"})
    history.record("alert", "Memory back to normal", {"kind": "memory", "state": "cleared", "severity": "info"})

    response = built.client().get("/metrics")
    assert response.headers["content-type"] == "text/plain; version=1.0.0; charset=utf-8"
    samples = metric_samples(response.text)
    expected = {
        ("ollama_manager_up", ()): 1.0,
        ("ollama_manager_health", (("state", "healthy"),)): 1.0,
        ("ollama_manager_health", (("state", "down"),)): 0.0,
        ("ollama_manager_last_probe_latency_seconds", ()): 0.245,
        ("ollama_manager_uptime_seconds", ()): 7500.0,
        ("ollama_manager_restarts_total", (("reason", "down"),)): 1.0,
        ("ollama_manager_restarts_total", (("reason", "user"),)): 1.0,
        ("ollama_manager_restarts_total", (("reason", "not_responding"),)): 1.0,
        ("ollama_manager_restarts_total", (("reason", "unexpected"),)): 0.0,
        ("ollama_manager_crashes_total", ()): 1.0,
        ("ollama_manager_alerts_total", (("kind", "memory"), ("severity", "warning"))): 1.0,
        ("ollama_manager_probe_latency_seconds_count", ()): 2.0,
        ("ollama_manager_probe_latency_seconds_sum", ()): 7.245,
        ("ollama_manager_probe_latency_seconds_bucket", (("le", "0.25"),)): 1.0,
        ("ollama_manager_probe_latency_seconds_bucket", (("le", "5.0"),)): 1.0,
        ("ollama_manager_probe_latency_seconds_bucket", (("le", "10.0"),)): 2.0,
        ("ollama_manager_tree_memory_bytes", ()): float(3 * 2**30),
        ("ollama_manager_tree_cpu_percent", ()): 37.5,
        ("ollama_manager_gpu_memory_used_bytes", (("gpu", "0"), ("name", "RTX 4090"))): float(12 * 2**30),
        ("ollama_manager_gpu_memory_total_bytes", (("gpu", "0"), ("name", "RTX 4090"))): float(24 * 2**30),
        ("ollama_manager_gpu_utilization_percent", (("gpu", "0"), ("name", "RTX 4090"))): 81.0,
        ("ollama_manager_gateway_enabled", ()): 1.0,
        ("ollama_manager_gateway_calls", (("backend", "local"),)): 6.0,
        ("ollama_manager_gateway_calls", (("backend", "cloud"),)): 2.0,
        ("ollama_manager_fallback_ratio", ()): 0.25,
        ("ollama_manager_cloud_fallback_active", ()): 0.0,
    }
    assert {key: samples.get(key) for key in expected} == expected
    assert not any(
        name == "ollama_manager_alerts_total" and dict(labels).get("severity") == "info" for name, labels in samples
    )

    # A second scrape counts only what is new.
    built.clock.now = NOW + 2
    history.record_sample({"health": "healthy", "latency_ms": 50.0})
    again = metric_samples(built.client().get("/metrics").text)
    assert again[("ollama_manager_probe_latency_seconds_count", ())] == 3.0
    assert again[("ollama_manager_probe_latency_seconds_bucket", (("le", "0.05"),))] == 1.0
    built.dashboard.close()


def test_metrics_without_sample_or_gateway_still_parse(setup: Setup) -> None:
    setup.monitor.status = healthy_status(ollama_running=False, health=Health.DOWN, latency_ms=None, uptime_seconds=0)
    samples = metric_samples(setup.client().get("/metrics").text)
    assert samples[("ollama_manager_up", ())] == 0.0
    assert samples[("ollama_manager_health", (("state", "down"),))] == 1.0
    assert samples[("ollama_manager_tree_memory_bytes", ())] == 0.0
    assert samples[("ollama_manager_gateway_enabled", ())] == 0.0
    assert ("ollama_manager_last_probe_latency_seconds", ()) not in samples
    assert ("ollama_manager_fallback_ratio", ()) not in samples
    info = (("managed_by", "manager"), ("model", "uncensored-llama3"), ("ollama_host", "http://127.0.0.1:11434"))
    assert samples[("ollama_manager_info", (*info, ("version", __version__)))] == 1.0


def test_each_dashboard_has_its_own_registry(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = Setup(tmp_path / "a"), Setup(tmp_path / "b")
    first.history.record("crash", "Ollama exited")
    assert metric_samples(first.client().get("/metrics").text)[("ollama_manager_crashes_total", ())] == 1.0
    assert metric_samples(second.client().get("/metrics").text)[("ollama_manager_crashes_total", ())] == 0.0
    first.dashboard.close()
    second.dashboard.close()


# --------------------------------------------------------------------------- the live stream


class Served:
    """The status app with the dashboard on a real loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            assert self.thread.is_alive()
            threading.Event().wait(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        assert not self.thread.is_alive()


def read_message(lines: Iterator[str]) -> dict[str, str]:
    """The fields of the next SSE message (comments skipped)."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if fields:
                return fields
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(": ")
        fields[name] = value
    raise AssertionError("the stream ended")


def test_the_stream_sends_status_changes_and_events_then_ends_on_close(setup: Setup) -> None:
    served = Served(setup.app)
    try:
        with (
            httpx.Client(base_url=f"http://127.0.0.1:{served.port}", timeout=10, trust_env=False) as client,
            client.stream("GET", "/api/stream") as stream,
        ):
            assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
            lines = stream.iter_lines()
            assert read_message(lines) == {"retry": "1000"}
            first = read_message(lines)
            assert first["event"] == "status"
            assert json.loads(first["data"])["view"]["health"] == "healthy"

            setup.monitor.publish(health=Health.DOWN, ollama_running=False, latency_ms=None)
            down = json.loads(read_message(lines)["data"])
            assert (down["status"]["health"], down["view"]["summary"]) == ("down", "Ollama: down")

            setup.monitor.publish(health=Health.DOWN, ollama_running=False, latency_ms=None)  # no change: not sent
            setup.history.record("crash", "Ollama exited unexpectedly (status -9)")
            event = read_message(lines)
            assert event["event"] == "event"
            assert json.loads(event["data"])["message"] == "Ollama exited unexpectedly (status -9)"

            setup.dashboard.close()
            assert list(lines) == []  # the server ended the stream
    finally:
        served.stop()


def test_a_hub_feeds_streams_from_other_threads_and_closes_them() -> None:
    async def scenario() -> list[bytes]:
        hub = StreamHub()
        client = hub.connect(asyncio.get_running_loop())
        frames = sse_frames(client, [], keepalive_seconds=0.05)
        received = [await anext(frames)]
        worker = threading.Thread(target=hub.publish, args=("status", {"health": "healthy"}))
        worker.start()
        worker.join()
        received.append(await anext(frames))
        received.append(await anext(frames))  # nothing for a while: a keepalive comment
        hub.close()
        received += [frame async for frame in frames]
        assert hub.client_count == 1  # sse_frames ran no on_end callback here
        late = hub.connect(asyncio.get_running_loop())
        assert await late.next(1.0) is not None  # a stream opened after close ends at once
        return received

    assert asyncio.run(scenario()) == [
        b"retry: 1000\n\n",
        b'event: status\ndata: {"health":"healthy"}\n\n',
        b": keepalive\n\n",
    ]


# --------------------------------------------------------------------------- bad input on the status API


def test_a_non_ascii_bearer_token_is_refused_not_a_server_error(setup: Setup) -> None:
    client = setup.client()
    for path, body in (("/api/actions/restart", None), ("/api/settings", {"values": {"stop_timeout": 9}})):
        response = client.post(path, json=body, headers={"Authorization": "Bearer caf\u00e9".encode()})
        assert response.status_code == 401, path
    assert setup.config_path.read_text() == CONFIG_TEXT


@pytest.mark.parametrize("limit", ["9" * 30, "0", "-5", "lots"])
def test_an_unusable_event_limit_is_one_line_not_a_server_error(setup: Setup, limit: str) -> None:
    response = setup.client().get(f"/api/events?limit={limit}", headers=AUTH)
    assert (response.status_code, response.json()) == (400, {"error": "limit must be a whole number from 1 to 1000000"})
