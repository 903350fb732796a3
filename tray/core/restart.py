"""Restart policy: bounded attempts with backoff, then give up and retry rarely.

Pure: every method takes ``now`` (monotonic seconds); jitter comes from an
injected ``random.Random``. Nothing here sleeps, spawns or signals.

The shape follows systemd's ``RestartSteps``/``RestartMaxDelaySec`` for the
quick attempts and Kubernetes' CrashLoopBackOff for the slow retries after
giving up, and, like supervisord's FATAL, only a user action resets a
gave-up server at once:

- a failure that needs a restart starts an episode; attempt 1 runs at once,
  attempt n waits ``backoff(n - 1)``: 1 s, 2.27 s, 5.14 s ... up to 60 s;
- after ``max_attempts`` attempts without a stable recovery the policy gives
  up: health stays ``down`` and the cloud fallback is active;
- while given up, one retry every ``retry_after_give_up`` seconds, doubling
  up to ``retry_max``: never a restart storm;
- ``stable_after`` seconds of health end the episode (counters reset).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum


class Verdict(StrEnum):
    RESTART_NOW = "restart_now"
    WAIT = "wait"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    attempt: int  # the attempt this decision is about (1-based); 0 when giving up
    at: float  # monotonic time the restart may run (== now for RESTART_NOW)


def geometric_delay(step: int, first: float, maximum: float, steps: int) -> float:
    """systemd's restart delay: first * (maximum/first) ** ((step-1)/steps), capped.

    >>> [round(geometric_delay(n, 1.0, 60.0, 5), 2) for n in range(1, 8)]
    [1.0, 2.27, 5.14, 11.67, 26.46, 60.0, 60.0]
    """
    if step <= 0:
        return 0.0
    if step > steps:
        return maximum
    growth: float = (maximum / first) ** ((step - 1) / steps)  # float ** float is typed Any: it may be complex
    return first * growth


@dataclass
class RestartPolicy:
    max_attempts: int = 3
    first_delay: float = 1.0
    max_delay: float = 60.0
    steps: int = 5
    jitter: float = 0.1
    stable_after: float = 600.0
    retry_after_give_up: float = 300.0
    retry_max: float = 3600.0
    rng: random.Random = field(default_factory=random.Random)

    attempts: int = 0
    last_attempt_at: float | None = None
    gave_up_at: float | None = None
    slow_retries: int = 0
    healthy_since: float | None = None

    @property
    def gave_up(self) -> bool:
        return self.gave_up_at is not None

    def _jittered(self, delay: float) -> float:
        if delay <= 0 or self.jitter <= 0:
            return delay
        return delay * (1 + self.rng.uniform(-self.jitter, self.jitter))

    def backoff(self, attempt: int) -> float:
        """Un-jittered wait before ``attempt`` (1-based) of an episode."""
        return geometric_delay(attempt - 1, self.first_delay, self.max_delay, self.steps)

    def slow_retry_delay(self, retry: int) -> float:
        """Un-jittered wait before slow retry ``retry`` (0-based) after giving up."""
        return min(self.retry_max, self.retry_after_give_up * 2.0**retry)

    def decide(self, now: float) -> Decision:
        """A restart is wanted now: run it, wait, or give up."""
        self.healthy_since = None
        if self.gave_up_at is not None:
            anchor = self.last_attempt_at if self.slow_retries and self.last_attempt_at else self.gave_up_at
            due = anchor + self._jittered(self.slow_retry_delay(self.slow_retries))
            return self._due(now, due, self.attempts + 1)
        if self.attempts >= self.max_attempts:
            self.gave_up_at = now
            return Decision(Verdict.GIVE_UP, 0, now)
        next_attempt = self.attempts + 1
        if self.last_attempt_at is None:
            return Decision(Verdict.RESTART_NOW, next_attempt, now)
        due = self.last_attempt_at + self._jittered(self.backoff(next_attempt))
        return self._due(now, due, next_attempt)

    def _due(self, now: float, due: float, attempt: int) -> Decision:
        if now >= due:
            return Decision(Verdict.RESTART_NOW, attempt, now)
        return Decision(Verdict.WAIT, attempt, due)

    def give_up_now(self, now: float) -> None:
        """A failure that retrying cannot fix (binary missing, port held by another program)."""
        self.healthy_since = None
        if self.gave_up_at is None:
            self.gave_up_at = now

    def record_attempt(self, now: float) -> None:
        """A restart attempt was made (whatever its outcome)."""
        self.attempts += 1
        self.last_attempt_at = now
        if self.gave_up_at is not None:
            self.slow_retries += 1

    def record_healthy(self, now: float) -> bool:
        """Ollama answered healthy; True when this ended an episode (counters reset)."""
        if self.attempts == 0 and self.gave_up_at is None:
            return False
        if self.healthy_since is None:
            self.healthy_since = now
        if now - self.healthy_since >= self.stable_after:
            self.reset()
            return True
        return False

    def recovered(self) -> None:
        """The server answers again after giving up: quick attempts are allowed again.

        The attempt count is kept until the server has been stable, so a
        server that comes back and dies again gives up at once instead of
        looping through the quick attempts.
        """
        self.gave_up_at = None
        self.slow_retries = 0

    def reset(self) -> None:
        """A user action or a stable period: start from scratch."""
        self.attempts = 0
        self.last_attempt_at = None
        self.gave_up_at = None
        self.slow_retries = 0
        self.healthy_since = None
