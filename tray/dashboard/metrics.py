"""Prometheus metrics at ``/metrics``, in the text exposition format.

Everything lives in one :class:`~prometheus_client.CollectorRegistry` per
app (never the global one):

- gauges read at scrape time from the monitor's status (with the gateway's
  snapshot in it) and its last resource sample (:func:`status_families`, pure);
- counters fed by the history's events as they are recorded (restarts,
  crashes, alerts; :func:`event_counter` decides);
- a probe-latency histogram fed by the samples the monitor records once per
  health check, read from the history at each scrape.

Counters start at zero when the app starts, as Prometheus expects; built
later (on the first request), the registry counts the events recorded since
the app started (``since``) and feeds the histogram the samples since then.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from tray import __version__
from tray.core.status import GatewayStatus, Status
from tray.history import Event, EventKind, History
from tray.system.resources import ResourceSample

PREFIX = "ollama_manager"
HEALTH_STATES = ("healthy", "unhealthy", "down", "unknown")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0)
RESTART_REASONS = ("user", "down", "not_responding", "stuck_runner", "memory_leak_detected", "unexpected")
MIB = 2**20


def label_value(text: str) -> str:
    """A free-text reason as a tidy label value.

    >>> label_value("Memory leak detected"), label_value("")
    ('memory_leak_detected', 'unknown')
    """
    return "_".join(text.lower().split()) or "unknown"


def event_counter(event: Event) -> tuple[str, dict[str, str]] | None:
    """Which counter an event increments (``restarts``, ``crashes`` or ``alerts``) and its labels."""
    data = event.data or {}
    if event.kind == EventKind.RESTART:
        return "restarts", {"reason": label_value(str(data.get("reason", "")))}
    if event.kind == EventKind.UNEXPECTED_RESTART:
        return "restarts", {"reason": "unexpected"}
    if event.kind == EventKind.CRASH:
        return "crashes", {}
    if event.kind == EventKind.ALERT and data.get("state") == "raised":
        return "alerts", {"kind": str(data.get("kind", "unknown")), "severity": str(data.get("severity", "unknown"))}
    return None


GAUGE_HELP = {
    "up": "1 when Ollama answers its API",
    "last_probe_latency_seconds": "Latency of the last successful health probe",
    "uptime_seconds": "Seconds the Ollama server has been running",
    "restart_attempts": "Restart attempts since Ollama was last healthy",
    "model_present": "1 when the kept model is installed",
    "cloud_fallback_active": "1 while the cloud fallback answers instead of Ollama",
    "tree_memory_bytes": "Resident memory of Ollama's server and runners",
    "tree_cpu_percent": "CPU of Ollama's server and runners, as a share of the machine",
    "gpu_available": "1 when a GPU can be measured",
    "gateway_enabled": "1 when the local gateway runs",
    "fallback_ratio": "Share of the gateway's recent calls the cloud answered",
    "busy": "1 while Ollama is working on a request (seen by the gateway, the runners' CPU or the probe)",
    "busy_seconds": "How long Ollama has been busy without a break (0 when idle)",
    "stuck_runner": "1 while Ollama has been busy with no progress for longer than stuck_runner_timeout",
}


def _flag(value: Any) -> float:
    return 1.0 if value else 0.0


def gauge_values(status: Status, sample: ResourceSample | None) -> dict[str, float | None]:
    """The unlabelled gauges (None: not known, left out) for one status (with its gateway) and resource sample."""
    running = status.ollama_running
    latency = status.latency_ms
    if sample is not None:
        memory = float(sample.tree_rss_bytes) if sample.server_running else 0.0
        cpu = float(sample.tree_cpu_percent) if sample.server_running else 0.0
    else:
        memory = float(status.memory_usage_mb) * MIB if running else 0.0
        cpu = status.cpu_usage_percent if running else 0.0
    gateway = status.gateway
    ratio = gateway.fallback_ratio if gateway is not None else None
    busy = status.busy
    return {
        "up": _flag(running),
        "last_probe_latency_seconds": latency / 1000 if latency is not None else None,
        "uptime_seconds": float(status.uptime_seconds),
        "restart_attempts": float(status.restart_attempt),
        "model_present": _flag(status.model_loaded),
        "cloud_fallback_active": _flag(status.cloud_active),
        "tree_memory_bytes": memory,
        "tree_cpu_percent": cpu,
        "gpu_available": _flag(sample.gpu_available) if sample is not None else None,
        "gateway_enabled": _flag(gateway is not None),
        "fallback_ratio": ratio,
        "busy": _flag(busy),
        "busy_seconds": busy.since_seconds if busy is not None else 0.0,
        "stuck_runner": _flag(busy is not None and busy.stuck),
    }


def _health_family(status: Status) -> Metric:
    family = GaugeMetricFamily(f"{PREFIX}_health", "Ollama's health: 1 for the current state", labels=["state"])
    for state in HEALTH_STATES:
        family.add_metric([state], _flag(state == status.health))
    return family


def _gpu_families(sample: ResourceSample | None) -> list[Metric]:
    labels = ["gpu", "name"]
    families = {
        "memory_used_bytes": GaugeMetricFamily(f"{PREFIX}_gpu_memory_used_bytes", "GPU memory in use", labels=labels),
        "memory_total_bytes": GaugeMetricFamily(f"{PREFIX}_gpu_memory_total_bytes", "GPU memory", labels=labels),
        "utilization_percent": GaugeMetricFamily(f"{PREFIX}_gpu_utilization_percent", "GPU use", labels=labels),
    }
    for gpu in sample.gpus if sample is not None else ():
        for family, value in zip(
            families.values(), (gpu.memory_used_bytes, gpu.memory_total_bytes, gpu.utilization_percent), strict=True
        ):
            if value is not None:
                family.add_metric([str(gpu.index), gpu.name], float(value))
    return [family for family in families.values() if family.samples]


def _gateway_calls_family(gateway: GatewayStatus | None) -> list[Metric]:
    if gateway is None:
        return []
    calls, cloud = gateway.calls, gateway.cloud_calls
    family = GaugeMetricFamily(
        f"{PREFIX}_gateway_calls", "Gateway calls in its recent window, by backend", labels=["backend"]
    )
    family.add_metric(["local"], float(calls - cloud))
    family.add_metric(["cloud"], float(cloud))
    return [family]


def _info_family(status: Status) -> Metric:
    family = InfoMetricFamily(PREFIX, "The manager and what it supervises")
    labels = {"model": status.model, "ollama_host": status.ollama_host, "managed_by": status.managed_by}
    family.add_metric([], {"version": __version__, **labels})
    return family


def status_families(status: Status, sample: ResourceSample | None) -> list[Metric]:
    """Every metric read at scrape time, for one status (with its gateway) and resource sample (or None)."""
    families: list[Metric] = []
    for name, value in gauge_values(status, sample).items():
        if value is not None:
            family = GaugeMetricFamily(f"{PREFIX}_{name}", GAUGE_HELP[name])
            family.add_metric([], value)
            families.append(family)
    families.append(_health_family(status))
    families += _gpu_families(sample)
    families += _gateway_calls_family(status.gateway)
    families.append(_info_family(status))
    return families


class StatusCollector(Collector):
    """Reads the monitor at each scrape."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor

    def collect(self) -> Iterable[Metric]:
        return status_families(self.monitor.snapshot(), getattr(self.monitor, "sample", None))


