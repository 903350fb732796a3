"""The gateway's routing policy: circuit breaker, budgets, fallback window and router (pure, scripted clock)."""

from __future__ import annotations

import pytest

from tray.core.health import BusySource, Health
from tray.core.names import model_key
from tray.core.status import BusyStatus, MonitorState, Status, make_status
from tray.gateway.breaker import (
    Activation,
    Backend,
    BreakerPolicy,
    BreakerState,
    Budget,
    CircuitBreaker,
    FailureKind,
    FallbackUsage,
    FallbackWindow,
    LoadedModels,
    LocalActivity,
    LocalHealth,
    Permit,
    Router,
    Target,
    WaitPlan,
    choose_budget,
    health_from_status,
    plan_wait,
    status_busy,
)

POLICY = BreakerPolicy(failure_threshold=3, open_seconds=30.0, max_open_seconds=300.0, backoff_factor=2.0)


def fail(breaker: CircuitBreaker, now: float, times: int = 1) -> None:
    for _ in range(times):
        breaker.record_failure(now, breaker.try_acquire(now), "connection refused")


def open_breaker(now: float = 0.0) -> CircuitBreaker:
    breaker = CircuitBreaker(POLICY)
    fail(breaker, now, 3)
    return breaker


class TestClosedState:
    def test_starts_closed_and_lets_requests_through(self) -> None:
        breaker = CircuitBreaker(POLICY)
        permit = breaker.try_acquire(0.0)
        assert breaker.state(0.0) is BreakerState.CLOSED
        assert (permit.allowed, permit.trial) == (True, False)

    def test_opens_after_three_failures_in_a_row(self) -> None:
        breaker = CircuitBreaker(POLICY)
        fail(breaker, 1.0, 2)
        assert breaker.state(1.0) is BreakerState.CLOSED
        assert breaker.failures_in_row == 2
        fail(breaker, 2.0)
        assert breaker.state(2.0) is BreakerState.OPEN
        assert breaker.retry_at(2.0) == 32.0
        assert breaker.reason == "connection refused"

    def test_a_success_resets_the_count(self) -> None:
        breaker = CircuitBreaker(POLICY)
        fail(breaker, 0.0, 2)
        breaker.record_success(1.0, breaker.try_acquire(1.0))
        fail(breaker, 2.0, 2)
        assert breaker.state(2.0) is BreakerState.CLOSED
        assert breaker.failures_in_row == 2


class TestOpenAndHalfOpen:
    def test_open_refuses_until_the_open_time_is_over(self) -> None:
        breaker = open_breaker(0.0)
        assert breaker.try_acquire(29.999).allowed is False
        assert breaker.state(29.999) is BreakerState.OPEN
        assert breaker.state(30.0) is BreakerState.HALF_OPEN
        assert breaker.retry_at(30.0) is None

    def test_half_open_lets_exactly_one_trial_through(self) -> None:
        breaker = open_breaker(0.0)
        trial = breaker.try_acquire(30.0)
        second = breaker.try_acquire(30.5)
        assert (trial.allowed, trial.trial) == (True, True)
        assert second.allowed is False

    def test_trial_success_closes_and_resets_the_open_time(self) -> None:
        breaker = open_breaker(0.0)
        fail(breaker, 30.0)  # trial fails: open for 60 s
        assert breaker.open_for == 60.0
        trial = breaker.try_acquire(90.0)
        breaker.record_success(90.5, trial)
        assert breaker.state(90.5) is BreakerState.CLOSED
        assert breaker.open_for == 30.0
        assert breaker.reason == "Ollama answered again"

    def test_each_failed_trial_doubles_the_open_time_up_to_the_cap(self) -> None:
        breaker = open_breaker(0.0)
        now, seen = 0.0, []
        for _ in range(6):
            now += breaker.open_for
            fail(breaker, now)  # the half-open trial fails
            seen.append(breaker.open_for)
        assert seen == [60.0, 120.0, 240.0, 300.0, 300.0, 300.0]
        assert breaker.retry_at(now) == now + 300.0

    def test_a_trial_abandoned_without_verdict_frees_the_slot(self) -> None:
        breaker = open_breaker(0.0)
        trial = breaker.try_acquire(30.0)
        breaker.abandon(trial)
        again = breaker.try_acquire(30.1)
        assert (again.allowed, again.trial) == (True, True)


