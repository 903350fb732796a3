"""The typed status: its JSON is the status API's contract, and an older monitor's JSON still reads."""

from __future__ import annotations

import doctest
import json

from tray.core import status as status_module
from tray.core.health import BusySource, Health
from tray.core.status import (
    STATUS_KEYS,
    Activity,
    ActivityKind,
    BusyStatus,
    GatewayStatus,
    LoadedModelStatus,
    ModelInfo,
    ModelStatus,
    MonitorState,
    Status,
    make_status,
)

# The keys of GET /api/status and `ollama-manager status --json`, in order: scripts read these.
API_KEYS = (
    "ollama_running",
    "model_loaded",
    "latency_ms",
    "health",
    "uptime_seconds",
    "inference_count",
    "memory_usage_mb",
    "gpu_available",
    "cpu_usage_percent",
    "last_error",
    "state",
    "managed_by",
    "pid",
    "ollama_host",
    "model",
    "restart_attempt",
    "restart_attempts_max",
    "next_retry_in",
    "activity",
    "busy",
    "cloud_active",
    "gateway",
    "loaded_models",
    "model_status",
    "model_info",
    # who runs the server (added last: the keys above keep their places)
    "owner",
    "unit",
    "server_settings_note",
    # model switching (added last again)
    "modelfile_model",
    "installed_models",
    "model_loading",
    "supervising",
)

EVERYTHING = make_status(
    activity=Activity(ActivityKind.BUILD, "Building model 45 %", 0.45),
    busy=BusyStatus("llama3:latest", 2, 1, 80.4, 0.5, BusySource.GATEWAY, False),
    gateway=GatewayStatus("open", "3 failures", 12.5, True, True, "openai", "gpt-4o-mini", 10, 4, 0.4, "http://x"),
    loaded_models=(LoadedModelStatus("llama3:latest", 4_661_224_676, 0),),
    model_info=ModelInfo(4_661_224_676, "8.0B", "Q4_0", 1_800_000_000.5),
    next_retry_in=4.5,
    last_error="connection refused",
    managed_by="systemd",
    owner="ollama",
    unit="ollama.service",
    server_settings_note="[ollama_server] does not reach Ollama run by ollama.service; …",
)


def test_docstring_examples() -> None:
    assert doctest.testmod(status_module).failed == 0


def test_the_json_keys_are_pinned_in_order() -> None:
    assert STATUS_KEYS == API_KEYS
    assert tuple(Status().to_json()) == API_KEYS
    assert tuple(EVERYTHING.to_json()) == API_KEYS


def test_the_json_holds_plain_values_only() -> None:
    data = EVERYTHING.to_json()
    assert json.loads(json.dumps(data)) == data
    assert type(data["health"]) is str and type(data["state"]) is str and type(data["model_status"]) is str
    assert data["activity"] == {"kind": "build", "text": "Building model 45 %", "progress": 0.45}
    assert data["busy"] == {
        "model": "llama3:latest",
        "requests": 2,
        "waiting": 1,
        "since_seconds": 80.4,
        "progress_seconds_ago": 0.5,
        "source": "gateway",
        "stuck": False,
    }
    assert type(data["busy"]["source"]) is str
    assert list(data["gateway"]) == [
        "breaker",
        "breaker_reason",
        "retry_in",
        "cloud_enabled",
        "cloud_active",
        "cloud_provider",
        "cloud_model",
        "calls",
        "cloud_calls",
        "fallback_ratio",
        "ollama_url",
    ]
    assert data["loaded_models"] == [{"name": "llama3:latest", "size": 4_661_224_676, "size_vram": 0}]
    assert data["model_info"] == {
        "size": 4_661_224_676,
        "parameter_size": "8.0B",
        "quantization": "Q4_0",
        "last_verified": 1_800_000_000.5,
    }


def test_the_json_reads_back_to_the_same_status() -> None:
    for status in (Status(), make_status(), EVERYTHING):
        text = json.dumps(status.to_json())
        assert Status.from_json(json.loads(text)) == status
        assert json.dumps(Status.from_json(json.loads(text)).to_json()) == text


def test_an_older_monitors_json_reads_with_defaults() -> None:
    # What a monitor printed before busy, the gateway, the loaded models and the model's details existed.
    old = {
        "ollama_running": True,
        "model_loaded": "llama3",
        "latency_ms": 12,
        "health": "healthy",
        "uptime_seconds": 60,
        "inference_count": 3,
        "memory_usage_mb": 512,
        "gpu_available": False,
        "cpu_usage_percent": 4,
        "last_error": None,
        "state": "running",
        "future_key": {"ignored": True},
    }
    status = Status.from_json(old)
    assert (status.health, status.state, status.latency_ms, status.cpu_usage_percent) == (
        Health.HEALTHY,
        MonitorState.RUNNING,
        12,
        4.0,
    )
    assert (status.busy, status.gateway, status.loaded_models, status.model_info, status.activity) == (
        None,
        None,
        (),
        None,
        None,
    )
    assert (status.owner, status.unit, status.server_settings_note) == (None, None, None)


def test_unknown_or_ill_typed_values_count_as_not_sent() -> None:
    status = Status.from_json(
        {
            "ollama_running": False,
            "health": "sleepy",
            "state": "stopping",
            "latency_ms": "12",
            "pid": True,
            "model_status": "unheard-of",
            "activity": {"kind": "dance", "text": "x"},
            "loaded_models": [{"name": "a:latest", "size": 1, "size_vram": 0}, "junk", {"size": 3}],
        }
    )
    assert (status.health, status.state, status.latency_ms, status.pid) == (
        Health.UNKNOWN,
        MonitorState.STOPPED,
        None,
        None,
    )
    assert (status.model_status, status.activity) == (None, None)
    assert status.loaded_models == (LoadedModelStatus("a:latest", 1, 0),)
    assert Status.from_json({"ollama_running": True, "state": "stopping"}).state is MonitorState.RUNNING


def test_a_status_must_be_a_json_object() -> None:
    for bad in ([], "running", None):
        try:
            Status.from_json(bad)
        except ValueError as exc:
            assert "JSON object" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was read as a status")


def test_make_status_is_a_healthy_server_the_manager_started() -> None:
    status = make_status()
    assert (status.ollama_running, status.health, status.state, status.managed_by) == (
        True,
        Health.HEALTHY,
        MonitorState.RUNNING,
        "manager",
    )
    assert status.model_status is ModelStatus.OK
    assert make_status(state=MonitorState.STOPPED, ollama_running=False).state is MonitorState.STOPPED


def test_a_server_another_account_runs_reads_back_typed() -> None:
    status = Status.from_json({"ollama_running": False, "state": "refused", "owner": "mallory", "unit": 7})
    assert (status.state, status.owner, status.unit, status.server_settings_note) == (
        MonitorState.REFUSED,
        "mallory",
        None,
        None,
    )
