"""Routing policy: which backend answers the next request, and how long it may wait.

Pure: no threads, no I/O; every call takes ``now`` (monotonic seconds).

:class:`CircuitBreaker` keeps a dead or hung Ollama from being retried on
every request (closed / open / half-open, as in pybreaker and resilience4j):

- **closed**: requests go to Ollama. ``failure_threshold`` failures in a
  row, or the monitor reporting Ollama down, open the breaker.
- **open**: requests skip Ollama for ``open_seconds``; the time doubles on
  each failed trial, up to ``max_open_seconds``.
- **half-open**: one request (the trial) goes to Ollama; its failure opens
  the breaker again.
- A health report that Ollama answers (healthy, or slow but answering) and
  any good local answer close the breaker at once: the monitor's probe, not
  the gateway's timing, decides whether Ollama is dead.

An outcome is counted only against the breaker state its request started
in (a generation number), so a stream that began before Ollama died cannot
close a breaker that its death opened.

:func:`choose_budget` and :func:`plan_wait` decide how long a request waits
for Ollama's first byte. Silence is normal while a model loads, while a
``stream: false`` answer is generated and while a request waits its turn
behind another on the same model (Ollama serves one at a time per model):
those get ``local_timeout`` and never go to the cloud for slowness. Only a
streamed request to a loaded, idle model has the short ``first_byte_timeout``.

:class:`FallbackWindow` counts which backend served each call over a
sliding window (the design notes' "alert if > 50 % of calls use cloud").
:class:`Router` combines both with the cloud setting and decides, per
request, where it goes. :class:`LocalActivity` is what the gateway tells the
monitor about the requests it has in flight.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tray.core.health import BusySource, Health
from tray.core.names import model_key
from tray.core.status import MonitorState, Status


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
    REFUSED = "refused"  # something answers, but another user runs it: no request ever goes there

    @property
    def answering(self) -> bool:
        return self in (LocalHealth.UP, LocalHealth.SLOW)


_MONITOR_HEALTH = {Health.HEALTHY: LocalHealth.UP, Health.UNHEALTHY: LocalHealth.SLOW, Health.DOWN: LocalHealth.DOWN}


def health_from_status(status: Status) -> LocalHealth:
    """Map a monitor's status to :class:`LocalHealth`.

    A monitor that gave up (``state`` "failed") or a user stop means down,
    whatever the last probe said; a server another user runs is refused.

    >>> from tray.core.status import make_status
    >>> health_from_status(make_status(health=Health.HEALTHY, state=MonitorState.RUNNING))
    <LocalHealth.UP: 'up'>
    >>> health_from_status(make_status(health=Health.UNKNOWN, state=MonitorState.FAILED))
    <LocalHealth.DOWN: 'down'>
    >>> health_from_status(make_status(health=Health.DOWN, state=MonitorState.REFUSED))
    <LocalHealth.REFUSED: 'refused'>
    """
    if status.state is MonitorState.REFUSED:
        return LocalHealth.REFUSED
    if status.state in (MonitorState.FAILED, MonitorState.STOPPED):
        return LocalHealth.DOWN
    return _MONITOR_HEALTH.get(status.health, LocalHealth.UNKNOWN)


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

    @property
    def refused(self) -> bool:
        """What answers on Ollama's port is another user's: nothing goes there, not even a trial."""
        return self._last_health is LocalHealth.REFUSED

    def try_acquire(self, now: float) -> Permit:
        """May a request go to Ollama now? In half-open only one trial at a time."""
        if self.refused:
            return Permit(False, generation=self._generation)
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
        if self.refused:
            return Permit(False, generation=-1)
        state = self.state(now)
        return Permit(state is BreakerState.CLOSED, generation=self._generation if state is BreakerState.CLOSED else -1)

    @property
    def last_health(self) -> LocalHealth:
        """The last health report (UNKNOWN before the first)."""
        return self._last_health

    def record_success(self, now: float, permit: Permit) -> None:
        """Ollama answered the request ``permit`` was given for: the breaker closes.

        An answer to a request sent before the breaker last changed still
        closes it, unless the monitor has since found Ollama down (that
        answer may predate the failure). A passive permit taken while the
        breaker was not closed never counts.
        """
        if permit.generation < 0:
            return
        if permit.generation != self._generation and self._last_health is LocalHealth.DOWN:
            return
        if permit.generation == self._generation:
            self._failures_in_row = 0
        if self.state(now) is not BreakerState.CLOSED:
            self._close("Ollama answered again")

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

        Down opens the breaker at once. A report that Ollama answers closes
        it at once, whoever opened it: the probe has the last word.
        """
        self._last_health = health
        state = self.state(now)
        if health in (LocalHealth.DOWN, LocalHealth.REFUSED):
            if state is not BreakerState.OPEN:
                self._open(now, "Ollama is down", longer=state is BreakerState.HALF_OPEN)
            return
        if health.answering and state is not BreakerState.CLOSED:
            self._close("Ollama answers again")

    # -- transitions

    def _close(self, reason: str) -> None:
        self._open_for = self.policy.open_seconds
        self.reason = reason
        self._move(BreakerState.CLOSED)

    def _open(self, now: float, reason: str, *, longer: bool) -> None:
        if longer:
            self._open_for = min(self._open_for * self.policy.backoff_factor, self.policy.max_open_seconds)
        else:
            self._open_for = self.policy.open_seconds
        self._opened_at = now
        self.reason = reason
        self._move(BreakerState.OPEN)

    def _move(self, state: BreakerState) -> None:
        # CLOSED -> OPEN, OPEN -> HALF_OPEN | CLOSED, HALF_OPEN -> CLOSED | OPEN
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


