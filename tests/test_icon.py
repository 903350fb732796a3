"""The tray icon: state mapping, drawing and tooltip text."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from PIL import Image, ImageChops

from tray.core.health import BusySource, Health
from tray.core.status import Activity, ActivityKind, BusyStatus, MonitorState, Status, make_status
from tray.core.units import format_duration, format_latency
from tray.ui.icon import (
    TOOLTIP_MAX_CHARS,
    IconState,
    draw_icon,
    icon_state,
    status_summary,
    tooltip,
)


def status(**overrides: Any) -> Status:
    """A healthy running server, changed by ``overrides``."""
    return make_status(**overrides)


# --- icon_state ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, IconState.HEALTHY),
        ({"health": Health.UNHEALTHY, "latency_ms": 7200}, IconState.UNHEALTHY),
        ({"health": Health.DOWN, "latency_ms": None}, IconState.DOWN),
        ({"state": MonitorState.FAILED, "health": Health.DOWN, "ollama_running": False}, IconState.DOWN),
        ({"state": MonitorState.STARTING, "health": Health.UNKNOWN}, IconState.BUSY),
        ({"state": MonitorState.RESTARTING, "health": Health.DOWN}, IconState.BUSY),
        ({"activity": Activity(ActivityKind.STOP, "Stopping Ollama", None)}, IconState.BUSY),
        ({"activity": Activity(ActivityKind.BUILD, "Building model", 0.4)}, IconState.BUSY),
        ({"activity": Activity(ActivityKind.PULL, "Pulling llama3", None)}, IconState.BUSY),
        ({"state": MonitorState.STOPPED, "health": Health.DOWN, "ollama_running": False}, IconState.STOPPED),
        ({"health": Health.UNKNOWN}, IconState.BUSY),
        ({"health": Health.UNKNOWN, "ollama_running": False}, IconState.STOPPED),
        # A quick verify or unload does not hide the health.
        ({"activity": Activity(ActivityKind.VERIFY, "Verifying model", None)}, IconState.HEALTHY),
        ({"health": Health.UNHEALTHY, "activity": Activity(ActivityKind.UNLOAD, "", None)}, IconState.UNHEALTHY),
    ],
)
def test_icon_state(overrides: dict[str, Any], expected: IconState) -> None:
    assert icon_state(status(**overrides)) is expected


def test_icon_state_before_anything_is_known_is_busy_starting() -> None:
    assert icon_state(Status()) is IconState.BUSY


def test_busy_activity_wins_over_a_failed_state() -> None:
    failed_but_building = status(state=MonitorState.FAILED, activity=Activity(ActivityKind.BUILD, "", 0.1))
    assert icon_state(failed_but_building) is IconState.BUSY


# --- drawing ------------------------------------------------------------------

FILL_SAMPLE = (0.5, 0.2)  # inside every badge, away from the marks


def rgba_at(image: Image.Image, fx: float, fy: float) -> tuple[int, int, int, int]:
    pixel = image.getpixel((int(fx * image.width), int(fy * image.height)))
    assert isinstance(pixel, tuple)
    return pixel  # type: ignore[return-value]


@pytest.mark.parametrize("size", [16, 22, 24, 32, 48, 64, 128, 256])
@pytest.mark.parametrize("state", list(IconState))
def test_draw_icon_size_and_mode(state: IconState, size: int) -> None:
    image = draw_icon(state, size)
    assert image.size == (size, size)
    assert image.mode == "RGBA"


@pytest.mark.parametrize("state", list(IconState))
def test_corners_are_transparent_and_badge_has_the_state_colour(state: IconState) -> None:
    image = draw_icon(state, 64)
    for corner in [(0, 0), (63, 0), (0, 63), (63, 63)]:
        assert image.getpixel(corner)[3] == 0  # type: ignore[index]
    # The triangle is narrow at the top: sample its lower left, clear of the "!".
    sample = (0.35, 0.75) if state is IconState.UNHEALTHY else FILL_SAMPLE
    assert rgba_at(image, *sample) == (*state.rgb, 255)


def test_states_differ_without_colour() -> None:
    """Each pair of states differs in shape or mark, not only in hue."""
    for size in (16, 64):
        shapes = {state: luminance_and_alpha(draw_icon(state, size)) for state in IconState}
        for first, second in itertools.combinations(IconState, 2):
            differing = count_differing_pixels(shapes[first], shapes[second], threshold=60)
            assert differing >= size * size // 20, (first, second, size, differing)


def luminance_and_alpha(image: Image.Image) -> Image.Image:
    """The image as a colour-blind viewer sees it: grey on a white panel."""
    panel = Image.new("RGBA", image.size, (255, 255, 255, 255))
    panel.alpha_composite(image)
    return panel.convert("L")


def count_differing_pixels(first: Image.Image, second: Image.Image, threshold: int) -> int:
    difference = ImageChops.difference(first, second)
    return sum(1 for value in pixels(difference) if value > threshold)


def pixels(image: Image.Image) -> list:
    return [image.getpixel((x, y)) for y in range(image.height) for x in range(image.width)]


def test_marks_are_drawn_in_white_on_the_badge() -> None:
    healthy = draw_icon(IconState.HEALTHY, 64)
    # The check mark's corner stroke passes through (0.43, 0.67).
    assert rgba_at(healthy, 0.43, 0.64) == (255, 255, 255, 255)
    stopped = draw_icon(IconState.STOPPED, 64)
    assert rgba_at(stopped, 0.5, 0.5) == (255, 255, 255, 255)
    down = draw_icon(IconState.DOWN, 64)
    assert rgba_at(down, 0.5, 0.5) == (255, 255, 255, 255)


def test_cloud_mark_is_white_in_the_lower_right_corner() -> None:
    plain = draw_icon(IconState.HEALTHY, 64)
    cloudy = draw_icon(IconState.HEALTHY, 64, cloud=True)
    assert rgba_at(cloudy, 0.75, 0.86) == (255, 255, 255, 255)
    assert rgba_at(plain, 0.75, 0.86)[:3] != (255, 255, 255)
    # The upper half is untouched by the cloud.
    assert plain.crop((0, 0, 64, 32)).tobytes() == cloudy.crop((0, 0, 64, 32)).tobytes()


def test_cloud_mark_is_visible_at_16_px() -> None:
    plain = luminance_and_alpha(draw_icon(IconState.DOWN, 16))
    cloudy = luminance_and_alpha(draw_icon(IconState.DOWN, 16, cloud=True))
    assert count_differing_pixels(plain, cloudy, threshold=60) >= 12


@pytest.mark.parametrize("state", list(IconState))
def test_small_icons_keep_the_badge_colour(state: IconState) -> None:
    """Downsampling from 4x keeps a patch of the state colour even at 16 px."""
    image = draw_icon(state, 16)
    target = (*state.rgb, 255)
    close = [pixel for pixel in pixels(image) if max(abs(a - b) for a, b in zip(pixel, target, strict=True)) <= 16]
    assert len(close) >= 40


def test_draw_icon_rejects_a_zero_size() -> None:
    with pytest.raises(ValueError, match="icon size must be positive, got 0"):
        draw_icon(IconState.HEALTHY, 0)


# --- text -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "Ollama: healthy · 245 ms · uncensored-llama3"),
        ({"health": Health.UNHEALTHY, "latency_ms": 7240}, "Ollama: unhealthy · 7.2 s · uncensored-llama3"),
        ({"latency_ms": None}, "Ollama: healthy · uncensored-llama3"),
        (
            {"state": MonitorState.RESTARTING, "health": Health.DOWN, "restart_attempt": 2},
            "Restarting (attempt 2 of 3)",
        ),
        (
            {"state": MonitorState.RESTARTING, "health": Health.DOWN, "restart_attempt": 3, "next_retry_in": 40.0},
            "Restarting (attempt 3 of 3) — next try in 40 s",
        ),
        ({"state": MonitorState.RESTARTING, "restart_attempt": 0}, "Restarting"),
        (
            {"activity": Activity(ActivityKind.BUILD, "Building model", 0.45)},
            "Building model 45 %",
        ),
        (
            {"activity": Activity(ActivityKind.PULL, "Pulling llama3", 0.29)},
            "Pulling llama3 29 %",
        ),
        ({"activity": Activity(ActivityKind.VERIFY, "", None)}, "Verifying model"),
        ({"health": Health.DOWN, "latency_ms": None, "next_retry_in": 300.0}, "Down — retrying in 5 min"),
        ({"health": Health.DOWN, "latency_ms": None}, "Ollama: down"),
        ({"state": MonitorState.STOPPED, "health": Health.DOWN, "ollama_running": False}, "Stopped"),
        ({"state": MonitorState.STARTING, "health": Health.UNKNOWN}, "Starting Ollama…"),
        ({"activity": Activity(ActivityKind.STOP, "Stopping Ollama", None)}, "Stopping Ollama"),
        (
            {"state": MonitorState.FAILED, "health": Health.DOWN, "ollama_running": False},
            "Down — gave up after 3 restart attempts",
        ),
        ({"health": Health.UNKNOWN, "latency_ms": None}, "Ollama: checking…"),
        (
            {"state": MonitorState.FAILED, "health": Health.DOWN, "cloud_active": True},
            "Down — gave up after 3 restart attempts · cloud fallback active",
        ),
        ({"cloud_active": True}, "Ollama: healthy · 245 ms · uncensored-llama3 · cloud fallback active"),
        (
            {"busy": BusyStatus("llama3:latest", None, None, 80.0, 0.0, BusySource.RUNNER, False)},
            "Ollama: healthy · 245 ms · busy: generating on llama3:latest for 1 min",
        ),
        (
            {"busy": BusyStatus(None, 2, 1, 4.2, 1.0, BusySource.GATEWAY, False)},
            "Ollama: healthy · 245 ms · busy: generating for 5 s (2 requests) · uncensored-llama3",
        ),
        (
            {"busy": BusyStatus("llama3", None, None, 1000.0, None, BusySource.PROBE, True)},
            "Ollama: healthy · 245 ms · stuck: no progress on llama3 for 17 min",
        ),
    ],
)
def test_tooltip(overrides: dict[str, Any], expected: str) -> None:
    assert tooltip(status(**overrides)) == expected


def test_tooltip_before_anything_is_known() -> None:
    assert tooltip(Status()) == "Starting Ollama…"


def test_pending_action_shows_until_the_monitor_reports_it() -> None:
    assert tooltip(status(), pending_actions={"restart"}) == "Restarting Ollama…"
    # The monitor's own report is more specific and wins.
    restarting = status(state=MonitorState.RESTARTING, restart_attempt=1)
    assert tooltip(restarting, pending_actions={"restart"}) == "Restarting (attempt 1 of 3)"


def test_status_summary_leaves_out_the_model() -> None:
    assert status_summary(status()) == "Ollama: healthy · 245 ms"


def test_tooltip_is_cut_to_the_windows_limit() -> None:
    long_name = "x" * 300
    text = tooltip(status(model=long_name))
    assert len(text) == TOOLTIP_MAX_CHARS
    assert text == "Ollama: healthy · 245 ms · " + "x" * (TOOLTIP_MAX_CHARS - 28) + "…"


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.2, "1 s"),
        (5, "5 s"),
        (59.5, "1 min"),
        (60, "1 min"),
        (89, "1 min"),
        (91, "2 min"),
        (3599, "1 h"),
        (3600, "1 h"),
        (7500, "2 h 5 min"),
    ],
)
def test_format_duration(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


@pytest.mark.parametrize(("ms", "expected"), [(0, "0 ms"), (999, "999 ms"), (1000, "1.0 s"), (15432, "15.4 s")])
def test_format_latency(ms: float, expected: str) -> None:
    assert format_latency(ms) == expected