class TestHealthReports:
    def test_down_opens_at_once(self) -> None:
        breaker = CircuitBreaker(POLICY)
        breaker.observe_health(LocalHealth.DOWN, 5.0)
        assert breaker.state(5.0) is BreakerState.OPEN
        assert breaker.retry_at(5.0) == 35.0
        assert breaker.reason == "Ollama is down"

    def test_a_report_that_ollama_answers_closes_the_breaker_at_once(self) -> None:
        breaker = CircuitBreaker(POLICY)
        breaker.observe_health(LocalHealth.UP, 0.0)
        breaker.observe_health(LocalHealth.DOWN, 1.0)
        breaker.observe_health(LocalHealth.DOWN, 2.0)
        assert breaker.state(3.0) is BreakerState.OPEN
        breaker.observe_health(LocalHealth.UP, 4.0)
        assert breaker.state(4.0) is BreakerState.CLOSED
        assert breaker.reason == "Ollama answers again"
        assert breaker.try_acquire(4.0) == Permit(True, trial=False, generation=2)

    def test_slow_counts_as_answering(self) -> None:
        breaker = CircuitBreaker(POLICY)
        breaker.observe_health(LocalHealth.DOWN, 0.0)
        breaker.observe_health(LocalHealth.SLOW, 1.0)
        assert breaker.state(1.0) is BreakerState.CLOSED

    def test_the_probe_has_the_last_word_over_request_failures(self) -> None:
        # Requests failed while the probe finds Ollama answering: the probe decides, the breaker closes.
        breaker = CircuitBreaker(POLICY)
        breaker.observe_health(LocalHealth.UP, 0.0)
        fail(breaker, 1.0, 3)
        breaker.observe_health(LocalHealth.UNKNOWN, 2.0)
        assert breaker.state(2.0) is BreakerState.OPEN
        breaker.observe_health(LocalHealth.UP, 3.0)
        assert breaker.state(3.0) is BreakerState.CLOSED
        assert breaker.open_for == 30.0

    def test_a_half_open_breaker_closes_on_a_healthy_report_without_a_trial(self) -> None:
        breaker = open_breaker(0.0)
        assert breaker.state(30.0) is BreakerState.HALF_OPEN
        breaker.observe_health(LocalHealth.UP, 31.0)
        assert breaker.state(31.0) is BreakerState.CLOSED

    def test_down_during_half_open_doubles_the_open_time(self) -> None:
        breaker = open_breaker(0.0)
        assert breaker.state(30.0) is BreakerState.HALF_OPEN
        breaker.observe_health(LocalHealth.DOWN, 30.0)
        assert breaker.retry_at(30.0) == 90.0

    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            (make_status(health=Health.HEALTHY, state=MonitorState.RUNNING), LocalHealth.UP),
            (make_status(health=Health.UNHEALTHY, state=MonitorState.RUNNING), LocalHealth.SLOW),
            (make_status(health=Health.DOWN, state=MonitorState.RESTARTING), LocalHealth.DOWN),
            (make_status(health=Health.UNKNOWN, state=MonitorState.STARTING), LocalHealth.UNKNOWN),
            (make_status(health=Health.HEALTHY, state=MonitorState.FAILED), LocalHealth.DOWN),
            (make_status(health=Health.DOWN, state=MonitorState.STOPPED), LocalHealth.DOWN),
            (Status(), LocalHealth.UNKNOWN),
        ],
    )
    def test_monitor_status_mapping(self, status: Status, expected: LocalHealth) -> None:
        assert health_from_status(status) is expected


