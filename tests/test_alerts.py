"""Alert rules with a scripted clock: every observation carries its own ``now``."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from tray.core.alerts import (
    AlertEngine,
    AlertEvent,
    AlertKind,
    AlertReport,
    AlertState,
    AlertThresholds,
    Metrics,
    Severity,
    fit_trend,
)
from tray.core.units import GIB, MIB, human_memory
from tray.settings.alerts import AlertSettings, thresholds_from_mapping

TICK = 30.0


def feed(engine: AlertEngine, observations: Iterable[tuple[float, Metrics]]) -> list[tuple[float, AlertEvent]]:
    """Run observations through the engine; the events with the time they came out."""
    out: list[tuple[float, AlertEvent]] = []
    for now, metrics in observations:
        out.extend((now, event) for event in engine.observe(now, metrics).events)
    return out


def summary(events: list[tuple[float, AlertEvent]]) -> list[tuple[float, str, str]]:
    return [(now, event.kind.value, event.state.value) for now, event in events]


def memory(gb: float) -> Metrics:
    return Metrics(tree_memory_bytes=int(gb * GIB))


# --- Hysteresis, debounce, once per change --------------------------------------------------------


def test_memory_raises_once_after_two_observations_and_clears_below_the_clear_limit() -> None:
    engine = AlertEngine()
    script = [
        (0.0, memory(7.2)),  # 1st high observation: debounced
        (30.0, memory(7.2)),  # confirmed -> raised
        (60.0, memory(7.5)),  # still high: no repeat
        (90.0, memory(5.8)),  # below 6 GB but above 0.9 x 6 GB = 5.4 GB: stays raised
        (120.0, memory(5.8)),
        (150.0, memory(5.0)),  # below the clear limit: debounced
        (180.0, memory(5.0)),  # confirmed -> cleared
        (210.0, memory(5.0)),
    ]
    events = feed(engine, script)
    assert summary(events) == [(30.0, "memory", "raised"), (180.0, "memory", "cleared")]
    raised, cleared = events[0][1], events[1][1]
    assert raised == AlertEvent(
        kind=AlertKind.MEMORY,
        state=AlertState.RAISED,
        severity=Severity.WARNING,
        title="Ollama memory high",
        message="Ollama is using 7.2 GB of memory (limit 6 GB)",
        at=30.0,
    )
    assert (cleared.title, cleared.message, cleared.severity) == (
        "Ollama memory back to normal",
        "Ollama is using 5 GB of memory (limit 6 GB)",
        Severity.INFO,
    )
    assert engine.active_kinds == frozenset()


def test_a_single_high_observation_is_debounced() -> None:
    engine = AlertEngine()
    events = feed(
        engine, [(0.0, memory(4)), (30.0, memory(9)), (60.0, memory(4)), (90.0, memory(9)), (120.0, memory(4))]
    )
    assert events == []


def test_hovering_at_the_limit_does_not_flap() -> None:
    engine = AlertEngine()
    values = [6.5, 6.5] + [5.9, 6.1] * 10  # crosses 6 GB again and again, never below 5.4 GB
    events = feed(engine, ((i * TICK, memory(v)) for i, v in enumerate(values)))
    assert summary(events) == [(30.0, "memory", "raised")]


def test_confirm_observations_is_configurable() -> None:
    engine = AlertEngine(AlertThresholds(confirm_observations=1))
    assert summary(feed(engine, [(0.0, memory(7))])) == [(0.0, "memory", "raised")]


def test_unmeasured_metrics_keep_the_current_state() -> None:
    engine = AlertEngine()
    events = feed(engine, [(0.0, memory(7)), (30.0, memory(7)), (60.0, Metrics()), (90.0, Metrics())])
    assert summary(events) == [(30.0, "memory", "raised")]
    assert engine.active_kinds == frozenset({AlertKind.MEMORY})


# --- Cooldown ---------------------------------------------------------------------------------------


def test_a_problem_that_returns_within_the_cooldown_stays_quiet_and_clears_quietly() -> None:
    engine = AlertEngine(AlertThresholds(cooldown_seconds=900))
    script = [(0.0, memory(7)), (30.0, memory(7))]  # raised at 30
    script += [(60.0, memory(5)), (90.0, memory(5))]  # cleared at 90
    script += [(120.0, memory(7)), (150.0, memory(7))]  # back within 900 s of 30: quiet
    script += [(180.0, memory(5)), (210.0, memory(5))]  # quiet clear
    events = feed(engine, script)
    assert summary(events) == [(30.0, "memory", "raised"), (90.0, "memory", "cleared")]
    assert engine.active_kinds == frozenset()


def test_a_quiet_problem_still_there_when_the_cooldown_ends_is_reported() -> None:
    engine = AlertEngine(AlertThresholds(cooldown_seconds=900))
    script = [(0.0, memory(7)), (30.0, memory(7)), (60.0, memory(5)), (90.0, memory(5))]
    script += [(t, memory(7)) for t in range(120, 991, 30)]
    events = feed(engine, script)
    # Raised at 30; quiet re-raise at 150; reported at the first tick >= 30 + 900.
    assert summary(events) == [(30.0, "memory", "raised"), (90.0, "memory", "cleared"), (930, "memory", "raised")]
    assert events[-1][1].at == 930


def test_after_the_cooldown_a_new_problem_fires_again() -> None:
    engine = AlertEngine(AlertThresholds(cooldown_seconds=900))
    script = [(0.0, memory(7)), (30.0, memory(7)), (60.0, memory(5)), (90.0, memory(5))]
    script += [(1000.0, memory(7)), (1030.0, memory(7))]
    assert summary(feed(engine, script)) == [
        (30.0, "memory", "raised"),
        (90.0, "memory", "cleared"),
        (1030.0, "memory", "raised"),
    ]


# --- CPU window -----------------------------------------------------------------------------------


def cpu(percent: float) -> Metrics:
    return Metrics(tree_cpu_percent=percent)


def test_a_cpu_spike_shorter_than_the_window_does_not_alert() -> None:
    engine = AlertEngine(interval_seconds=10)
    script = [(float(t), cpu(95)) for t in range(0, 51, 10)]  # 50 s above 80 %
    script += [(60.0, cpu(20)), (70.0, cpu(20))]
    script += [(float(t), cpu(99)) for t in range(80, 131, 10)]  # another 50 s
    script += [(140.0, cpu(20))]
    assert feed(engine, script) == []


def test_cpu_sustained_for_the_window_alerts_once_then_clears() -> None:
    engine = AlertEngine()
    script = [(0.0, cpu(95)), (30.0, cpu(92)), (60.0, cpu(93)), (90.0, cpu(97))]
    script += [(120.0, cpu(75)), (150.0, cpu(70)), (180.0, cpu(12))]  # 75 is above 0.9 x 80 = 72: holds
    events = feed(engine, script)
    assert summary(events) == [(60.0, "cpu", "raised"), (180.0, "cpu", "cleared")]
    assert events[0][1].message == "Ollama has used over 80% CPU for 1 min (now 93%)"
    assert events[1][1].message == "Ollama is using 12% CPU (limit 80%)"


def test_a_dip_restarts_the_cpu_window() -> None:
    engine = AlertEngine()
    script = [(0.0, cpu(95)), (30.0, cpu(95)), (60.0, cpu(50)), (90.0, cpu(95)), (120.0, cpu(95)), (150.0, cpu(95))]
    assert summary(feed(engine, script)) == [(150.0, "cpu", "raised")]


# --- The other rules -----------------------------------------------------------------------------


def twice(start: float, metrics: Metrics) -> list[tuple[float, Metrics]]:
    return [(start, metrics), (start + TICK, metrics)]


def test_health_unhealthy_then_down_escalates_at_once_then_clears() -> None:
    engine = AlertEngine()
    script = [*twice(0, Metrics(health="unhealthy")), (60.0, Metrics(health="down"))]
    script += [(90.0, Metrics(health="unhealthy")), (120.0, Metrics(health="down"))]  # no re-escalation
    script += twice(150, Metrics(health="healthy"))
    events = feed(engine, script)
    assert [(now, e.state.value, e.severity.value, e.title, e.message) for now, e in events] == [
        (30.0, "raised", "warning", "Ollama unhealthy", "Ollama is responding slowly (unhealthy)"),
        (60.0, "raised", "critical", "Ollama down", "Ollama is not responding (down)"),
        (180.0, "cleared", "info", "Ollama healthy", "Ollama is healthy again"),
    ]


def test_more_than_three_restarts_in_an_hour() -> None:
    engine = AlertEngine()
    restarts = (100.0, 900.0, 1800.0, 2700.0)
    script = twice(2700, Metrics(restart_times=restarts[:3]))  # 3: at the limit
    script += twice(2760, Metrics(restart_times=restarts))  # 4 within the hour
    script += twice(4600, Metrics(restart_times=restarts))  # 100 and 900 aged out: 2 <= 2.7
    events = feed(engine, script)
    assert summary(events) == [(2790.0, "restarts", "raised"), (4630.0, "restarts", "cleared")]
    assert events[0][1].message == "Ollama restarted 4 times in the last hour (limit 3)"
    assert events[1][1].message == "Ollama restarted 2 times in the last hour (limit 3)"


def test_cloud_fallback_ratio_needs_enough_calls() -> None:
    engine = AlertEngine()
    script = twice(0, Metrics(fallback_ratio=1.0, fallback_calls=2))  # too few calls to judge
    script += twice(60, Metrics(fallback_ratio=0.6, fallback_calls=10))
    script += twice(120, Metrics(fallback_ratio=0.1, fallback_calls=20))
    events = feed(engine, script)
    assert summary(events) == [(90.0, "fallback", "raised"), (150.0, "fallback", "cleared")]
    assert events[0][1].message == "60% of the last 10 calls went to the cloud fallback (limit 50%)"


def test_model_missing_corrupt_and_back() -> None:
    engine = AlertEngine(AlertThresholds(cooldown_seconds=0))
    script = twice(0, Metrics(model_status="missing", model_name="uncensored-llama3"))
    script += twice(60, Metrics(model_status="ok", model_name="uncensored-llama3"))
    script += twice(120, Metrics(model_status="corrupt"))
    events = feed(engine, script)
    assert [(now, e.state.value, e.severity.value, e.message) for now, e in events] == [
        (30.0, "raised", "critical", "Model 'uncensored-llama3' is missing; it needs to be built again"),
        (90.0, "cleared", "info", "Model 'uncensored-llama3' is available again"),
        (150.0, "raised", "critical", "The model is corrupted; delete it and build it again"),
    ]


def stuck(value: bool | None, quiet: float = 0.0) -> Metrics:
    return Metrics(runner_stuck=value, busy_model="llama3" if value is not None else None, busy_quiet_seconds=quiet)


def test_a_stuck_runner_raises_once_naming_the_model_and_how_long_then_clears_once() -> None:
    engine = AlertEngine()
    script = [
        (0.0, stuck(False)),
        (30.0, stuck(True, 930.0)),
        (60.0, stuck(True, 960.0)),  # confirmed -> raised
        (90.0, stuck(True, 990.0)),
        (120.0, stuck(None)),  # Ollama not answering: not measured, keeps the state
        (150.0, stuck(False)),
        (180.0, stuck(False)),  # confirmed -> cleared
        (210.0, stuck(False)),
    ]
    events = feed(engine, script)
    assert summary(events) == [(60.0, "stuck_runner", "raised"), (180.0, "stuck_runner", "cleared")]
    raised = events[0][1]
    assert raised.title == "Ollama runner stuck" and raised.severity is Severity.WARNING
    assert raised.message == (
        "Ollama has been busy on 'llama3' for 16 min with no progress seen: its runner may be stuck"
    )
    assert events[1][1].message == "Ollama is making progress again"
    assert raised.requests_restart is False  # the stuck-runner rule in tray.core.health decides any restart


def test_low_disk_clears_only_with_margin() -> None:
    engine = AlertEngine()
    script = twice(0, Metrics(disk_free_bytes=3 * GIB))
    script += twice(60, Metrics(disk_free_bytes=int(10.5 * GIB)))  # above 10 GB, below 10 GB / 0.9
    script += twice(120, Metrics(disk_free_bytes=12 * GIB))
    events = feed(engine, script)
    assert summary(events) == [(30.0, "disk", "raised"), (150.0, "disk", "cleared")]
    assert events[0][1].message == "3 GB free on the models disk (minimum 10 GB)"
    assert events[1][1].message == "12 GB free on the models disk (minimum 10 GB)"


def test_gpu_memory_nearly_full() -> None:
    engine = AlertEngine()
    full = Metrics(gpu_memory_used_bytes=int(7.9 * GIB), gpu_memory_total_bytes=8 * GIB)
    script = twice(0, full) + twice(60, Metrics(gpu_memory_used_bytes=4 * GIB, gpu_memory_total_bytes=8 * GIB))
    events = feed(engine, script)
    assert summary(events) == [(30.0, "gpu_memory", "raised"), (90.0, "gpu_memory", "cleared")]
    assert events[0][1].message == "GPU memory is 99% full (7.9 GB of 8 GB)"


def test_unknown_health_and_zero_gpu_total_change_nothing() -> None:
    engine = AlertEngine()
    script = twice(0, Metrics(health="unknown", gpu_memory_used_bytes=1, gpu_memory_total_bytes=0))
    assert feed(engine, script) == []


# --- Memory leak ----------------------------------------------------------------------------------


def leak_script(start_gb: float, mib_per_second: float, noise_mib: float, seconds: float, seed: int = 7):
    rng = random.Random(seed)
    t = 0.0
    while t <= seconds:
        value = start_gb * GIB + mib_per_second * MIB * t + rng.gauss(0, noise_mib * MIB)
        yield t, Metrics(tree_memory_bytes=int(value))
        t += TICK


def test_a_steady_climb_is_a_leak() -> None:
    engine = AlertEngine()
    events = feed(engine, leak_script(3.0, 0.5, 20, 1800))
    assert [(e.kind, e.state, e.title, e.requests_restart) for _, e in events] == [
        (AlertKind.LEAK, AlertState.RAISED, "Possible memory leak", False)
    ]
    raised_at, event = events[0]
    # Half the window (900 s) must be covered and the rise reach 512 MB (at 0.5 MB/s: after ~1024 s),
    # then one more observation confirms.
    assert 1050 <= raised_at <= 1140
    assert event.message.startswith("Ollama memory grew by ")
    assert event.message.endswith(" min at a steady rate (possible leak)")


def test_a_leak_can_ask_for_a_restart() -> None:
    engine = AlertEngine(AlertThresholds(leak_restart=True))
    events = feed(engine, leak_script(3.0, 0.5, 20, 1800))
    assert len(events) == 1
    assert events[0][1].requests_restart is True
    assert events[0][1].message.endswith("(possible leak); restarting Ollama")


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_a_flat_noisy_series_is_not_a_leak(seed: int) -> None:
    engine = AlertEngine()
    events = feed(engine, leak_script(4.0, 0.0, 150, 4 * 3600, seed=seed))
    assert events == []


def test_a_model_loading_once_is_not_a_leak() -> None:
    engine = AlertEngine()
    script = [(t * TICK, memory(0.5 if t * TICK < 900 else 4.5)) for t in range(121)]
    assert feed(engine, script) == []


def test_a_leak_clears_when_memory_levels_off() -> None:
    engine = AlertEngine()
    climb = list(leak_script(2.0, 0.5, 10, 1800))
    top = climb[-1][1].tree_memory_bytes
    assert top is not None
    flat = [(1800 + i * TICK, Metrics(tree_memory_bytes=top)) for i in range(1, 61)]
    events = feed(engine, climb + flat)
    assert summary(events)[0][1:] == ("leak", "raised")
    assert summary(events)[1][1:] == ("leak", "cleared")
    assert events[1][1].message.startswith("Ollama memory is no longer climbing")


def test_a_restart_starts_the_leak_series_again() -> None:
    # The same steady climb that raises at ~1080 s in test_a_steady_climb_is_a_leak, but with a
    # restart at 850 s: points before it belong to the old process tree, so by 1710 s the series
    # covers only 860 s (< half the window) and there is no verdict yet.
    engine = AlertEngine()
    script = [
        (t, m if t < 850 else Metrics(tree_memory_bytes=m.tree_memory_bytes, restart_times=(850.0,)))
        for t, m in leak_script(3.0, 0.5, 20, 1710)
    ]
    assert feed(engine, script) == []
    # Without the restart the same series is a leak.
    assert [e.kind for _, e in feed(AlertEngine(), leak_script(3.0, 0.5, 20, 1710))] == [AlertKind.LEAK]


def test_fit_trend_exact_values() -> None:
    trend = fit_trend([(0.0, 100.0), (10.0, 120.0), (20.0, 140.0), (30.0, 160.0)])
    assert trend is not None
    assert (trend.slope_bytes_per_second, trend.fit, trend.span_seconds, trend.rise_bytes) == (2.0, 1.0, 30.0, 60.0)
    flat = fit_trend([(0.0, 5.0), (1.0, 5.0), (2.0, 5.0)])
    assert flat is not None and (flat.slope_bytes_per_second, flat.fit) == (0.0, 0.0)
    assert fit_trend([(0.0, 1.0), (1.0, 2.0)]) is None
    assert fit_trend([(3.0, 1.0), (3.0, 2.0), (3.0, 4.0)]) is None


# --- Wake from sleep ------------------------------------------------------------------------------


def test_after_a_wake_nothing_is_raised_until_a_fresh_observation_confirms() -> None:
    engine = AlertEngine(interval_seconds=30)
    script = [(0.0, Metrics(health="healthy")), (30.0, Metrics(health="healthy"))]
    assert feed(engine, script) == []

    # Asleep for an hour; the first probe after waking fails.
    assert engine.observe(3630.0, Metrics(health="down")) == AlertReport(events=(), reprobe=True)

    # The re-probe confirms: now it is raised.
    report = engine.observe(3632.0, Metrics(health="down"))
    assert [(e.kind, e.state, e.severity) for e in report.events] == [
        (AlertKind.HEALTH, AlertState.RAISED, Severity.CRITICAL)
    ]
    assert report.reprobe is False


def test_after_a_wake_a_good_reprobe_raises_nothing() -> None:
    engine = AlertEngine(AlertThresholds(confirm_observations=1), interval_seconds=30)
    engine.observe(0.0, Metrics(health="healthy"))
    assert engine.observe(91.0, Metrics(health="down")) == AlertReport(reprobe=True)  # 91 > 3 x 30: a wake
    assert engine.observe(92.0, Metrics(health="healthy")) == AlertReport()
    assert engine.active_kinds == frozenset()


def test_a_gap_within_the_wake_factor_is_a_normal_tick() -> None:
    engine = AlertEngine(AlertThresholds(confirm_observations=1), interval_seconds=30)
    engine.observe(0.0, Metrics(health="healthy"))
    report = engine.observe(90.0, Metrics(health="down"))  # exactly 3 x 30: not a wake
    assert [e.kind for e in report.events] == [AlertKind.HEALTH]
    assert report.reprobe is False


def test_pending_cpu_time_does_not_survive_a_sleep() -> None:
    engine = AlertEngine(interval_seconds=30)
    script = [(0.0, cpu(95)), (30.0, cpu(95)), (5000.0, cpu(95)), (5030.0, cpu(95))]
    assert feed(engine, script) == []  # the window restarts at 5000 s
    assert summary(feed(engine, [(5060.0, cpu(95))])) == [(5060.0, "cpu", "raised")]


def test_clears_are_allowed_on_the_wake_observation() -> None:
    engine = AlertEngine(AlertThresholds(confirm_observations=1), interval_seconds=30)
    assert summary(feed(engine, [(0.0, memory(7))])) == [(0.0, "memory", "raised")]
    report = engine.observe(4000.0, memory(3))
    assert summary([(4000.0, event) for event in report.events]) == [(4000.0, "memory", "cleared")]
    assert report.reprobe is False


# --- Configuration ---------------------------------------------------------------------------------


def test_thresholds_defaults_match_the_design_notes() -> None:
    t = AlertThresholds()
    assert (t.memory_mb, t.cpu_percent, t.cpu_window_seconds, t.restarts_per_hour, t.fallback_ratio) == (
        6144,
        80.0,
        60.0,
        3,
        0.5,
    )
    assert (t.disk_free_mb, t.gpu_memory_percent, t.leak_window_seconds, t.leak_min_growth_mb) == (
        10240,
        95.0,
        1800.0,
        512,
    )
    assert (t.leak_restart, t.cooldown_seconds) == (False, 900.0)


def test_thresholds_from_a_config_table() -> None:
    assert thresholds_from_mapping({"memory_mb": 8192, "leak_restart": True}) == AlertSettings(
        memory_mb=8192, leak_restart=True
    )
    with pytest.raises(ValueError, match=r"^unknown key 'memory_gb' in \[alerts\]$"):
        thresholds_from_mapping({"memory_gb": 8})
    with pytest.raises(ValueError, match=r"^alerts.cooldown_seconds must be at least 0, got -1$"):
        AlertSettings(cooldown_seconds=-1)
    with pytest.raises(ValueError, match=r"^alerts.clear_ratio must be at most 1, got 1.5$"):
        AlertSettings(clear_ratio=1.5)
    with pytest.raises(ValueError, match=r"^alerts.cpu_percent must be a finite number, got nan$"):
        AlertSettings(cpu_percent=float("nan"))


def test_format_bytes() -> None:
    assert [human_memory(v) for v in (6 * GIB, int(7.25 * GIB), 512 * MIB, 0)] == ["6 GB", "7.2 GB", "512 MB", "0 MB"]
