"""Changing settings in the user's TOML file, keeping their comments, layout and file mode.

tomlkit edits the document in place (a plain TOML writer would drop every
comment); the file is replaced atomically so a crash never leaves half a file.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit

from tray.settings.config import ConfigError
from tray.system.atomic import write_atomically

NEW_FILE_MODE = 0o644


def set_config_value(path: Path, key: str, value: Any) -> None:
    """Set ``key`` (``"section.key"`` for a section) to ``value`` in the TOML file at ``path``."""
    set_config_values(path, {key: value})


def set_config_values(path: Path, changes: Mapping[str, Any]) -> None:
    """Set each dotted key in the TOML file at ``path`` in one atomic write."""
    try:
        text = path.read_text(encoding="utf-8")
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        text, mode = "", NEW_FILE_MODE
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        document = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    for key, value in changes.items():
        *sections, name = key.split(".")
        table: Any = document
        for section in sections:
            if section not in table:
                table[section] = tomlkit.table()
            table = table[section]
        table[name] = value
    try:
        write_atomically(path, tomlkit.dumps(document).encode("utf-8"), mode)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror or exc}") from None
