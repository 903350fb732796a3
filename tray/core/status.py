"""The monitor's status as a typed value, and the kinds the app's parts speak in.

:class:`Status` is what the monitor publishes after every change: the tray,
the dashboard, the CLI, the metrics and the gateway read its attributes.
:meth:`Status.to_json` gives the JSON of ``GET /api/status`` and
``ollama-manager status --json`` (keys and order fixed, see
:data:`STATUS_KEYS`); :meth:`Status.from_json` reads it back, also from a
monitor of an older version (missing keys take their defaults, unknown
values their safe reading).

The kinds (the events' kinds are :class:`tray.history.EventKind`, beside the events):

- :class:`MonitorState`: where the monitor is with the server (its ``state``)
- :class:`ActivityKind`: the work under way that the tray shows (its ``activity``)
- :class:`ModelStatus`: what the model keeper last found of the model

Tests build a status with :func:`make_status`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeVar

from tray.core.health import Busy, BusySource, Health

E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")


class MonitorState(StrEnum):
    """Where the monitor is with the server it watches."""

    STARTING = "starting"  # before the first start or adoption finished
    RUNNING = "running"  # started or adopted, and watched
    RESTARTING = "restarting"  # a restart is under way or waiting for its next attempt
    FAILED = "failed"  # the restart policy gave up; retried rarely
    STOPPED = "stopped"  # the user stopped it; it stays stopped until they start it
    REFUSED = "refused"  # what answers on the port is another user's: never used, never signalled


class ActivityKind(StrEnum):
    """Work the monitor or the model keeper is doing right now."""

    START = "start"
    STOP = "stop"
    RESTART = "restart"
    UNLOAD = "unload"
    BUILD = "build"  # building or checking the model from the Modelfile
    PULL = "pull"  # pulling the model's base
    VERIFY = "verify"  # checking the model's files against their digests


class ModelStatus(StrEnum):
    """What the model keeper last found of the model (None in a status: not looked yet)."""

    OK = "ok"
    MISSING = "missing"
    CORRUPT = "corrupt"


@dataclass(frozen=True)
class Activity:
    """Work under way, as the tray shows it: ``Building model 45 %``."""

    kind: ActivityKind
    text: str = ""
    progress: float | None = None  # 0-1, when known

    def to_json(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "text": self.text, "progress": self.progress}

    @classmethod
    def from_json(cls, data: object) -> Activity | None:
        if not isinstance(data, Mapping):
            return None
        kind = _enum(ActivityKind, data.get("kind"), None)
        if kind is None:
            return None
        return cls(kind, _value(str, data.get("text"), ""), _number(data.get("progress"), None))


@dataclass(frozen=True)
class BusyStatus:
    """What Ollama is busy with (:class:`~tray.core.health.Busy`) at the time of the status, in seconds ago."""

    model: str | None
    requests: int | None  # in flight through the gateway, when it runs
    waiting: int | None  # of those, with no byte back yet
    since_seconds: float
    progress_seconds_ago: float | None
    source: BusySource
    stuck: bool

    @classmethod
    def of(cls, busy: Busy, now: float) -> BusyStatus:
        """The status' view of ``busy`` at monotonic time ``now``.

        >>> BusyStatus.of(Busy(BusySource.RUNNER, "m", None, None, 10.0, 40.0, False, False), 100.0)
        BusyStatus(model='m', requests=None, waiting=None, since_seconds=90.0, progress_seconds_ago=60.0, \
source=<BusySource.RUNNER: 'runner'>, stuck=False)
        """
        ago = None if busy.last_progress is None else round(max(0.0, now - busy.last_progress), 1)
        return cls(
            model=busy.model,
            requests=busy.requests,
            waiting=busy.waiting,
            since_seconds=round(max(0.0, now - busy.since), 1),
            progress_seconds_ago=ago,
            source=busy.source,
            stuck=busy.stuck,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "requests": self.requests,
            "waiting": self.waiting,
            "since_seconds": self.since_seconds,
            "progress_seconds_ago": self.progress_seconds_ago,
            "source": str(self.source),
            "stuck": self.stuck,
        }

    @classmethod
    def from_json(cls, data: object) -> BusyStatus | None:
        if not isinstance(data, Mapping):
            return None
        return cls(
            model=_value(str, data.get("model"), None),
            requests=_value(int, data.get("requests"), None),
            waiting=_value(int, data.get("waiting"), None),
            since_seconds=_number(data.get("since_seconds"), 0.0),
            progress_seconds_ago=_number(data.get("progress_seconds_ago"), None),
            source=_enum(BusySource, data.get("source"), BusySource.RUNNER),
            stuck=_value(bool, data.get("stuck"), False),
        )


@dataclass(frozen=True)
class GatewayStatus:
    """The loopback gateway's routing state, when it runs beside the monitor (also ``GET /_gateway/status``)."""

    breaker: str  # "closed", "open" or "half_open"
    breaker_reason: str
    retry_in: float | None  # seconds until the open breaker lets a trial through
    cloud_enabled: bool
    cloud_active: bool  # the cloud answers instead of Ollama right now
    cloud_provider: str | None
    cloud_model: str | None
    calls: int  # in the gateway's recent window
    cloud_calls: int
    fallback_ratio: float | None
    ollama_url: str

    def to_json(self) -> dict[str, Any]:
        return {
            "breaker": self.breaker,
            "breaker_reason": self.breaker_reason,
            "retry_in": self.retry_in,
            "cloud_enabled": self.cloud_enabled,
            "cloud_active": self.cloud_active,
            "cloud_provider": self.cloud_provider,
            "cloud_model": self.cloud_model,
            "calls": self.calls,
            "cloud_calls": self.cloud_calls,
            "fallback_ratio": self.fallback_ratio,
            "ollama_url": self.ollama_url,
        }

    @classmethod
    def from_json(cls, data: object) -> GatewayStatus | None:
        if not isinstance(data, Mapping):
            return None
        return cls(
            breaker=_value(str, data.get("breaker"), "closed"),
            breaker_reason=_value(str, data.get("breaker_reason"), ""),
            retry_in=_number(data.get("retry_in"), None),
            cloud_enabled=_value(bool, data.get("cloud_enabled"), False),
            cloud_active=_value(bool, data.get("cloud_active"), False),
            cloud_provider=_value(str, data.get("cloud_provider"), None),
            cloud_model=_value(str, data.get("cloud_model"), None),
            calls=_value(int, data.get("calls"), 0),
            cloud_calls=_value(int, data.get("cloud_calls"), 0),
            fallback_ratio=_number(data.get("fallback_ratio"), None),
            ollama_url=_value(str, data.get("ollama_url"), ""),
        )


