"""Health classification (the design notes' table), busy versus hung, and the stuck runner.

Pure: no I/O; every decision takes ``now`` (monotonic seconds). The monitor
measures, this module decides.

Health is judged by what the server itself answers: its HTTP layer
(``GET /api/version``, ``/api/tags``, ``/api/ps``), which real Ollama answers
without the scheduler even mid-generation, and the one-token inference probe
when it may be sent.

| health    | latency            | action                   |
|-----------|--------------------|--------------------------|
| healthy   | < 5 s              | continue                 |
| unhealthy | 5-15 s             | monitor                  |
| down      | > 15 s or timeout  | restart / cloud fallback |

5 s is ``health_check_timeout``; an HTTP-layer check gives up at three times that.

*Busy* is separate information, never a health value:

| seen this tick                                              | meaning        | action                              |
|-------------------------------------------------------------|----------------|-------------------------------------|
| HTTP layer refuses                                          | down (dead)    | restart at once                     |
| HTTP layer times out, more than 3 checks in a row           | down (hung)    | restart, reason "not responding"    |
| gateway has inference requests in flight                    | busy (gateway) | no inference probe                  |
| the server's runners used CPU time since the last tick      | busy (runner)  | no inference probe                  |
| ... only while the gateway's own, now finished, requests ran | not busy       | as when idle                        |
| inference probe unanswered after ``health_check_timeout``,  | busy (probe)   | probe cancelled at once; not a      |
| HTTP layer still answering                                  |                | failure                             |
| busy, no progress for ``stuck_runner_timeout``              | stuck runner   | alert (never a restart on its own)  |
| stuck, *and* for the whole bound the runners' CPU time was  | frozen runner  | restart through the restart policy, |
| readable and did not advance while requests waited          |                | reason "stuck runner"               |

Progress is a successful inference probe, a byte through the gateway, or
runner CPU time advancing. Missing evidence (no gateway, unreadable CPU
time) is unknown, never a reason to restart.

The inference probe is sent only when ``health_probe = "inference"``, the
model is installed, loaded right now (``/api/ps``; the probe never loads a
model), and nothing is known to be running: it then cannot queue behind a
user's generation.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

ProcessKey = TypeVar("ProcessKey", bound=Hashable)


class Health(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    DOWN = "down"
    UNKNOWN = "unknown"


class Failure(StrEnum):
    """Why a probe did not get a good answer."""

    REFUSED = "refused"  # nothing listening: the server is not running
    EXITED = "exited"  # the server process this app started has exited
    TIMEOUT = "timeout"  # connected (or not) but no answer in time: a hang
    HTTP_ERROR = "http_error"  # answered with an error status: alive, not well
    BAD_RESPONSE = "bad_response"  # answered something that is not Ollama
    MODEL_ERROR = "model_error"  # the model is missing or broken; the server is fine
    UNTRUSTED = "untrusted"  # answers, but another user runs it: never used, never restarted


DOWN_FACTOR = 3.0


@dataclass(frozen=True)
class ProbeResult:
    """One health probe. ``latency`` is seconds until the answer (or until giving up)."""

    ok: bool
    latency: float
    kind: str = "api"  # "api" (liveness) or "inference" (one-token test prompt)
    failure: Failure | None = None
    detail: str = ""
    load_seconds: float = 0.0  # time Ollama reports spent loading the model for this request

    @property
    def working_latency(self) -> float:
        """Latency without a cold model load, which is not slowness of the server."""
        return max(0.0, self.latency - self.load_seconds)


def classify(result: ProbeResult, timeout: float) -> Health:
    """Map a probe to the design notes' health table.

    >>> classify(ProbeResult(ok=True, latency=0.2), timeout=5)
    <Health.HEALTHY: 'healthy'>
    >>> classify(ProbeResult(ok=True, latency=7.0), timeout=5)
    <Health.UNHEALTHY: 'unhealthy'>
    >>> classify(ProbeResult(ok=False, latency=15.0, failure=Failure.TIMEOUT), timeout=5)
    <Health.DOWN: 'down'>
    """
    if not result.ok:
        if result.failure in (Failure.HTTP_ERROR, Failure.MODEL_ERROR):
            return Health.UNHEALTHY
        return Health.DOWN
    latency = result.working_latency
    if latency < timeout:
        return Health.HEALTHY
    if latency <= timeout * DOWN_FACTOR:
        return Health.UNHEALTHY
    return Health.DOWN


def is_dead(result: ProbeResult) -> bool:
    """The server is not there at all (as opposed to slow or erroring)."""
    return not result.ok and result.failure in (Failure.REFUSED, Failure.EXITED)


@dataclass
class TimeoutCounter:
    """Consecutive probe timeouts; more than ``threshold`` means a hang worth a restart."""

    threshold: int = 3
    count: int = 0

    def observe(self, result: ProbeResult) -> bool:
        """Record a probe; True when a restart is due because of repeated timeouts."""
        if not result.ok and result.failure is Failure.TIMEOUT:
            self.count += 1
        else:
            self.count = 0
        return self.count > self.threshold

    def reset(self) -> None:
        self.count = 0


# --------------------------------------------------------------------------- busy versus hung

RUNNER_CPU_BUSY_SECONDS = 0.02  # CPU time between two ticks that means a runner is working (2 clock ticks)
STUCK_RUNNER_GRACE_SECONDS = 600.0  # default stuck bound: model_load_timeout plus this


class BusySource(StrEnum):
    """Where the knowledge that Ollama is busy comes from, most telling first."""

    GATEWAY = "gateway"  # the gateway's own requests in flight to Ollama
    RUNNER = "runner"  # the server's runner processes used CPU time since the last tick
    PROBE = "probe"  # the inference probe waited behind other work and was cancelled


class InferenceProbe(StrEnum):
    """What became of this tick's inference probe."""

    NOT_SENT = "not_sent"
    ANSWERED = "answered"
    WAITED = "waited"  # no answer within health_check_timeout while the HTTP layer answered


