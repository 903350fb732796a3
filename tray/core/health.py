"""Health classification (the design notes' table) and what a probe result means.

Pure: no I/O, no clock. The monitor measures, this module decides.

| health    | latency            | action                   |
|-----------|--------------------|--------------------------|
| healthy   | < 5 s              | continue                 |
| unhealthy | 5-15 s             | monitor                  |
| down      | > 15 s or timeout  | restart / cloud fallback |

5 s is ``health_check_timeout``; the probe gives up at three times that.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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