class TestStaleOutcomes:
    def test_a_success_from_before_ollama_died_does_not_close_the_breaker(self) -> None:
        breaker = CircuitBreaker(POLICY)
        early = breaker.try_acquire(0.0)  # a long stream starts
        breaker.observe_health(LocalHealth.DOWN, 1.0)
        breaker.record_success(2.0, early)
        assert breaker.state(2.0) is BreakerState.OPEN

    def test_a_late_good_answer_closes_a_breaker_that_request_failures_opened(self) -> None:
        breaker = CircuitBreaker(POLICY)
        slow = breaker.try_acquire(0.0)  # a stream: false answer, still being generated
        fail(breaker, 1.0, 3)  # streamed requests meanwhile get no first byte
        assert breaker.state(1.0) is BreakerState.OPEN
        breaker.record_success(2.0, slow)
        assert breaker.state(2.0) is BreakerState.CLOSED

    def test_failures_of_an_earlier_generation_do_not_count_twice(self) -> None:
        breaker = CircuitBreaker(POLICY)
        permits = [breaker.try_acquire(0.0) for _ in range(5)]
        for permit in permits:
            breaker.record_failure(1.0, permit, "refused")
        assert breaker.state(1.0) is BreakerState.OPEN
        assert breaker.open_for == 30.0  # the two late failures did not lengthen it

    def test_passive_permit_counts_only_while_closed(self) -> None:
        breaker = CircuitBreaker(POLICY)
        assert breaker.passive_permit(0.0).allowed is True
        fail(breaker, 0.0, 3)
        passive = breaker.passive_permit(1.0)
        assert (passive.allowed, passive.generation) == (False, -1)
        breaker.record_success(1.0, passive)
        assert breaker.state(1.0) is BreakerState.OPEN

    def test_passive_permit_takes_no_trial_slot(self) -> None:
        breaker = open_breaker(0.0)
        breaker.passive_permit(30.0)
        assert breaker.try_acquire(30.0).trial is True


class TestPolicyValidation:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"failure_threshold": 0}, "failure_threshold must be at least 1, got 0"),
            ({"open_seconds": 0}, "open_seconds must be above 0 and at most max_open_seconds"),
            ({"open_seconds": 400}, "open_seconds must be above 0 and at most max_open_seconds"),
            ({"backoff_factor": 0.5}, "backoff_factor must be at least 1, got 0.5"),
        ],
    )
    def test_bad_values(self, kwargs: dict[str, float], message: str) -> None:
        with pytest.raises(ValueError) as error:
            BreakerPolicy(**kwargs)  # type: ignore[arg-type]
        assert str(error.value) == message


class TestFallbackWindow:
    def test_ratio_over_the_window(self) -> None:
        window = FallbackWindow(window_seconds=60.0)
        for t, backend in [(0, Backend.LOCAL), (10, Backend.CLOUD), (20, Backend.CLOUD), (30, Backend.GATEWAY)]:
            window.record(backend, float(t))
        usage = window.usage(30.0)
        assert usage == FallbackUsage(calls=3, cloud_calls=2)
        assert usage.ratio == pytest.approx(2 / 3)

    def test_old_calls_drop_out(self) -> None:
        window = FallbackWindow(window_seconds=60.0)
        window.record(Backend.CLOUD, 0.0)
        window.record(Backend.LOCAL, 50.0)
        assert window.usage(60.0) == FallbackUsage(2, 1)
        assert window.usage(60.001) == FallbackUsage(1, 0)
        assert window.usage(200.0).ratio is None


