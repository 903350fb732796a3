"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from standin.harness import StandinEnv

# The stand-in's modules import each other by their bare names, as its `ollama` script runs them; they are
# not importable as `standin.*` for doctest collection (tests/test_standin*.py test them through the script).
collect_ignore_glob = ["standin/standin_*.py"]


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[StandinEnv]:
    """An isolated stand-in Ollama environment (not started); every process it spawned is killed afterwards."""
    env = StandinEnv(tmp_path)
    try:
        yield env
    finally:
        env.cleanup()
