"""The real tray app (``python -m tray``) on an :class:`~xdesktop.XDesktop`, against the stand-in Ollama.

Shared by the end-to-end tests, ``docs/make_screenshots.py`` and
``bench/bench_tray.py``. Nothing here reaches into the tray process: it is
observed from outside, the way a user sees it.

- :class:`TrayProcess` launches ``python -m tray`` (no arguments) with the
  stand-in's environment and the desktop's DISPLAY and session bus (none for
  tint2, so the app picks the XEmbed icon), and stops it by PID.
- :func:`docked_icons` finds the tray's icon windows in the X window tree
  (pystray names them ``<app>SystemTrayIcon``), with their screen geometry.
- :func:`icon_state_of` reads which :class:`~tray.ui.icon.IconState` a
  screenshot shows from its pixels.
- :class:`NotificationLog` puts a recording ``notify-send`` first on PATH, so
  the desktop notifications the app sends can be read back; :class:`BrowserLog`
  records the pages the app opens in "the browser" (``BROWSER``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image
from Xlib import X
from Xlib import display as xdisplay
from Xlib.error import BadWindow, DisplayError

from tests.support.manager import wait_until
from tray import APP_NAME
from tray.ui.icon import IconState

ICON_WM_CLASS = f"{APP_NAME}SystemTrayIcon"  # pystray's xorg backend: '%sSystemTrayIcon' % icon.name
COLOUR_TOLERANCE = 24
# A docked 64 px icon keeps well over a thousand pixels of its badge colour;
# anti-aliased edges and a stray pixel stay far below this.
ICON_PIXELS = 600

Box = tuple[int, int, int, int]  # left, top, right, bottom (right and bottom exclusive)
RGB = tuple[int, int, int]
XWindow = Any  # python-xlib ships no type information
T = TypeVar("T")

FAKE_NOTIFY_SEND = """\
#!{python}
import json, sys
with open({log!r}, "a", encoding="utf-8") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
"""
FAKE_BROWSER = FAKE_NOTIFY_SEND


# --- pixels (pure) --------------------------------------------------------------


def near(pixel: RGB, rgb: RGB, tolerance: int = COLOUR_TOLERANCE) -> bool:
    """Whether each channel of ``pixel`` is within ``tolerance`` of ``rgb``."""
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, rgb, strict=True))


def state_pixel_counts(
    histogram: Iterable[tuple[int, RGB]], states: Iterable[IconState] = IconState
) -> dict[IconState, int]:
    """How many pixels are near each state's badge colour, from (count, colour) pairs.

    >>> state_pixel_counts([(700, (22, 163, 74)), (9, (30, 170, 80)), (40, (32, 32, 32))], [IconState.HEALTHY])
    {<IconState.HEALTHY: (22, 163, 74)>: 709}
    """
    wanted = list(states)
    counts = dict.fromkeys(wanted, 0)
    for count, colour in histogram:
        for state in wanted:
            if near(colour, state.rgb):
                counts[state] += count
                break
    return counts


def dominant_state(counts: Mapping[IconState, int], minimum: int = ICON_PIXELS) -> IconState | None:
    """The state with the most pixels, if it has at least ``minimum`` of them."""
    state, count = max(counts.items(), key=lambda item: item[1], default=(None, 0))
    return state if count >= minimum else None


def icon_state_of(image: Image.Image, box: Box) -> IconState | None:
    """The icon state a screenshot shows inside ``box``; None when no icon is drawn there."""
    area = image.crop(box).convert("RGB")
    histogram = area.getcolors(maxcolors=area.width * area.height) or []
    return dominant_state(state_pixel_counts(histogram))  # type: ignore[arg-type]


def padded(box: Box, padding: int, bounds: Box) -> Box:
    """``box`` grown by the same margin on every side: ``padding``, or less where ``bounds`` has no room.

    >>> padded((8, 128, 72, 192), 12, (0, 120, 480, 200))
    (0, 120, 80, 200)
    """
    left, top, right, bottom = box
    b_left, b_top, b_right, b_bottom = bounds
    margin = max(0, min(padding, left - b_left, top - b_top, b_right - right, b_bottom - bottom))
    return left - margin, top - margin, right + margin, bottom + margin


# --- the X window tree ------------------------------------------------------------


@dataclass(frozen=True)
class DockedIcon:
    """One of the tray's icon windows, as placed on screen."""

    window_id: int
    box: Box
    parent_id: int
    title: str  # the tooltip: pystray's xorg backend keeps it as the window name

    @property
    def centre(self) -> tuple[int, int]:
        """The screen point in the middle of the icon."""
        left, top, right, bottom = self.box
        return (left + right) // 2, (top + bottom) // 2


