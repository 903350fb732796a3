"""Reading a small file the user names (the config file, the Modelfile): regular files only, and bounded.

A named pipe would block the reader until someone writes to it, and
``/dev/zero`` or a multi-gigabyte file would be read whole; both are refused
with a line saying what the path is.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class FileRefused(OSError):
    """The path is no regular file, or too large; ``str()`` says which (without the path)."""


_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    """What a non-regular file is, for the refusal.

    >>> kind_of(stat.S_IFIFO), kind_of(stat.S_IFCHR)
    ('a named pipe (FIFO)', 'a character device')
    """
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file at ``path`` (a symlink to one is followed).

    Raises FileNotFoundError and IsADirectoryError as ``open`` does, FileRefused
    for anything else that is no regular file or holds more than ``max_bytes``,
    and OSError for the rest (permissions, I/O).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)  # non-blocking: opening a FIFO with no writer returns at once
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(21, "Is a directory", str(path))
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"is {kind_of(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise FileRefused(f"is too large ({info.st_size:,} bytes; at most {max_bytes:,})")
        chunks = []
        size = 0
        while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:  # it grew while being read
                raise FileRefused(f"is too large (more than {max_bytes:,} bytes)")
        return b"".join(chunks)
    finally:
        os.close(fd)
