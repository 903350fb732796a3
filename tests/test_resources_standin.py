"""The Ollama tree's memory includes the runners, measured on the stand-in's real runner processes."""

from __future__ import annotations

import httpx
import psutil
import pytest

from standin.harness import StandinEnv
from tests.support.manager import wait_until
from tray.system.resources import ResourceSampler

pytestmark = [pytest.mark.process, pytest.mark.slow]

RUNNER_MB = 400  # large beside each runner interpreter's own ~20 MiB


def test_tree_memory_includes_the_runner_children(tmp_path):
    standin = StandinEnv(tmp_path, runner_mb=RUNNER_MB)
    try:
        serve = standin.spawn_serve()
        standin.wait_ready()
        sampler = ResourceSampler(standin.models_dir)
        before = sampler.sample(serve.pid).tree_rss_bytes
        for model in ("llama3", "mistral"):  # two models loaded: two runners
            standin.pull(model)
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
            assert httpx.post(f"{standin.base_url}/api/chat", json=body, timeout=30).status_code == 200
        runners = wait_until(lambda: len(standin.alive_runner_pids()) == 2 and standin.alive_runner_pids(), 10)
        sample = sampler.sample(serve.pid)
        assert set(runners) <= set(sample.tree_pids)
        held = 2 * RUNNER_MB * 2**20  # each runner allocates and touches RUNNER_MB MiB
        grown = sample.tree_rss_bytes - before
        assert abs(grown - held) <= 0.1 * held, (grown / 2**20, held / 2**20)
        runner_rss = sum(psutil.Process(pid).memory_info().rss for pid in runners)
        assert runner_rss <= grown
    finally:
        standin.cleanup()