class FailureKind(StrEnum):
    """How a request to Ollama went wrong; decides the cloud, the breaker and the report to the monitor."""

    REFUSED = "refused"  # nothing accepted the connection
    BROKEN = "broken"  # a 5xx answer, or the connection dropped, before the first byte
    FIRST_BYTE = "first_byte"  # a streamed request to a loaded, idle model got nothing within first_byte_timeout
    NO_ANSWER = "no_answer"  # nothing within local_timeout (a load, a whole answer or a queue that took too long)
    STALLED = "stalled"  # an answer that had started paused longer than idle_timeout, or broke off
    FOUND_DOWN = "found_down"  # the monitor's probe found Ollama down while the request waited

    @property
    def cloud_may_answer(self) -> bool:
        """May the cloud take the request? Never for slowness the model explains.

        >>> [k.value for k in FailureKind if k.cloud_may_answer]
        ['refused', 'broken', 'first_byte', 'found_down']
        """
        return self in (FailureKind.REFUSED, FailureKind.BROKEN, FailureKind.FIRST_BYTE, FailureKind.FOUND_DOWN)

    @property
    def counts_against_ollama(self) -> bool:
        """Does it count towards opening the breaker? Found-down already opened it; slowness is not failure."""
        return self in (FailureKind.REFUSED, FailureKind.BROKEN, FailureKind.FIRST_BYTE, FailureKind.STALLED)

    @property
    def worth_reporting(self) -> bool:
        """Should the monitor be asked to check Ollama now? Not when its own probe found it."""
        return self is not FailureKind.FOUND_DOWN


class Budget(StrEnum):
    """Which first-byte budget a request to Ollama gets."""

    FIRST_BYTE = "first_byte"  # streamed, model loaded, nothing ahead of it: silence means trouble
    LOCAL = "local"  # a load, a whole (stream: false) answer or a queue ahead: silence is normal


def choose_budget(*, streamed: bool, loaded: bool, queued: bool) -> Budget:
    """The budget of a request: the short one only for a streamed request to a loaded, idle model.

    >>> choose_budget(streamed=True, loaded=True, queued=False)
    <Budget.FIRST_BYTE: 'first_byte'>
    >>> choose_budget(streamed=False, loaded=True, queued=False)
    <Budget.LOCAL: 'local'>
    """
    return Budget.FIRST_BYTE if streamed and loaded and not queued else Budget.LOCAL