@dataclass(frozen=True)
class LoadedModelStatus:
    """A model in Ollama's memory (``/api/ps``): its size, and how much of it sits in GPU memory."""

    name: str
    size: int
    size_vram: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "size_vram": self.size_vram}

    @classmethod
    def from_json(cls, data: object) -> LoadedModelStatus | None:
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            return None
        return cls(data["name"], _value(int, data.get("size"), 0), _value(int, data.get("size_vram"), 0))


@dataclass(frozen=True)
class InstalledModelStatus:
    """A model Ollama has installed (``/api/tags``): its size, parameters and quantization."""

    name: str
    size: int
    parameter_size: str | None = None
    quantization: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "parameter_size": self.parameter_size,
            "quantization": self.quantization,
        }

    @classmethod
    def from_json(cls, data: object) -> InstalledModelStatus | None:
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            return None
        return cls(
            data["name"],
            _value(int, data.get("size"), 0),
            _value(str, data.get("parameter_size"), None),
            _value(str, data.get("quantization"), None),
        )


@dataclass(frozen=True)
class ModelLoading:
    """The active model being preloaded after a switch, and for how long so far (Ollama reports no percentage)."""

    model: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: object) -> ModelLoading | None:
        if not isinstance(data, Mapping) or not isinstance(data.get("model"), str):
            return None
        return cls(data["model"], _number(data.get("seconds"), 0.0))


@dataclass(frozen=True)
class ModelInfo:
    """The kept model's size, parameters and quantization from its last build, and its last verification."""

    size: int | None
    parameter_size: str | None
    quantization: str | None
    last_verified: float | None  # unix seconds

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "parameter_size": self.parameter_size,
            "quantization": self.quantization,
            "last_verified": self.last_verified,
        }

    @classmethod
    def from_json(cls, data: object) -> ModelInfo | None:
        if not isinstance(data, Mapping):
            return None
        return cls(
            size=_value(int, data.get("size"), None),
            parameter_size=_value(str, data.get("parameter_size"), None),
            quantization=_value(str, data.get("quantization"), None),
            last_verified=_number(data.get("last_verified"), None),
        )


