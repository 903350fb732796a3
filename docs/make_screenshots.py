"""Screenshots of the tray icon for the docs: ``tray-healthy.png`` and ``tray-down.png``.

    python docs/make_screenshots.py [--out DIR] [--scale N] [--padding PX]

Runs the real tray app (``python -m tray``) on a throwaway X desktop (Xvfb,
openbox and tint2's tray panel) against the stand-in Ollama from ``tests/``,
the same set-up as ``tests/test_tray_e2e.py``:

- healthy: the icon once Ollama answers;
- down: the icon right after ``ollama serve`` is killed (SIGKILL), before the
  manager's restart brings it back.

Each picture is the panel around the docked icon, scaled up without
smoothing so its pixels stay sharp. Needs Xvfb, openbox, tint2 and ImageMagick
(``apt-get install -y xvfb openbox tint2 imagemagick``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from standin.harness import StandinEnv  # noqa: E402
from tests.support.manager import Manager  # noqa: E402
from tests.support.tray_driver import (  # noqa: E402
    Box,
    NotificationLog,
    TrayProcess,
    docked_icons,
    padded,
    tray_env,
    wait_for,
    wait_for_icon_state,
)
from tests.support.xdesktop import XDesktop, missing_tools  # noqa: E402
from tray.ui.icon import IconState  # noqa: E402

HEALTHY_FILE = "tray-healthy.png"
DOWN_FILE = "tray-down.png"


def enlarged(image: Image.Image, box: Box, scale: int) -> Image.Image:
    """``box`` of ``image``, ``scale`` times larger, each pixel a sharp square."""
    left, top, right, bottom = box
    return image.crop(box).resize(((right - left) * scale, (bottom - top) * scale), Image.Resampling.NEAREST)


def capture(out_dir: Path, scale: int, padding: int, workdir: Path) -> list[Path]:
    """Run the tray, photograph it healthy and down; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with XDesktop(workdir / "desktop") as desktop:
        standin = StandinEnv(workdir / "standin")
        manager = Manager(standin.env, workdir)
        tray = TrayProcess(tray_env(manager.env, desktop.display, NotificationLog(workdir)), workdir)
        screenshot: Callable[[], Image.Image] = lambda: desktop.screenshot(workdir / "screen.png")  # noqa: E731
        try:
            tray.start()
            healthy, _ = wait_for_icon_state(
                screenshot, desktop.tray_box, lambda s: s is IconState.HEALTHY, 30, "a green icon"
            )
            (icon,) = docked_icons(desktop.display)
            area = padded(icon.box, padding, desktop.tray_box)
            status = wait_for(manager.api_status, 20, "the status API")
            os.kill(status["pid"], signal.SIGKILL)  # type: ignore[index]
            down, _ = wait_for_icon_state(
                screenshot, desktop.tray_box, lambda s: s is IconState.DOWN, 10, "a red icon", interval=0.0
            )
        finally:
            tray.stop()
            standin.cleanup()
    written = [out_dir / HEALTHY_FILE, out_dir / DOWN_FILE]
    for image, path in zip((healthy, down), written, strict=True):
        enlarged(image, area, scale).save(path, optimize=True)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="where to write the PNGs")
    parser.add_argument("--scale", type=int, default=3, help="enlargement factor (default 3)")
    parser.add_argument("--padding", type=int, default=12, help="panel pixels kept around the icon (default 12)")
    args = parser.parse_args()
    missing = missing_tools()
    if missing:
        print(
            f"make_screenshots: needs {', '.join(missing)} (apt-get install -y xvfb openbox tint2 imagemagick)",
            file=sys.stderr,
        )
        return 1
    with tempfile.TemporaryDirectory(prefix="tray-shots-") as workdir:
        try:
            written = capture(args.out, args.scale, args.padding, Path(workdir))
        except AssertionError as exc:
            print(f"make_screenshots: {exc}", file=sys.stderr)
            return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
