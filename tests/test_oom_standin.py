"""The out-of-memory ladder against the stand-in Ollama, as real processes.

The stand-in's ``oom`` fault makes the next model load fail the way it fails
in Ollama 0.33, with the runner's lines in the server log and Ollama's error
in the API answer (kind ``runtime``: the load succeeds and the first token
fails). Each test checks where the ladder's first rung takes effect: on a
server the manager started, its environment at the next start; on the model
built from the Modelfile, a PARAMETER; elsewhere, a suggestion and nothing
else; and that each failure takes one rung, an allocation failure Ollama
retries by itself none.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.manager import Manager, wait_until

pytestmark = [pytest.mark.process, pytest.mark.slow]

HI = [{"role": "user", "content": "hi"}]
SERVE_LOG = Path("ollama-manager") / "log" / "ollama-server.log"


@pytest.fixture
def manager(standin, tmp_path):
    m = Manager(standin.env, tmp_path)
    yield m
    m.cleanup()


def events_of(manager: Manager, kind: str) -> list[dict[str, Any]]:
    return [e for e in sorted(manager.events(), key=lambda e: e["time"]) if e["kind"] == kind]


def oom_messages(manager: Manager) -> list[str]:
    return [e["message"] for e in events_of(manager, "oom")]


def api(standin, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{standin.base_url}{path}", json=body, timeout=60, trust_env=False)


def chat(standin, model: str) -> httpx.Response:
    return api(standin, "/api/chat", {"model": model, "messages": HI, "stream": False})


def loaded(standin) -> list[dict[str, Any]]:
    return list(httpx.get(f"{standin.base_url}/api/ps", timeout=10, trust_env=False).json()["models"])


def runner_events(standin, kind: str) -> list[dict[str, Any]]:
    return [e for e in standin.events() if e["event"] == kind]


def load_with_fault(standin, model: str, fault: Any) -> None:
    """Load ``model`` afresh with the ``oom`` fault, then clear it: one failure, planted in that runner."""
    standin.set_faults(oom=fault)
    api(standin, "/api/generate", {"model": model, "keep_alive": 0})  # unload
    starts = len(runner_events(standin, "runner_start"))
    api(standin, "/api/generate", {"model": model})  # load only
    wait_until(lambda: len(runner_events(standin, "runner_start")) > starts, 30, what="a runner start")
    standin.clear_faults()


def checks(manager: Manager, count: int) -> None:
    """Ask the monitor for ``count`` checks in turn: each answer comes after the check before it ran."""
    state = Path(manager.env["XDG_STATE_HOME"]) / "ollama-manager"
    port = json.loads((state / "monitor.json").read_text())["port"]
    token = (state / "api-token").read_text().strip()
    for _ in range(count):
        response = httpx.post(
            f"http://127.0.0.1:{port}/api/actions/check",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
            trust_env=False,
        )
        assert response.status_code == 200, response.text


def context_lengths_at_start(manager: Manager) -> list[int]:
    """OLLAMA_CONTEXT_LENGTH of each server start, from its "server config" line."""
    path = Path(manager.env["XDG_STATE_HOME"]) / SERVE_LOG
    text = path.read_text(errors="replace") if path.exists() else ""
    return [int(n) for n in re.findall(r'msg="server config" env="map\[OLLAMA_CONTEXT_LENGTH:(\d+)', text)]


def test_an_oom_restarts_a_server_the_manager_started_with_a_smaller_context(manager, standin):
    manager.spawn_monitor({"OLLAMA_MANAGER_OLLAMA_MODEL": "llama3", "OLLAMA_MANAGER_HEALTH_PROBE": "inference"})
    manager.wait_monitor_ready()
    standin.set_faults(oom=True)  # the next load fails: cudaMalloc failed: out of memory
    standin.pull("llama3")
    assert chat(standin, "llama3").status_code == 500
    standin.clear_faults()

    wait_until(lambda: len(context_lengths_at_start(manager)) == 2, 30, what="the restart with a smaller context")
    assert context_lengths_at_start(manager) == [4096, 2048]
    assert len(standin.serve_pids()) == 2  # the one restart, by the manager
    messages = wait_until(lambda: (m := oom_messages(manager)) and len(m) >= 2 and m, 30, what="the applied event")
    assert messages == [
        "Ollama ran out of memory: Ollama restarts with OLLAMA_CONTEXT_LENGTH=2048 as soon as nothing runs on it",
        "Context window reduced to 2048 tokens: Ollama restarted with OLLAMA_CONTEXT_LENGTH=2048",
    ]
    restarts = [e["data"] for e in events_of(manager, "restart")]
    assert restarts == [{"reason": "out of memory: smaller context", "ok": True}]

    # The context reaches user traffic; the probe sends no runner options, so nothing reloads the model.
    assert chat(standin, "llama3").status_code == 200
    assert [m["context_length"] for m in loaded(standin)] == [2048]
    probes = manager.api_status()["inference_count"]
    checks(manager, 4)
    assert manager.api_status()["inference_count"] > probes
    assert chat(standin, "llama3").status_code == 200
    assert runner_events(standin, "runner_reload") == []
    assert len(oom_messages(manager)) == 2 and len(standin.serve_pids()) == 2


def show_parameters(standin, model: str) -> str:
    return str(api(standin, "/api/show", {"model": model}).json().get("parameters", ""))


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

    load_with_fault(standin, "uncensored-llama3", "runtime")  # the health probe's token runs out of memory
    messages = wait_until(lambda: (m := oom_messages(manager)) and len(m) >= 2 and m, 60, what="the rebuild")
    assert messages == [
        "Ollama ran out of memory: rebuilding uncensored-llama3 with PARAMETER num_ctx 2048",
        "Context window reduced to 2048 tokens: uncensored-llama3 rebuilt with PARAMETER num_ctx 2048",
    ]
    parameters = show_parameters(standin, "uncensored-llama3")
    assert re.search(r"^num_ctx\s+2048$", parameters, re.M) and re.search(r"^temperature\s+0\.5$", parameters, re.M)
    built = events_of(manager, "model_built")[-1]
    assert built["message"].startswith("uncensored-llama3:latest built with PARAMETER num_ctx 2048")
    listing = manager.run("model", "list")
    assert "with PARAMETER num_ctx 2048 (out of memory)" in listing.stdout, listing.stdout + listing.stderr
    assert chat(standin, "uncensored-llama3").status_code == 200
    assert [m["context_length"] for m in loaded(standin)] == [2048]  # user traffic gets it too
    assert len(standin.serve_pids()) == 1 and events_of(manager, "restart") == []  # not the manager's to restart


def test_an_oom_on_a_server_the_manager_cannot_change_names_the_change_and_restarts_nothing(manager, standin):
    standin.spawn_serve()
    standin.wait_ready()
    standin.pull("llama3")
    manager.spawn_monitor({"OLLAMA_MANAGER_OLLAMA_MODEL": "llama3", "OLLAMA_MANAGER_HEALTH_PROBE": "inference"})
    manager.wait_monitor_ready()

    load_with_fault(standin, "llama3", "runtime")
    messages = wait_until(lambda: oom_messages(manager), 30, what="the out-of-memory event")
    assert messages == [
        "Ollama ran out of memory. This Ollama was started outside the manager, which cannot change its settings: "
        "to use a context window of 2048 tokens, set OLLAMA_CONTEXT_LENGTH=2048 in the server's environment "
        "(where you start ollama serve, then restart it)"
    ]
    checks(manager, 3)
    assert len(standin.serve_pids()) == 1 and events_of(manager, "restart") == []
    assert events_of(manager, "model_built") == [] and len(oom_messages(manager)) == 1


@pytest.mark.parametrize(
    ("fault", "memory"),
    [
        ("cuda", "gpu"),  # the runner exits: its lines and "llama-server process has terminated: ..."
        ({"kind": "metal", "via": "health"}, "gpu"),  # "llama-server reported out-of-memory during startup: ..."
        ("mlx", "gpu"),  # serve refuses the load: "model requires ... but only ... are available"
        ("compute", "unknown"),  # "compute buffer allocation failed", with no retry
        ("recoverable", None),  # "... allocation failed, retrying without pipeline parallelism": the load goes on
    ],
)
def test_each_oom_in_the_server_log_takes_one_rung_and_the_recoverable_one_none(manager, standin, fault, memory):
    # The api probe loads nothing, so the one failing load is the user's and the log is what tells.
    manager.spawn_monitor({"OLLAMA_MANAGER_OLLAMA_MODEL": "llama3", "OLLAMA_MANAGER_HEALTH_PROBE": "api"})
    manager.wait_monitor_ready()
    standin.pull("llama3")
    standin.set_faults(oom=fault)
    answer = chat(standin, "llama3")
    standin.clear_faults()
    assert answer.status_code == (200 if memory is None else 500), answer.text

    checks(manager, 3)  # the log read, and the batch after it
    downs = [e["data"] for e in events_of(manager, "oom") if e["data"]["kind"] == "down"]
    assert [d["memory"] for d in downs] == ([] if memory is None else [memory])
