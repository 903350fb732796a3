"""The monitor keeps the model built and repairs it, against the stand-in Ollama."""

from __future__ import annotations

import pytest

from tests.standin.harness import flip_middle_byte, weights_blob
from tests.support.manager import Manager, wait_until

pytestmark = [pytest.mark.process, pytest.mark.slow]


@pytest.fixture
def manager(standin, tmp_path):
    modelfile = tmp_path / "uncensored.Modelfile"
    modelfile.write_text("FROM llama3\nSYSTEM You answer briefly.\n")
    m = Manager(standin.env, tmp_path)
    m.env.update(
        {
            "OLLAMA_MANAGER_AUTO_BUILD_MODEL": "true",
            "OLLAMA_MANAGER_MODELFILE": str(modelfile),
            "OLLAMA_MANAGER_MODEL_VERIFY_INTERVAL": "2",
        }
    )
    yield m
    m.cleanup()


def kinds(manager):
    return [e["kind"] for e in manager.events()]


def model_listed(standin):
    return "uncensored-llama3:latest" in standin.ollama("list").stdout


def wait_model_ok(manager, timeout=60):
    return wait_until(
        lambda: (s := manager.api_status()) and s["model_status"] == "ok" and s["model_loaded"] and s,
        timeout,
        what="the model to be built and verified",
    )


def test_the_monitor_builds_the_model_and_rebuilds_it_after_a_delete(manager, standin):
    manager.spawn_monitor()
    status = wait_model_ok(manager)
    assert status["model_info"]["parameter_size"] == "8.0B"
    assert kinds(manager).count("model_built") == 1
    assert model_listed(standin)

    removed = standin.ollama("rm", "uncensored-llama3")
    assert removed.returncode == 0, removed.stderr
    wait_until(lambda: kinds(manager).count("model_built") == 2, 60, what="the rebuild after the delete")
    assert "model_missing" in kinds(manager)
    assert model_listed(standin)


def test_a_flipped_byte_in_the_base_is_found_and_repaired(manager, standin):
    manager.spawn_monitor()
    wait_model_ok(manager)
    weights, blob = weights_blob(standin.models_dir)
    flip_middle_byte(blob)  # same size, new mtime: the periodic check rehashes it

    wait_until(lambda: "model_repaired" in kinds(manager), 60, what="the repair")
    corrupt = [e for e in manager.events() if e["kind"] == "model_corrupt"]
    assert corrupt and weights in corrupt[0]["message"]
    verify = manager.run("model", "verify", "--full")
    assert verify.returncode == 0, verify.stdout + verify.stderr