@dataclass(frozen=True)
class Status:
    """One status of the monitor; the defaults say "nothing known yet"."""

    ollama_running: bool = False  # the last probe got an answer
    model_loaded: str | None = None  # the active model, when the server answers and has it
    latency_ms: int | None = None  # of the last successful probe
    health: Health = Health.UNKNOWN
    uptime_seconds: int = 0
    inference_count: int = 0  # inference probes sent
    memory_usage_mb: int = 0  # Ollama's process tree (server and runners)
    gpu_available: bool = False
    cpu_usage_percent: float = 0.0  # Ollama's process tree, share of the machine
    last_error: str | None = None
    state: MonitorState = MonitorState.STARTING
    managed_by: str = "none"  # "manager", "external", "systemd", "ollama-app" or "none"
    pid: int | None = None
    ollama_host: str = ""
    model: str = ""  # the active model: the probe's, the one the tray and the gateway name
    restart_attempt: int = 0
    restart_attempts_max: int = 0
    next_retry_in: float | None = None  # seconds until the next restart attempt
    activity: Activity | None = None
    busy: BusyStatus | None = None
    cloud_active: bool = False  # the cloud fallback answers instead of Ollama
    gateway: GatewayStatus | None = None  # None: no gateway runs beside the monitor
    loaded_models: tuple[LoadedModelStatus, ...] = ()
    model_status: ModelStatus | None = None
    model_info: ModelInfo | None = None
    owner: str | None = None  # the account that runs the server, when known
    unit: str | None = None  # the server's systemd unit, when systemd runs it
    server_settings_note: str | None = None  # [ollama_server] cannot reach a systemd server: the drop-in that would
    modelfile_model: str = ""  # the model built from the Modelfile (``ollama_model``); ``model`` may be another
    installed_models: tuple[InstalledModelStatus, ...] = ()
    model_loading: ModelLoading | None = None
    supervising: bool = True  # False: the monitor's loop has stopped, nothing watches Ollama (last_error says why)

    def to_json(self) -> dict[str, Any]:
        """The status API's JSON object (keys in :data:`STATUS_KEYS` order, enums as their strings)."""
        return {
            "ollama_running": self.ollama_running,
            "model_loaded": self.model_loaded,
            "latency_ms": self.latency_ms,
            "health": str(self.health),
            "uptime_seconds": self.uptime_seconds,
            "inference_count": self.inference_count,
            "memory_usage_mb": self.memory_usage_mb,
            "gpu_available": self.gpu_available,
            "cpu_usage_percent": self.cpu_usage_percent,
            "last_error": self.last_error,
            "state": str(self.state),
            "managed_by": self.managed_by,
            "pid": self.pid,
            "ollama_host": self.ollama_host,
            "model": self.model,
            "restart_attempt": self.restart_attempt,
            "restart_attempts_max": self.restart_attempts_max,
            "next_retry_in": self.next_retry_in,
            "activity": self.activity.to_json() if self.activity is not None else None,
            "busy": self.busy.to_json() if self.busy is not None else None,
            "cloud_active": self.cloud_active,
            "gateway": self.gateway.to_json() if self.gateway is not None else None,
            "loaded_models": [model.to_json() for model in self.loaded_models],
            "model_status": str(self.model_status) if self.model_status is not None else None,
            "model_info": self.model_info.to_json() if self.model_info is not None else None,
            "owner": self.owner,
            "unit": self.unit,
            "server_settings_note": self.server_settings_note,
            "modelfile_model": self.modelfile_model,
            "installed_models": [model.to_json() for model in self.installed_models],
            "model_loading": self.model_loading.to_json() if self.model_loading is not None else None,
            "supervising": self.supervising,
        }

    @classmethod
    def from_json(cls, data: object) -> Status:
        """A status from the status API's JSON; ValueError when it is not a JSON object.

        Keys an older monitor did not send take their defaults; a value of the
        wrong type or an unknown state counts as not sent.

        >>> old = Status.from_json({"ollama_running": True, "health": "healthy", "state": "running"})
        >>> old.health, old.state, old.busy, old.loaded_models
        (<Health.HEALTHY: 'healthy'>, <MonitorState.RUNNING: 'running'>, None, ())
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a status is a JSON object, not {type(data).__name__}")
        default = cls()
        running = _value(bool, data.get("ollama_running"), default.ollama_running)
        loaded = data.get("loaded_models")
        models = [LoadedModelStatus.from_json(entry) for entry in loaded] if isinstance(loaded, list) else []
        listed = data.get("installed_models")
        installed = [InstalledModelStatus.from_json(entry) for entry in listed] if isinstance(listed, list) else []
        model = _value(str, data.get("model"), default.model)
        return cls(
            ollama_running=running,
            model_loaded=_value(str, data.get("model_loaded"), None),
            latency_ms=_value(int, data.get("latency_ms"), None),
            health=_enum(Health, data.get("health"), Health.UNKNOWN),
            uptime_seconds=_value(int, data.get("uptime_seconds"), default.uptime_seconds),
            inference_count=_value(int, data.get("inference_count"), default.inference_count),
            memory_usage_mb=_value(int, data.get("memory_usage_mb"), default.memory_usage_mb),
            gpu_available=_value(bool, data.get("gpu_available"), default.gpu_available),
            cpu_usage_percent=_number(data.get("cpu_usage_percent"), default.cpu_usage_percent),
            last_error=_value(str, data.get("last_error"), None),
            state=_enum(MonitorState, data.get("state"), MonitorState.RUNNING if running else MonitorState.STOPPED),
            managed_by=_value(str, data.get("managed_by"), default.managed_by),
            pid=_value(int, data.get("pid"), None),
            ollama_host=_value(str, data.get("ollama_host"), default.ollama_host),
            model=model,
            restart_attempt=_value(int, data.get("restart_attempt"), default.restart_attempt),
            restart_attempts_max=_value(int, data.get("restart_attempts_max"), default.restart_attempts_max),
            next_retry_in=_number(data.get("next_retry_in"), None),
            activity=Activity.from_json(data.get("activity")),
            busy=BusyStatus.from_json(data.get("busy")),
            cloud_active=_value(bool, data.get("cloud_active"), default.cloud_active),
            gateway=GatewayStatus.from_json(data.get("gateway")),
            loaded_models=tuple(model for model in models if model is not None),
            model_status=_enum(ModelStatus, data.get("model_status"), None),
            model_info=ModelInfo.from_json(data.get("model_info")),
            owner=_value(str, data.get("owner"), None),
            unit=_value(str, data.get("unit"), None),
            server_settings_note=_value(str, data.get("server_settings_note"), None),
            modelfile_model=_value(str, data.get("modelfile_model"), model),
            installed_models=tuple(entry for entry in installed if entry is not None),
            model_loading=ModelLoading.from_json(data.get("model_loading")),
            supervising=_value(bool, data.get("supervising"), default.supervising),
        )


STATUS_KEYS: tuple[str, ...] = tuple(Status().to_json())


def make_status(**overrides: Any) -> Status:
    """A healthy server the manager started, changed by ``overrides`` (for tests and examples).

    >>> make_status(health=Health.DOWN, latency_ms=None).health
    <Health.DOWN: 'down'>
    """
    return replace(HEALTHY_EXAMPLE, **overrides)


HEALTHY_EXAMPLE = Status(
    ollama_running=True,
    model_loaded="uncensored-llama3",
    latency_ms=245,
    health=Health.HEALTHY,
    uptime_seconds=3600,
    inference_count=1,
    memory_usage_mb=4096,
    gpu_available=False,
    cpu_usage_percent=12.5,
    state=MonitorState.RUNNING,
    managed_by="manager",
    pid=4242,
    ollama_host="http://127.0.0.1:11434",
    model="uncensored-llama3",
    modelfile_model="uncensored-llama3",
    restart_attempts_max=3,
    model_status=ModelStatus.OK,
)


def _value(kind: type[T], value: object, default: T) -> T:
    """``value`` when it is a ``kind`` (a bool is no int here), else ``default``."""
    if isinstance(value, bool) and kind is not bool:
        return default
    return value if isinstance(value, kind) else default


def _number(value: object, default: T) -> float | T:
    """A JSON number as a float, else ``default``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _enum(kind: Callable[[str], E], value: object, default: T) -> E | T:
    """The member of ``kind`` named by ``value``, else ``default``."""
    if not isinstance(value, str):
        return default
    try:
        return kind(value)
    except ValueError:
        return default


__all__ = [
    "STATUS_KEYS",
    "Activity",
    "ActivityKind",
    "BusyStatus",
    "GatewayStatus",
    "InstalledModelStatus",
    "LoadedModelStatus",
    "ModelInfo",
    "ModelLoading",
    "ModelStatus",
    "MonitorState",
    "Status",
    "make_status",
]
