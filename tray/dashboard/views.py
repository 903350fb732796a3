"""What the dashboard shows, computed from the monitor's status and the history (pure).

The page only places these values: labels, enabled actions and chart
points are decided here, where they can be tested.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from tray.core.actions import (
    REBUILD,
    RESTART,
    SERVER_ACTION_LABELS,
    START,
    STOP,
    UNLOAD,
    action_enabled,
    blocked_actions,
    server_is_up,
)
from tray.core.health import Health
from tray.core.names import same_model
from tray.core.status import BusyStatus, GatewayStatus, Status
from tray.core.status_text import busy_text, loaded_model_label, loading_text, status_summary
from tray.core.units import MIB, format_age, format_duration, format_latency, human_bytes, human_memory
from tray.history import NUMERIC_FIELDS, Event

RANGES: dict[str, float] = {"1h": 3600.0, "1d": 86400.0}
CHART_POINTS = 360
TIMELINE_LIMIT = 500
HEALTH_RANK = {"down": 3, "unhealthy": 2, "healthy": 1}

MANAGED_BY = {
    "manager": "started by this manager",
    "external": "started outside the manager",
    "systemd": "managed by systemd",
    "ollama-app": "run by the Ollama app",
    "none": "not running",
}
GATEWAY_OFF = "gateway off"
NOTHING = "—"


# --------------------------------------------------------------------------- status


def action_views(status: Status) -> list[dict[str, Any]]:
    """The tray menu's server actions, in its order, with the same enabled rules."""
    blocked = blocked_actions(status, ())
    start_or_stop = STOP if server_is_up(status) else START
    return [
        {"id": action, "label": SERVER_ACTION_LABELS[action], "enabled": action_enabled(action, status, blocked)}
        for action in (start_or_stop, RESTART, REBUILD, UNLOAD)
    ]


def model_view(status: Status, now: float) -> dict[str, Any]:
    """Name, presence, size, parameters, quantization and last verification of the Modelfile (kept) model."""
    info = status.model_info
    modelfile = status.modelfile_model or status.model
    if status.installed_models and not same_model(modelfile, status.model):
        present = any(same_model(model.name, modelfile) for model in status.installed_models)
    else:
        present = bool(status.model_loaded)
    size = info.size if info else None
    verified = info.last_verified if info else None
    return {
        "name": modelfile or NOTHING,
        "present": present,
        "status": str(status.model_status or "unknown"),
        "size": human_bytes(size) if size else NOTHING,
        "parameters": (info.parameter_size if info else None) or NOTHING,
        "quantization": (info.quantization if info else None) or NOTHING,
        "last_verified": format_age(now - verified) if verified else "never",
        "last_verified_at": iso_time(verified) if verified else None,
        "loaded": [loaded_model_label(model) for model in status.loaded_models],
    }


def models_view(status: Status) -> dict[str, Any]:
    """The installed models (name, size, parameters, quantization, in memory or not), the active one and the
    Modelfile one marked, and a preload under way.

    >>> from tray.core.status import InstalledModelStatus, LoadedModelStatus, make_status
    >>> view = models_view(make_status(model="mistral:latest", loaded_models=(LoadedModelStatus("mistral", 9, 0),),
    ...     installed_models=(InstalledModelStatus("mistral:latest", 4_100_000_000, "7.2B", "Q4_K_M"),)))
    >>> [(row["name"], row["size"], row["quantization"], row["loaded"], row["active"]) for row in view["rows"]]
    [('mistral:latest', '4.1 GB', 'Q4_K_M', True, True)]
    >>> view["modelfile"], view["modelfile_active"], view["loading"]
    ('uncensored-llama3', False, None)
    """
    modelfile = status.modelfile_model or status.model
    rows = [
        {
            "name": model.name,
            "size": human_bytes(model.size) if model.size else NOTHING,
            "parameters": model.parameter_size or NOTHING,
            "quantization": model.quantization or NOTHING,
            "loaded": any(same_model(loaded.name, model.name) for loaded in status.loaded_models),
            "active": bool(status.model) and same_model(model.name, status.model),
            "modelfile": bool(modelfile) and same_model(model.name, modelfile),
        }
        for model in status.installed_models
    ]
    return {
        "rows": rows,
        "modelfile": modelfile or NOTHING,
        "modelfile_active": not status.model or same_model(status.model, modelfile),
        "loading": loading_text(status.model_loading) if status.model_loading is not None else None,
    }


def gateway_view(gateway: GatewayStatus | None) -> dict[str, Any]:
    """The gateway's local/cloud split over its window, or "gateway off"."""
    if gateway is None:
        return {"enabled": False, "text": GATEWAY_OFF, "local": None, "cloud": None, "cloud_share": None}
    calls, cloud = gateway.calls, gateway.cloud_calls
    local = calls - cloud
    share = cloud / calls if calls else None
    text = f"{local} local · {cloud} cloud ({round(share * 100)} % cloud)" if share is not None else "no calls yet"
    return {"enabled": True, "text": text, "local": local, "cloud": cloud, "cloud_share": share}


