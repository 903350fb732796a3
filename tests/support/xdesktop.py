"""A throwaway X desktop for tray tests: Xvfb + openbox + a tray panel on a free display.

- :class:`XDesktop`: tint2's XEmbed system tray, and no session bus.
- :class:`XfceDesktop`: a private D-Bus session bus (:class:`SessionBus`) and
  Debian's xfce4-panel, whose systray plugin is a StatusNotifier host
  (``org.kde.StatusNotifierWatcher``) and an XEmbed tray at once.

Xvfb picks a free display number itself (``-displayfd``). tint2 only claims
the ``_NET_SYSTEM_TRAY_S0`` selection once a window manager runs, so the
pieces start in order and each start waits for its own readiness signal.
Every process is started here in a process group of its own, and stopped
(with whatever it spawned, such as the panel's plugin wrapper or the xfconfd
the bus activated) and reaped by PID in :meth:`XDesktop.stop`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from PIL import Image
from Xlib import X
from Xlib import display as xdisplay
from Xlib.error import DisplayError

from tests.support.notification_server import BUS_CONFIG

TOOLS = ("Xvfb", "openbox", "tint2", "import")
XFCE_TOOLS = ("Xvfb", "openbox", "xfce4-panel", "dbus-daemon", "import", "xdotool")
XFCONFD = "/usr/lib/x86_64-linux-gnu/xfce4/xfconf/xfconfd"
WATCHER_NAME = "org.kde.StatusNotifierWatcher"

XFCONF_SERVICE = """\
[D-BUS Service]
Name=org.xfce.Xfconf
Exec={xfconfd}
"""

# One bottom panel holding only the status tray (SNI items and XEmbed icons), icons up to 48 px.
XFCE_PANEL_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<channel name="xfce4-panel" version="1.0">
  <property name="configver" type="int" value="2"/>
  <property name="panels" type="array">
    <value type="int" value="1"/>
    <property name="panel-1" type="empty">
      <property name="position" type="string" value="p=8;x=0;y=0"/>
      <property name="length" type="uint" value="100"/>
      <property name="position-locked" type="bool" value="true"/>
      <property name="size" type="uint" value="{panel_height}"/>
      <property name="plugin-ids" type="array">
        <value type="int" value="1"/>
      </property>
    </property>
  </property>
  <property name="plugins" type="empty">
    <property name="plugin-1" type="string" value="systray">
      <property name="icon-size" type="int" value="{icon_size}"/>
    </property>
  </property>
</channel>
"""

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


def missing_tools(tools: tuple[str, ...] = TOOLS) -> list[str]:
    """The programs a desktop needs that are not on PATH (default: :class:`XDesktop`'s)."""
    return [tool for tool in tools if shutil.which(tool) is None]


def missing_xfce_tools() -> list[str]:
    """What :class:`XfceDesktop` needs that is not installed."""
    missing = missing_tools(XFCE_TOOLS)
    return missing + ([] if os.path.exists(XFCONFD) else [XFCONFD])


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
        self.bus: SessionBus | None = None
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
        """Terminate every process started here (and its process group), newest first, and reap them."""
        while self._processes:
            _name, process = self._processes.pop()
            stop_group(process)
        if self.bus is not None:
            self.bus.stop()

    def stop_process(self, name: str) -> None:
        """Stop the newest running process called ``name`` (with its group) and reap it."""
        for index in range(len(self._processes) - 1, -1, -1):
            if self._processes[index][0] == name:
                stop_group(self._processes.pop(index)[1])
                return
        raise KeyError(name)

    # --- use ------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Environment for clients of this desktop: its DISPLAY, a private HOME, its own session bus or none."""
        home = self.workdir / "home"
        env = dict(os.environ)
        env.update(
            DISPLAY=self.display,
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_CACHE_HOME=str(home / ".cache"),
            XDG_DATA_HOME=str(home / ".local" / "share"),
            XDG_STATE_HOME=str(home / ".local" / "state"),
            # Without a bus of its own, none at all: nothing may autolaunch a dbus-daemon that outlives the test.
            DBUS_SESSION_BUS_ADDRESS=self.bus.address if self.bus is not None else "disabled:",
        )
        env.pop("WAYLAND_DISPLAY", None)
        env.pop("XDG_RUNTIME_DIR", None)  # its bus socket is the machine's, not this desktop's
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
        log = (self.workdir / f"{name}.log").open("ab")
        env = self.env if self.display else {**os.environ, "HOME": str(self.workdir / "home")}
        try:
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=pass_fds,
                start_new_session=True,
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


