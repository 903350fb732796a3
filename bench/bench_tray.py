"""The tray app's start-up time and idle cost, on a throwaway X desktop against the stand-in Ollama.

    python bench/bench_tray.py [--runs N] [--idle-seconds S] [--backend xembed|sni|both]

Runs the real tray (``python -m tray``) with each backend:

- ``xembed``: pystray's xorg backend, docked in tint2 under Xvfb + openbox,
  with no session bus;
- ``sni``: the StatusNotifierItem, in xfce4-panel under Xvfb + openbox, on a
  private session bus;

and measures:

- cold start (N runs, each with fresh state dirs and no Ollama running), from
  launching the process to:
    * its icon in the panel: docked (an icon window in the X window tree) or
      registered (listed by the StatusNotifier watcher),
    * its icon visible in the panel (its pixels on screen, read from the X
      server every few milliseconds),
    * the icon green (Ollama started by the tray and reported healthy);
- idle: CPU % and RSS of the tray process over S seconds at the default 30 s
  health-check interval (5 s timeout), once Ollama is healthy. Like
  ``bench_supervisor.py``, the model is not built, so the checks are API probes.

Needs Xvfb, openbox, tint2, ImageMagick and, for ``sni``, xfce4-panel and
D-Bus (``apt-get install -y xvfb openbox tint2 imagemagick xfce4-panel dbus-x11``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from standin.harness import StandinEnv  # noqa: E402
from tests.support.manager import Manager  # noqa: E402
from tests.support.sni_host import SniHost  # noqa: E402
from tests.support.tray_driver import (  # noqa: E402
    NotificationLog,
    TrayProcess,
    docked_icons,
    grab_screen,
    icon_state_of,
    tray_env,
    wait_for,
)
from tests.support.xdesktop import XDesktop, XfceDesktop, missing_tools, missing_xfce_tools  # noqa: E402
from tray.ui.icon import IconState  # noqa: E402

POLL_SECONDS = 0.005
START_TIMEOUT = 30.0
DEFAULT_INTERVALS = {"OLLAMA_MANAGER_HEALTH_CHECK_INTERVAL": "30", "OLLAMA_MANAGER_HEALTH_CHECK_TIMEOUT": "5"}


@dataclass(frozen=True)
class ColdStart:
    """Seconds from launching ``python -m tray`` to each milestone; None when it never came."""

    docked: float | None
    visible: float | None
    green: float | None


@dataclass(frozen=True)
class IdleCost:
    """The tray process's use of one core and its memory over a quiet stretch."""

    seconds: float
    cpu_percent: float
    rss_mean_mib: float
    rss_max_mib: float
    threads: int


def percentile_summary(name: str, values: list[float]) -> str:
    """``name: n=5 p50=0.81 s max=0.95 s``.

    >>> percentile_summary("x", [0.5, 0.25, 1.0])
    'x: n=3 p50=0.50 s max=1.00 s'
    """
    return f"{name}: n={len(values)} p50={statistics.median(values):.2f} s max={max(values):.2f} s"


def milestone_summary(name: str, values: list[float | None]) -> str:
    """The percentiles of the runs that reached a milestone, and how many did not.

    >>> milestone_summary("x", [0.5, None, 1.0])
    'x: n=2 p50=0.75 s max=1.00 s; not reached in 1 of 3 runs'
    """
    reached = [value for value in values if value is not None]
    missed = len(values) - len(reached)
    summary = percentile_summary(name, reached) if reached else f"{name}: never reached"
    return summary + (f"; not reached in {missed} of {len(values)} runs" if missed else "")


def cpu_percent(cpu_seconds: float, wall_seconds: float) -> float:
    """CPU time as a percentage of one core over ``wall_seconds``.

    >>> cpu_percent(0.3, 60.0)
    0.5
    """
    return 100.0 * cpu_seconds / wall_seconds


def launch_tray(
    desktop: XDesktop, workdir: Path, extra_env: dict[str, str] | None = None
) -> tuple[TrayProcess, StandinEnv, Manager]:
    """A fresh stand-in home and a tray process started on ``desktop`` (not yet waited for)."""
    standin = StandinEnv(workdir)
    manager = Manager(standin.env, workdir)
    manager.env.update(extra_env or {})
    bus_address = desktop.bus.address if desktop.bus is not None else "disabled:"
    tray = TrayProcess(
        tray_env(manager.env, desktop.display, NotificationLog(workdir), bus_address=bus_address), workdir
    )
    return tray.start(), standin, manager


@contextmanager
def panel_probe(desktop: XDesktop) -> Iterator[Callable[[], bool]]:
    """Whether a tray icon is in the panel: docked there (XEmbed) or registered with its watcher (SNI)."""
    if desktop.bus is None:
        yield lambda: bool(docked_icons(desktop.display))
        return
    with SniHost(desktop.bus.address) as host:
        yield lambda: bool(host.registered_items())


