"""Routing policy: which backend answers the next request.

Pure: no threads, no I/O; every call takes ``now`` (monotonic seconds).

:class:`CircuitBreaker` keeps a dead or hung Ollama from being retried on
every request (closed / open / half-open, as in pybreaker and resilience4j):

- **closed**: requests go to Ollama. ``failure_threshold`` failures in a
  row, or the monitor reporting Ollama down, open the breaker.
- **open**: requests skip Ollama for ``open_seconds``; the time doubles on
  each failed trial, up to ``max_open_seconds``.
- **half-open**: one request (the trial) goes to Ollama; its success closes
  the breaker, its failure opens it again. Ollama turning healthy again in
  the monitor's eyes moves an open breaker to half-open at once.

An outcome is counted only against the breaker state its request started
in (a generation number), so a stream that began before Ollama died cannot
close a breaker that its death opened.

:class:`FallbackWindow` counts which backend served each call over a
sliding window (the design notes' "alert if > 50 % of calls use cloud").
:class:`Router` combines both with the cloud setting and decides, per
request, where it goes and whether a timeout should restart Ollama.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class LocalHealth(StrEnum):
    """Ollama's health as the monitor (or the gateway's own probe) sees it."""

    UP = "up"
    SLOW = "slow"  # answers, but slowly (the notes' "unhealthy")
    DOWN = "down"
    UNKNOWN = "unknown"

    @property
    def answering(self) -> bool:
        return self in (LocalHealth.UP, LocalHealth.SLOW)


_MONITOR_HEALTH = {"healthy": LocalHealth.UP, "unhealthy": LocalHealth.SLOW, "down": LocalHealth.DOWN}


def health_from_status(status: Mapping[str, Any]) -> LocalHealth:
    """Map a monitor status dict to :class:`LocalHealth`.

    A monitor that gave up (``state`` "failed") or a user stop means down,
    whatever the last probe said.

    >>> health_from_status({"health": "healthy", "state": "running"})
    <LocalHealth.UP: 'up'>
    >>> health_from_status({"health": "unknown", "state": "failed"})
    <LocalHealth.DOWN: 'down'>
    """
    if status.get("state") in ("failed", "stopped"):
        return LocalHealth.DOWN
    return _MONITOR_HEALTH.get(str(status.get("health")), LocalHealth.UNKNOWN)


@dataclass(frozen=True)
class BreakerPolicy:
    """Breaker knobs (supervision.md §2.8 "Cloud breaker")."""

    failure_threshold: int = 3
    open_seconds: float = 30.0
    max_open_seconds: float = 300.0
    backoff_factor: float = 2.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {self.failure_threshold!r}")
        if not 0 < self.open_seconds <= self.max_open_seconds:
            raise ValueError("open_seconds must be above 0 and at most max_open_seconds")
        if self.backoff_factor < 1:
            raise ValueError(f"backoff_factor must be at least 1, got {self.backoff_factor!r}")


@dataclass(frozen=True)
class Permit:
    """The breaker's answer to "may this request try Ollama?"."""

    allowed: bool
    trial: bool = False
    generation: int = 0


