"""Field metadata shared by every settings dataclass, and the one check every value of every setting passes.

The loader (TOML file and ``OLLAMA_MANAGER_*`` variables), the settings page,
``ollama-manager config set`` and the CLI flags that stand for a setting all
convert a value and then call :func:`check_value`; each settings dataclass
runs :func:`check_fields` on itself, so a value built in code passes the same
limits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

DAY = 86400.0
MAX_PORT = 65535
SHOWN_CHARS = 60  # of a refused value in its one-line error
MAX_LIST_ITEMS = 100  # entries of a list setting (origins): a few in practice

TextCheck = Callable[[str], None]  # raises ValueError("must be …, got …") for a text Ollama or the app cannot use


def setting(
    text: str,
    minimum: float | None = None,
    choices: tuple[str, ...] = (),
    *,
    maximum: float | None = None,
    check: TextCheck | None = None,
    command_only: str | None = None,
) -> dict[str, Any]:
    """``field(metadata=setting("one-line help", minimum=0, maximum=DAY))``.

    ``check`` is a text setting's own rule (an address, a model name).
    ``command_only`` marks a setting that chooses a program the app runs, an
    address, or where data or the cloud key goes: only ``ollama-manager config
    set`` (or the file) changes it, never the settings page or the web API. Its
    text is an example value for the command shown, e.g. ``"/path/to/ollama"``.
    """
    return {
        "help": text,
        "minimum": minimum,
        "maximum": maximum,
        "choices": choices,
        "check": check,
        "command_only": command_only,
    }


def shown(value: Any) -> str:
    """A refused value as its error line shows it: its repr, cut short; an array or a table by its kind only.

    >>> shown("x" * 100)[-6:], shown([[[]]]), shown(float("nan"))
    ("xxxx…'", 'an array', 'nan')
    """
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 2] + "…" + text[-1]


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be a setting's text (it must be one line of valid Unicode), else None.

    >>> text_problem("llama3"), text_problem("a\\nb"), text_problem("\\ud800")
    (None, 'must be one line of text, got a control character', 'must be valid text, got a lone surrogate')
    """
    if any("\ud800" <= char <= "\udfff" for char in value):
        return "must be valid text, got a lone surrogate"
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        return "must be one line of text, got a control character"
    return None


def number_text(value: float) -> str:
    """A number as a person would type it: a whole float without its ``.0``.

    >>> number_text(-5.0), number_text(2.5), number_text(1e308), number_text(70000)
    ('-5', '2.5', '1e+308', '70000')
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def number_problem(value: float, minimum: float | None, maximum: float | None) -> str | None:
    """Why ``value`` is not a usable number for a setting with these limits, else None.

    >>> number_problem(float("nan"), 0.1, DAY), number_problem(1e308, 0.1, DAY), number_problem(5, 0.1, DAY)
    ('must be a finite number, got nan', 'must be at most 86400, got 1e+308', None)
    """
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if minimum is not None and value < minimum:
        return f"must be at least {minimum:g}, got {number_text(value)}"
    if maximum is not None and value > maximum:
        return f"must be at most {maximum:g}, got {number_text(value)}"
    return None


def check_value(meta: dict[str, Any] | Any, value: Any) -> None:
    """Raise ValueError ("must …, got …") when ``value``, already of its field's type, breaks its field's rules."""
    problem: str | None = None
    if isinstance(value, bool):
        return
    if isinstance(value, tuple):  # a list setting: each entry is checked as a text setting's value
        if len(value) > MAX_LIST_ITEMS:
            raise ValueError(f"must have at most {MAX_LIST_ITEMS} entries, got {len(value)}")
        for item in value:
            check_value(meta, item)
        return
    if isinstance(value, int | float):
        problem = number_problem(value, meta.get("minimum"), meta.get("maximum"))
    elif isinstance(value, str):
        problem = text_problem(value)
        choices = meta.get("choices") or ()
        if problem is None and choices and value not in choices:
            problem = f"must be one of {', '.join(repr(c) for c in choices)}, got {shown(value)}"
        check = meta.get("check")
        if problem is None and check is not None:
            check(value)
    if problem is not None:
        raise ValueError(problem)


def check_fields(instance: Any, prefix: str) -> None:
    """Run :func:`check_value` on every plain field of a settings dataclass; ValueError naming ``prefix.key``."""
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if f.metadata.get("internal") or dataclasses.is_dataclass(value):
            continue
        try:
            check_value(f.metadata, value)
        except ValueError as exc:
            raise ValueError(f"{prefix}{f.name} {exc}") from None
