"""Generate every icon size the bundles need from the one source artwork in ``assets/``.

    python packaging/make_icons.py [--source assets/icon-source.png] [--out build/icons]

writes ``ollama-manager.icns`` (macOS), ``ollama-manager.ico`` (Windows),
``ollama-manager.png`` (256 px, for notifications) and the Linux hicolor theme
under ``share/icons/``. ``--redraw-source`` first redraws the source artwork
from the tray's own drawing code (the healthy state, 1024 px).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from load_packaging import load_packaging
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_SOURCE = REPO / "assets" / "icon-source.png"
DEFAULT_OUT = REPO / "build" / "icons"
SOURCE_SIZE = 1024
MIN_SOURCE_SIZE = 512


info = load_packaging("info")


class IconError(Exception):
    """The source artwork cannot be used; ``str()`` is one line."""


@dataclass(frozen=True)
class IconSet:
    """The files written by :func:`write_icons`."""

    icns: Path
    ico: Path
    png: Path
    share_dir: Path  # holds icons/hicolor/<n>x<n>/apps/ollama-manager.png


def load_source(path: Path) -> Image.Image:
    """The source artwork as RGBA; it must be square and at least 512 px."""
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGBA")
    except FileNotFoundError:
        raise IconError(f"{path}: source artwork not found") from None
    except OSError as exc:
        raise IconError(f"{path}: not a readable image ({exc})") from None
    width, height = image.size
    if width != height:
        raise IconError(f"{path}: the artwork must be square, it is {width}x{height}")
    if width < MIN_SOURCE_SIZE:
        raise IconError(f"{path}: the artwork must be at least {MIN_SOURCE_SIZE} px, it is {width} px")
    return image


def resized(source: Image.Image, size: int) -> Image.Image:
    """``source`` scaled to ``size`` × ``size``."""
    return source.resize((size, size), Image.Resampling.LANCZOS)


def write_icons(source: Image.Image, out_dir: Path) -> IconSet:
    """Write the macOS, Windows and Linux icons for ``source`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = info.ICON_NAME
    icns = out_dir / f"{name}.icns"
    source.save(icns, format="ICNS")
    ico = out_dir / f"{name}.ico"
    largest = max(info.WINDOWS_ICON_SIZES)
    resized(source, largest).save(ico, format="ICO", sizes=[(size, size) for size in info.WINDOWS_ICON_SIZES])
    png = out_dir / f"{name}.png"
    resized(source, 256).save(png, format="PNG")
    share_dir = out_dir / "share"
    for size, relative in info.linux_icon_paths().items():
        target = share_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        resized(source, size).save(target, format="PNG")
    return IconSet(icns=icns, ico=ico, png=png, share_dir=share_dir)


def redraw_source(path: Path, size: int = SOURCE_SIZE) -> None:
    """Draw the source artwork with the tray's own icon code (the healthy state)."""
    from tray.ui.icon import IconState, draw_icon

    path.parent.mkdir(parents=True, exist_ok=True)
    draw_icon(IconState.HEALTHY, size).save(path, format="PNG", optimize=True)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description="Generate the bundles' icons from the source artwork.")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="square PNG, at least 512 px")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default build/icons)")
    parser.add_argument("--redraw-source", action="store_true", help="redraw the source artwork from tray.ui.icon")
    args = parser.parse_args(argv)
    try:
        if args.redraw_source:
            redraw_source(args.source)
        icons = write_icons(load_source(args.source), args.out)
    except IconError as exc:
        print(f"make_icons: {exc}", file=sys.stderr)
        return 1
    print(f"icons written to {icons.icns.parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