@dataclass(frozen=True)
class WaitPlan:
    """What happens while a request waits for Ollama's first byte; seconds from sending it."""

    budget: Budget
    fall_back_after: float | None  # the cloud takes the request (FailureKind.FIRST_BYTE)
    report_after: float | None  # the monitor is asked to check, the request keeps waiting
    give_up_after: float  # a clear error, never the cloud (FailureKind.NO_ANSWER)


def plan_wait(budget: Budget, *, first_byte_timeout: float, local_timeout: float, cloud_enabled: bool) -> WaitPlan:
    """The marks of a request's wait.

    Without the cloud, silence past ``first_byte_timeout`` on a streamed
    request to a loaded model is reported to the monitor, and the request
    keeps waiting: failing it would help nobody.

    >>> plan_wait(Budget.FIRST_BYTE, first_byte_timeout=15, local_timeout=600, cloud_enabled=True)
    WaitPlan(budget=<Budget.FIRST_BYTE: 'first_byte'>, fall_back_after=15, report_after=None, give_up_after=600)
    >>> plan_wait(Budget.FIRST_BYTE, first_byte_timeout=15, local_timeout=600, cloud_enabled=False).report_after
    15
    >>> plan_wait(Budget.LOCAL, first_byte_timeout=15, local_timeout=600, cloud_enabled=True).fall_back_after is None
    True
    """
    give_up = max(local_timeout, first_byte_timeout)
    if budget is Budget.LOCAL:
        return WaitPlan(budget, None, None, give_up)
    if cloud_enabled:
        return WaitPlan(budget, first_byte_timeout, None, give_up)
    return WaitPlan(budget, None, first_byte_timeout, give_up)


def loaded_names(entries: Any) -> list[str]:
    """Model names from ``/api/ps``'s ``models`` (a list of objects).

    >>> loaded_names([{"name": "llama3:latest"}, {"model": "qwen3:8b"}, "junk"]), loaded_names(None)
    (['llama3:latest', 'qwen3:8b'], [])
    """
    if not isinstance(entries, list):
        return []
    names = [str(e.get("name") or e.get("model") or "") for e in entries if isinstance(e, Mapping)]
    return [n for n in names if n]


def status_busy(status: Status) -> bool:
    """Does the monitor's status say Ollama is working on something the gateway did not send?

    ``busy`` is None when idle; busy whose ``source`` is the gateway says
    nothing the gateway's own count does not (and that count is fresher than
    the monitor's last tick).

    >>> from tray.core.status import BusyStatus, make_status
    >>> def busy(source: BusySource) -> BusyStatus:
    ...     return BusyStatus("llama3", None, None, 40.0, None, source, False)
    >>> status_busy(make_status(busy=None)), status_busy(make_status(busy=busy(BusySource.RUNNER)))
    (False, True)
    >>> status_busy(make_status(busy=busy(BusySource.GATEWAY)))
    False
    """
    return status.busy is not None and status.busy.source is not BusySource.GATEWAY


class LoadedModels:
    """Which models Ollama holds in memory, as last seen; knowledge older than ``ttl`` seconds is no knowledge.

    A full list comes from ``/api/ps``; a good answer proves one model loaded.
    """

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._seen: dict[str, float] = {}  # model key -> when last seen loaded
        self._listed_at: float | None = None

    def saw_list(self, names: Iterable[str], now: float) -> None:
        self._listed_at = now
        self._seen = {model_key(n): now for n in names}

    def saw_answer(self, model: str, now: float) -> None:
        if model:
            self._seen[model_key(model)] = now

    def is_loaded(self, model: str, now: float) -> bool | None:
        """True / False when known within ``ttl``; None when a fresh look is needed.

        >>> cache = LoadedModels(ttl=5)
        >>> cache.is_loaded("llama3", 0.0) is None
        True
        >>> cache.saw_list(["llama3:latest"], 1.0)
        >>> cache.is_loaded("Llama3", 6.0), cache.is_loaded("qwen3", 6.0), cache.is_loaded("llama3", 6.1)
        (True, False, None)
        """
        key = model_key(model)
        seen = self._seen.get(key)
        if seen is not None and now - seen <= self.ttl:
            return True
        if self._listed_at is not None and now - self._listed_at <= self.ttl:
            return False
        return None


