"""The tray icon and its tooltip, derived from the monitor's :class:`~tray.core.status.Status`.

Everything here is pure: a status goes in, a state, an image or a line of
text comes out; the words come from :mod:`tray.core.status_text`, which the
dashboard shares. The icon is drawn by code at four times the requested size and
downsampled, so it stays crisp from 16 px panels to HiDPI menu bars. Each state
has its own shape and mark, so the icon reads without colour too.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable

from PIL import Image, ImageDraw

from tray.core.health import Health
from tray.core.status import ActivityKind, MonitorState, Status
from tray.core.status_text import health_text, work_in_progress
from tray.core.text import truncate_text

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


def tooltip(status: Status, pending_actions: Iterable[str] = ()) -> str:
    """The tray tooltip, e.g. ``Ollama: healthy · 245 ms · uncensored-llama3``.

    The model is named while the server answers and nothing else is going on;
    the cloud fallback is mentioned whenever it answers. At most 127
    characters (the Windows limit).
    """
    work = work_in_progress(status, pending_actions)
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