def icon_in_panel(desktop: XDesktop) -> bool:
    """:func:`panel_probe`, asked once."""
    with panel_probe(desktop) as probe:
        return probe()


def time_cold_start(desktop: XDesktop, workdir: Path) -> ColdStart:
    """Launch the tray once and time its milestones, giving up on the ones not reached in START_TIMEOUT."""
    wait_for(lambda: not icon_in_panel(desktop), 10, "the last icon to leave the panel")
    tray, standin, _ = launch_tray(desktop, workdir)
    assert tray.started_at is not None
    docked = visible = None
    try:
        with panel_probe(desktop) as in_panel:
            deadline = tray.started_at + START_TIMEOUT
            panel = (0, 0, desktop.width, desktop.panel_height)
            while time.monotonic() < deadline:
                if docked is None and in_panel():
                    docked = time.monotonic() - tray.started_at
                screen = grab_screen(desktop.display, desktop.tray_box)
                seen_at = time.monotonic() - tray.started_at
                state = icon_state_of(screen, panel)
                if visible is None and state is not None:
                    visible = seen_at
                if state is IconState.HEALTHY and docked is not None and visible is not None:
                    return ColdStart(docked, visible, seen_at)
                if not tray.running():
                    raise RuntimeError(f"the tray exited early: {tray.output()}")
                time.sleep(POLL_SECONDS)
        return ColdStart(docked, visible, None)
    finally:
        tray.stop()
        standin.cleanup()


def measure_idle(desktop: XDesktop, workdir: Path, seconds: float) -> IdleCost:
    """CPU and RSS of a tray idling over a healthy Ollama at the default check interval."""
    wait_for(lambda: not icon_in_panel(desktop), 10, "the last icon to leave the panel")
    tray, standin, manager = launch_tray(desktop, workdir, DEFAULT_INTERVALS)
    try:
        wait_for(lambda: (s := manager.api_status()) and s["health"] == "healthy", START_TIMEOUT, "a healthy Ollama")
        process = psutil.Process(tray.pid)
        time.sleep(2)  # let start-up work (first check, first render) finish
        before = process.cpu_times()
        started = time.monotonic()
        rss = []
        while time.monotonic() - started < seconds:
            rss.append(process.memory_info().rss)
            time.sleep(1)
        after = process.cpu_times()
        wall = time.monotonic() - started
        threads = process.num_threads()
    finally:
        tray.stop()
        standin.cleanup()
    used = (after.user + after.system) - (before.user + before.system)
    return IdleCost(wall, cpu_percent(used, wall), statistics.mean(rss) / 2**20, max(rss) / 2**20, threads)


def bench_backend(name: str, desktop: XDesktop, workdir: Path, runs: int, idle_seconds: float) -> None:
    """Print the cold-start milestones and the idle cost of the tray on ``desktop``."""
    in_panel = "registered with the watcher" if desktop.bus is not None else "docked in the panel"
    starts = [time_cold_start(desktop, workdir / f"start-{run}") for run in range(runs)]
    for milestone, values in (
        (f"launch -> icon {in_panel}", [s.docked for s in starts]),
        ("launch -> icon visible in the panel", [s.visible for s in starts]),
        ("launch -> icon green (Ollama started and healthy)", [s.green for s in starts]),
    ):
        print(f"[{name}] {milestone_summary(milestone, values)}")
    idle = measure_idle(desktop, workdir / "idle", idle_seconds)
    print(
        f"[{name}] tray idle over {idle.seconds:.0f} s at a 30 s interval: CPU {idle.cpu_percent:.2f} % of one core, "
        f"RSS {idle.rss_mean_mib:.1f} MiB mean / {idle.rss_max_mib:.1f} MiB max, {idle.threads} threads"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="cold starts to time (default 5)")
    parser.add_argument("--idle-seconds", type=float, default=60, help="idle measurement length (default 60)")
    parser.add_argument(
        "--backend", choices=("xembed", "sni", "both"), default="both", help="which tray (default both)"
    )
    args = parser.parse_args()
    backends = ["xembed", "sni"] if args.backend == "both" else [args.backend]
    missing = (missing_tools() if "xembed" in backends else []) + (missing_xfce_tools() if "sni" in backends else [])
    if missing:
        print(
            f"bench_tray: needs {', '.join(missing)} "
            "(apt-get install -y xvfb openbox tint2 imagemagick xfce4-panel dbus-x11 xdotool)",
            file=sys.stderr,
        )
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-tray-") as tmp:
        for name in backends:
            kind = XDesktop if name == "xembed" else XfceDesktop
            with kind(Path(tmp) / f"desktop-{name}") as desktop:
                bench_backend(name, desktop, Path(tmp) / name, args.runs, args.idle_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