@dataclass(frozen=True)
class LocalActivity:
    """What the gateway has sent to Ollama, for the monitor's busy detection.

    ``in_flight``: model (``name:tag``, lower case) -> inference requests sent
    to Ollama and not finished, streamed or not; ``waiting``: of those, the
    requests with no byte back yet; ``last_progress``: the gateway's
    monotonic clock (``time.monotonic``, the monitor's clock) at the last
    byte received from Ollama on any inference request, None before the first.
    """

    in_flight: dict[str, int] = field(default_factory=dict)
    waiting: int = 0
    last_progress: float | None = None

    @property
    def idle(self) -> bool:
        """
        >>> LocalActivity().idle, LocalActivity({"llama3:latest": 1}, 1, None).idle
        (True, False)
        """
        return not self.in_flight


class Throttle:
    """At most one event per ``interval`` seconds.

    >>> gate = Throttle(5.0)
    >>> [gate.allow(t) for t in (0.0, 4.9, 5.0)]
    [True, False, True]
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True


class Requester(StrEnum):
    """Whose program sent a request, as far as the OS tells (see :func:`requester_of`)."""

    OWNER = "owner"  # the user the gateway runs as
    OTHER_USER = "other user"  # another local user, or a connection the OS does not show
    UNCHECKED = "unchecked"  # this OS gives no peer lookup (macOS, Windows)

    @property
    def may_spend_key(self) -> bool:
        """May the request go to the cloud with the owner's key?"""
        return self is not Requester.OTHER_USER


def requester_of(peer_uid: int | None, own_uid: int | None, lookup_available: bool) -> Requester:
    """Whose request this is, from the peer's uid (None: not found) and the gateway's own uid.

    Where the OS shows socket owners, a connection it does not show is not
    taken as the owner's.

    >>> requester_of(1000, 1000, True), requester_of(1001, 1000, True), requester_of(None, 1000, True)
    (<Requester.OWNER: 'owner'>, <Requester.OTHER_USER: 'other user'>, <Requester.OTHER_USER: 'other user'>)
    >>> requester_of(None, None, False)
    <Requester.UNCHECKED: 'unchecked'>
    """
    if not lookup_available or own_uid is None:
        return Requester.UNCHECKED
    return Requester.OWNER if peer_uid == own_uid else Requester.OTHER_USER


class Target(StrEnum):
    LOCAL = "local"
    CLOUD = "cloud"
    REFUSE = "refuse"  # Ollama is skipped and there is no cloud to ask


@dataclass(frozen=True)
class Route:
    """Where one request goes first, and what may happen if that fails."""

    target: Target
    permit: Permit
    can_fall_back: bool = False  # the cloud may answer if Ollama fails before its first byte (see FailureKind)
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
    ) -> None:
        self.cloud_enabled = cloud_enabled
        self.breaker = breaker or CircuitBreaker()
        self.window = window or FallbackWindow()
        self._announced_active = False

    def route(self, now: float) -> Route:
        """Decide where the next request goes."""
        permit = self.breaker.try_acquire(now)
        if permit.allowed:
            return Route(Target.LOCAL, permit, can_fall_back=self.cloud_enabled)
        retry_at = self.breaker.retry_at(now)
        if self.cloud_enabled:
            return Route(Target.CLOUD, permit, retry_at=retry_at)
        if self.breaker.state(now) is BreakerState.HALF_OPEN and not self.breaker.refused:
            # Without a cloud, nothing is gained by failing the requests that queue behind a trial.
            return Route(Target.LOCAL, permit)
        return Route(Target.REFUSE, permit, retry_at=retry_at)

    def local_succeeded(self, route: Route, now: float) -> None:
        self.breaker.record_success(now, route.permit)

    def local_failed(self, route: Route, now: float, reason: str, kind: FailureKind) -> None:
        """Count what went wrong with Ollama: failures that say it is broken; slowness only frees a trial."""
        if kind.counts_against_ollama:
            self.breaker.record_failure(now, route.permit, reason)
        else:
            self.breaker.abandon(route.permit)

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