def stop_group(process: subprocess.Popen[bytes], timeout: float = 5) -> None:
    """SIGTERM ``process``'s own process group, SIGKILL it after ``timeout`` s, and reap ``process``.

    Each desktop process leads a group of its own (``start_new_session``), so
    the group holds it and what it spawned, nothing else.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)
    # Helpers the leader left behind in its group (a plugin wrapper, an activated service).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


class SessionBus:
    """A private ``dbus-daemon --session`` in ``workdir``: its own socket, config and service folder.

    It can activate xfconfd and nothing else; activated services join the
    daemon's process group and go with it in :meth:`stop`.
    """

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.address = ""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Start the daemon; return once it printed its address."""
        socket_dir = self.workdir / "bus"
        service_dir = self.workdir / "bus-services"
        socket_dir.mkdir(parents=True, exist_ok=True)
        service_dir.mkdir(parents=True, exist_ok=True)
        (service_dir / "org.xfce.Xfconf.service").write_text(XFCONF_SERVICE.format(xfconfd=XFCONFD))
        config = self.workdir / "bus.conf"
        config.write_text(BUS_CONFIG.format(socket_dir=socket_dir, service_dir=service_dir))
        log = (self.workdir / "dbus-daemon.log").open("ab")
        try:
            self.process = subprocess.Popen(
                ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=self.env,
                start_new_session=True,
            )
        finally:
            log.close()
        assert self.process.stdout is not None
        os.set_blocking(self.process.stdout.fileno(), False)
        received = b""
        deadline = time.monotonic() + timeout
        while not received.endswith(b"\n"):
            if self.process.poll() is not None:
                raise XDesktopError(f"dbus-daemon exited with {self.process.returncode}; see {self.workdir}")
            if time.monotonic() > deadline:
                raise XDesktopError(f"dbus-daemon printed no address within {timeout:g} s")
            chunk = self.process.stdout.read(256)
            if chunk:
                received += chunk
            else:
                time.sleep(0.02)
        self.address = received.decode().strip()

    def stop(self) -> None:
        """Stop the daemon and its activated services; reap the daemon."""
        if self.process is not None:
            stop_group(self.process)
            if self.process.stdout is not None:
                self.process.stdout.close()

    def name_has_owner(self, name: str) -> bool:
        """Whether ``name`` has an owner on this bus (False when the bus is gone)."""
        from jeepney import DBusAddress, new_method_call
        from jeepney.io.blocking import open_dbus_connection

        bus = DBusAddress("/org/freedesktop/DBus", "org.freedesktop.DBus", "org.freedesktop.DBus")
        try:
            with open_dbus_connection(self.address) as connection:
                reply = connection.send_and_get_reply(new_method_call(bus, "NameHasOwner", "s", (name,)), timeout=5)
        except (OSError, TimeoutError):
            return False
        return bool(reply.body[0])

    def names(self) -> list[str]:
        """Every name on the bus."""
        from jeepney import DBusAddress, new_method_call
        from jeepney.io.blocking import open_dbus_connection

        bus = DBusAddress("/org/freedesktop/DBus", "org.freedesktop.DBus", "org.freedesktop.DBus")
        with open_dbus_connection(self.address) as connection:
            reply = connection.send_and_get_reply(new_method_call(bus, "ListNames"), timeout=5)
        return list(reply.body[0])


class XfceDesktop(XDesktop):
    """Xvfb + a private session bus + openbox + Debian's xfce4-panel with only its status tray.

    The panel's systray plugin owns ``org.kde.StatusNotifierWatcher``, draws
    StatusNotifierItems with their dbusmenu, and is an XEmbed tray as well.
    """

    def __init__(
        self, workdir: Path, *, width: int = 800, height: int = 600, panel_height: int = 64, icon_size: int = 48
    ) -> None:
        super().__init__(workdir, width=width, height=height, panel_height=panel_height, icon_size=icon_size)

    def start(self, timeout: float = 20.0) -> None:
        """The bus, the X server, the window manager and the panel, in that order."""
        self.start_bus(timeout)
        self.start_x_server(timeout)
        self.start_window_manager(timeout)
        self.start_panel(timeout)

    def start_bus(self, timeout: float = 20.0) -> None:
        """Start the private session bus."""
        home = self.workdir / "home"
        env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
        env.update(XDG_DATA_HOME=str(home / ".local" / "share"), XDG_CACHE_HOME=str(home / ".cache"))
        self.bus = SessionBus(self.workdir, env)
        self.bus.start(timeout)

    def start_panel(self, timeout: float = 30.0) -> None:
        """Start xfce4-panel (first-run dialog skipped); return once the StatusNotifier watcher is on the bus."""
        config_dir = self.workdir / "home" / ".config" / "xfce4" / "xfconf" / "xfce-perchannel-xml"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "xfce4-panel.xml").write_text(
            XFCE_PANEL_XML.format(panel_height=self.panel_height, icon_size=self.icon_size)
        )
        self._spawn("xfce4-panel", ["xfce4-panel", "--disable-wm-check"])
        wait_until(self.watcher_owned, timeout, "xfce4-panel's StatusNotifier watcher on the session bus")

    def stop_panel(self) -> None:
        """Stop the panel (and its plugin wrapper); return once the watcher has left the bus."""
        self.stop_process("xfce4-panel")
        wait_until(lambda: not self.watcher_owned(), 10, "the StatusNotifier watcher to leave the bus")

    def watcher_owned(self) -> bool:
        """Whether ``org.kde.StatusNotifierWatcher`` is on this desktop's bus."""
        return self.bus is not None and self.bus.name_has_owner(WATCHER_NAME)

    @property
    def env(self) -> dict[str, str]:
        """The desktop's environment, with no accessibility bus or GVFS daemons to activate."""
        env = super().env
        env.update(NO_AT_BRIDGE="1", GIO_USE_VFS="local", GSETTINGS_BACKEND="memory")
        return env
