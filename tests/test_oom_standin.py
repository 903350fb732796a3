"""The out-of-memory ladder acting where it has effect, against the stand-in Ollama as real processes.

Each test sets the stand-in's ``oom`` fault, so a chat fails the way a load
that does not fit fails in Ollama (the API error and the server-log lines),
and checks the ladder's first rung taking effect: on a server the manager
started, its environment at the next start; on the model built from the
Modelfile, a PARAMETER; elsewhere, a suggestion and nothing else.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.manager import Manager, wait_until

pytestmark = pytest.mark.slow

CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": False}


@pytest.fixture
def manager(standin, tmp_path):
    m = Manager(standin.env, tmp_path)
    yield m
    m.cleanup()


def oom_messages(manager: Manager) -> list[str]:
    return [e["message"] for e in sorted(manager.events(), key=lambda e: e["time"]) if e["kind"] == "oom"]


def events_of(manager: Manager, kind: str) -> list[dict[str, Any]]:
    return [e for e in sorted(manager.events(), key=lambda e: e["time"]) if e["kind"] == kind]


def chat(standin, model: str) -> httpx.Response:
    return httpx.post(f"{standin.base_url}/api/chat", json={"model": model, **CHAT}, timeout=60, trust_env=False)


def loaded(standin) -> list[dict[str, Any]]:
    return list(httpx.get(f"{standin.base_url}/api/ps", timeout=10, trust_env=False).json()["models"])


def server_log(manager: Manager) -> str:
    path = Path(manager.env["XDG_STATE_HOME"]) / "ollama-manager" / "log" / "ollama-server.log"
    return path.read_text(errors="replace") if path.exists() else ""


def context_lengths_at_start(manager: Manager) -> list[int]:
    """OLLAMA_CONTEXT_LENGTH of each server start, from its "server config" line."""
    return [int(n) for n in re.findall(r'msg="server config" env="map\[OLLAMA_CONTEXT_LENGTH:(\d+)', server_log(manager))]


def test_an_oom_restarts_a_server_the_manager_started_with_a_smaller_context(manager, standin):
    manager.spawn_monitor({"OLLAMA_MANAGER_OLLAMA_MODEL": "llama3", "OLLAMA_MANAGER_HEALTH_PROBE": "inference"})
    manager.wait_monitor_ready()
    standin.pull("llama3")
    assert chat(standin, "llama3").status_code == 200
    first_serve = standin.serve_pids()
    assert len(first_serve) == 1 and context_lengths_at_start(manager) == [4096]

    standin.set_faults(oom=True)
    assert chat(standin, "llama3").status_code == 500
    wait_until(lambda: len(context_lengths_at_start(manager)) == 2, 30, what="the restart with a smaller context")
    standin.clear_faults()

    assert context_lengths_at_start(manager) == [4096, 2048]
    assert len(standin.serve_pids()) == 2  # the one restart, by the manager
    messages = wait_until(lambda: (m := oom_messages(manager)) and len(m) >= 2 and m, 30, what="the applied event")
    assert messages[:2] == [
        "Ollama ran out of memory: Ollama restarts with OLLAMA_CONTEXT_LENGTH=2048 as soon as nothing runs on it",
        "Context window reduced to 2048 tokens: Ollama restarted with OLLAMA_CONTEXT_LENGTH=2048",
    ]
    restarts = [e["data"] for e in events_of(manager, "restart")]
    assert restarts[0] == {"reason": "out of memory: smaller context", "ok": True}

    # The context reaches every request, the manager's probe included, with no options sent.
    assert chat(standin, "llama3").status_code == 200
    assert [m["context_length"] for m in loaded(standin)] == [2048]


def show_parameters(standin, model: str) -> str:
    response = httpx.post(f"{standin.base_url}/api/show", json={"model": model}, timeout=10, trust_env=False)
    return str(response.json().get("parameters", ""))


def test_an_oom_rebuilds_the_modelfile_model_with_a_smaller_context_on_a_server_it_did_not_start(
    manager, standin, tmp_path
):
    standin.spawn_serve()
    standin.wait_ready()
    modelfile = tmp_path / "uncensored.Modelfile"
    modelfile.write_text("FROM llama3\nSYSTEM You answer briefly.\nPARAMETER temperature 0.5\n")
    manager.spawn_monitor({"OLLAMA_MANAGER_AUTO_BUILD_MODEL": "true", "OLLAMA_MANAGER_MODELFILE": str(modelfile)})
    wait_until(lambda: (s := manager.api_status()) and s["model_status"] == "ok", 60, what="the model to be built")
    assert "num_ctx" not in show_parameters(standin, "uncensored-llama3")
    assert chat(standin, "uncensored-llama3").status_code == 200

    standin.set_faults(oom=True)
    messages = wait_until(lambda: (m := oom_messages(manager)) and len(m) >= 2 and m, 60, what="the rebuild")
    standin.clear_faults()
    assert messages[:2] == [
        "Ollama ran out of memory: rebuilding uncensored-llama3 with PARAMETER num_ctx 2048",
        "Context window reduced to 2048 tokens: uncensored-llama3 rebuilt with PARAMETER num_ctx 2048",
    ]
    parameters = show_parameters(standin, "uncensored-llama3")
    assert re.search(r"^num_ctx\s+2048$", parameters, re.M) and re.search(r"^temperature\s+0\.5$", parameters, re.M)
    built = events_of(manager, "model_built")[-1]
    assert built["message"].startswith("uncensored-llama3:latest built with PARAMETER num_ctx 2048")
    listing = manager.run("model", "list")
    assert "with PARAMETER num_ctx 2048 (out of memory)" in listing.stdout, listing.stdout + listing.stderr
    assert len(standin.serve_pids()) == 1 and events_of(manager, "restart") == []  # not the manager's to restart


def test_an_oom_on_a_server_the_manager_cannot_change_names_the_change_and_restarts_nothing(manager, standin):
    standin.spawn_serve()
    standin.wait_ready()
    standin.pull("llama3")
    manager.spawn_monitor({"OLLAMA_MANAGER_OLLAMA_MODEL": "llama3", "OLLAMA_MANAGER_HEALTH_PROBE": "inference"})
    manager.wait_monitor_ready()
    assert chat(standin, "llama3").status_code == 200

    standin.set_faults(oom=True)
    messages = wait_until(lambda: oom_messages(manager), 30, what="the out-of-memory event")
    assert messages[0] == (
        "Ollama ran out of memory. This Ollama was started outside the manager, which cannot change its settings: "
        "to use a context window of 2048 tokens, set OLLAMA_CONTEXT_LENGTH=2048 in the server's environment "
        "(where you start ollama serve, then restart it)"
    )
    standin.clear_faults()
    assert len(standin.serve_pids()) == 1 and events_of(manager, "restart") == []
    assert events_of(manager, "model_built") == []