def docked_icons(display_name: str) -> list[DockedIcon]:
    """Every viewable window of this app's tray icon on ``display_name`` (empty if the display is gone)."""
    try:
        connection = xdisplay.Display(display_name)
    except (DisplayError, OSError):
        return []
    try:
        root = connection.screen().root
        return [icon for window in _walk(root) if (icon := _as_docked_icon(window, root)) is not None]
    finally:
        connection.close()


def _walk(window: XWindow) -> Iterable[XWindow]:
    try:
        children = window.query_tree().children
    except BadWindow:
        return
    for child in children:
        yield child
        yield from _walk(child)


def _as_docked_icon(window: XWindow, root: XWindow) -> DockedIcon | None:
    try:
        wm_class = window.get_wm_class()
        if not wm_class or wm_class[0] != ICON_WM_CLASS:
            return None
        if window.get_attributes().map_state != X.IsViewable:
            return None
        geometry = window.get_geometry()
        origin = window.translate_coords(root, 0, 0)
        parent = window.query_tree().parent
        title = window.get_wm_name()
    except BadWindow:
        return None  # destroyed while we looked
    left, top = -origin.x, -origin.y
    box = (left, top, left + geometry.width, top + geometry.height)
    return DockedIcon(window.id, box, parent.id, title if isinstance(title, str) else "")


def grab_screen(display_name: str, box: Box) -> Image.Image:
    """The pixels of ``box`` on the root window, read straight from the X server (no helper process).

    Faster than ImageMagick's ``import``, so good for timing; assumes a 24-bit
    TrueColor screen stored as 32 bits per pixel (what Xvfb uses).
    """
    left, top, right, bottom = box
    connection = xdisplay.Display(display_name)
    try:
        raw = connection.screen().root.get_image(left, top, right - left, bottom - top, X.ZPixmap, 0xFFFFFFFF)
        return Image.frombytes("RGB", (right - left, bottom - top), raw.data, "raw", "BGRX")
    finally:
        connection.close()


# --- notifications --------------------------------------------------------------


class NotificationLog:
    """A ``notify-send`` that records its arguments, for a PATH entry of its own."""

    def __init__(self, workdir: Path) -> None:
        self.bin_dir = workdir / "notify-bin"
        self.log_path = workdir / "notifications.jsonl"
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        script = self.bin_dir / "notify-send"
        script.write_text(FAKE_NOTIFY_SEND.format(python=sys.executable, log=str(self.log_path)))
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def path_with_it_first(self, path: str) -> str:
        """``path`` with the recording ``notify-send`` in front."""
        return os.pathsep.join([str(self.bin_dir), path])

    def received(self) -> list[tuple[str, str]]:
        """Every (title, message) shown so far, oldest first."""
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [notification_of(json.loads(line)) for line in lines if line.strip()]


def notification_of(argv: list[str]) -> tuple[str, str]:
    """(title, message) from a ``notify-send`` command line.

    plyer passes them first (``notify-send TITLE MESSAGE -i ...``); the app's
    own fallback passes its options first and ends them with ``--``.

    >>> notification_of(["Down", "gone", "-i", ""]), notification_of(["--app-name=x", "--", "Down", "gone"])
    (('Down', 'gone'), ('Down', 'gone'))
    """
    if "--" in argv:
        rest = argv[argv.index("--") + 1 :]
        return rest[0], rest[1]
    return argv[0], argv[1]


