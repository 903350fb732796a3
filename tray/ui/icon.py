"""The tray icon and its tooltip, derived from the monitor's :class:`~tray.core.status.Status`.

Everything here is pure: a status goes in, a state, an image or a line of
text comes out. The icon is drawn by code at four times the requested size and
downsampled, so it stays crisp from 16 px panels to HiDPI menu bars. Each state
has its own shape and mark, so the icon reads without colour too.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable

from PIL import Image, ImageDraw

from tray.core.health import Health
from tray.core.status import Activity, ActivityKind, BusyStatus, ModelLoading, MonitorState, Status
from tray.core.text import truncate_text
from tray.core.units import format_duration, format_latency

RGB = tuple[int, int, int]

TOOLTIP_MAX_CHARS = 127  # Windows NOTIFYICONDATA.szTip holds 128 chars with the NUL
SUPERSAMPLE = 4


class IconState(enum.Enum):
    """What the tray icon shows; the value is the fill colour."""

    HEALTHY = (22, 163, 74)  # green
    UNHEALTHY = (245, 158, 11)  # amber
    DOWN = (220, 38, 38)  # red
    BUSY = (37, 99, 235)  # blue: starting, restarting, stopping, building, pulling
    STOPPED = (107, 114, 128)  # grey

    @property
    def rgb(self) -> RGB:
        """The fill colour as an (r, g, b) tuple."""
        return self.value


TRANSITIONAL_STATES = frozenset({MonitorState.STARTING, MonitorState.RESTARTING})
BUSY_ACTIVITY_KINDS = frozenset(
    {ActivityKind.START, ActivityKind.STOP, ActivityKind.RESTART, ActivityKind.BUILD, ActivityKind.PULL}
)

ACTIVITY_DEFAULT_TEXT = {
    ActivityKind.START: "Starting Ollama",
    ActivityKind.STOP: "Stopping Ollama",
    ActivityKind.RESTART: "Restarting Ollama",
    ActivityKind.BUILD: "Building model",
    ActivityKind.PULL: "Pulling model",
    ActivityKind.VERIFY: "Verifying model",
    ActivityKind.UNLOAD: "Unloading models",
}

PENDING_ACTION_TEXT = {
    "start": "Starting Ollama…",
    "stop": "Stopping Ollama…",
    "restart": "Restarting Ollama…",
    "rebuild": "Rebuilding model…",
    "unload": "Unloading models…",
}


def icon_state(status: Status) -> IconState:
    """The icon state for a status.

    Work in progress (a starting or restarting server, or a build, pull,
    start, stop or restart activity) wins; then a server the manager gave up on
    is DOWN, a stopped one STOPPED; otherwise the health decides. Health
    ``unknown`` on a live server means the first check is still running.
    """
    activity = status.activity
    state = status.state
    if state in TRANSITIONAL_STATES or (activity is not None and activity.kind in BUSY_ACTIVITY_KINDS):
        return IconState.BUSY
    if state is MonitorState.FAILED:
        return IconState.DOWN
    if state is MonitorState.STOPPED:
        return IconState.STOPPED
    health = status.health
    if health is Health.HEALTHY:
        return IconState.HEALTHY
    if health is Health.UNHEALTHY:
        return IconState.UNHEALTHY
    if health is Health.DOWN:
        return IconState.DOWN
    return IconState.BUSY if status.ollama_running else IconState.STOPPED


# --- text -------------------------------------------------------------------


def format_percent(fraction: float) -> str:
    """A 0–1 progress fraction as whole percent, never rounded up to 100 early.

    >>> format_percent(0.45), format_percent(0.999), format_percent(1.2)
    ('45 %', '99 %', '100 %')
    """
    clamped = min(1.0, max(0.0, fraction))
    return f"{math.floor(clamped * 100 + 1e-9)} %"


def activity_text(activity: Activity) -> str:
    """``Building model 45 %``: the activity's text plus its progress, if known.

    >>> activity_text(Activity(ActivityKind.BUILD, "Building model", 0.45)), activity_text(Activity(ActivityKind.PULL))
    ('Building model 45 %', 'Pulling model')
    """
    text = activity.text or ACTIVITY_DEFAULT_TEXT.get(activity.kind, "Working")
    progress = activity.progress
    return f"{text} {format_percent(progress)}" if progress is not None else text


def restart_text(status: Status) -> str:
    """``Restarting (attempt 2 of 3)``, plus when the next try starts if known."""
    attempt = status.restart_attempt
    attempts_max = status.restart_attempts_max
    text = f"Restarting (attempt {attempt} of {attempts_max})" if attempt and attempts_max else "Restarting"
    retry_in = status.next_retry_in
    return f"{text} — next try in {format_duration(retry_in)}" if retry_in is not None else text


def busy_text(busy: BusyStatus) -> str:
    """What Ollama is working on, from the status' ``busy`` value.

    >>> from tray.core.health import BusySource
    >>> busy_text(BusyStatus("llama3", 1, 0, 80.0, None, BusySource.GATEWAY, stuck=False))
    'busy: generating on llama3 for 1 min'
    >>> busy_text(BusyStatus(None, 3, 1, 12.0, None, BusySource.GATEWAY, stuck=False))
    'busy: generating for 12 s (3 requests)'
    >>> busy_text(BusyStatus("llama3", None, None, 960.0, 905.0, BusySource.PROBE, stuck=True))
    'stuck: no progress on llama3 for 15 min'
    """
    on = f" on {busy.model}" if busy.model else ""
    if busy.stuck:
        quiet = busy.progress_seconds_ago if busy.progress_seconds_ago is not None else busy.since_seconds
        return f"stuck: no progress{on} for {format_duration(quiet)}"
    requests = busy.requests
    count = f" ({requests} requests)" if requests is not None and requests > 1 else ""
    return f"busy: generating{on} for {format_duration(busy.since_seconds)}{count}"


def loading_text(loading: ModelLoading) -> str:
    """A preload under way, with the time so far (Ollama reports no percentage).

    >>> loading_text(ModelLoading("mistral:latest", 12.0))
    'Loading mistral:latest… 12 s'
    """
    return f"Loading {loading.model}… {format_duration(loading.seconds)}"


def health_text(status: Status) -> str:
    """The line for a server that is up (or supposed to be): health, latency and what it is busy with."""
    health = status.health
    if health is Health.DOWN:
        retry_in = status.next_retry_in
        return f"Down — retrying in {format_duration(retry_in)}" if retry_in is not None else "Ollama: down"
    if health not in (Health.HEALTHY, Health.UNHEALTHY):
        return "Ollama: checking…"
    latency = status.latency_ms
    busy = status.busy
    return (
        f"Ollama: {health}"
        + (f" · {format_latency(latency)}" if latency is not None else "")
        + (f" · {busy_text(busy)}" if busy is not None else "")
    )


def _lifecycle_text(status: Status) -> str | None:
    state = status.state
    if state is MonitorState.RESTARTING:
        return restart_text(status)
    if state is MonitorState.STARTING:
        return "Starting Ollama…"
    if state is MonitorState.STOPPED:
        return "Stopped"
    if state is MonitorState.FAILED:
        attempts = status.restart_attempts_max
        return f"Down — gave up after {attempts} restart attempts" if attempts else "Down — gave up"
    return None


NOT_SUPERVISING_TEXT = "Not supervising Ollama — restart Ollama Manager"


def _work_in_progress(status: Status, pending_actions: Iterable[str]) -> str | None:
    """The line for a monitor that stopped, an activity, a lifecycle state or a pending action, if any."""
    if not status.supervising:
        return NOT_SUPERVISING_TEXT
    activity = status.activity
    if activity is not None:
        return activity_text(activity)
    lifecycle = _lifecycle_text(status)
    if lifecycle is not None:
        return lifecycle
    if status.model_loading is not None:
        return loading_text(status.model_loading)
    for action in sorted(pending_actions):
        if action in PENDING_ACTION_TEXT:
            return PENDING_ACTION_TEXT[action]
    return None


def status_summary(status: Status, pending_actions: Iterable[str] = ()) -> str:
    """One line saying what Ollama is doing, without the model name.

    ``pending_actions`` are actions the user asked for that the monitor has not
    reported yet; they are shown only when nothing more specific is known.
    """
    return _work_in_progress(status, pending_actions) or health_text(status)


def tooltip(status: Status, pending_actions: Iterable[str] = ()) -> str:
    """The tray tooltip, e.g. ``Ollama: healthy · 245 ms · uncensored-llama3``.

    The model is named while the server answers and nothing else is going on;
    the cloud fallback is mentioned whenever it answers. At most 127
    characters (the Windows limit).
    """
    work = _work_in_progress(status, pending_actions)
    parts = [work or health_text(status)]
    model = status.model
    named_by_busy = status.busy is not None and bool(status.busy.model)
    if work is None and model and status.health in (Health.HEALTHY, Health.UNHEALTHY) and not named_by_busy:
        parts.append(model)
    if status.cloud_active:
        parts.append("cloud fallback active")
    return truncate_text(" · ".join(parts), TOOLTIP_MAX_CHARS)


_LATIN1_STAND_INS = str.maketrans({"—": "-", "–": "-", "…": "...", "‘": "'", "’": "'", "“": '"', "”": '"'})


def latin1_text(text: str) -> str:
    """``text`` with punctuation outside Latin-1 spelled in ASCII, for X11 window names.

    >>> latin1_text("Down — retrying in 5 min · Starting…")
    'Down - retrying in 5 min · Starting...'
    """
    return text.translate(_LATIN1_STAND_INS).encode("latin-1", "replace").decode("latin-1")


# --- drawing ----------------------------------------------------------------

Point = tuple[float, float]
GLYPH_LIGHT = (255, 255, 255, 255)
GLYPH_DARK = (51, 33, 0, 255)  # on amber, where white has too little contrast
CLOUD_FILL = (255, 255, 255, 255)
CLOUD_EDGE = (30, 41, 59, 255)


def _darker(rgb: RGB, factor: float = 0.62) -> tuple[int, int, int, int]:
    return (round(rgb[0] * factor), round(rgb[1] * factor), round(rgb[2] * factor), 255)


class _Canvas:
    """An ImageDraw in unit coordinates: (0, 0) top left, (1, 1) bottom right."""

    def __init__(self, side: int) -> None:
        self.side = side
        self.image = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.image)

    def px(self, unit: float) -> int:
        return round(unit * self.side)

    def point(self, p: Point) -> tuple[int, int]:
        return (self.px(p[0]), self.px(p[1]))

    def box(self, left: float, top: float, right: float, bottom: float) -> tuple[int, int, int, int]:
        return (self.px(left), self.px(top), self.px(right), self.px(bottom))

    def disc(self, center: Point, radius: float, fill: tuple[int, ...]) -> None:
        x, y = center
        self.draw.ellipse(self.box(x - radius, y - radius, x + radius, y + radius), fill=fill)

    def stroke(self, points: list[Point], width: float, fill: tuple[int, ...]) -> None:
        """A polyline with round caps and joints."""
        self.draw.line([self.point(p) for p in points], fill=fill, width=self.px(width), joint="curve")
        for p in (points[0], points[-1]):
            self.disc(p, width / 2, fill)


EDGE = 0.05  # outline width of the badge, in units of the icon


def _badge_circle(c: _Canvas, rgb: RGB) -> None:
    c.disc((0.5, 0.5), 0.47, _darker(rgb))
    c.disc((0.5, 0.5), 0.47 - EDGE, (*rgb, 255))


def _badge_triangle(c: _Canvas, rgb: RGB) -> None:
    outer = [(0.5, 0.04), (0.97, 0.9), (0.03, 0.9)]
    c.draw.polygon([c.point(p) for p in outer], fill=_darker(rgb))
    inner = [(0.5, 0.15), (0.885, 0.855), (0.115, 0.855)]
    c.draw.polygon([c.point(p) for p in inner], fill=(*rgb, 255))


def _badge_octagon(c: _Canvas, rgb: RGB) -> None:
    c.draw.regular_polygon((c.point((0.5, 0.5)), c.px(0.49)), 8, rotation=22.5, fill=_darker(rgb))
    c.draw.regular_polygon((c.point((0.5, 0.5)), c.px(0.49 - EDGE)), 8, rotation=22.5, fill=(*rgb, 255))


def _mark_check(c: _Canvas) -> None:
    c.stroke([(0.28, 0.52), (0.43, 0.67), (0.72, 0.36)], 0.12, GLYPH_LIGHT)


def _mark_exclamation(c: _Canvas) -> None:
    c.stroke([(0.5, 0.38), (0.5, 0.6)], 0.11, GLYPH_DARK)
    c.disc((0.5, 0.74), 0.06, GLYPH_DARK)


def _mark_cross(c: _Canvas) -> None:
    c.stroke([(0.33, 0.33), (0.67, 0.67)], 0.12, GLYPH_LIGHT)
    c.stroke([(0.67, 0.33), (0.33, 0.67)], 0.12, GLYPH_LIGHT)


def _mark_circular_arrow(c: _Canvas) -> None:
    center, radius, width = (0.5, 0.5), 0.22, 0.1
    start, end = -60.0, 210.0  # degrees, clockwise from 3 o'clock, as ImageDraw.arc counts them
    outer = radius + width / 2
    c.draw.arc(c.box(0.5 - outer, 0.5 - outer, 0.5 + outer, 0.5 + outer), start, end, GLYPH_LIGHT, c.px(width))
    # An arrowhead on the arc's end, pointing along it (clockwise).
    theta = math.radians(end)
    normal = (math.cos(theta), math.sin(theta))
    tangent = (-math.sin(theta), math.cos(theta))
    tail = (center[0] + radius * normal[0], center[1] + radius * normal[1])
    half_base, length = 0.12, 0.16
    head = [
        (tail[0] + half_base * normal[0], tail[1] + half_base * normal[1]),
        (tail[0] + length * tangent[0], tail[1] + length * tangent[1]),
        (tail[0] - half_base * normal[0], tail[1] - half_base * normal[1]),
    ]
    c.draw.polygon([c.point(p) for p in head], fill=GLYPH_LIGHT)


def _mark_stop_square(c: _Canvas) -> None:
    c.draw.rounded_rectangle(c.box(0.34, 0.34, 0.66, 0.66), radius=c.px(0.04), fill=GLYPH_LIGHT)


_DRAWERS: dict[IconState, tuple[Callable[[_Canvas, RGB], None], Callable[[_Canvas], None]]] = {
    IconState.HEALTHY: (_badge_circle, _mark_check),
    IconState.UNHEALTHY: (_badge_triangle, _mark_exclamation),
    IconState.DOWN: (_badge_octagon, _mark_cross),
    IconState.BUSY: (_badge_circle, _mark_circular_arrow),
    IconState.STOPPED: (_badge_circle, _mark_stop_square),
}

# The cloud mark sits in the lower right corner: two bumps on a flat base.
_CLOUD_BUMPS = (((0.66, 0.76), 0.11), ((0.81, 0.71), 0.14))
_CLOUD_BASE = (0.52, 0.76, 0.98, 0.97)
_CLOUD_EDGE = 0.035


def _cloud_mark(c: _Canvas) -> None:
    for grow, fill in ((_CLOUD_EDGE, CLOUD_EDGE), (0.0, CLOUD_FILL)):
        for center, radius in _CLOUD_BUMPS:
            c.disc(center, radius + grow, fill)
        left, top, right, bottom = _CLOUD_BASE
        c.draw.rounded_rectangle(
            c.box(left - grow, top - grow, right + grow, bottom + grow),
            radius=c.px((bottom - top) / 2 + grow),
            fill=fill,
        )


def draw_icon(state: IconState, size: int = 64, cloud: bool = False) -> Image.Image:
    """The tray icon for ``state`` as a ``size`` × ``size`` RGBA image.

    With ``cloud`` a white cloud in the lower right corner says that answers
    come from the cloud fallback.
    """
    if size < 1:
        raise ValueError(f"icon size must be positive, got {size}")
    canvas = _Canvas(size * SUPERSAMPLE)
    badge, mark = _DRAWERS[state]
    badge(canvas, state.rgb)
    mark(canvas)
    if cloud:
        _cloud_mark(canvas)
    return canvas.image.resize((size, size), Image.Resampling.LANCZOS)