def busy_view(busy: BusyStatus | None, running: bool) -> dict[str, Any]:
    """What Ollama is working on: a line for the live panel, and whether it looks stuck.

    >>> from tray.core.health import BusySource
    >>> busy_view(None, True), busy_view(None, False)["text"]
    ({'text': 'idle', 'stuck': False, 'source': None}, '—')
    >>> busy_view(BusyStatus("llama3", None, None, 75.0, None, BusySource.RUNNER, stuck=False), True)
    {'text': 'generating on llama3 for 1 min', 'stuck': False, 'source': 'runner'}
    """
    if busy is None:
        return {"text": "idle" if running else NOTHING, "stuck": False, "source": None}
    text = busy_text(busy).removeprefix("busy: ")
    return {"text": text, "stuck": busy.stuck, "source": str(busy.source)}


def status_view(status: Status, now: float) -> dict[str, Any]:
    """Everything the dashboard's live part shows, for one status; ``now`` is wall time."""
    running = status.ollama_running
    latency = status.latency_ms
    pid = status.pid
    owner = MANAGED_BY.get(status.managed_by, status.managed_by)
    if status.unit:
        owner += f" ({status.unit})"
    if status.owner and status.managed_by != "manager":
        owner += f", run by {status.owner}"
    return {
        "health": str(status.health),
        "summary": status_summary(status),
        "latency": format_latency(latency) if latency is not None else NOTHING,
        "uptime": format_duration(status.uptime_seconds) if running and status.uptime_seconds else NOTHING,
        "state": f"{status.state}, {owner}" + (f" (pid {pid})" if pid else ""),
        "memory": human_memory(status.memory_usage_mb * MIB) if running else NOTHING,
        "cpu": f"{status.cpu_usage_percent} %" if running else NOTHING,
        "gpu": "available" if status.gpu_available else "none",
        "host": status.ollama_host or NOTHING,
        "last_error": status.last_error if status.health is not Health.HEALTHY else None,
        "cloud_active": status.cloud_active,
        "busy": busy_view(status.busy, running),
        "actions": action_views(status),
        "model": model_view(status, now),
        "models": models_view(status),
        "gateway": gateway_view(status.gateway),
        "settings_note": status.server_settings_note,
    }


def iso_time(unix: float) -> str:
    """Unix seconds as an ISO 8601 UTC time.

    >>> iso_time(0.0)
    '1970-01-01T00:00:00Z'
    """
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- history


def parse_range(text: str | None) -> float:
    """Seconds covered by a chart range name; ValueError naming the choices.

    >>> parse_range("1h"), parse_range(None)
    (3600.0, 3600.0)
    """
    name = text or "1h"
    if name not in RANGES:
        raise ValueError(f"range must be one of {', '.join(RANGES)}, got {name!r}")
    return RANGES[name]


def worst_health(values: Iterable[str | None]) -> str | None:
    """The worst of the known health values, None when there is none.

    >>> worst_health(["healthy", None, "unhealthy"]), worst_health([None])
    ('unhealthy', None)
    """
    ranked = [value for value in values if value in HEALTH_RANK]
    return max(ranked, key=HEALTH_RANK.__getitem__, default=None)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def bucket_samples(rows: Iterable[Mapping[str, Any]], since: float, width: float) -> list[dict[str, Any]]:
    """Samples averaged per ``width``-second bucket from ``since``: mean time and values, worst health.

    Empty buckets are left out, so a gap in the history stays a gap.
    """
    buckets: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["time"] >= since:
            buckets.setdefault(math.floor((row["time"] - since) / width), []).append(row)
    points = []
    for index in sorted(buckets):
        group = buckets[index]
        point: dict[str, Any] = {"time": _mean([row["time"] for row in group])}
        point["health"] = worst_health(row.get("health") for row in group)
        for name in NUMERIC_FIELDS:
            point[name] = _mean([row[name] for row in group if row.get(name) is not None])
        points.append(point)
    return points


def timeline_json(events: Iterable[Event]) -> list[dict[str, Any]]:
    """Events for the timeline, newest first, with unix time for placing them on the charts."""
    return [{"t": event.time, **event.to_json()} for event in reversed(list(events))]


def history_view(
    samples: Iterable[Mapping[str, Any]], events: Iterable[Event], range_seconds: float, now: float
) -> dict[str, Any]:
    """The charts' points and the timeline for the range ending at ``now`` (wall time)."""
    since = now - range_seconds
    width = range_seconds / CHART_POINTS
    return {
        "since": since,
        "until": now,
        "bucket_seconds": width,
        "samples": bucket_samples(samples, since, width),
        "events": timeline_json(events),
    }
