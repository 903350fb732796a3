"""The design notes' daemon duties, run after every health check.

Record a metrics sample, evaluate the alert rules, walk the out-of-memory
ladder (from probe errors and new server-log lines), and note restarts the
manager did not ask for. Everything lands in the history as events, which
the tray turns into notifications.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

from tray.config import Config
from tray.core.alerts import AlertEngine, AlertState, Metrics
from tray.core.health import Busy, ProbeResult
from tray.core.oom import OomEvent, OomLadder
from tray.gateway.breaker import FallbackUsage
from tray.history import History
from tray.resources import ResourceSample

log = logging.getLogger(__name__)

COMPACT_EVERY_SECONDS = 3600.0
RESTART_MEMORY_SECONDS = 3600.0
LOG_TAIL_MAX_BYTES = 65536


class ServerLogTail:
    """New lines appended to a log file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset: int | None = None

    def new_lines(self) -> list[str]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if self.offset is None or size < self.offset:  # first look, or the log was rotated
            self.offset = size if self.offset is None else 0
            if self.offset == size:
                return []
        start = max(self.offset, size - LOG_TAIL_MAX_BYTES)
        try:
            with open(self.path, "rb") as handle:
                handle.seek(start)
                data = handle.read(size - start)
        except OSError:
            return []
        self.offset = size
        return data.decode("utf-8", "replace").splitlines()


class DaemonDuties:
    def __init__(self, config: Config, history: History, server_log: Path, recheck_seconds: float) -> None:
        self.config = config
        self.history = history
        # The longest normal gap between checks: the interval (or the re-check
        # cadence while failing) plus a probe that runs into its timeout.
        expected_gap = max(config.health_check_interval, recheck_seconds) + 3 * config.health_check_timeout
        self.alerts = AlertEngine(config.alerts, interval_seconds=expected_gap)
        self.oom = OomLadder()
        self.log_tail = ServerLogTail(server_log)
        self.restart_times: deque[float] = deque()
        self.last_compact: float | None = None
        self.leak_restart_wanted = False

    def note_restart(self, now: float) -> None:
        self.restart_times.append(now)

    def after_tick(
        self,
        now: float,
        health: str,
        probe: ProbeResult,
        sample: ResourceSample | None,
        model_status: str | None,
        fallback: FallbackUsage | None = None,
        busy: Busy | None = None,
        busy_known: bool = False,
    ) -> None:
        """``busy_known``: the server answered this tick, so ``busy`` None means idle, not unknown."""
        self._record_sample(health, probe, sample)
        self._walk_oom_ladder(now, probe)
        while self.restart_times and now - self.restart_times[0] > RESTART_MEMORY_SECONDS:
            self.restart_times.popleft()
        gpu = sample.fullest_gpu if sample else None
        metrics = Metrics(
            tree_memory_bytes=sample.tree_rss_bytes if sample and sample.server_running else None,
            tree_cpu_percent=sample.tree_cpu_percent if sample and sample.server_running else None,
            health=health,
            restart_times=tuple(self.restart_times),
            fallback_ratio=fallback.ratio if fallback else None,
            fallback_calls=fallback.calls if fallback else None,
            model_status=model_status,
            model_name=self.config.ollama_model,
            disk_free_bytes=sample.disk_free_bytes if sample else None,
            gpu_memory_used_bytes=gpu.memory_used_bytes if gpu else None,
            gpu_memory_total_bytes=gpu.memory_total_bytes if gpu else None,
            runner_stuck=(busy is not None and busy.stuck) if busy_known else None,
            busy_model=busy.model if busy else None,
            busy_quiet_seconds=busy.quiet_seconds(now) if busy else None,
        )
        for alert in self.alerts.observe(now, metrics):
            self.history.record(
                "alert",
                f"{alert.title}: {alert.message}",
                {"kind": str(alert.kind), "state": str(alert.state), "severity": str(alert.severity)},
            )
            if alert.requests_restart and alert.state is AlertState.RAISED and self.config.alerts.leak_restart:
                self.leak_restart_wanted = True
        if self.last_compact is None or now - self.last_compact >= COMPACT_EVERY_SECONDS:
            self.last_compact = now
            self.history.compact()

    @property
    def probe_options(self) -> dict[str, int]:
        """Request options the OOM ladder currently asks for (smaller context, fewer GPU layers)."""
        return self.oom.options

    @property
    def oom_wants_cloud(self) -> bool:
        return self.oom.cloud_fallback

    def _record_sample(self, health: str, probe: ProbeResult, sample: ResourceSample | None) -> None:
        gpu = sample.fullest_gpu if sample else None
        self.history.record_sample(
            {
                "health": health,
                "latency_ms": probe.latency * 1000 if probe.ok else None,
                "memory_mb": sample.tree_rss_bytes / 2**20 if sample and sample.server_running else None,
                "cpu_percent": sample.tree_cpu_percent if sample and sample.server_running else None,
                "ram_used_mb": sample.ram_used_bytes / 2**20 if sample else None,
                "gpu_memory_mb": gpu.memory_used_bytes / 2**20 if gpu and gpu.memory_used_bytes is not None else None,
                "gpu_percent": gpu.utilization_percent if gpu else None,
            }
        )

    def _walk_oom_ladder(self, now: float, probe: ProbeResult) -> None:
        moves: list[OomEvent | None] = []
        if not probe.ok and probe.detail:
            moves.append(self.oom.report_error(now, probe.detail))
        for line in self.log_tail.new_lines():
            moves.append(self.oom.report_log_line(now, line))
        if not any(moves):
            moves.append(self.oom.tick(now, memory_ok=probe.ok))
        for move in moves:
            if move is not None:
                self.history.record(
                    "oom",
                    f"{move.title}: {move.message}",
                    {"level": move.level, "options": move.options, "cloud_fallback": move.cloud_fallback},
                )
