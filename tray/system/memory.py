"""The allocator of the app's long-running processes (the monitor, the tray): one malloc arena for all threads.

glibc's malloc gives every thread that allocates an arena of its own (up to eight per core), and each keeps
the memory its thread freed. The monitor's and the tray's threads sleep nearly all the time; their arenas held
about half a MiB of an idle tray (``bench/bench_idle.py``). Other C libraries and OSes are left alone.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Mapping

from tray.system.host import platform_name

M_ARENA_MAX = -8  # glibc's <malloc.h>

Mallopt = Callable[[int, int], int]


def glibc_mallopt() -> Mallopt | None:
    """glibc's ``mallopt`` in this process; None under another C library."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt


def share_one_malloc_arena(
    env: Mapping[str, str] | None = None,
    platform: str | None = None,
    mallopt: Callable[[], Mallopt | None] = glibc_mallopt,
) -> bool:
    """Have glibc serve every thread of this process from one arena; True when it did.

    Call it before the process starts threads. A ``MALLOC_ARENA_MAX`` the user set wins (glibc read it at start).
    """
    env = os.environ if env is None else env
    if platform_name(platform) != "linux" or "MALLOC_ARENA_MAX" in env:
        return False
    function = mallopt()
    return function is not None and function(M_ARENA_MAX, 1) == 1
