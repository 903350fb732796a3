"""The real tray on a real (virtual) X desktop: Xvfb + openbox + tint2 and pystray's xorg backend.

A driver subprocess runs TrayApp on its main thread with a scripted controller
that takes commands as JSON lines on stdin and reports requests and
notifications on stdout. The test reads the icon's colour from root-window
screenshots of the tray panel.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tray.core.health import Health
from tray.core.status import make_status
from tray.ui.backend import tray_available
from tray.ui.icon import IconState

pytestmark = [pytest.mark.process, pytest.mark.slow]

from tests.support.xdesktop import XDesktop, missing_tools  # noqa: E402

MISSING = missing_tools()
if MISSING:
    pytest.skip(
        f"needs {', '.join(MISSING)} (apt-get install -y xvfb openbox tint2 imagemagick x11-utils)",
        allow_module_level=True,
    )

# What the status API would send; the driver reads it back as the monitor's Status.
HEALTHY = make_status(uptime_seconds=10, memory_usage_mb=4096, cpu_usage_percent=10.0).to_json()
DOWN = make_status(health=Health.DOWN, latency_ms=None, next_retry_in=300.0, last_error="connection refused").to_json()

DRIVER = textwrap.dedent(
    """
    import concurrent.futures, json, sys, threading
    from tray.core.status import Status
    from tray.ui.app import TrayApp

    def say(*words):
        print(*words, flush=True)

    class ScriptedController:
        def __init__(self, status):
            self.status = status
            self.callbacks = []
            self.current = {"notifications": True, "autostart": False, "stop_ollama_on_quit": False}

        def snapshot(self):
            return self.status

        def subscribe(self, callback):
            self.callbacks.append(callback)
            return lambda: self.callbacks.remove(callback)

        def request(self, action):
            say("REQUEST", action)
            future = concurrent.futures.Future()
            future.set_result(action + " done")
            return future

        def settings(self):
            return dict(self.current)

        def set_setting(self, key, value):
            self.current[key] = value

        def log_paths(self):
            return []

        def notify(self, title, message):
            say("NOTIFY", json.dumps([title, message]))

        def publish(self, status):
            self.status = status
            for callback in list(self.callbacks):
                callback(status)

    def serve(app, controller):
        for line in sys.stdin:
            command = json.loads(line)
            if command["op"] == "status":
                controller.publish(Status.from_json(command["status"]))
            elif command["op"] == "invoke":
                item = next(item for item in app.icon.menu if item.text == command["text"])
                item(app.icon)
            elif command["op"] == "title":
                say("TITLE", json.dumps(app.icon.title))
            say("DONE", command["op"])
        app.on_quit()

    controller = ScriptedController(Status.from_json(json.loads(sys.argv[1])))
    app = TrayApp(controller)
    threading.Thread(target=serve, args=(app, controller), daemon=True).start()
    app.run()
    say("EXITED")
    """
)


@pytest.fixture(scope="module")
def desktop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XDesktop]:
    with XDesktop(tmp_path_factory.mktemp("xdesktop")) as running:
        yield running


class Driver:
    """The TrayApp subprocess: JSON commands in, report lines out."""

    def __init__(self, desktop: XDesktop, workdir: Path, status: dict[str, Any]) -> None:
        script = workdir / "driver.py"
        script.write_text(DRIVER)
        self.stderr_path = workdir / "driver.stderr"
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, str(script), json.dumps(status)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**desktop.env, "PYSTRAY_BACKEND": "xorg"},
                text=True,
            )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def send(self, op: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()

    def expect(self, prefix: str, timeout: float = 10.0) -> str:
        """The next output line starting with ``prefix``, skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} line within {timeout:g} s; stderr: {self.stderr()}") from None
            if line.startswith(prefix):
                return line

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-2000:]

    def close(self) -> int:
        """Quit through stdin EOF, then make sure the process is gone and reaped."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            raise


Box = tuple[int, int, int, int]
RGB = tuple[int, int, int]


def near(pixel: RGB, rgb: RGB, tolerance: int = 24) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, rgb, strict=True))


def matching_pixels(image: Image.Image, box: Box, rgb: RGB) -> list[tuple[int, int]]:
    """Screen coordinates inside ``box`` whose colour is near ``rgb``."""
    left, top, right, bottom = box
    return [
        (x, y)
        for y in range(top, bottom)
        for x in range(left, right)
        if near(image.getpixel((x, y)), rgb)  # type: ignore[arg-type]
    ]


def count_near(image: Image.Image, box: Box, rgb: RGB) -> int:
    """How many pixels inside ``box`` are near ``rgb``."""
    return len(matching_pixels(image, box, rgb))


def bounding_box(image: Image.Image, box: Box, rgb: RGB) -> Box:
    """The screen box of the pixels near ``rgb`` inside ``box``."""
    hits = matching_pixels(image, box, rgb)
    xs, ys = [x for x, _ in hits], [y for _, y in hits]
    return min(xs), min(ys), max(xs), max(ys)


def wait_for_colour(desktop: XDesktop, shot: Path, rgb: RGB, minimum: int, timeout: float) -> tuple[Image.Image, float]:
    """Take screenshots until the tray shows ``minimum`` pixels of ``rgb``; return the last one and the wait."""
    started = time.monotonic()
    while True:
        image = desktop.screenshot(shot)
        if count_near(image, desktop.tray_box, rgb) >= minimum:
            return image, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"tray never showed {rgb} within {timeout:g} s; last screenshot: {shot}")
        time.sleep(0.1)


# An icon of 64 px keeps well over a thousand pixels of its badge colour.
ICON_PIXELS = 600


def test_tray_selection_needs_a_tray_host(tmp_path: Path) -> None:
    screen = XDesktop(tmp_path)
    try:
        screen.start_x_server()
        screen.start_window_manager()
        env = {"DISPLAY": screen.display, "PYSTRAY_BACKEND": "xorg"}
        assert tray_available(env, "linux") == (
            False,
            f"nothing owns _NET_SYSTEM_TRAY_S0 on X display {screen.display}",
        )
        screen.start_tray()
        assert tray_available(env, "linux") == (True, f"system tray found on X display {screen.display}")
        pids = screen.pids()
    finally:
        screen.stop()
    assert sorted(pids) == ["Xvfb", "openbox", "tint2"]
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # terminated and reaped
    gone, reason = tray_available(env, "linux")
    assert gone is False
    assert reason.startswith(f"cannot open X display {screen.display}: ")


def test_icon_colour_follows_health_and_restart_reaches_the_controller(desktop: XDesktop, tmp_path: Path) -> None:
    driver = Driver(desktop, tmp_path, HEALTHY)
    try:
        green = IconState.HEALTHY.rgb
        red = IconState.DOWN.rgb
        healthy_shot, _ = wait_for_colour(desktop, tmp_path / "healthy.png", green, ICON_PIXELS, timeout=20)
        assert count_near(healthy_shot, desktop.tray_box, red) == 0
        # Nothing above the panel: the icon is docked in the tray, not floating.
        above_panel = (0, 0, desktop.width, desktop.tray_box[1])
        assert count_near(healthy_shot, above_panel, green) == 0

        driver.send("status", status=DOWN)
        driver.expect("DONE status")
        down_shot, _ = wait_for_colour(desktop, tmp_path / "down.png", red, ICON_PIXELS, timeout=5)
        assert count_near(down_shot, desktop.tray_box, green) == 0
        driver.send("title")
        # The xorg backend stores the tooltip as a Latin-1 window name.
        assert json.loads(driver.expect("TITLE")[len("TITLE ") :]) == "Down - retrying in 5 min"

        # The menu's own callable.
        driver.send("invoke", text="Restart Ollama")
        assert driver.expect("REQUEST") == "REQUEST restart"
        assert json.loads(driver.expect("NOTIFY")[len("NOTIFY ") :]) == ["Restart Ollama", "restart done"]

        # A real left click on the icon: the default action while Ollama is down.
        left, top, right, bottom = bounding_box(down_shot, desktop.tray_box, red)
        desktop.click((left + right) // 2, (top + bottom) // 2)
        assert driver.expect("REQUEST") == "REQUEST restart"
    finally:
        exit_code = driver.close()
    assert exit_code == 0, driver.stderr()
    assert "Traceback" not in driver.stderr()
