import pytest

from tray.core.health import (
    UNKNOWN_CPU,
    BusyEvidence,
    BusySource,
    BusyTracker,
    Failure,
    GatewayActivity,
    Health,
    InferenceProbe,
    ProbeResult,
    RunnerCpu,
    TimeoutCounter,
    choose_inference_probe,
    classify,
    is_dead,
    runner_cpu_since,
    stuck_runner_bound,
)
from tray.core.status import BusyStatus


@pytest.mark.parametrize(
    "latency, health",
    [
        (0.1, Health.HEALTHY),
        (4.99, Health.HEALTHY),
        (5.0, Health.UNHEALTHY),
        (15.0, Health.UNHEALTHY),
        (15.01, Health.DOWN),
    ],
)
def test_design_notes_table(latency, health):
    assert classify(ProbeResult(True, latency), timeout=5) is health


def test_cold_load_is_not_slowness():
    result = ProbeResult(True, 12.0, "inference", load_seconds=11.5)
    assert classify(result, timeout=5) is Health.HEALTHY


@pytest.mark.parametrize(
    "failure, health",
    [
        (Failure.TIMEOUT, Health.DOWN),
        (Failure.REFUSED, Health.DOWN),
        (Failure.EXITED, Health.DOWN),
        (Failure.BAD_RESPONSE, Health.DOWN),
        (Failure.HTTP_ERROR, Health.UNHEALTHY),
        (Failure.MODEL_ERROR, Health.UNHEALTHY),
    ],
)
def test_failures(failure, health):
    assert classify(ProbeResult(False, 1.0, failure=failure), timeout=5) is health


def test_dead_only_when_nothing_is_there():
    assert is_dead(ProbeResult(False, 0, failure=Failure.REFUSED))
    assert is_dead(ProbeResult(False, 0, failure=Failure.EXITED))
    assert not is_dead(ProbeResult(False, 15, failure=Failure.TIMEOUT))
    assert not is_dead(ProbeResult(True, 0.1))


def test_more_than_three_consecutive_timeouts():
    counter = TimeoutCounter(threshold=3)
    timeout = ProbeResult(False, 15, failure=Failure.TIMEOUT)
    assert [counter.observe(timeout) for _ in range(3)] == [False, False, False]
    assert counter.observe(ProbeResult(True, 0.1)) is False  # a good answer resets the count
    assert [counter.observe(timeout) for _ in range(4)] == [False, False, False, True]


# --------------------------------------------------------------------------- busy versus hung

IDLE_CPU = RunnerCpu(0.0, complete=True)
WORKING_CPU = RunnerCpu(2.5, complete=True)
WAITED = BusyEvidence(runner_cpu=IDLE_CPU, probe=InferenceProbe.WAITED, probe_model="llama3")


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.mark.parametrize(
    "mode, installed, loaded, gateway, cpu, send",
    [
        ("inference", True, True, None, IDLE_CPU, True),
        ("inference", True, True, None, UNKNOWN_CPU, True),  # nothing known to run: probe, and learn
        ("api", True, True, None, IDLE_CPU, False),
        ("inference", False, False, None, IDLE_CPU, False),
        ("inference", True, False, None, IDLE_CPU, False),  # never loads a model
        ("inference", True, True, GatewayActivity({"llama3": 1}), IDLE_CPU, False),
        ("inference", True, True, GatewayActivity({"llama3": 0}), IDLE_CPU, True),
        ("inference", True, True, None, WORKING_CPU, False),
        ("inference", True, True, None, RunnerCpu(0.01, True), True),  # background noise is not work
    ],
)
def test_the_inference_probe_goes_only_to_a_loaded_idle_model(mode, installed, loaded, gateway, cpu, send):
    assert choose_inference_probe(mode, installed, loaded, gateway, cpu).send is send


def test_runner_cpu_counts_new_runners_and_ignores_gone_ones():
    previous = {"a": 10.0, "gone": 50.0}
    assert runner_cpu_since(previous, {"a": 10.0}) == RunnerCpu(0.0, complete=True)
    assert runner_cpu_since(previous, {"a": 10.0, "new": 1.5}).advanced is True
    assert runner_cpu_since(previous, {"a": None}) == UNKNOWN_CPU
    assert runner_cpu_since(previous, {"a": 9.0}) == RunnerCpu(0.0, complete=True)  # never negative


def test_the_stuck_bound_defaults_to_the_load_budget_plus_ten_minutes():
    assert stuck_runner_bound(0, 300) == 900
    assert stuck_runner_bound(0, 1200) == 1800
    assert stuck_runner_bound(30, 300) == 30


