import random

import pytest

from tray.core.restart import RestartPolicy, Verdict, geometric_delay


def policy(**kw):
    kw.setdefault("jitter", 0.0)
    return RestartPolicy(rng=random.Random(7), **kw)


def test_systemd_restart_steps():
    assert [round(geometric_delay(n, 1.0, 60.0, 5), 2) for n in range(8)] == [
        0.0,
        1.0,
        2.27,
        5.14,
        11.67,
        26.46,
        60.0,
        60.0,
    ]


def test_first_attempt_runs_at_once_then_backoff():
    p = policy()
    d = p.decide(100.0)
    assert (d.verdict, d.attempt, d.at) == (Verdict.RESTART_NOW, 1, 100.0)
    p.record_attempt(100.0)
    d = p.decide(100.5)
    assert (d.verdict, d.attempt, d.at) == (Verdict.WAIT, 2, 101.0)
    d = p.decide(101.0)
    assert (d.verdict, d.attempt) == (Verdict.RESTART_NOW, 2)
    p.record_attempt(101.0)
    d = p.decide(102.0)
    assert d.verdict is Verdict.WAIT and d.at == pytest.approx(101.0 + 2.2679, abs=1e-3)


def test_gives_up_after_the_attempts_and_retries_slowly_with_growing_delay():
    p = policy(max_attempts=3, retry_after_give_up=300, retry_max=3600)
    now = 0.0
    for attempt in (1, 2, 3):
        d = p.decide(now)
        while d.verdict is Verdict.WAIT:
            now = d.at
            d = p.decide(now)
        assert (d.verdict, d.attempt) == (Verdict.RESTART_NOW, attempt)
        p.record_attempt(now)
    d = p.decide(now + 1)
    assert d.verdict is Verdict.GIVE_UP and p.gave_up
    gave_up_at = now + 1
    # While given up, the next decisions wait 300 s, then 600 s, 1200 s ... capped at 3600 s.
    expected_gaps = [300, 600, 1200, 2400, 3600, 3600]
    anchor = gave_up_at
    for gap in expected_gaps:
        d = p.decide(anchor + gap - 1)
        assert d.verdict is Verdict.WAIT and d.at == pytest.approx(anchor + gap)
        d = p.decide(anchor + gap)
        assert d.verdict is Verdict.RESTART_NOW
        p.record_attempt(anchor + gap)
        anchor = anchor + gap


def test_crash_loop_is_bounded():
    """A server that dies right after every start: at most max_attempts quick restarts per hour."""
    p = policy(max_attempts=3)
    now, restarts = 0.0, []
    while now < 3600:
        d = p.decide(now)
        if d.verdict is Verdict.RESTART_NOW:
            restarts.append(now)
            p.record_attempt(now)
            now += 0.5  # dies half a second later
        else:
            now = max(now + 0.1, d.at)
    assert restarts == pytest.approx([0.0, 1.0, 3.268, 303.768, 903.768, 2103.768], abs=1e-3)


def test_stable_period_ends_the_episode():
    p = policy(stable_after=600)
    p.record_attempt(0)
    p.record_attempt(5)
    assert not p.record_healthy(10)
    assert not p.record_healthy(609)
    assert p.record_healthy(610)
    assert p.attempts == 0
    assert p.decide(611).verdict is Verdict.RESTART_NOW


def test_a_failure_interrupts_the_stable_period():
    p = policy(stable_after=600)
    p.record_attempt(0)
    p.record_healthy(10)
    p.decide(300)  # failed again
    p.record_attempt(300)
    assert not p.record_healthy(700)  # healthy again only since 700
    assert p.attempts == 2


def test_recovered_after_give_up_does_not_loop_through_quick_attempts_again():
    p = policy(max_attempts=2)
    for t in (0, 1.5):
        p.decide(t)
        p.record_attempt(t)
    assert p.decide(10).verdict is Verdict.GIVE_UP
    p.recovered()  # it answered again
    assert p.decide(20).verdict is Verdict.GIVE_UP  # but died again before being stable


def test_non_retryable_failure_gives_up_at_once():
    p = policy()
    p.give_up_now(50)
    d = p.decide(50)
    assert d.verdict is Verdict.WAIT and d.at == 350


def test_jitter_is_seeded_and_bounded():
    a = RestartPolicy(jitter=0.1, rng=random.Random(1))
    b = RestartPolicy(jitter=0.1, rng=random.Random(1))
    for p in (a, b):
        p.decide(0)
        p.record_attempt(0)
    da, db = a.decide(0), b.decide(0)
    assert da.at == db.at
    assert 0.9 <= da.at <= 1.1


def test_reset_by_user():
    p = policy(max_attempts=1)
    p.decide(0)
    p.record_attempt(0)
    assert p.decide(1).verdict is Verdict.GIVE_UP
    p.reset()
    assert p.decide(2).verdict is Verdict.RESTART_NOW