class ManagerMetrics:
    """The registry behind ``/metrics`` for one running app."""

    def __init__(
        self,
        monitor: Any,
        history: History,
        wall_clock: Callable[[], float] = time.time,
        since: float | None = None,
    ) -> None:
        self.history = history
        self.registry = CollectorRegistry(auto_describe=False)
        self.counters = {
            "restarts": Counter(f"{PREFIX}_restarts", "Ollama restarts, by reason", ["reason"], registry=self.registry),
            "crashes": Counter(
                f"{PREFIX}_crashes", "Unexpected exits of an Ollama the manager started", registry=self.registry
            ),
            "alerts": Counter(
                f"{PREFIX}_alerts", "Alerts raised, by kind and severity", ["kind", "severity"], registry=self.registry
            ),
        }
        for reason in RESTART_REASONS:
            self.counters["restarts"].labels(reason=reason)
        self.latency = Histogram(
            f"{PREFIX}_probe_latency_seconds",
            "Latency of successful health probes",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(StatusCollector(monitor))
        # Samples are a health check apart, so their times order them without ties.
        self._samples_after = wall_clock() if since is None else since
        self._ingest_lock = threading.Lock()
        history.subscribe(self.observe_event, replay_since=since)

    def observe_event(self, event: Event) -> None:
        """Count one history event (called from the thread that recorded it)."""
        counted = event_counter(event)
        if counted is not None:
            name, labels = counted
            counter = self.counters[name]
            (counter.labels(**labels) if labels else counter).inc()

    def observe_new_samples(self) -> None:
        """Feed the latency histogram the probes recorded since the last call."""
        with self._ingest_lock:
            rows = [row for row in self.history.samples(since=self._samples_after) if row["time"] > self._samples_after]
            for row in rows:
                if row["span"] == 0 and row["latency_ms"] is not None:
                    self.latency.observe(row["latency_ms"] / 1000)
            if rows:
                self._samples_after = max(row["time"] for row in rows)

    def exposition(self) -> bytes:
        """The text to answer a scrape with."""
        self.observe_new_samples()
        return generate_latest(self.registry)
