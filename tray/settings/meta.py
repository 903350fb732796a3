"""Field metadata shared by every settings dataclass: what the settings page and the loader read."""

from __future__ import annotations

from typing import Any


def setting(text: str, minimum: float | None = None, choices: tuple[str, ...] = ()) -> dict[str, Any]:
    """``field(metadata=setting("one-line help", minimum=0))``."""
    return {"help": text, "minimum": minimum, "choices": choices}
