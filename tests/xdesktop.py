"""A throwaway X desktop for tray tests: Xvfb + openbox + tint2 on a free display.

Xvfb picks a free display number itself (``-displayfd``). tint2 only claims
the ``_NET_SYSTEM_TRAY_S0`` selection once a window manager runs, so the
pieces start in order and each start waits for its own readiness signal.
Every process is started here, killed by PID and reaped in :meth:`XDesktop.stop`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from PIL import Image
from Xlib import X
from Xlib import display as xdisplay
from Xlib.error import DisplayError

TOOLS = ("Xvfb", "openbox", "tint2", "import")

TINT2RC = """\
# Panel background: opaque dark grey, so icon pixels are easy to tell apart.
rounded = 0
border_width = 0
background_color = #202020 100
border_color = #202020 100

panel_items = S
panel_size = 100% {panel_height}
panel_margin = 0 0
panel_padding = 4 4 4
panel_background_id = 1
panel_position = bottom center horizontal
panel_layer = top
panel_monitor = all
panel_dock = 0
wm_menu = 0
strut_policy = follow_size
autohide = 0

systray_padding = 4 4 8
systray_background_id = 0
systray_sort = ascending
systray_icon_size = {icon_size}
systray_icon_asb = 100 0 0
systray_monitor = 1
"""


def missing_tools() -> list[str]:
    """The programs this desktop needs that are not on PATH."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


class XDesktopError(RuntimeError):
    """A piece of the desktop did not come up; the message names it and its log."""


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds; raise XDesktopError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise XDesktopError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class XDesktop:
    """An Xvfb screen with a window manager and a system tray panel at the bottom."""

    def __init__(
        self,
        workdir: Path,
        *,
        width: int = 480,
        height: int = 200,
        panel_height: int = 80,
        icon_size: int = 64,
    ) -> None:
        self.workdir = workdir
        self.width = width
        self.height = height
        self.panel_height = panel_height
        self.icon_size = icon_size
        self.display = ""
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        (workdir / "home").mkdir(parents=True, exist_ok=True)

    # --- lifecycle ------------------------------------------------------------

    def __enter__(self) -> XDesktop:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 20.0) -> None:
        """Start the X server, the window manager and the tray, in that order."""
        self.start_x_server(timeout)
        self.start_window_manager(timeout)
        self.start_tray(timeout)

    def start_x_server(self, timeout: float = 20.0) -> None:
        """Start Xvfb on a display number it picks; return once it accepts clients."""
        read_end, write_end = os.pipe()
        try:
            self._spawn(
                "Xvfb",
                [
                    "Xvfb",
                    "-displayfd",
                    str(write_end),
                    "-screen",
                    "0",
                    f"{self.width}x{self.height}x24",
                    "-nolisten",
                    "tcp",
                    "-noreset",
                ],
                pass_fds=(write_end,),
            )
            os.close(write_end)
            write_end = -1
            self.display = ":" + self._read_display_number(read_end, timeout)
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)

    def start_window_manager(self, timeout: float = 20.0) -> None:
        """Start openbox; return once it announces itself on the root window."""
        self._spawn("openbox", ["openbox", "--sm-disable"])
        wait_until(self._window_manager_running, timeout, "openbox to manage the screen")

    def start_tray(self, timeout: float = 20.0) -> None:
        """Start tint2 with a systray-only panel; return once it owns the tray selection."""
        config = self.workdir / "tint2rc"
        config.write_text(TINT2RC.format(panel_height=self.panel_height, icon_size=self.icon_size))
        self._spawn("tint2", ["tint2", "-c", str(config)])
        wait_until(self.tray_owned, timeout, "tint2 to claim _NET_SYSTEM_TRAY_S0")

    def stop(self) -> None:
        """Terminate every process started here, newest first, and reap them."""
        while self._processes:
            _name, process = self._processes.pop()
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)

    # --- use ------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Environment for clients of this desktop (its DISPLAY, a private HOME, no session bus)."""
        home = self.workdir / "home"
        env = dict(os.environ)
        env.update(
            DISPLAY=self.display,
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_CACHE_HOME=str(home / ".cache"),
            XDG_DATA_HOME=str(home / ".local" / "share"),
            XDG_STATE_HOME=str(home / ".local" / "state"),
            # No session bus: nothing may autolaunch a dbus-daemon that outlives the test.
            DBUS_SESSION_BUS_ADDRESS="disabled:",
        )
        env.pop("WAYLAND_DISPLAY", None)
        return env

    @property
    def tray_box(self) -> tuple[int, int, int, int]:
        """The panel holding the tray, as a (left, top, right, bottom) box in screen pixels."""
        return (0, self.height - self.panel_height, self.width, self.height)

    def pids(self) -> dict[str, int]:
        """PIDs of the running desktop processes by name."""
        return {name: process.pid for name, process in self._processes}

    def screenshot(self, path: Path) -> Image.Image:
        """Save a root-window screenshot to ``path`` (ImageMagick ``import``) and return it as RGB."""
        subprocess.run(
            ["import", "-display", self.display, "-window", "root", str(path)],
            check=True,
            env=self.env,
            timeout=30,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        with Image.open(path) as image:
            return image.convert("RGB")

    def tray_owned(self) -> bool:
        """Whether something owns ``_NET_SYSTEM_TRAY_S0`` on this display."""
        return self._with_display(lambda d: d.get_selection_owner(d.intern_atom("_NET_SYSTEM_TRAY_S0")) != X.NONE)

    def click(self, x: int, y: int, button: int = 1) -> None:
        """Move the pointer to (x, y) and click (XTEST)."""
        from Xlib.ext import xtest

        def press(d: xdisplay.Display) -> bool:
            xtest.fake_input(d, X.MotionNotify, x=x, y=y)
            d.sync()
            xtest.fake_input(d, X.ButtonPress, button)
            xtest.fake_input(d, X.ButtonRelease, button)
            d.sync()
            return True

        self._with_display(press)

    # --- internals ------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], pass_fds: tuple[int, ...] = ()) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        env = self.env if self.display else {**os.environ, "HOME": str(self.workdir / "home")}
        try:
            process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=pass_fds
            )
        finally:
            log.close()
        self._processes.append((name, process))

    def _read_display_number(self, read_end: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        received = b""
        os.set_blocking(read_end, False)
        while not received.endswith(b"\n"):
            xvfb = self._processes[-1][1]
            if xvfb.poll() is not None:
                raise XDesktopError(f"Xvfb exited with status {xvfb.returncode}; see {self.workdir / 'Xvfb.log'}")
            if time.monotonic() > deadline:
                raise XDesktopError(f"Xvfb did not report its display within {timeout:g} s")
            try:
                chunk = os.read(read_end, 64)
            except BlockingIOError:
                time.sleep(0.02)
                continue
            if not chunk:
                raise XDesktopError(f"Xvfb closed -displayfd without a display; see {self.workdir / 'Xvfb.log'}")
            received += chunk
        return received.decode().strip()

    def _window_manager_running(self) -> bool:
        def check(d: xdisplay.Display) -> bool:
            atom = d.intern_atom("_NET_SUPPORTING_WM_CHECK")
            return d.screen().root.get_full_property(atom, X.AnyPropertyType) is not None

        return self._with_display(check)

    def _with_display(self, use: Callable[[xdisplay.Display], bool]) -> bool:
        try:
            connection = xdisplay.Display(self.display)
        except (DisplayError, OSError):
            return False
        try:
            return use(connection)
        finally:
            connection.close()