def test_busy_from_each_source_and_back_to_idle():
    clock = FakeClock()
    tracker = BusyTracker(stuck_after=900)
    assert tracker.observe(clock.now, BusyEvidence(runner_cpu=IDLE_CPU)) is None
    gateway = GatewayActivity({"llama3": 1}, waiting=1, last_progress=None)
    busy = tracker.observe(clock.advance(30), BusyEvidence(gateway=gateway, runner_cpu=WORKING_CPU))
    assert (busy.source, busy.model, busy.requests, busy.waiting, busy.since) == (
        BusySource.GATEWAY,
        "llama3",
        1,
        1,
        clock.now,
    )
    busy = tracker.observe(clock.advance(30), BusyEvidence(runner_cpu=WORKING_CPU, runner_model="llama3:latest"))
    assert (busy.source, busy.model, busy.requests, busy.since) == (BusySource.RUNNER, "llama3:latest", None, 130.0)
    assert busy.last_progress == clock.now
    busy = tracker.observe(clock.advance(30), WAITED)
    assert (busy.source, busy.model, busy.since) == (BusySource.PROBE, "llama3", 130.0)
    assert tracker.observe(clock.advance(30), BusyEvidence(runner_cpu=IDLE_CPU, probe=InferenceProbe.ANSWERED)) is None
    assert tracker.since is None


def test_stuck_after_the_bound_without_progress_and_not_before():
    clock = FakeClock()
    tracker = BusyTracker(stuck_after=90)
    first = tracker.observe(clock.now, WAITED)
    states = [tracker.observe(clock.advance(30), WAITED).stuck for _ in range(4)]
    assert first.stuck is False and states == [False, False, False, True]  # 30, 60, 90 (not past 90), 120 s
    assert tracker.current.quiet_seconds(clock.now) == 120


def test_progress_keeps_a_long_generation_from_being_stuck():
    clock = FakeClock()
    tracker = BusyTracker(stuck_after=90)
    for _ in range(20):
        clock.advance(30)
        gateway = GatewayActivity({"llama3": 1}, waiting=0, last_progress=clock.now - 2)
        busy = tracker.observe(clock.now, BusyEvidence(gateway=gateway))
        assert busy.stuck is False
    assert BusyStatus.of(busy, clock.now).progress_seconds_ago == 2.0
    # The bytes stop: stuck once the bound has passed since the last one.
    silent = GatewayActivity({"llama3": 1}, waiting=0, last_progress=busy.last_progress)
    stuck = [tracker.observe(clock.advance(30), BusyEvidence(gateway=silent)).stuck for _ in range(3)]
    assert stuck == [False, False, True]  # 32, 62, 92 s since the last byte


def test_frozen_needs_readable_idle_cpu_and_a_waiting_request_for_the_whole_bound():
    clock = FakeClock()
    tracker = BusyTracker(stuck_after=60)
    frozen = [tracker.observe(clock.advance(30), WAITED).frozen for _ in range(4)]
    assert frozen == [False, False, False, True]  # at 90 s: stuck (past 60 s), frozen since 90 s before


@pytest.mark.parametrize(
    "breaking",
    [
        BusyEvidence(runner_cpu=UNKNOWN_CPU, probe=InferenceProbe.WAITED),  # CPU time not readable
        BusyEvidence(runner_cpu=RunnerCpu(0.0, complete=False), probe=InferenceProbe.WAITED),  # one runner hidden
        BusyEvidence(gateway=GatewayActivity({"llama3": 1}, waiting=0), runner_cpu=IDLE_CPU),  # nothing waiting
    ],
)
def test_any_tick_without_proof_starts_the_frozen_count_again(breaking):
    clock = FakeClock()
    tracker = BusyTracker(stuck_after=60)
    for _ in range(3):
        tracker.observe(clock.advance(30), WAITED)
    busy = tracker.observe(clock.advance(30), breaking)
    assert busy.stuck is True and busy.frozen is False
    assert [tracker.observe(clock.advance(30), WAITED).frozen for _ in range(3)] == [False, False, True]


def test_missing_evidence_alone_is_never_frozen():
    clock = FakeClock()
    tracker = BusyTracker(stuck_after=60)
    unknown = BusyEvidence(runner_cpu=UNKNOWN_CPU, probe=InferenceProbe.WAITED, probe_model="llama3")
    busy = [tracker.observe(clock.advance(30), unknown) for _ in range(10)][-1]
    assert busy.stuck is True and busy.frozen is False
