"""Smoke-test a built bundle: ``python packaging/smoke_test.py [--dist dist]``.

Runs the frozen executable, never the source tree, with its own temporary
HOME, XDG and Windows app-data folders, on Linux, macOS and Windows alike:

1. ``--version`` prints the package version;
2. ``doctor --json`` reports a frozen app that loaded its tray backend,
   plyer, NVML bindings, jeepney (Linux), the default Modelfile and the icon,
   and whose start-at-login command points into the bundle;
3. ``status --json`` with no Ollama answers ``ollama_running: false``, exit 3;
4. against the stand-in Ollama from ``tests/standin`` (frozen into
   ``ollama.exe`` + ``llama-server.exe`` on Windows, by
   ``tests/standin/freeze.py``): ``start`` runs ``ollama serve``, ``status
   --json`` calls it healthy, ``stop`` ends it gracefully (on Windows through
   the server's own console, as Ollama's app does);
5. ``monitor`` against the stand-in: it starts ``ollama serve``, the serve
   gets the user's environment (not the bundle's library path), ``status
   --json`` sees it, and after the server is killed the monitor starts a new one;
6. ``autostart enable|status|disable`` round trip with the OS's real
   mechanism (LaunchAgent plist checked by ``plutil``, the HKCU Run value read
   back with ``reg query``, the XDG entry), pointing at the bundle's windowed
   executable;
7. ``notify`` sends a notification without error (on Linux to a private
   session bus with a notification server);
8. the tray (no arguments) runs for a few seconds, under Xvfb + openbox +
   tint2 on Linux, and its log holds no import error; on Linux its icon
   must show in the panel; where the runner has no tray (the doctor names
   no tray backend), the check says so and is skipped;
9. (Linux) under Xvfb + a private session bus + xfce4-panel, the doctor
   names the StatusNotifierItem backend, the tray registers its item with
   the panel's watcher, exports its menu (GetLayout) and the panel draws
   its icon in a health colour.

Exit status 0 when every check passed; each failure is one line.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from load_packaging import load_packaging

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
IMPORT_ERROR_MARKERS = ("ModuleNotFoundError", "ImportError", "No module named", "Traceback (most recent call last)")
STATUS_NOT_RUNNING_EXIT = 3
PANEL_BACKGROUND = (0x20, 0x20, 0x20)  # tests/support/xdesktop.py's tint2 panel colour

FAST_SETTINGS = {
    "OLLAMA_MANAGER_HEALTH_CHECK_INTERVAL": "0.5",
    "OLLAMA_MANAGER_HEALTH_CHECK_TIMEOUT": "0.5",
    "OLLAMA_MANAGER_STOP_TIMEOUT": "1",
    "OLLAMA_MANAGER_STARTUP_TIMEOUT": "10",
    "OLLAMA_MANAGER_STATUS_PORT": "0",
}


class SmokeFailure(Exception):
    """A check failed; ``str()`` is one line."""


# --- judging (pure) -------------------------------------------------------------------


def expected_tray_backends(platform: str) -> tuple[str, ...]:
    """pystray backends a bundle for ``platform`` may load when a tray exists."""
    if platform == "darwin":
        return ("darwin",)
    if platform == "win32":
        return ("win32",)
    return ("sni", "appindicator", "gtk", "xorg")


def is_inside(path: str, folder: Path) -> bool:
    """Whether ``path`` lies in ``folder`` (both made absolute, no symlinks resolved)."""
    try:
        Path(path).absolute().relative_to(folder.absolute())
    except ValueError:
        return False
    return True


def doctor_problems(
    report: Mapping[str, str], *, platform: str, version: str | None, bundle_dir: Path, tray_expected: bool
) -> list[str]:
    """What is wrong with a frozen app's ``doctor --json`` report; empty when nothing is.

    ``tray_expected``: a tray host runs (a desktop session), so a tray
    backend must have loaded.
    """
    problems: list[str] = []

    def bundled(label: str) -> None:
        value = report.get(label, "")
        if value == "not bundled" or value.endswith("(missing)") or not value:
            problems.append(f"{label} is not in the bundle: {value or 'no such line'}")

    if version is not None and report.get("version") != f"ollama-manager {version}":
        problems.append(f"version is {report.get('version')!r}, expected 'ollama-manager {version}'")
    if not report.get("frozen", "").startswith("yes (PyInstaller bundle in "):
        problems.append(f"not running frozen: {report.get('frozen')!r}")
    launch = shlex.split(report.get("start at login runs", ""))
    if len(launch) != 1 or not is_inside(launch[0], bundle_dir):
        problems.append(f"start at login runs {launch} instead of the bundle's executable in {bundle_dir}")
    backend = report.get("tray backend", "")
    if tray_expected and backend.split(" ", 1)[0] not in expected_tray_backends(platform):
        problems.append(f"tray backend: {backend}")
    notifier = report.get("notifier", "")
    plyer_loaded = notifier.startswith("plyer ") and not notifier.startswith("plyer unavailable")
    if platform != "darwin" and not plyer_loaded:
        problems.append(f"notifier: {notifier}")  # plyer's macOS backend needs pyobjus; osascript stands in
    if platform == "darwin" and "osascript" not in report.get("notifier fallbacks", ""):
        problems.append(f"notifier fallbacks: {report.get('notifier fallbacks')}")
    if report.get("nvml", "").startswith("not available"):
        problems.append(f"nvml: {report.get('nvml')}")
    if platform.startswith("linux") and not report.get("jeepney", "").startswith("present"):
        problems.append(f"jeepney: {report.get('jeepney')}")
    bundled("default modelfile")
    bundled("icon")
    return problems


def import_errors(log_text: str) -> list[str]:
    """Lines of a log that show an import error or a traceback."""
    return [line.strip() for line in log_text.splitlines() if any(marker in line for marker in IMPORT_ERROR_MARKERS)]


def differs_from(rgb: tuple[int, int, int], background: tuple[int, int, int], tolerance: int = 40) -> bool:
    """Whether a pixel is clearly not the panel background."""
    return sum(abs(a - b) for a, b in zip(rgb, background, strict=True)) > tolerance


# --- running the bundle (side effects) -------------------------------------------------


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something true; SmokeFailure after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SmokeFailure(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def isolated_env(root: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` with HOME, the XDG folders and the Windows app-data folders under ``root``."""
    env = dict(os.environ if base is None else base)
    folders = {
        "HOME": root / "home",
        "USERPROFILE": root / "home",
        "APPDATA": root / "appdata" / "roaming",
        "LOCALAPPDATA": root / "appdata" / "local",
        "XDG_CONFIG_HOME": root / "xdg" / "config",
        "XDG_DATA_HOME": root / "xdg" / "data",
        "XDG_STATE_HOME": root / "xdg" / "state",
        "XDG_CACHE_HOME": root / "xdg" / "cache",
    }
    for path in folders.values():
        path.mkdir(parents=True, exist_ok=True)
    env.update({name: str(path) for name, path in folders.items()})
    return env


