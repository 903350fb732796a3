"""The ``[alerts]`` config section: core's alert limits, each with its help text and the range it may take.

:class:`tray.core.alerts.AlertThresholds` holds the values the alert rules
read; :class:`AlertSettings` is the same values as a settings section, so the
loader, the settings page and ``ollama-manager config set`` check them with
the one validator every setting passes (:mod:`tray.settings.meta`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from tray.core.alerts import AlertThresholds
from tray.settings.meta import DAY, check_fields, setting


@dataclass(frozen=True)
class AlertSettings(AlertThresholds):
    """The ``[alerts]`` section; field names are its keys, each default core's (``AlertThresholds.memory_mb``…)."""

    memory_mb: int = field(
        default=AlertThresholds.memory_mb,
        metadata=setting("Alert when Ollama (server + runners) uses more MB", 0, maximum=10**9),
    )
    cpu_percent: float = field(
        default=AlertThresholds.cpu_percent,
        metadata=setting("Alert when Ollama's CPU share stays above this %", 0, maximum=100),
    )
    cpu_window_seconds: float = field(
        default=AlertThresholds.cpu_window_seconds,
        metadata=setting("How long the CPU must stay high (s)", 0, maximum=DAY),
    )
    restarts_per_hour: int = field(
        default=AlertThresholds.restarts_per_hour,
        metadata=setting("Alert on more restarts than this in an hour", 0, maximum=10_000),
    )
    fallback_ratio: float = field(
        default=AlertThresholds.fallback_ratio,
        metadata=setting("Alert when the cloud serves more than this share", 0, maximum=1),
    )
    fallback_min_calls: int = field(
        default=AlertThresholds.fallback_min_calls,
        metadata=setting("Calls needed before the cloud share counts", 0, maximum=10**6),
    )
    disk_free_mb: int = field(
        default=AlertThresholds.disk_free_mb,
        metadata=setting("Alert when the models volume has less free MB", 0, maximum=10**9),
    )
    gpu_memory_percent: float = field(
        default=AlertThresholds.gpu_memory_percent,
        metadata=setting("Alert when a GPU's memory is fuller (%)", 0, maximum=100),
    )
    leak_window_seconds: float = field(
        default=AlertThresholds.leak_window_seconds,
        metadata=setting("Window of the memory-leak trend (s)", 0, maximum=7 * DAY),
    )
    leak_min_growth_mb: int = field(
        default=AlertThresholds.leak_min_growth_mb,
        metadata=setting("Growth over the window that counts as a leak (MB)", 0, maximum=10**9),
    )
    leak_min_fit: float = field(
        default=AlertThresholds.leak_min_fit,
        metadata=setting("How straight the growth must be (r², 0-1)", 0, maximum=1),
    )
    leak_restart: bool = field(
        default=AlertThresholds.leak_restart, metadata=setting("Restart Ollama when a memory leak is detected")
    )
    cooldown_seconds: float = field(
        default=AlertThresholds.cooldown_seconds,
        metadata=setting("Quiet time before the same alert fires again (s)", 0, maximum=7 * DAY),
    )
    confirm_observations: int = field(
        default=AlertThresholds.confirm_observations,
        metadata=setting("Checks in a row before an alert changes state", 1, maximum=1000),
    )
    clear_ratio: float = field(
        default=AlertThresholds.clear_ratio,
        metadata=setting("An alert clears below this share of its limit", 0, maximum=1),
    )
    wake_gap_factor: float = field(
        default=AlertThresholds.wake_gap_factor,
        metadata=setting("A check gap this many intervals long means sleep", 1, maximum=1000),
    )

    def __post_init__(self) -> None:
        check_fields(self, "alerts.")
        super().__post_init__()


def thresholds_from_mapping(values: Mapping[str, Any]) -> AlertSettings:
    """Build thresholds from an ``[alerts]`` table; ValueError (one line) on an unknown key or bad value."""
    known = {f.name for f in fields(AlertSettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown key '{unknown[0]}' in [alerts]")
    return AlertSettings(**values)  # the values are checked by AlertSettings.__post_init__
