"""Text on the screen, read back from screenshots with Tesseract OCR (Debian's ``tesseract-ocr``).

The tray tests use it to check what a person sees in a popup menu, and where
each label is, so a real pointer click can land on one.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops

Box = tuple[int, int, int, int]  # left, top, right, bottom

SCALE = 3  # menu text is ~10 px high; Tesseract reads it reliably at three times that
INK_THRESHOLD = 200  # darker than this is text (greyed-out labels included), lighter is background


def tesseract_missing() -> bool:
    """Whether the ``tesseract`` program is not installed."""
    return shutil.which("tesseract") is None


@dataclass(frozen=True)
class TextLine:
    """One line of text and its box on the screen."""

    text: str
    box: Box

    @property
    def centre(self) -> tuple[int, int]:
        """The screen point in the middle of the line."""
        left, top, right, bottom = self.box
        return (left + right) // 2, (top + bottom) // 2


def normalized(text: str) -> str:
    """Letters and digits only, lower case: what OCR gets right even when it misreads punctuation.

    >>> normalized("llama3:latest 4.7 GB · 100% CPU")
    'llama3latest47gb100cpu'
    """
    return re.sub(r"[^0-9a-z]", "", text.lower())


def changed_box(before: Image.Image, after: Image.Image, within: Box) -> Box | None:
    """The screen box, inside ``within``, where ``after`` differs from ``before``; None when nothing changed."""
    left, top = within[:2]
    difference = ImageChops.difference(before.crop(within).convert("RGB"), after.crop(within).convert("RGB"))
    found = difference.getbbox()
    if found is None:
        return None
    return found[0] + left, found[1] + top, found[2] + left, found[3] + top


def read_lines(image: Image.Image, box: Box) -> list[TextLine]:
    """The lines of text inside ``box`` of a screenshot, top to bottom, with their screen boxes."""
    left, top = box[:2]
    crop = image.crop(box).convert("L").point(lambda value: 0 if value < INK_THRESHOLD else 255)
    crop = crop.resize((crop.width * SCALE, crop.height * SCALE), Image.Resampling.LANCZOS)
    with tempfile.TemporaryDirectory(prefix="ocr-") as scratch:
        source = Path(scratch) / "text.png"
        crop.save(source)
        done = subprocess.run(
            ["tesseract", str(source), "-", "--psm", "6", "tsv"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    lines: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for row in csv.DictReader(io.StringIO(done.stdout), delimiter="\t", quoting=csv.QUOTE_NONE):
        if row.get("level") == "5" and row.get("text", "").strip():
            lines.setdefault((row["block_num"], row["par_num"], row["line_num"]), []).append(row)
    result = []
    for words in lines.values():
        x0 = min(int(w["left"]) for w in words)
        y0 = min(int(w["top"]) for w in words)
        x1 = max(int(w["left"]) + int(w["width"]) for w in words)
        y1 = max(int(w["top"]) + int(w["height"]) for w in words)
        screen_box = (left + x0 // SCALE, top + y0 // SCALE, left + x1 // SCALE, top + y1 // SCALE)
        result.append(TextLine(" ".join(w["text"] for w in words), screen_box))
    return sorted(result, key=lambda line: line.box[1])


def find_line(lines: list[TextLine], label: str) -> TextLine | None:
    """The line that reads ``label`` (compared :func:`normalized`), if any."""
    wanted = normalized(label)
    return next((line for line in lines if wanted and wanted in normalized(line.text)), None)