class TestRouter:
    def test_closed_goes_local_with_fallback_when_the_cloud_is_on(self) -> None:
        route = Router(cloud_enabled=True, breaker=CircuitBreaker(POLICY)).route(0.0)
        assert (route.target, route.can_fall_back, route.permit.trial) == (Target.LOCAL, True, False)

    def test_closed_goes_local_without_fallback_when_the_cloud_is_off(self) -> None:
        route = Router(cloud_enabled=False, breaker=CircuitBreaker(POLICY)).route(0.0)
        assert (route.target, route.can_fall_back) == (Target.LOCAL, False)

    def test_open_goes_to_the_cloud(self) -> None:
        router = Router(cloud_enabled=True, breaker=open_breaker(0.0))
        route = router.route(10.0)
        assert (route.target, route.retry_at) == (Target.CLOUD, 30.0)

    def test_open_without_cloud_refuses_fast(self) -> None:
        router = Router(cloud_enabled=False, breaker=open_breaker(0.0))
        route = router.route(10.0)
        assert (route.target, route.retry_at) == (Target.REFUSE, 30.0)

    def test_half_open_sends_one_trial_local_and_the_rest_to_the_cloud(self) -> None:
        router = Router(cloud_enabled=True, breaker=open_breaker(0.0))
        first, second = router.route(30.0), router.route(30.0)
        assert (first.target, first.permit.trial, first.can_fall_back) == (Target.LOCAL, True, True)
        assert second.target is Target.CLOUD

    def test_half_open_without_cloud_lets_everyone_try_local(self) -> None:
        router = Router(cloud_enabled=False, breaker=open_breaker(0.0))
        first, second = router.route(30.0), router.route(30.0)
        assert [first.target, second.target] == [Target.LOCAL, Target.LOCAL]
        assert (first.permit.trial, second.permit.trial) == (True, False)

    def test_outcomes_reach_the_breaker(self) -> None:
        router = Router(cloud_enabled=True, breaker=CircuitBreaker(POLICY))
        for now in (0.0, 1.0, 2.0):
            router.local_failed(router.route(now), now, "refused", FailureKind.REFUSED)
        assert router.breaker.state(2.0) is BreakerState.OPEN
        trial = router.route(32.0)
        router.local_succeeded(trial, 32.5)
        assert router.breaker.state(32.5) is BreakerState.CLOSED

    def test_abandoned_trial_is_released(self) -> None:
        router = Router(cloud_enabled=True, breaker=open_breaker(0.0))
        router.local_abandoned(router.route(30.0))
        assert router.route(30.0).permit.trial is True

    def test_slowness_never_opens_the_breaker_but_frees_a_trial(self) -> None:
        router = Router(cloud_enabled=True, breaker=CircuitBreaker(POLICY))
        for now in (0.0, 1.0, 2.0, 3.0):
            router.local_failed(router.route(now), now, "nothing for 600 s", FailureKind.NO_ANSWER)
        assert router.breaker.state(3.0) is BreakerState.CLOSED
        assert router.breaker.failures_in_row == 0
        half_open = Router(cloud_enabled=True, breaker=open_breaker(0.0))
        half_open.local_failed(half_open.route(30.0), 30.0, "nothing for 600 s", FailureKind.NO_ANSWER)
        assert half_open.route(30.0).permit.trial is True

    def test_first_byte_timeouts_and_stalls_count_found_down_does_not_twice(self) -> None:
        router = Router(cloud_enabled=True, breaker=CircuitBreaker(POLICY))
        router.local_failed(router.route(0.0), 0.0, "nothing for 15 s", FailureKind.FIRST_BYTE)
        router.local_failed(router.route(1.0), 1.0, "paused 60 s", FailureKind.STALLED)
        router.local_failed(router.route(2.0), 2.0, "found down", FailureKind.FOUND_DOWN)
        assert (router.breaker.state(2.0), router.breaker.failures_in_row) == (BreakerState.CLOSED, 2)

    def test_served_calls_feed_the_usage(self) -> None:
        router = Router(cloud_enabled=True, window=FallbackWindow(600.0))
        router.served(Backend.LOCAL, 0.0)
        router.served(Backend.CLOUD, 1.0)
        router.served(Backend.CLOUD, 2.0)
        assert router.usage(3.0) == FallbackUsage(3, 2)

    def test_activation_is_reported_once_per_change(self) -> None:
        router = Router(cloud_enabled=True, breaker=CircuitBreaker(POLICY))
        assert router.activation_change(0.0) is None
        router.observe_health(LocalHealth.DOWN, 1.0)
        assert router.activation_change(1.0) is Activation.ACTIVATED
        assert router.activation_change(2.0) is None
        router.observe_health(LocalHealth.DOWN, 2.5)
        assert router.activation_change(2.5) is None
        router.observe_health(LocalHealth.UP, 3.0)
        assert router.activation_change(3.0) is Activation.DEACTIVATED
        assert router.cloud_active(3.0) is False

    def test_no_activation_when_the_cloud_is_off(self) -> None:
        router = Router(cloud_enabled=False, breaker=CircuitBreaker(POLICY))
        router.observe_health(LocalHealth.DOWN, 1.0)
        assert router.cloud_active(1.0) is False
        assert router.activation_change(1.0) is None


def test_permit_defaults() -> None:
    assert Permit(True) == Permit(allowed=True, trial=False, generation=0)