@dataclass(frozen=True)
class GatewayActivity:
    """The gateway's inference requests to Ollama: per model in flight, how many have no byte back yet,
    and the monotonic time of the last byte from Ollama."""

    in_flight: Mapping[str, int] = field(default_factory=dict)
    waiting: int = 0
    last_progress: float | None = None

    @property
    def requests(self) -> int:
        return sum(count for count in self.in_flight.values() if count > 0)

    @property
    def busiest_model(self) -> str | None:
        """The model with the most requests in flight (ties: the first name).

        >>> GatewayActivity({"b": 1, "a": 2, "c": 2}).busiest_model
        'a'
        """
        counts = {model: count for model, count in self.in_flight.items() if count > 0}
        return min(counts, key=lambda model: (-counts[model], model)) if counts else None


@dataclass(frozen=True)
class RunnerCpu:
    """CPU time the server's runner processes used since the previous reading.

    ``seconds`` is None when nothing could be read (no runner found, or the OS
    hid their times); ``complete`` says every runner found was readable.
    """

    seconds: float | None
    complete: bool = False

    @property
    def advanced(self) -> bool | None:
        """True: a runner is working; False: none is; None: not known."""
        return None if self.seconds is None else self.seconds >= RUNNER_CPU_BUSY_SECONDS


UNKNOWN_CPU = RunnerCpu(None)


