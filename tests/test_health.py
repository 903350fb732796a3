import pytest

from tray.core.health import Failure, Health, ProbeResult, TimeoutCounter, classify, is_dead


@pytest.mark.parametrize(
    "latency, health",
    [(0.1, Health.HEALTHY), (4.99, Health.HEALTHY), (5.0, Health.UNHEALTHY), (15.0, Health.UNHEALTHY), (15.01, Health.DOWN)],
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