@dataclass
class Bundle:
    """A built bundle's executables."""

    dir: Path
    cli: Path
    gui: Path
    platform: str

    @classmethod
    def in_dist(cls, dist: Path, platform: str = sys.platform) -> Bundle:
        """The bundle ``build.py`` left in ``dist``; SmokeFailure when it is not there."""
        layout = load_packaging("info").bundle_layout(platform)
        bundle = cls(dist / layout.bundle_dir, dist / layout.cli_executable, dist / layout.gui_executable, platform)
        if not bundle.cli.is_file():
            raise SmokeFailure(f"no bundle at {bundle.cli}: run python packaging/build.py first")
        return bundle

    def run(self, *args: str, env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the command-line executable to completion."""
        return subprocess.run(
            [str(self.cli), *args],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=env.get("HOME"),
            check=False,
        )

    @contextmanager
    def background(
        self, args: Sequence[str], env: Mapping[str, str], log: Path, gui: bool = False
    ) -> Iterator[subprocess.Popen[bytes]]:
        """Start the bundle in its own process group; stop (TERM, then KILL) and reap it on exit."""
        executable = self.gui if gui else self.cli
        with log.open("wb") as output:
            process = subprocess.Popen(
                [str(executable), *args],
                env=dict(env),
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=env.get("HOME"),
                start_new_session=os.name == "posix",
            )
        try:
            yield process
        finally:
            stop_process(process)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """TERM the process (its group on POSIX), KILL it after ``timeout`` s, and reap it."""
    if process.poll() is None:
        if os.name == "posix":
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            if os.name == "posix":
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
            process.wait(10)


class Report:
    """Prints each check as it passes, or why it could not run here."""

    def __init__(self) -> None:
        self.passed = 0
        self.skipped = 0

    def ok(self, what: str) -> None:
        self.passed += 1
        print(f"ok   {what}", flush=True)

    def skip(self, why: str) -> None:
        self.skipped += 1
        print(f"skip {why}", flush=True)


def installed_version() -> str | None:
    """The version the source tree is installed as (what the bundle must report)."""
    try:
        return importlib.metadata.version("ollama-manager")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_version(bundle: Bundle, env: Mapping[str, str], version: str | None, report: Report) -> None:
    done = bundle.run("--version", env=env)
    expected = f"ollama-manager {version}" if version else "ollama-manager "
    if done.returncode != 0 or not done.stdout.strip().startswith(expected):
        raise SmokeFailure(f"--version exited {done.returncode} with {done.stdout.strip() or done.stderr.strip()!r}")
    report.ok(f"--version: {done.stdout.strip()}")


def run_doctor(bundle: Bundle, env: Mapping[str, str]) -> dict[str, str]:
    done = bundle.run("doctor", "--json", env=env)
    if done.returncode != 0:
        raise SmokeFailure(f"doctor exited {done.returncode}: {done.stderr.strip().splitlines()[-1:] or ''}")
    try:
        return dict(json.loads(done.stdout))
    except ValueError:
        raise SmokeFailure(f"doctor --json printed no JSON: {done.stdout[:200]!r}") from None


def check_doctor(
    bundle: Bundle, env: Mapping[str, str], version: str | None, report: Report, tray_expected: bool
) -> dict[str, str]:
    doctor = run_doctor(bundle, env)
    problems = doctor_problems(
        doctor, platform=bundle.platform, version=version, bundle_dir=bundle.dir, tray_expected=tray_expected
    )
    if problems:
        raise SmokeFailure("doctor: " + "; ".join(problems))
    report.ok(f"doctor: tray {doctor['tray backend']}, {doctor['notifier']}, nvml {doctor['nvml']}")
    return doctor


def check_status_without_ollama(bundle: Bundle, env: Mapping[str, str], report: Report) -> None:
    started = time.monotonic()
    done = bundle.run("status", "--json", env=env)
    try:
        status = json.loads(done.stdout)
    except ValueError:
        raise SmokeFailure(
            f"status --json printed no JSON (exit {done.returncode}): {done.stderr.strip()[:300]}"
        ) from None
    if done.returncode != STATUS_NOT_RUNNING_EXIT or status.get("ollama_running") is not False:
        raise SmokeFailure(
            f"status --json without Ollama: exit {done.returncode}, ollama_running={status.get('ollama_running')}"
        )
    report.ok(
        f"status --json without Ollama: exit 3, health {status.get('health')} ({time.monotonic() - started:.1f} s)"
    )


def cli_status(bundle: Bundle, env: Mapping[str, str]) -> dict[str, Any] | None:
    """``status --json`` of the frozen app (the running monitor's, when there is one), or None."""
    try:
        done = bundle.run("status", "--json", env=env, timeout=60)
        return dict(json.loads(done.stdout))
    except (ValueError, subprocess.TimeoutExpired):
        return None


def healthy_status(bundle: Bundle, env: Mapping[str, str], monitor: bool = True) -> dict[str, Any] | None:
    """The status when Ollama is up and healthy (and, with ``monitor``, watched by a running monitor)."""
    status = cli_status(bundle, env)
    if not status or not status.get("ollama_running") or status.get("health") != "healthy":
        return None
    if monitor and (not status.get("monitor_running") or status.get("state") != "running"):
        return None
    return status


def kill(pid: int) -> None:
    """A hard kill: SIGKILL on POSIX, TerminateProcess on Windows."""
    import psutil

    psutil.Process(pid).kill()


def serve_pids(standin: Any) -> list[int]:
    return [event["pid"] for event in standin.events() if event["event"] == "serve_start"]


def bundle_leaks(environment: Mapping[str, str], bundle_dir: Path, frozen_child: bool = False) -> list[str]:
    """Variables the bundle's bootloader set that a child process must not inherit.

    ``frozen_child``: the child is a PyInstaller program itself (the frozen stand-in),
    whose own bootloader sets ``_PYI_*`` variables; only those naming our bundle leak.
    """
    if frozen_child:
        leaks = [
            name for name, value in environment.items() if name.startswith("_PYI_") and is_inside(value, bundle_dir)
        ]
    else:
        leaks = [name for name in environment if name.startswith("_PYI_")]
    leaks += [
        f"LD_LIBRARY_PATH={entry}"
        for entry in environment.get("LD_LIBRARY_PATH", "").split(os.pathsep)
        if entry and is_inside(entry, bundle_dir)
    ]
    return leaks


def standin_env(root: Path, executable: Path | None) -> tuple[Any, dict[str, str]]:
    """A stand-in Ollama (not started) and the frozen app's environment pointing at it."""
    sys.path.insert(0, str(REPO / "tests"))
    from standin.harness import StandinEnv

    standin = StandinEnv(root / "standin", executable=executable)
    env = {**isolated_env(root / "manager", standin.env), **FAST_SETTINGS}
    return standin, env


def check_cli_against_standin(bundle: Bundle, root: Path, report: Report, executable: Path | None) -> None:
    """``start`` runs the stand-in's serve, ``status --json`` calls it healthy, ``stop`` ends it gracefully."""
    standin, env = standin_env(root, executable)
    try:
        done = bundle.run("start", env=env)
        started = f"Ollama is running at {standin.base_url} (started, pid "
        if done.returncode != 0 or not done.stdout.startswith(started):
            raise SmokeFailure(f"start exited {done.returncode}: {(done.stdout + done.stderr).strip()[-300:]}")
        pid = serve_pids(standin)[0]
        report.ok(f"start: {done.stdout.strip()}")
        status = wait_until(lambda: healthy_status(bundle, env, monitor=False), 30, "status --json to say healthy")
        if status.get("pid") != pid:
            raise SmokeFailure(f"status --json names pid {status.get('pid')}, the serve is {pid}")
        report.ok(f"status --json: ollama_running, health {status['health']}, pid {pid}")
        done = bundle.run("stop", env=env)
        if done.returncode != 0 or done.stdout.strip() != "Ollama stopped":
            raise SmokeFailure(f"stop exited {done.returncode}: {(done.stdout + done.stderr).strip()[-300:]}")
        exits = [event for event in standin.events() if event["event"] == "serve_exit" and event["pid"] == pid]
        if not exits:
            raise SmokeFailure(f"stop killed ollama serve (pid {pid}) instead of asking it to stop")
        events = json.loads(bundle.run("events", "--json", env=env).stdout)
        stops = [event["message"] for event in events if event.get("kind") == "stop"]
        if not stops or "gracefully" not in stops[-1]:
            raise SmokeFailure(f"the stop was not graceful: {stops[-1:]}")
        report.ok(f"stop: ollama serve (pid {pid}) exited on its own, signal {exits[0]['signal']} ({stops[-1]})")
        after = bundle.run("status", "--json", env=env)
        if after.returncode != STATUS_NOT_RUNNING_EXIT:
            raise SmokeFailure(f"status --json after stop: exit {after.returncode}")
    finally:
        standin.cleanup()


def check_monitor_against_standin(bundle: Bundle, root: Path, report: Report, executable: Path | None) -> None:
    """``monitor`` starts the stand-in's serve, ``status`` sees it, and a killed serve is replaced."""
    import psutil

    standin, env = standin_env(root / "monitor", executable)
    try:
        with bundle.background(["monitor"], env, root / "monitor.log") as monitor:
            first = wait_until(lambda: healthy_status(bundle, env), 60, "the frozen monitor to report a healthy Ollama")
            pid = serve_pids(standin)[0]
            report.ok(f"monitor started ollama serve (pid {pid}), health {first['health']}")
            leaks = bundle_leaks(psutil.Process(pid).environ(), bundle.dir, frozen_child=executable is not None)
            if leaks:
                raise SmokeFailure(f"ollama serve inherited the bundle's environment: {', '.join(leaks)}")
            report.ok("ollama serve runs with the user's environment (no bundle library path)")
            kill(pid)
            wait_until(lambda: len(serve_pids(standin)) >= 2, 30, "the monitor to start a new serve after the kill")
            again = wait_until(lambda: healthy_status(bundle, env), 60, "health after the restart")
            if again.get("pid") == pid:
                raise SmokeFailure(f"after the kill the status still names the dead pid {pid}")
            report.ok(f"kill of serve {pid} noticed: restarted as pid {again.get('pid')}")
            if monitor.poll() is not None:
                raise SmokeFailure(f"the monitor exited with status {monitor.returncode}")
        problems = import_errors((root / "monitor.log").read_text(errors="replace"))
        if problems:
            raise SmokeFailure(f"monitor log: {problems[0]}")
    finally:
        standin.cleanup()


RUN_KEY = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run"


def autostart_artifact(bundle: Bundle, env: Mapping[str, str]) -> str | None:
    """What the OS will start at login, read back with the OS's own tools; None when nothing is registered."""
    if bundle.platform == "darwin":
        import plistlib

        plist = Path(env["HOME"]) / "Library" / "LaunchAgents" / "io.github.ollama-manager.plist"
        if not plist.exists():
            return None
        lint = subprocess.run(["plutil", "-lint", str(plist)], capture_output=True, text=True, check=False)
        if lint.returncode != 0:
            raise SmokeFailure(f"plutil -lint {plist}: {lint.stdout.strip()}")
        with plist.open("rb") as file:
            agent = plistlib.load(file)
        if agent.get("RunAtLoad") is not True:
            raise SmokeFailure(f"{plist} does not run at load: {agent}")
        return " ".join(agent["ProgramArguments"])
    if bundle.platform == "win32":
        done = subprocess.run(
            ["reg", "query", RUN_KEY, "/v", "Ollama Manager"], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            return None
        line = next((line for line in done.stdout.splitlines() if "Ollama Manager" in line and "REG_SZ" in line), "")
        return line.split("REG_SZ", 1)[-1].strip()
    entry = Path(env["XDG_CONFIG_HOME"]) / "autostart" / "ollama-manager.desktop"
    if not entry.exists():
        return None
    return next(line[5:] for line in entry.read_text().splitlines() if line.startswith("Exec="))


def check_autostart_round_trip(bundle: Bundle, root: Path, report: Report) -> None:
    """``autostart enable``, ``status``, ``disable`` with the OS's own mechanism, for the windowed executable."""
    env = isolated_env(root / "autostart")
    before = bundle.run("autostart", "status", env=env).stdout.strip()
    if bundle.platform == "win32" and ": enabled" in before:
        report.skip(f"autostart: this user already starts Ollama Manager at login ({before}); not touched")
        return
    try:
        done = bundle.run("autostart", "enable", env=env)
        if done.returncode != 0:
            raise SmokeFailure(f"autostart enable exited {done.returncode}: {done.stderr.strip()}")
        registered = autostart_artifact(bundle, env)
        expected = bundle.gui.absolute()
        if registered is None or str(expected) not in registered.replace('"', ""):
            raise SmokeFailure(f"start at login runs {registered!r}, not the bundle's {expected}")
        status = bundle.run("autostart", "status", env=env).stdout.strip()
        if ": enabled" not in status:
            raise SmokeFailure(f"autostart status after enable: {status}")
        done = bundle.run("autostart", "disable", env=env)
        if done.returncode != 0 or autostart_artifact(bundle, env) is not None:
            raise SmokeFailure(f"autostart disable left {autostart_artifact(bundle, env)!r}: {done.stdout.strip()}")
        report.ok(f"autostart enable|status|disable: {registered}")
    finally:
        bundle.run("autostart", "disable", env=env)


def check_notification(bundle: Bundle, root: Path, report: Report) -> None:
    """``notify`` sends a notification without error; on Linux a private bus's notification server gets it."""
    env = isolated_env(root / "notify")
    if not bundle.platform.startswith("linux"):
        done = bundle.run("notify", "Ollama Manager", "Smoke test notification", env=env)
        if done.returncode != 0:
            raise SmokeFailure(f"notify exited {done.returncode}: {done.stderr.strip()}")
        report.ok(f"notify: {done.stdout.strip()}")
        return
    sys.path[:0] = [str(REPO / "tests"), str(REPO)]
    from tests.support.notification_server import NoDbusDaemon, NotificationServer, private_session_bus

    try:
        with private_session_bus() as address:
            server = NotificationServer(address)
            try:
                env = {**env, "DBUS_SESSION_BUS_ADDRESS": address}
                done = bundle.run("notify", "Ollama Manager", "Smoke test notification", env=env)
                if done.returncode != 0:
                    raise SmokeFailure(f"notify exited {done.returncode}: {done.stderr.strip()}")
                received = server.notifications(1)
                if not received or received[0][3:5] != ("Ollama Manager", "Smoke test notification"):
                    raise SmokeFailure(f"the notification server received {received}")
                report.ok(f"notify: {done.stdout.strip()}, received by the session's notification server")
            finally:
                server.close()
    except NoDbusDaemon:
        raise SmokeFailure("the notification check needs dbus-daemon (apt-get install dbus)") from None


def check_tray_linux(bundle: Bundle, root: Path, seconds: float, version: str | None, report: Report) -> None:
    """The tray under Xvfb + openbox + tint2: doctor sees the tray, the icon docks, no import errors."""
    sys.path[:0] = [str(REPO / "tests"), str(REPO)]
    from standin.harness import StandinEnv
    from tests.support.xdesktop import XDesktop, missing_tools

    missing = missing_tools()
    if missing:
        raise SmokeFailure(
            f"the tray check needs {', '.join(missing)} (apt-get install xvfb openbox tint2 imagemagick)"
        )
    standin = StandinEnv(root / "tray-standin")
    try:
        with XDesktop(root / "desktop") as desktop:
            env = {**standin.env, **FAST_SETTINGS, "DISPLAY": desktop.display, "DBUS_SESSION_BUS_ADDRESS": "disabled:"}
            env.pop("WAYLAND_DISPLAY", None)
            check_doctor(bundle, env, version, report, tray_expected=True)
            log = root / "tray.log"
            with bundle.background([], env, log, gui=True) as tray:
                time.sleep(seconds)
                if tray.poll() is not None:
                    raise SmokeFailure(f"the tray exited with status {tray.returncode}: {last_line(log)}")
                panel = desktop.screenshot(root / "panel.png").crop(desktop.tray_box)
                colours = panel.getcolors(maxcolors=panel.width * panel.height) or []
                drawn = sum(count for count, rgb in colours if differs_from(rgb, PANEL_BACKGROUND))
                if drawn < 100:
                    raise SmokeFailure("no tray icon in the panel after the tray started")
                report.ok(f"tray ran {seconds:g} s under Xvfb, its icon shows ({drawn} px)")
            check_tray_logs(log, Path(env["XDG_STATE_HOME"]) / "ollama-manager" / "log", report)
    finally:
        standin.cleanup()


def check_tray_sni_linux(bundle: Bundle, root: Path, version: str | None, report: Report) -> None:
    """The tray as a StatusNotifierItem in xfce4-panel: registered, its menu exported, its icon drawn."""
    sys.path[:0] = [str(REPO / "tests"), str(REPO)]  # tray_driver imports tests.manager
    from standin.harness import StandinEnv
    from tests.support.sni_host import SniHost
    from tests.support.tray_driver import icon_state_of
    from tests.support.xdesktop import XfceDesktop, missing_xfce_tools

    missing = missing_xfce_tools()
    if missing:
        raise SmokeFailure(
            f"the StatusNotifierItem check needs {', '.join(missing)} (apt-get install xfce4-panel dbus-x11 xdotool)"
        )
    standin = StandinEnv(root / "sni-standin")
    try:
        with XfceDesktop(root / "xfce") as desktop:
            assert desktop.bus is not None
            env = {
                **standin.env,
                **FAST_SETTINGS,
                "DISPLAY": desktop.display,
                "DBUS_SESSION_BUS_ADDRESS": desktop.bus.address,
            }
            for name in ("WAYLAND_DISPLAY", "PYSTRAY_BACKEND", "XDG_RUNTIME_DIR"):
                env.pop(name, None)
            doctor = check_doctor(bundle, env, version, report, tray_expected=True)
            if not doctor["tray backend"].startswith("sni "):
                raise SmokeFailure(f"doctor under xfce4-panel: tray backend {doctor['tray backend']}")
            log = root / "tray-sni.log"
            with bundle.background([], env, log, gui=True) as tray, SniHost(desktop.bus.address) as host:
                item = wait_until(host.registered_items, 30, "the tray's StatusNotifierItem to register")[0]
                if not item.bus_name.startswith(f"org.kde.StatusNotifierItem-{tray.pid}-"):
                    raise SmokeFailure(f"the registered item {item} is not the tray's (pid {tray.pid})")
                labels = host.layout(item)[1].labels()
                if "Restart Ollama" not in labels or "Quit" not in labels:
                    raise SmokeFailure(f"the item's menu lacks Restart Ollama or Quit: {labels}")

                def drawn_state() -> Any:
                    return icon_state_of(desktop.screenshot(root / "xfce-panel.png"), desktop.tray_box)

                state = wait_until(drawn_state, 30, "xfce4-panel to draw the tray icon")
                report.ok(f"StatusNotifierItem {item.bus_name} in xfce4-panel: {len(labels)} menu items, {state.name}")
                if tray.poll() is not None:
                    raise SmokeFailure(f"the tray exited with status {tray.returncode}: {last_line(log)}")
            check_tray_logs(log, Path(env["XDG_STATE_HOME"]) / "ollama-manager" / "log", report)
    finally:
        standin.cleanup()


def missing_tray_host(platform: str = sys.platform) -> str | None:
    """Why this session cannot show a tray icon (macOS, Windows), or None when it can."""
    if platform == "win32":
        import ctypes

        if not ctypes.windll.user32.GetShellWindow():  # type: ignore[attr-defined]
            return "no Windows shell (Explorer, which hosts the notification area) runs in this session"
        return None
    if platform == "darwin":
        done = subprocess.run(["launchctl", "managername"], capture_output=True, text=True, check=False)
        if done.stdout.strip() != "Aqua":
            return f"this is a {done.stdout.strip() or 'non-GUI'} session, not a GUI (Aqua) one with a menu bar"
    return None


def check_tray_plain(bundle: Bundle, root: Path, seconds: float, report: Report) -> None:
    """macOS and Windows: the tray executable keeps running and logs no import error, where a tray can show."""
    missing = missing_tray_host(bundle.platform)
    if missing is not None:
        report.skip(f"tray: this runner cannot show a tray ({missing}); every other check ran")
        return
    env = {**isolated_env(root / "tray-home"), **FAST_SETTINGS, "OLLAMA_HOST": f"127.0.0.1:{free_port()}"}
    log = root / "tray.log"
    with bundle.background([], env, log, gui=True) as tray:
        time.sleep(seconds)
        if tray.poll() is not None:
            raise SmokeFailure(f"the tray exited with status {tray.returncode}: {last_line(log)}")
        report.ok(f"tray ran {seconds:g} s")
    check_tray_logs(log, root / "tray-home", report)


def last_line(log: Path) -> str:
    """The first import error in a log, else its last non-blank line."""
    text = log.read_text(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = import_errors(text)
    return (errors[-1] if errors else lines[-1]) if lines else "no output"


def check_tray_logs(output: Path, log_root: Path, report: Report) -> None:
    texts = [output.read_text(errors="replace")]
    texts += [path.read_text(errors="replace") for path in log_root.rglob("ollama-manager.log")]
    problems = import_errors("\n".join(texts))
    if problems:
        raise SmokeFailure(f"tray log: {problems[0]}")
    report.ok("tray log has no import errors")


def frozen_standin(root: Path, platform: str = sys.platform) -> Path | None:
    """Windows runs only executables: the stand-in, frozen (reused while current); elsewhere the script."""
    configured = os.environ.get("OLLAMA_STANDIN_EXECUTABLE", "")
    if configured:
        return Path(configured)
    if platform != "win32":
        return None
    sys.path.insert(0, str(REPO / "tests" / "standin"))
    import freeze

    return Path(freeze.freeze(root))


def smoke_test(dist: Path, *, standin: bool, tray: bool, tray_seconds: float) -> int:
    """Run every check against the bundle in ``dist``; the number of checks passed."""
    report = Report()
    bundle = Bundle.in_dist(dist)
    version = installed_version()
    with tempfile.TemporaryDirectory(prefix="om-smoke-") as scratch:
        root = Path(scratch)
        env = {**isolated_env(root / "plain"), "OLLAMA_HOST": f"127.0.0.1:{free_port()}", "PATH": os.defpath}
        env.pop("DISPLAY", None)
        check_version(bundle, env, version, report)
        check_doctor(bundle, env, version, report, tray_expected=bundle.platform in ("darwin", "win32"))
        check_status_without_ollama(bundle, env, report)
        if standin:
            executable = frozen_standin(root / "standin-build")
            check_cli_against_standin(bundle, root / "cli", report, executable)
            check_monitor_against_standin(bundle, root, report, executable)
        check_autostart_round_trip(bundle, root, report)
        check_notification(bundle, root, report)
        if tray and bundle.platform.startswith("linux"):
            check_tray_linux(bundle, root, tray_seconds, version, report)
            check_tray_sni_linux(bundle, root, version, report)
        elif tray:
            check_tray_plain(bundle, root, tray_seconds, report)
    return report.passed


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description="Smoke-test the bundle that build.py made.")
    parser.add_argument("--dist", type=Path, default=REPO / "dist", help="folder holding the bundle (default dist/)")
    parser.add_argument("--skip-standin", action="store_true", help="skip the checks against the stand-in Ollama")
    parser.add_argument("--skip-tray", action="store_true", help="skip running the tray")
    parser.add_argument("--tray-seconds", type=float, default=5.0, help="how long the tray runs (default 5)")
    args = parser.parse_args(argv)
    try:
        passed = smoke_test(
            args.dist.absolute(), standin=not args.skip_standin, tray=not args.skip_tray, tray_seconds=args.tray_seconds
        )
    except SmokeFailure as exc:
        print(f"FAIL {exc}", file=sys.stderr)
        return 1
    print(f"smoke test passed: {passed} checks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