def runner_cpu_since(
    previous: Mapping[ProcessKey, float] | None, current: Mapping[ProcessKey, float | None]
) -> RunnerCpu:
    """CPU seconds the runners used between two readings (per process: ``None`` = unreadable).

    A runner new since the previous reading counts with all its time (it is
    loading a model); one that went away counts nothing. Without a previous
    reading, or with no runner at all, nothing is known.

    >>> runner_cpu_since({"a": 1.0}, {"a": 1.5, "b": 0.25})
    RunnerCpu(seconds=0.75, complete=True)
    >>> runner_cpu_since({"a": 1.0}, {"a": 1.0, "b": None})
    RunnerCpu(seconds=0.0, complete=False)
    >>> runner_cpu_since(None, {"a": 1.0}), runner_cpu_since({"a": 1.0}, {})
    (RunnerCpu(seconds=None, complete=False), RunnerCpu(seconds=None, complete=False))
    """
    if previous is None:
        return UNKNOWN_CPU
    readable = {key: value for key, value in current.items() if value is not None}
    if not readable:
        return UNKNOWN_CPU
    used = sum(max(0.0, value - previous.get(key, 0.0)) for key, value in readable.items())
    return RunnerCpu(round(used, 6), complete=len(readable) == len(current))


@dataclass(frozen=True)
class ProbeChoice:
    """Whether to send the inference probe this tick, and why (for the log)."""

    send: bool
    reason: str


def choose_inference_probe(
    health_probe: str,
    installed: bool,
    loaded: bool,
    gateway: GatewayActivity | None,
    runner_cpu: RunnerCpu,
) -> ProbeChoice:
    """Send the inference probe only where it can neither queue nor load a model.

    >>> choose_inference_probe("inference", True, True, None, RunnerCpu(0.0, True))
    ProbeChoice(send=True, reason='the model is loaded and idle')
    >>> choose_inference_probe("inference", True, False, None, UNKNOWN_CPU).reason
    'the model is not loaded (the probe never loads it)'
    >>> choose_inference_probe("inference", True, True, GatewayActivity({"m": 1}), UNKNOWN_CPU).reason
    'the gateway has 1 request(s) in flight'
    >>> choose_inference_probe("inference", True, True, None, RunnerCpu(0.5, True)).reason
    'a runner used 0.50 s of CPU since the last check'
    """
    if health_probe != "inference":
        return ProbeChoice(False, "health_probe is 'api'")
    if not installed:
        return ProbeChoice(False, "the model is not installed")
    if not loaded:
        return ProbeChoice(False, "the model is not loaded (the probe never loads it)")
    if gateway is not None and gateway.requests:
        return ProbeChoice(False, f"the gateway has {gateway.requests} request(s) in flight")
    if runner_cpu.advanced:
        return ProbeChoice(False, f"a runner used {runner_cpu.seconds:.2f} s of CPU since the last check")
    return ProbeChoice(True, "the model is loaded and idle")


@dataclass(frozen=True)
class BusyEvidence:
    """One tick's observations about work in Ollama (with its HTTP layer answering)."""

    gateway: GatewayActivity | None = None  # None: no gateway running
    runner_cpu: RunnerCpu = UNKNOWN_CPU
    runner_model: str | None = None  # the model the runners hold, when it is known
    probe: InferenceProbe = InferenceProbe.NOT_SENT
    probe_model: str | None = None


@dataclass(frozen=True)
class Busy:
    """Ollama is working on something (times are monotonic)."""

    source: BusySource
    model: str | None
    requests: int | None  # known in flight (from the gateway)
    waiting: int | None  # of those, no byte back yet
    since: float
    last_progress: float | None
    stuck: bool  # no progress for longer than the bound
    frozen: bool  # stuck, and provably so: the restart rule holds

    def quiet_seconds(self, now: float) -> float:
        """Seconds since the last progress, or since busy began when there was none."""
        return max(0.0, now - max(self.since, self.last_progress or self.since))


def stuck_runner_bound(stuck_runner_timeout: float, model_load_timeout: float) -> float:
    """Seconds of busy without progress before a runner counts as stuck (0: the load budget plus 10 min).

    >>> stuck_runner_bound(0, 300), stuck_runner_bound(45, 300)
    (900.0, 45.0)
    """
    if stuck_runner_timeout > 0:
        return float(stuck_runner_timeout)
    return float(model_load_timeout) + STUCK_RUNNER_GRACE_SECONDS


