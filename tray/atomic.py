"""Writing the app's files atomically (a crash leaves the old or the new content, never half), for the user alone.

Everything the app keeps (settings, history, logs, the status API's address
and token) is the user's business: files are 0600 and the app's own folders
0700, so other local users cannot read them.

A shared leaf, like :mod:`tray.errors` and :mod:`tray.history` (which uses it):
it imports nothing from the app, so every layer may write its files this way.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: Path) -> None:
    """Create the app's own folder ``path`` readable by the user alone, or take group and others' access away."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    owner_only(path, PRIVATE_DIR)


def private_file(path: Path, *, check: bool = False) -> None:
    """Create ``path`` empty for the user alone when missing, or take group and others' access away (0600).

    A failure to create it is left to the writer that follows, unless ``check`` raises its OSError here.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), PRIVATE_FILE))
    except OSError:
        if check:
            raise
        return
    owner_only(path, PRIVATE_FILE)


def owner_only(path: Path, mode: int = PRIVATE_FILE) -> None:
    """Take group and others' access to ``path`` away when it is the user's own; nothing when it is missing."""
    try:
        info = os.stat(path)
        if info.st_mode & 0o077 and (not hasattr(os, "getuid") or info.st_uid == os.getuid()):
            os.chmod(path, mode)
    except OSError:
        pass  # not ours to change, or gone: the files inside are still created 0600


def write_atomically(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        os.chmod(temp_name, mode)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
