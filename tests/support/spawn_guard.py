"""Refuses to start processes, for the tests not marked ``process``.

The pure run (``pytest -m "not process"``) stays fast only while every test that starts a process says so; the
guard makes a missing marker fail the test that needs it instead of slowing the pure run down unnoticed.
"""

from __future__ import annotations

import ast
import multiprocessing.util
import os
import subprocess
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from _pytest.mark.expression import Expression

MARKER = "process"

# Every way Python starts a process goes through one of these: subprocess (and asyncio's subprocesses, built on
# it) through Popen._execute_child, multiprocessing's fork / spawn / forkserver through os.fork and
# spawnv_passfds, and the os module's own spawners.
_ENTRY_POINTS: list[tuple[ModuleType | type, str]] = [
    (subprocess.Popen, "_execute_child"),
    (multiprocessing.util, "spawnv_passfds"),
    (os, "fork"),
    (os, "forkpty"),
    (os, "posix_spawn"),
    (os, "posix_spawnp"),
    (os, "system"),
]


def deselects_process_tests(markexpr: str) -> bool:
    """Whether ``-m markexpr`` leaves out every test with the ``process`` marker, whatever its other markers.

    >>> deselects_process_tests("not process"), deselects_process_tests("slow and not process")
    (True, True)
    >>> deselects_process_tests(""), deselects_process_tests("process"), deselects_process_tests("not slow")
    (False, False, False)
    """
    if not markexpr:
        return False
    expression = Expression.compile(markexpr)
    # The other markers unknown: the test is left out only if it is with none of them and with all of them.
    return not expression.evaluate(lambda name, **_: name == MARKER) and not expression.evaluate(lambda *_, **__: True)


def marked_as_a_whole(source: str) -> bool:
    """Whether a test module's ``pytestmark`` includes the ``process`` marker.

    >>> marked_as_a_whole("import pytest\\n\\npytestmark = [pytest.mark.slow, pytest.mark.process]\\n")
    True
    >>> marked_as_a_whole("@pytest.mark.process\\ndef test_x():\\n    pass\\n")
    False
    """
    if "pytestmark" not in source or f"mark.{MARKER}" not in source:
        return False
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            return f"pytest.mark.{MARKER}" in ast.unparse(node.value)
    return False


class UnmarkedProcess(RuntimeError):
    """A test without the ``process`` marker tried to start a process."""


def spawning_code() -> str:
    """Where the refused process was started: the innermost frame of the project, and the thread."""
    frames = [f for f in traceback.extract_stack()[:-2] if "/tray/" in f.filename or "/tests/" in f.filename]
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "unknown code"
    return f"{where} in thread {threading.current_thread().name}"


def unmarked_message(nodeid: str, entry: str) -> str:
    """What a test that starts a process without the marker is told.

    >>> print(unmarked_message("tests/test_x.py::test_y", "os.fork").split(": ")[0])
    tests/test_x.py::test_y starts a process (os.fork) without the `process` marker
    """
    return (
        f"{nodeid} starts a process ({entry}) without the `{MARKER}` marker: add @pytest.mark.{MARKER}"
        f" (or pytestmark = pytest.mark.{MARKER} for a whole module)"
    )


@contextmanager
def refuse_processes(nodeid: str) -> Iterator[list[str]]:
    """While inside, every attempt to start a process raises :class:`UnmarkedProcess` and is listed in the value."""
    attempts: list[str] = []
    saved: list[tuple[ModuleType | type, str, Any]] = []

    def refusing(entry: str) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            attempts.append(f"{entry} from {spawning_code()}")
            raise UnmarkedProcess(unmarked_message(nodeid, entry))

        return refuse

    for owner, name in _ENTRY_POINTS:
        original = getattr(owner, name, None)
        if original is None:
            continue
        saved.append((owner, name, original))
        setattr(owner, name, refusing(f"{getattr(owner, '__name__', owner)}.{name}"))
    try:
        yield attempts
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
