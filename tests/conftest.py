"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from standin.harness import StandinEnv


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[StandinEnv]:
    """An isolated stand-in Ollama environment (not started); every process it spawned is killed afterwards."""
    env = StandinEnv(tmp_path)
    try:
        yield env
    finally:
        env.cleanup()
