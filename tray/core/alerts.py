"""Alert rules: turn one observation per tick into raised/cleared alerts.

Pure: no threads, no I/O; every call takes ``now`` (monotonic seconds).
The monitor measures, this module decides what deserves a notification.

Rules (the design notes' "Daemon Responsibilities", limits from
:class:`AlertThresholds`, the values of the ``[alerts]`` config section):

=============  ===========================================================
kind           raised when
=============  ===========================================================
memory         Ollama's process tree (serve + runners) uses > ``memory_mb``
cpu            Ollama's CPU > ``cpu_percent`` for ``cpu_window_seconds``
restarts       more than ``restarts_per_hour`` restarts in the last hour
fallback       more than ``fallback_ratio`` of recent calls went to the cloud
model          the model is missing or corrupted
health         health is ``unhealthy`` (warning) or ``down`` (critical)
disk           less than ``disk_free_mb`` free on the models volume
gpu_memory     the fullest GPU is more than ``gpu_memory_percent`` full
leak           the tree's memory rose steadily over ``leak_window_seconds``
stuck_runner   Ollama has been busy with no progress for longer than the
               ``stuck_runner_timeout`` setting (see :mod:`tray.core.health`)
=============  ===========================================================

How an alert behaves:

- **Hysteresis**: a raised alert clears only once its value is back past
  ``clear_ratio`` of the limit (e.g. memory below 0.9 x 6 GB), so a value
  hovering at the limit does not flap.
- **Debounce**: a change (raise or clear) needs ``confirm_observations``
  observations in a row; CPU must also stay high for ``cpu_window_seconds``.
- **Once per change**: one ``raised`` event, one ``cleared`` event.
- **Cooldown**: after a ``raised`` event, the same alert stays quiet for
  ``cooldown_seconds``. A problem that comes back sooner is tracked
  silently and reported when the cooldown ends if it is still there; a
  silent alert clears silently. A rise in severity (unhealthy → down) is
  reported at once.
- **Wake from sleep**: a gap between observations longer than
  ``wake_gap_factor`` x the tick interval means the machine slept. Pending
  debounce state is dropped, nothing new is raised from that observation,
  and the :class:`AlertReport` asks the caller to probe again soon when
  something looked wrong; the fresh observation is the one that may raise.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from tray.core.units import MIB, format_duration, human_memory

HOUR = 3600.0


class AlertKind(StrEnum):
    MEMORY = "memory"
    CPU = "cpu"
    RESTARTS = "restarts"
    FALLBACK = "fallback"
    MODEL = "model"
    HEALTH = "health"
    DISK = "disk"
    GPU_MEMORY = "gpu_memory"
    LEAK = "leak"
    STUCK_RUNNER = "stuck_runner"
    # Raised by the monitor, not by a rule: what answers on Ollama's port is another user's and is not used.
    UNTRUSTED_SERVER = "untrusted_server"


class AlertState(StrEnum):
    RAISED = "raised"
    CLEARED = "cleared"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


@dataclass(frozen=True)
class AlertThresholds:
    """Alert limits; field names are the keys of the ``[alerts]`` config section.

    Only the values: their help and limits are the settings' (:class:`tray.settings.alerts.AlertSettings`).
    """

    memory_mb: int = 6144
    cpu_percent: float = 80.0
    cpu_window_seconds: float = 60.0
    restarts_per_hour: int = 3
    fallback_ratio: float = 0.5
    fallback_min_calls: int = 5
    disk_free_mb: int = 10240
    gpu_memory_percent: float = 95.0
    leak_window_seconds: float = 1800.0
    leak_min_growth_mb: int = 512
    leak_min_fit: float = 0.8
    leak_restart: bool = False
    cooldown_seconds: float = 900.0
    confirm_observations: int = 2
    clear_ratio: float = 0.9
    wake_gap_factor: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.clear_ratio <= 1:
            raise ValueError(f"alerts.clear_ratio must be in (0, 1], got {self.clear_ratio!r}")
        if self.wake_gap_factor <= 1:
            raise ValueError(f"alerts.wake_gap_factor must be above 1, got {self.wake_gap_factor!r}")


@dataclass(frozen=True)
class Metrics:
    """One tick's observation. ``None`` means "not measured": the rule keeps its state."""

    tree_memory_bytes: int | None = None  # RSS of serve + its runner children
    tree_cpu_percent: float | None = None  # share of the whole machine, 0-100
    health: str | None = None  # "healthy" / "unhealthy" / "down" / "unknown"
    restart_times: tuple[float, ...] | None = None  # monotonic times of recent restarts
    fallback_ratio: float | None = None  # share of recent calls served by the cloud, 0-1
    fallback_calls: int | None = None  # how many calls that ratio is over
    model_status: str | None = None  # "ok" / "missing" / "corrupt"
    model_name: str = ""
    disk_free_bytes: int | None = None  # on the models volume
    gpu_memory_used_bytes: int | None = None  # of the fullest GPU
    gpu_memory_total_bytes: int | None = None
    # Work in Ollama: stuck is None when not known (server not answering), False when idle or progressing.
    runner_stuck: bool | None = None
    busy_model: str | None = None
    busy_quiet_seconds: float | None = None  # since the last progress (or since busy began)