class BrowserLog:
    """A browser command for ``BROWSER`` that records the URLs it is asked to open."""

    def __init__(self, workdir: Path) -> None:
        self.command = workdir / "browser-bin" / "record-browser"
        self.log_path = workdir / "browser.jsonl"
        self.command.parent.mkdir(parents=True, exist_ok=True)
        self.command.write_text(FAKE_BROWSER.format(python=sys.executable, log=str(self.log_path)))
        self.command.chmod(self.command.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def opened(self) -> list[str]:
        """Every URL opened so far, oldest first."""
        if not self.log_path.exists():
            return []
        return [json.loads(line)[-1] for line in self.log_path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- the tray process -------------------------------------------------------------


def tray_env(
    base_env: Mapping[str, str],
    display: str,
    notifications: NotificationLog,
    *,
    bus_address: str = "disabled:",
    browser: BrowserLog | None = None,
) -> dict[str, str]:
    """The environment of ``python -m tray`` on ``display`` with recorded notifications.

    Without ``bus_address`` there is no session bus, so the app picks the
    XEmbed icon; with the desktop's bus it looks for a StatusNotifier host
    there. Notifications go through plyer's ``notify-send`` (it has no D-Bus
    module here), which is recorded.
    """
    env = dict(base_env)
    env.update(
        DISPLAY=display,
        DBUS_SESSION_BUS_ADDRESS=bus_address,
        PATH=notifications.path_with_it_first(env.get("PATH", "")),
    )
    if browser is not None:
        env["BROWSER"] = str(browser.command)
    for name in ("WAYLAND_DISPLAY", "PYSTRAY_BACKEND", "XDG_RUNTIME_DIR"):
        env.pop(name, None)
    return env


def imported_modules(output: str) -> set[str]:
    """The modules a process run with ``PYTHONPROFILEIMPORTTIME=1`` names in its ``import time:`` lines."""
    return {line.rsplit("|", 1)[1].strip() for line in output.splitlines() if line.startswith("import time:")}


class TrayProcess:
    """``python -m tray`` with no arguments, its output in a file, stopped and reaped by PID."""

    def __init__(self, env: Mapping[str, str], workdir: Path, name: str = "tray") -> None:
        self.env = dict(env)
        self.workdir = workdir
        self.output_path = workdir / f"{name}.out"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None

    @property
    def pid(self) -> int:
        """The tray's PID; it must have been started."""
        if self.process is None:
            raise RuntimeError("the tray has not been started")
        return self.process.pid

    def start(self) -> TrayProcess:
        """Launch the tray; ``started_at`` is the monotonic time just before the launch."""
        with self.output_path.open("wb") as output:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tray"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        return self

    def running(self) -> bool:
        """Whether the tray process is still alive."""
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        """What the tray wrote to stdout and stderr so far."""
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the tray's process group (the tray and any helper it spawned), then SIGKILL; reap it."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout=5)
        return self.process.returncode

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)


# --- waiting on the screen ----------------------------------------------------------


Screenshot = Callable[[], Image.Image]


def wait_for_icon_state(
    screenshot: Screenshot,
    box: Box,
    wanted: Callable[[IconState | None], bool],
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> tuple[Image.Image, list[IconState | None]]:
    """Take screenshots until ``wanted(state)`` holds for the one shown in ``box``.

    Returns the matching screenshot and every state seen on the way (repeats
    collapsed), so callers can check the path as well as the destination.
    """
    deadline = time.monotonic() + timeout
    seen: list[IconState | None] = []
    while True:
        image = screenshot()
        state = icon_state_of(image, box)
        if not seen or seen[-1] is not state:
            seen.append(state)
        if wanted(state):
            return image, seen
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; states seen: {seen}")
        time.sleep(interval)


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll ``condition`` until it returns something truthy, and return that."""
    return wait_until(condition, timeout, interval=interval, what=what)  # type: ignore[no-any-return]
