"""The guard that keeps the pure run pure: a test without the ``process`` marker cannot start a process."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys

import pytest

from tests.support.spawn_guard import UnmarkedProcess, refuse_processes


def test_every_way_of_starting_a_process_is_refused_and_named() -> None:
    with refuse_processes("tests/test_x.py::test_y") as attempts:
        with pytest.raises(UnmarkedProcess, match=r"^tests/test_x.py::test_y starts a process \(Popen\._execute_child"):
            subprocess.run([sys.executable, "-c", "pass"], check=False)
        with pytest.raises(UnmarkedProcess):
            os.fork()
        with pytest.raises(UnmarkedProcess):
            os.system("true")
        with pytest.raises(UnmarkedProcess):
            multiprocessing.get_context("spawn").Process(target=print).start()
        with pytest.raises(UnmarkedProcess):
            asyncio.run(asyncio.create_subprocess_exec(sys.executable, "-c", "pass"))
    assert [attempt.split(" from ")[0] for attempt in attempts] == [
        "Popen._execute_child",
        "os.fork",
        "os.system",
        "multiprocessing.util.spawnv_passfds",
        "Popen._execute_child",
    ]
    assert all(__file__ in attempt for attempt in attempts[:3])  # the test's own line is named


def test_everything_is_put_back_afterwards() -> None:
    originals = (subprocess.Popen._execute_child, os.fork, os.system)  # type: ignore[attr-defined]
    with refuse_processes("t"):
        assert os.fork is not originals[1]
    assert (subprocess.Popen._execute_child, os.fork, os.system) == originals  # type: ignore[attr-defined]