@dataclass(frozen=True)
class AlertEvent:
    """A change worth telling the user about; ``key`` groups events for rate limiting."""

    kind: AlertKind
    state: AlertState
    severity: Severity
    title: str
    message: str
    at: float
    requests_restart: bool = False  # the leak rule asks for the design notes' restart

    @property
    def key(self) -> str:
        return self.kind.value


@dataclass(frozen=True)
class AlertReport:
    """What one observation changed: the events to tell, and whether to observe again soon."""

    events: tuple[AlertEvent, ...] = ()
    reprobe: bool = False  # woke from sleep and something looked wrong: check again at the short cadence


class Signal(StrEnum):
    FAILING = "failing"  # past the raise limit
    OK = "ok"  # back past the clear limit
    HOLD = "hold"  # between the limits, or not measured: keep the current state


@dataclass(frozen=True)
class Reading:
    """What one rule makes of one observation."""

    signal: Signal
    message: str = ""
    severity: Severity = Severity.WARNING


HOLD = Reading(Signal.HOLD)


@dataclass(frozen=True)
class LeakTrend:
    """Least-squares line through (time, bytes) points."""

    slope_bytes_per_second: float
    fit: float  # r², 0 (no linear relation) .. 1 (a perfect line)
    span_seconds: float

    @property
    def rise_bytes(self) -> float:
        return self.slope_bytes_per_second * self.span_seconds


def fit_trend(points: Sequence[tuple[float, float]]) -> LeakTrend | None:
    """Least-squares slope and r² of (t, y) points; None with fewer than 3 points or no time spread.

    >>> trend = fit_trend([(0, 10), (1, 12), (2, 14)])
    >>> trend.slope_bytes_per_second, trend.fit, trend.span_seconds, trend.rise_bytes
    (2.0, 1.0, 2.0, 4.0)
    """
    n = len(points)
    if n < 3:
        return None
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in points)
    var_y = sum((y - mean_y) ** 2 for _, y in points)
    cov = sum((t - mean_t) * (y - mean_y) for t, y in points)
    if var_t == 0:
        return None
    slope = cov / var_t
    fit = 0.0 if var_y == 0 else (cov * cov) / (var_t * var_y)
    span = float(points[-1][0] - points[0][0])
    return LeakTrend(slope_bytes_per_second=slope, fit=fit, span_seconds=span)


def _percent(value: float) -> str:
    return f"{value:.0f}%"


def _band_above(value: float, raise_above: float, clear_at_or_below: float) -> Signal:
    if value > raise_above:
        return Signal.FAILING
    if value <= clear_at_or_below:
        return Signal.OK
    return Signal.HOLD


def _band_below(value: float, raise_below: float, clear_at_or_above: float) -> Signal:
    if value < raise_below:
        return Signal.FAILING
    if value >= clear_at_or_above:
        return Signal.OK
    return Signal.HOLD


@dataclass(frozen=True)
class RuleInput:
    """Everything a rule may look at."""

    now: float
    metrics: Metrics
    limits: AlertThresholds
    memory_series: Sequence[tuple[float, float]]


def memory_rule(x: RuleInput) -> Reading:
    used = x.metrics.tree_memory_bytes
    if used is None:
        return HOLD
    limit = x.limits.memory_mb * MIB
    signal = _band_above(used, limit, limit * x.limits.clear_ratio)
    return Reading(signal, f"Ollama is using {human_memory(used)} of memory (limit {human_memory(limit)})")


