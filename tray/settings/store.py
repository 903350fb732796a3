"""Changing settings in the user's TOML file, keeping their comments, layout and file mode.

tomlkit edits the document in place (a plain TOML writer would drop every
comment); the file is replaced atomically so a crash never leaves half a file.
A symlinked settings file (a dotfiles repository) stays a symlink: the file
it points to is the one replaced.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit

from tray.atomic import write_atomically
from tray.settings.config import ConfigError, read_config_text

NEW_FILE_MODE = 0o600  # settings may name a key's variable or a private address: the user's business


def set_config_value(path: Path, key: str, value: Any) -> None:
    """Set ``key`` (``"section.key"`` for a section) to ``value`` in the TOML file at ``path``."""
    set_config_values(path, {key: value})


def set_config_values(path: Path, changes: Mapping[str, Any]) -> None:
    """Set each dotted key in the TOML file at ``path`` in one atomic write."""
    target = Path(os.path.realpath(path))  # through a symlink (also a dangling one) to the file it names
    text = read_config_text(target, shown=path)
    try:
        mode = NEW_FILE_MODE if text is None else stat.S_IMODE(target.stat().st_mode)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        document = tomlkit.parse(text or "")
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
        write_atomically(target, tomlkit.dumps(document).encode("utf-8"), mode)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror or exc}") from None