class TestBudgets:
    @pytest.mark.parametrize(
        ("streamed", "loaded", "queued", "budget"),
        [
            (True, True, False, Budget.FIRST_BYTE),
            (False, True, False, Budget.LOCAL),  # a whole answer: nothing comes until it is complete
            (True, False, False, Budget.LOCAL),  # a cold load comes before any byte
            (True, True, True, Budget.LOCAL),  # behind another request on the same model
            (False, False, True, Budget.LOCAL),
        ],
    )
    def test_only_a_streamed_request_to_a_loaded_idle_model_gets_the_short_budget(
        self, streamed: bool, loaded: bool, queued: bool, budget: Budget
    ) -> None:
        assert choose_budget(streamed=streamed, loaded=loaded, queued=queued) is budget

    def test_the_cloud_takes_only_the_short_budget_and_only_when_on(self) -> None:
        times = {"first_byte_timeout": 15.0, "local_timeout": 600.0}
        assert plan_wait(Budget.FIRST_BYTE, cloud_enabled=True, **times) == WaitPlan(
            Budget.FIRST_BYTE, fall_back_after=15.0, report_after=None, give_up_after=600.0
        )
        assert plan_wait(Budget.FIRST_BYTE, cloud_enabled=False, **times) == WaitPlan(
            Budget.FIRST_BYTE, fall_back_after=None, report_after=15.0, give_up_after=600.0
        )
        for cloud in (True, False):
            assert plan_wait(Budget.LOCAL, cloud_enabled=cloud, **times) == WaitPlan(Budget.LOCAL, None, None, 600.0)
        odd = plan_wait(Budget.LOCAL, first_byte_timeout=30.0, local_timeout=10.0, cloud_enabled=True)
        assert odd.give_up_after == 30.0  # the long budget is never the shorter one

    def test_failure_kinds(self) -> None:
        table = {k: (k.cloud_may_answer, k.counts_against_ollama, k.worth_reporting) for k in FailureKind}
        assert table == {
            FailureKind.REFUSED: (True, True, True),
            FailureKind.BROKEN: (True, True, True),
            FailureKind.FIRST_BYTE: (True, True, True),
            FailureKind.NO_ANSWER: (False, False, True),
            FailureKind.STALLED: (False, True, True),
            FailureKind.FOUND_DOWN: (True, False, False),
        }


class TestWhatIsLoaded:
    def test_names_compare_as_ollama_compares_them(self) -> None:
        assert model_key("LLaMA3") == model_key("llama3:latest") == "llama3:latest"
        assert model_key("llama3:8b") != model_key("llama3")
        assert model_key("hf.co/bartowski/Qwen3-8B-GGUF:Q4_K_M") == "hf.co/bartowski/qwen3-8b-gguf:q4_k_m"
        # the default namespace and registry are the same model too (Ollama's Name.EqualFold on parsed names)
        assert model_key("library/llama3") == model_key("registry.ollama.ai/library/Llama3:latest") == "llama3:latest"

    def test_a_model_loaded_under_its_long_name_counts_as_loaded(self) -> None:
        loaded = LoadedModels(ttl=60.0)
        loaded.saw_list(["registry.ollama.ai/library/llama3:latest"], now=0.0)
        assert loaded.is_loaded("Llama3", now=1.0) is True

    def test_a_list_and_answers_are_known_for_the_ttl_only(self) -> None:
        cache = LoadedModels(ttl=5.0)
        assert cache.is_loaded("llama3", 0.0) is None
        cache.saw_list(["llama3:latest", "Qwen3:8b"], 10.0)
        assert [cache.is_loaded(m, 15.0) for m in ("llama3", "qwen3:8b", "mistral")] == [True, True, False]
        assert cache.is_loaded("mistral", 15.1) is None
        cache.saw_answer("mistral", 20.0)
        assert (cache.is_loaded("mistral", 24.0), cache.is_loaded("llama3", 24.0)) == (True, None)
        cache.saw_list([], 30.0)
        assert cache.is_loaded("mistral", 30.0) is False

    @pytest.mark.parametrize(
        ("source", "expected"),
        [(None, False), (BusySource.RUNNER, True), (BusySource.PROBE, True), (BusySource.GATEWAY, False)],
    )
    def test_busy_in_the_monitors_status(self, source: BusySource | None, expected: bool) -> None:
        requests = 1 if source is BusySource.GATEWAY else None
        busy = BusyStatus("llama3", requests, None, 12.0, None, source, False) if source is not None else None
        assert status_busy(make_status(busy=busy)) is expected


def test_local_activity_defaults() -> None:
    assert LocalActivity() == LocalActivity(in_flight={}, waiting=0, last_progress=None)
    assert LocalActivity().idle and not LocalActivity({"llama3:latest": 2}, 1, 12.5).idle