def cpu_rule(x: RuleInput) -> Reading:
    cpu = x.metrics.tree_cpu_percent
    if cpu is None:
        return HOLD
    limit = x.limits.cpu_percent
    signal = _band_above(cpu, limit, limit * x.limits.clear_ratio)
    if signal is Signal.FAILING:
        window = format_duration(x.limits.cpu_window_seconds)
        message = f"Ollama has used over {_percent(limit)} CPU for {window} (now {_percent(cpu)})"
    else:
        message = f"Ollama is using {_percent(cpu)} CPU (limit {_percent(limit)})"
    return Reading(signal, message)


def restarts_rule(x: RuleInput) -> Reading:
    times = x.metrics.restart_times
    if times is None:
        return HOLD
    recent = sum(1 for t in times if x.now - HOUR < t <= x.now)
    limit = x.limits.restarts_per_hour
    signal = _band_above(recent, limit, limit * x.limits.clear_ratio)
    plural = "" if recent == 1 else "s"
    return Reading(signal, f"Ollama restarted {recent} time{plural} in the last hour (limit {limit})")


def fallback_rule(x: RuleInput) -> Reading:
    ratio, calls = x.metrics.fallback_ratio, x.metrics.fallback_calls
    if ratio is None or (calls is not None and calls < x.limits.fallback_min_calls):
        return HOLD
    limit = x.limits.fallback_ratio
    signal = _band_above(ratio, limit, limit * x.limits.clear_ratio)
    calls_text = f"the last {calls} calls" if calls is not None else "recent calls"
    return Reading(
        signal, f"{_percent(ratio * 100)} of {calls_text} went to the cloud fallback (limit {_percent(limit * 100)})"
    )


def model_rule(x: RuleInput) -> Reading:
    status = x.metrics.model_status
    name = f"Model '{x.metrics.model_name}'" if x.metrics.model_name else "The model"
    if status == "ok":
        return Reading(Signal.OK, f"{name} is available again")
    if status == "missing":
        return Reading(Signal.FAILING, f"{name} is missing; it needs to be built again", Severity.CRITICAL)
    if status == "corrupt":
        return Reading(Signal.FAILING, f"{name} is corrupted; delete it and build it again", Severity.CRITICAL)
    return HOLD


def health_rule(x: RuleInput) -> Reading:
    health = x.metrics.health
    if health == "healthy":
        return Reading(Signal.OK, "Ollama is healthy again")
    if health == "unhealthy":
        return Reading(Signal.FAILING, "Ollama is responding slowly (unhealthy)", Severity.WARNING)
    if health == "down":
        return Reading(Signal.FAILING, "Ollama is not responding (down)", Severity.CRITICAL)
    return HOLD


def disk_rule(x: RuleInput) -> Reading:
    free = x.metrics.disk_free_bytes
    if free is None:
        return HOLD
    minimum = x.limits.disk_free_mb * MIB
    signal = _band_below(free, minimum, minimum / x.limits.clear_ratio)
    return Reading(signal, f"{human_memory(free)} free on the models disk (minimum {human_memory(minimum)})")


def gpu_memory_rule(x: RuleInput) -> Reading:
    used, total = x.metrics.gpu_memory_used_bytes, x.metrics.gpu_memory_total_bytes
    if used is None or not total:
        return HOLD
    percent = used / total * 100
    limit = x.limits.gpu_memory_percent
    signal = _band_above(percent, limit, limit * x.limits.clear_ratio)
    return Reading(signal, f"GPU memory is {_percent(percent)} full ({human_memory(used)} of {human_memory(total)})")


def leak_rule(x: RuleInput) -> Reading:
    """A steady climb: positive slope, a good linear fit and a real total rise.

    Needs points covering at least half the window, so a fresh start never
    trips it; a flat noisy series has a poor fit, a one-off jump (a model
    loading) fits a line with r² of at most 0.75.
    """
    limits = x.limits
    trend = fit_trend(x.memory_series)
    if trend is None or trend.span_seconds < limits.leak_window_seconds / 2:
        return HOLD
    min_rise = limits.leak_min_growth_mb * MIB
    rise = trend.rise_bytes
    steady = trend.slope_bytes_per_second > 0 and trend.fit >= limits.leak_min_fit
    over = format_duration(trend.span_seconds)
    if steady and rise >= min_rise:
        message = f"Ollama memory grew by {human_memory(rise)} over {over} at a steady rate (possible leak)"
        if limits.leak_restart:
            message += "; restarting Ollama"
        return Reading(Signal.FAILING, message)
    relaxed = limits.clear_ratio
    if trend.slope_bytes_per_second <= 0 or trend.fit < limits.leak_min_fit * relaxed or rise < min_rise * relaxed:
        return Reading(Signal.OK, f"Ollama memory is no longer climbing (changed {human_memory(rise)} over {over})")
    return HOLD