class CircuitBreaker:
    """Closed / open / half-open over Ollama; see the module docstring."""

    def __init__(self, policy: BreakerPolicy | None = None) -> None:
        self.policy = policy or BreakerPolicy()
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._failures_in_row = 0
        self._opened_at = 0.0
        self._open_for = self.policy.open_seconds
        self._trial_in_flight = False
        self._last_health = LocalHealth.UNKNOWN
        self.reason = ""

    # -- reading

    def state(self, now: float) -> BreakerState:
        """The state at ``now``; an open breaker whose time is up is half-open."""
        if self._state is BreakerState.OPEN and now >= self._opened_at + self._open_for:
            self._move(BreakerState.HALF_OPEN)
        return self._state

    def retry_at(self, now: float) -> float | None:
        """When Ollama will be tried again, while the breaker is open."""
        if self.state(now) is BreakerState.OPEN:
            return self._opened_at + self._open_for
        return None

    @property
    def open_for(self) -> float:
        """How long the current (or next) open period lasts."""
        return self._open_for

    @property
    def failures_in_row(self) -> int:
        return self._failures_in_row

    # -- requests

    def try_acquire(self, now: float) -> Permit:
        """May a request go to Ollama now? In half-open only one trial at a time."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return Permit(True, generation=self._generation)
        if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return Permit(True, trial=True, generation=self._generation)
        return Permit(False, generation=self._generation)

    def passive_permit(self, now: float) -> Permit:
        """A permit that takes no trial slot, for requests that go to Ollama anyway (model lists).

        It is ``allowed`` only while closed, so only then do its outcomes count.
        """
        state = self.state(now)
        return Permit(state is BreakerState.CLOSED, generation=self._generation if state is BreakerState.CLOSED else -1)

    def record_success(self, now: float, permit: Permit) -> None:
        """Ollama answered the request ``permit`` was given for."""
        if permit.generation != self._generation:
            return
        self._failures_in_row = 0
        if self.state(now) is BreakerState.HALF_OPEN:
            self._trial_in_flight = False
            self._open_for = self.policy.open_seconds
            self.reason = "Ollama answered again"
            self._move(BreakerState.CLOSED)

    def record_failure(self, now: float, permit: Permit, reason: str) -> None:
        """Ollama failed the request ``permit`` was given for."""
        if permit.generation != self._generation:
            return
        state = self.state(now)
        if state is BreakerState.HALF_OPEN:
            self._open(now, reason, longer=True)
            return
        if state is BreakerState.CLOSED:
            self._failures_in_row += 1
            if self._failures_in_row >= self.policy.failure_threshold:
                self._open(now, reason, longer=False)

    def abandon(self, permit: Permit) -> None:
        """The request ended without a verdict (e.g. the client went away)."""
        if permit.trial and permit.generation == self._generation:
            self._trial_in_flight = False

    # -- health reports

    def observe_health(self, health: LocalHealth, now: float) -> None:
        """A health report from the monitor or the gateway's probe.

        Down opens the breaker at once. Coming back (answering after a
        report that was not) makes an open breaker half-open, so the next
        request tries Ollama without waiting for the open period to end.
        """
        previous, self._last_health = self._last_health, health
        state = self.state(now)
        if health is LocalHealth.DOWN:
            if state is not BreakerState.OPEN:
                self._open(now, "Ollama is down", longer=state is BreakerState.HALF_OPEN)
            return
        if health.answering and not previous.answering and state is BreakerState.OPEN:
            self._move(BreakerState.HALF_OPEN)

    # -- transitions

    def _open(self, now: float, reason: str, *, longer: bool) -> None:
        if longer:
            self._open_for = min(self._open_for * self.policy.backoff_factor, self.policy.max_open_seconds)
        else:
            self._open_for = self.policy.open_seconds
        self._opened_at = now
        self.reason = reason
        self._move(BreakerState.OPEN)

    def _move(self, state: BreakerState) -> None:
        # CLOSED -> OPEN, OPEN -> HALF_OPEN, HALF_OPEN -> CLOSED | OPEN
        self._state = state
        self._generation += 1
        self._trial_in_flight = False
        self._failures_in_row = 0


class Backend(StrEnum):
    """Who answered a request (the value of the gateway's backend header)."""

    LOCAL = "local"
    CLOUD = "cloud"
    GATEWAY = "gateway"  # answered by the gateway itself (model lists while Ollama is down, errors)


@dataclass(frozen=True)
class FallbackUsage:
    """Calls in the window and the share the cloud served (None without calls)."""

    calls: int
    cloud_calls: int

    @property
    def ratio(self) -> float | None:
        return self.cloud_calls / self.calls if self.calls else None


class FallbackWindow:
    """Which backend served each call over the last ``window_seconds``."""

    def __init__(self, window_seconds: float = 600.0, max_entries: int = 100_000) -> None:
        self.window_seconds = window_seconds
        self._served: deque[tuple[float, bool]] = deque(maxlen=max_entries)

    def record(self, backend: Backend, now: float) -> None:
        """Count one call; only local and cloud answers count."""
        if backend in (Backend.LOCAL, Backend.CLOUD):
            self._served.append((now, backend is Backend.CLOUD))
            self._prune(now)

    def usage(self, now: float) -> FallbackUsage:
        self._prune(now)
        return FallbackUsage(calls=len(self._served), cloud_calls=sum(1 for _, cloud in self._served if cloud))

    def _prune(self, now: float) -> None:
        while self._served and now - self._served[0][0] > self.window_seconds:
            self._served.popleft()


class Target(StrEnum):
    LOCAL = "local"
    CLOUD = "cloud"
    REFUSE = "refuse"  # Ollama is skipped and there is no cloud to ask


@dataclass(frozen=True)
class Route:
    """Where one request goes first, and what may happen if that fails."""

    target: Target
    permit: Permit
    can_fall_back: bool = False  # the cloud may answer if Ollama fails before its first byte
    retry_at: float | None = None  # for REFUSE/CLOUD: when Ollama will be tried again


class Activation(StrEnum):
    ACTIVATED = "activated"
    DEACTIVATED = "deactivated"


class Router:
    """Per-request routing over a :class:`CircuitBreaker` and the cloud setting."""

    def __init__(
        self,
        *,
        cloud_enabled: bool,
        breaker: CircuitBreaker | None = None,
        window: FallbackWindow | None = None,
        restart_interval: float = 120.0,
    ) -> None:
        self.cloud_enabled = cloud_enabled
        self.breaker = breaker or CircuitBreaker()
        self.window = window or FallbackWindow()
        self.restart_interval = restart_interval
        self._last_restart_request: float | None = None
        self._announced_active = False

    def route(self, now: float) -> Route:
        """Decide where the next request goes."""
        permit = self.breaker.try_acquire(now)
        if permit.allowed:
            return Route(Target.LOCAL, permit, can_fall_back=self.cloud_enabled)
        retry_at = self.breaker.retry_at(now)
        if self.cloud_enabled:
            return Route(Target.CLOUD, permit, retry_at=retry_at)
        if self.breaker.state(now) is BreakerState.HALF_OPEN:
            # Without a cloud, nothing is gained by failing the requests that queue behind a trial.
            return Route(Target.LOCAL, permit)
        return Route(Target.REFUSE, permit, retry_at=retry_at)

    def local_succeeded(self, route: Route, now: float) -> None:
        self.breaker.record_success(now, route.permit)

    def local_failed(self, route: Route, now: float, reason: str, *, timed_out: bool) -> bool:
        """Count a failure; True when the caller should ask for a restart of Ollama."""
        self.breaker.record_failure(now, route.permit, reason)
        if not timed_out:
            return False
        last = self._last_restart_request
        if last is not None and now - last < self.restart_interval:
            return False
        self._last_restart_request = now
        return True

    def local_abandoned(self, route: Route) -> None:
        self.breaker.abandon(route.permit)

    def served(self, backend: Backend, now: float) -> None:
        """Count who answered one inference call."""
        self.window.record(backend, now)

    def observe_health(self, health: LocalHealth, now: float) -> None:
        self.breaker.observe_health(health, now)

    def usage(self, now: float) -> FallbackUsage:
        return self.window.usage(now)

    def cloud_active(self, now: float) -> bool:
        """Is the fallback in charge (on, and Ollama skipped or on trial)?"""
        return self.cloud_enabled and self.breaker.state(now) is not BreakerState.CLOSED

    def activation_change(self, now: float) -> Activation | None:
        """The change of :meth:`cloud_active` since the last call that reported one."""
        active = self.cloud_active(now)
        if active == self._announced_active:
            return None
        self._announced_active = active
        return Activation.ACTIVATED if active else Activation.DEACTIVATED
