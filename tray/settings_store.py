"""Changing one setting in the user's TOML file, keeping their comments and layout.

tomlkit edits the document in place (a plain TOML writer would drop every
comment); the file is replaced atomically so a crash never leaves half a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomlkit

from tray.atomic import write_atomically
from tray.config import ConfigError


def set_config_value(path: Path, key: str, value: Any) -> None:
    """Set ``key`` (``"section.key"`` for a section) to ``value`` in the TOML file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        document = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    table: Any = document
    *sections, name = key.split(".")
    for section in sections:
        if section not in table:
            table[section] = tomlkit.table()
        table = table[section]
    table[name] = value
    write_atomically(path, tomlkit.dumps(document).encode("utf-8"))