def stuck_runner_rule(x: RuleInput) -> Reading:
    stuck = x.metrics.runner_stuck
    if stuck is None:
        return HOLD
    if not stuck:
        return Reading(Signal.OK, "Ollama is making progress again")
    model = f"'{x.metrics.busy_model}'" if x.metrics.busy_model else "a model"
    quiet = format_duration(x.metrics.busy_quiet_seconds or 0.0)
    return Reading(
        Signal.FAILING,
        f"Ollama has been busy on {model} for {quiet} with no progress seen: its runner may be stuck",
    )


Rule = Callable[[RuleInput], Reading]

RULES: dict[AlertKind, Rule] = {
    AlertKind.HEALTH: health_rule,
    AlertKind.MODEL: model_rule,
    AlertKind.RESTARTS: restarts_rule,
    AlertKind.MEMORY: memory_rule,
    AlertKind.LEAK: leak_rule,
    AlertKind.CPU: cpu_rule,
    AlertKind.GPU_MEMORY: gpu_memory_rule,
    AlertKind.DISK: disk_rule,
    AlertKind.FALLBACK: fallback_rule,
    AlertKind.STUCK_RUNNER: stuck_runner_rule,
}

TITLES: dict[AlertKind, tuple[str, str]] = {
    AlertKind.MEMORY: ("Ollama memory high", "Ollama memory back to normal"),
    AlertKind.CPU: ("Ollama CPU high", "Ollama CPU back to normal"),
    AlertKind.RESTARTS: ("Ollama keeps restarting", "Ollama restarts back to normal"),
    AlertKind.FALLBACK: ("Cloud fallback in heavy use", "Cloud fallback use back to normal"),
    AlertKind.MODEL: ("Model problem", "Model available"),
    AlertKind.HEALTH: ("Ollama unhealthy", "Ollama healthy"),
    AlertKind.DISK: ("Low disk space", "Disk space back to normal"),
    AlertKind.GPU_MEMORY: ("GPU memory nearly full", "GPU memory back to normal"),
    AlertKind.LEAK: ("Possible memory leak", "Memory no longer climbing"),
    AlertKind.STUCK_RUNNER: ("Ollama runner stuck", "Ollama runner working again"),
}


def _raised_title(kind: AlertKind, reading: Reading) -> str:
    if kind is AlertKind.HEALTH and reading.severity is Severity.CRITICAL:
        return "Ollama down"
    return TITLES[kind][0]


@dataclass
class _Track:
    """Per-alert state."""

    active: bool = False
    reported: bool = False  # the current activation produced a raised event
    severity: Severity = Severity.WARNING
    pending: Signal | None = None  # the change being debounced
    pending_since: float = 0.0
    pending_count: int = 0
    last_raised_at: float | None = None
    reading: Reading = HOLD

    def reset_pending(self) -> None:
        self.pending = None
        self.pending_count = 0