@dataclass
class BusyTracker:
    """Busy since when, the last progress, and whether the runner is stuck; feed one tick at a time.

    Frozen (the restart rule) needs, at every tick of the whole bound: the
    runners' CPU time readable for all of them and not advancing, and a
    request waiting (the gateway's, with no byte back, or the probe's). Any
    other tick starts that count again.
    """

    stuck_after: float
    since: float | None = None
    last_progress: float | None = None
    frozen_since: float | None = None
    current: Busy | None = None
    last_observed: float | None = None

    def observe(self, now: float, evidence: BusyEvidence) -> Busy | None:
        gateway = evidence.gateway
        cpu_advanced = evidence.runner_cpu.advanced
        previous, self.last_observed = self.last_observed, now
        if gateway is not None and gateway.requests:
            source: BusySource | None = BusySource.GATEWAY
        elif cpu_advanced and not _gateway_work_since(gateway, previous):
            source = BusySource.RUNNER
        elif evidence.probe is InferenceProbe.WAITED:
            source = BusySource.PROBE
        else:
            source = None
        if source is None:
            self.reset()
            return None
        if self.since is None:
            self.since = now
        progress = [t for t in self._progress_times(now, evidence) if t is not None]
        if progress:
            self.last_progress = max([*progress, self.last_progress or progress[0]])
        quiet_for = now - max(self.since, self.last_progress or self.since)
        stuck = quiet_for > self.stuck_after
        waited = evidence.probe is InferenceProbe.WAITED or bool(gateway and gateway.waiting)
        provably_idle = cpu_advanced is False and evidence.runner_cpu.complete
        if waited and provably_idle and not progress:
            self.frozen_since = now if self.frozen_since is None else self.frozen_since
        else:
            self.frozen_since = None
        frozen = stuck and self.frozen_since is not None and now - self.frozen_since >= self.stuck_after
        model = (gateway.busiest_model if source is BusySource.GATEWAY and gateway else None) or (
            evidence.probe_model if source is BusySource.PROBE else evidence.runner_model
        )
        self.current = Busy(
            source=source,
            model=model or evidence.runner_model,
            requests=gateway.requests if gateway is not None else None,
            waiting=gateway.waiting if gateway is not None else None,
            since=self.since,
            last_progress=self.last_progress,
            stuck=stuck,
            frozen=frozen,
        )
        return self.current

    def _progress_times(self, now: float, evidence: BusyEvidence) -> list[float | None]:
        gateway_byte = evidence.gateway.last_progress if evidence.gateway is not None else None
        return [
            now if evidence.probe is InferenceProbe.ANSWERED else None,
            now if evidence.runner_cpu.advanced else None,
            gateway_byte if gateway_byte is not None and gateway_byte >= (self.since or now) else None,
        ]

    def reset(self) -> None:
        self.since = self.last_progress = self.frozen_since = None
        self.current = None


def _gateway_work_since(gateway: GatewayActivity | None, previous_check: float | None) -> bool:
    """The gateway's own requests, all finished now, got bytes from Ollama since the previous check.

    The runners' CPU time of that interval is then their work, not someone
    else's still running: it is no reason to report Ollama busy (which would
    take the first-byte budget away from the gateway's next request).

    >>> done = GatewayActivity({}, 0, 105.0)
    >>> _gateway_work_since(done, 100.0), _gateway_work_since(GatewayActivity({}, 0, 95.0), 100.0)
    (True, False)
    >>> _gateway_work_since(None, 100.0), _gateway_work_since(done, None)
    (False, False)
    """
    if gateway is None or gateway.requests or gateway.last_progress is None or previous_check is None:
        return False
    return gateway.last_progress >= previous_check