@dataclass
class AlertEngine:
    """Feed one :class:`Metrics` per tick to :meth:`observe`; act on the events it returns.

    ``interval_seconds`` is the expected time between observations, used to
    recognise a wake from sleep.
    """

    thresholds: AlertThresholds = field(default_factory=AlertThresholds)
    interval_seconds: float = 30.0
    _tracks: dict[AlertKind, _Track] = field(
        default_factory=lambda: {kind: _Track() for kind in RULES}, init=False, repr=False
    )
    _memory_series: deque[tuple[float, float]] = field(default_factory=deque, init=False, repr=False)
    _last_now: float | None = field(default=None, init=False, repr=False)

    @property
    def active_kinds(self) -> frozenset[AlertKind]:
        """Alerts currently raised (reported or kept quiet by the cooldown)."""
        return frozenset(kind for kind, track in self._tracks.items() if track.active)

    def observe(self, now: float, metrics: Metrics) -> AlertReport:
        """Evaluate every rule on one observation: the raised/cleared events, and whether to re-probe.

        After a wake from sleep nothing new is raised, and the report asks
        for a re-probe when something looked wrong.
        """
        woke = self._is_wake(now)
        self._last_now = now
        if woke:
            for track in self._tracks.values():
                track.reset_pending()
        self._record_memory(now, metrics)
        rule_input = RuleInput(now, metrics, self.thresholds, tuple(self._memory_series))
        events: list[AlertEvent] = []
        wants_reprobe = False
        for kind, rule in RULES.items():
            reading = rule(rule_input)
            track = self._tracks[kind]
            if woke and reading.signal is Signal.FAILING and not track.active:
                wants_reprobe = True
            event = self._step(kind, track, reading, now, may_raise=not woke)
            if event is not None:
                events.append(event)
        return AlertReport(tuple(events), wants_reprobe)

    def _is_wake(self, now: float) -> bool:
        if self._last_now is None:
            return False
        return now - self._last_now > self.thresholds.wake_gap_factor * self.interval_seconds

    def _record_memory(self, now: float, metrics: Metrics) -> None:
        series = self._memory_series
        last_restart = max(metrics.restart_times or (), default=None)
        if last_restart is not None:
            # Memory before a restart belongs to another process tree.
            while series and series[0][0] < last_restart:
                series.popleft()
        if metrics.tree_memory_bytes is not None:
            series.append((now, float(metrics.tree_memory_bytes)))
        while series and series[0][0] < now - self.thresholds.leak_window_seconds:
            series.popleft()

    def _hold_seconds(self, kind: AlertKind, signal: Signal) -> float:
        if kind is AlertKind.CPU and signal is Signal.FAILING:
            return self.thresholds.cpu_window_seconds
        return 0.0

    def _step(self, kind: AlertKind, track: _Track, reading: Reading, now: float, may_raise: bool) -> AlertEvent | None:
        if reading.signal is Signal.HOLD:
            track.reset_pending()
            return self._late_report(kind, track, now) if may_raise else None
        wants_active = reading.signal is Signal.FAILING
        if wants_active == track.active:
            track.reset_pending()
            if wants_active:
                return self._still_failing(kind, track, reading, now, may_raise)
            return None
        if track.pending is not reading.signal:
            track.pending, track.pending_since, track.pending_count = reading.signal, now, 0
        track.pending_count += 1
        confirmed = (
            track.pending_count >= self.thresholds.confirm_observations
            and now - track.pending_since >= self._hold_seconds(kind, reading.signal)
        )
        if not confirmed or (wants_active and not may_raise):
            return None
        track.reset_pending()
        if wants_active:
            return self._activate(kind, track, reading, now)
        return self._deactivate(kind, track, reading, now)

    def _cooldown_over(self, track: _Track, now: float) -> bool:
        last = track.last_raised_at
        return last is None or now - last >= self.thresholds.cooldown_seconds

    def _activate(self, kind: AlertKind, track: _Track, reading: Reading, now: float) -> AlertEvent | None:
        track.active, track.reading, track.severity = True, reading, reading.severity
        track.reported = False
        if not self._cooldown_over(track, now):
            return None
        return self._raise(kind, track, reading, now)

    def _deactivate(self, kind: AlertKind, track: _Track, reading: Reading, now: float) -> AlertEvent | None:
        was_reported = track.reported
        track.active, track.reported, track.reading = False, False, reading
        if not was_reported:
            return None
        return AlertEvent(kind, AlertState.CLEARED, Severity.INFO, TITLES[kind][1], reading.message, now)

    def _still_failing(
        self, kind: AlertKind, track: _Track, reading: Reading, now: float, may_raise: bool
    ) -> AlertEvent | None:
        escalated = reading.severity.rank > track.severity.rank
        track.reading = reading
        if not may_raise:
            return None
        if escalated and track.reported:
            return self._raise(kind, track, reading, now)
        return self._late_report(kind, track, now)

    def _late_report(self, kind: AlertKind, track: _Track, now: float) -> AlertEvent | None:
        if track.active and not track.reported and self._cooldown_over(track, now):
            return self._raise(kind, track, track.reading, now)
        return None

    def _raise(self, kind: AlertKind, track: _Track, reading: Reading, now: float) -> AlertEvent:
        track.reported, track.last_raised_at, track.severity = True, now, reading.severity
        restart = kind is AlertKind.LEAK and self.thresholds.leak_restart
        return AlertEvent(
            kind, AlertState.RAISED, reading.severity, _raised_title(kind, reading), reading.message, now, restart
        )


__all__ = [
    "AlertEngine",
    "AlertEvent",
    "AlertKind",
    "AlertReport",
    "AlertState",
    "AlertThresholds",
    "LeakTrend",
    "Metrics",
    "Reading",
    "Severity",
    "Signal",
    "fit_trend",
]
