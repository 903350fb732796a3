"""Switching the active model, from the command line, against the stand-in Ollama and a running monitor.

The tray's and the dashboard's ways in are tested with their backends (test_tray_sni.py,
test_dashboard_browser.py); these tests check what every way shares: the probe, the
status and the saved choice follow the switch, the old model's generation runs to
its end, a deleted active model gives way once, and a pulled model becomes selectable.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standin.harness import StandinEnv
from tests.support.manager import Manager, in_thread, wait_until

pytestmark = [pytest.mark.process, pytest.mark.slow]

MODELFILE_MODEL = "llama3"  # what the keeper would build; installed by a pull here, no build needed
LONG_ANSWER = {"token_ms": 40, "tokens": 100}  # about 4 s of generation


@pytest.fixture
def manager(standin: StandinEnv, tmp_path: Path) -> Iterator[Manager]:
    m = Manager(standin.env, tmp_path)
    m.env["OLLAMA_MANAGER_OLLAMA_MODEL"] = MODELFILE_MODEL
    yield m
    m.cleanup()


def config_file(manager: Manager) -> Path:
    return Path(manager.env["XDG_CONFIG_HOME"]) / "ollama-manager" / "config.toml"


def saved_active_model(manager: Manager) -> str | None:
    path = config_file(manager)
    return tomllib.loads(path.read_text()).get("active_model") if path.exists() else None


def status_where(manager: Manager, what: str, check: Any, timeout: float = 30) -> dict[str, Any]:
    return wait_until(lambda: (s := manager.api_status()) and check(s) and s, timeout, what=what)


def installed(status: dict[str, Any]) -> set[str]:
    return {model["name"] for model in status["installed_models"]}


def start_with_two_models(manager: Manager, standin: StandinEnv) -> None:
    manager.spawn_monitor()
    manager.wait_monitor_ready()
    standin.pull(MODELFILE_MODEL)
    standin.pull("mistral")
    status_where(manager, "both models listed", lambda s: {"llama3:latest", "mistral:latest"} <= installed(s))


def samples(manager: Manager) -> list[Any]:
    """The health checks' samples so far (one per check)."""
    return list(json.loads(manager.run("metrics", "--json").stdout))


def in_memory(status: dict[str, Any], model: str) -> bool:
    return f"{model}:latest" in {loaded["name"] for loaded in status["loaded_models"]}


def test_model_use_switches_the_probe_and_the_status_while_the_old_model_finishes_its_answer(
    manager: Manager, standin: StandinEnv
) -> None:
    start_with_two_models(manager, standin)
    standin.set_faults(**LONG_ANSWER, load_ms=1500)
    answer = in_thread(lambda: standin.generate(MODELFILE_MODEL, "tell me"))
    wait_until(lambda: standin.runner_pid("llama3:latest"), 30, what="llama3 loaded for the long answer")

    used = manager.run("model", "use", "mistral")
    assert (used.returncode, used.stdout.strip(), used.stderr) == (0, "Using mistral:latest", "")
    loading = status_where(manager, "a preload under way", lambda s: s["model_loading"] is not None, 10)
    assert loading["model"] == "mistral:latest" and loading["model_loading"]["model"] == "mistral:latest"
    status = status_where(
        manager, "mistral preloaded", lambda s: s["model_loading"] is None and in_memory(s, "mistral")
    )
    assert (status["model_loaded"], status["modelfile_model"]) == ("mistral:latest", MODELFILE_MODEL)
    preloads = [e for e in standin.events_of("request_done") if e.get("load_only")]
    assert [e["model"] for e in preloads] == ["mistral:latest"]

    done = answer()
    assert done["done"] is True and done["eval_count"] == LONG_ANSWER["tokens"]  # not cut short by the switch
    assert standin.events_of("runner_exit") == []  # nothing was unloaded to make room
    standin.clear_faults()
    wait_until(lambda: standin.probes_answered("mistral:latest"), 30, what="the probe's test prompt to mistral")
    probes_before = standin.probes_answered("llama3:latest")
    seen = standin.probes_answered("mistral:latest")
    wait_until(lambda: standin.probes_answered("mistral:latest") >= seen + 2, 30, what="two more probes of mistral")
    assert standin.probes_answered("llama3:latest") == probes_before  # the probe left the old model alone

    assert saved_active_model(manager) == "mistral:latest"
    listed = manager.run("model", "list").stdout.splitlines()
    assert [line.split()[0] for line in listed if line.rstrip().endswith("active")] == ["mistral:latest"]
    assert any(line.startswith("llama3:latest") and "Modelfile model" in line for line in listed), listed
    assert [e["message"] for e in manager.events() if e["kind"] == "model_switched"] == [
        "active model: mistral:latest (was llama3)"
    ]

    back = manager.run("model", "use", MODELFILE_MODEL)
    assert back.stdout.strip() == "Using llama3 (the Modelfile model)"
    status_where(manager, "the Modelfile model active again", lambda s: s["model"] == MODELFILE_MODEL)
    assert saved_active_model(manager) == ""

    missing = manager.run("model", "use", "tinyllama")
    assert missing.returncode == 1
    assert missing.stderr == (
        "ollama-manager: model tinyllama is not installed: run `ollama-manager model pull tinyllama`\n"
    )


def test_the_choice_survives_a_restart_and_a_deleted_active_model_falls_back_once(
    manager: Manager, standin: StandinEnv
) -> None:
    start_with_two_models(manager, standin)
    assert manager.run("model", "use", "mistral").returncode == 0
    status_where(manager, "mistral active", lambda s: s["model"] == "mistral:latest")
    manager.cleanup()  # the app quits; Ollama stays up

    manager.monitors.clear()
    manager.spawn_monitor()
    status = status_where(manager, "the restarted monitor on mistral", lambda s: s["model_loaded"] == "mistral:latest")
    assert status["model"] == "mistral:latest"

    removed = standin.ollama("rm", "mistral")
    assert removed.returncode == 0, removed.stderr
    status_where(manager, "the fall back to the Modelfile model", lambda s: s["model"] == MODELFILE_MODEL)
    checks = len(samples(manager))
    wait_until(lambda: len(samples(manager)) >= checks + 3, 30, what="three more health checks")
    fallbacks = [e for e in manager.events() if e["kind"] == "model_missing"]
    assert [e["message"] for e in fallbacks] == [
        "the active model mistral:latest is no longer installed; using the Modelfile model llama3 again"
    ]
    assert saved_active_model(manager) == ""


def test_a_pull_shows_progress_makes_the_model_selectable_and_failures_say_why(
    manager: Manager, standin: StandinEnv
) -> None:
    start_with_two_models(manager, standin)
    pulled = manager.run("model", "pull", "tinyllama", timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    assert "pulling" in pulled.stderr and "100%" in pulled.stderr, pulled.stderr
    assert pulled.stdout.strip().startswith("pulled tinyllama")
    status_where(manager, "tinyllama listed", lambda s: "tinyllama:latest" in installed(s))
    used = manager.run("model", "use", "tinyllama")
    assert used.stdout.strip() == "Using tinyllama:latest", used.stderr
    status_where(manager, "tinyllama active and in memory", lambda s: in_memory(s, "tinyllama"))

    standin.set_faults(pull_offline=True)
    offline = manager.run("model", "pull", "llama3.2")
    assert offline.returncode == 1
    assert offline.stderr.splitlines()[-1] == (
        "ollama-manager: cannot pull llama3.2: no network (the model registry cannot be reached)"
    )
    standin.set_faults(pull_offline=None, pull_disk_full_after_mb=1)
    full = manager.run("model", "pull", "llama3.2")
    assert full.returncode == 1
    assert full.stderr.splitlines()[-1] == (
        f"ollama-manager: cannot pull llama3.2: the disk is full (no space left in {standin.models_dir})"
    )
    unknown = manager.run("model", "pull", "no-such-model")
    assert unknown.stderr.splitlines()[-1] == (
        "ollama-manager: cannot pull no-such-model: the registry has no model of that name"
    )
    assert "Traceback" not in offline.stderr + full.stderr + unknown.stderr


def test_without_a_monitor_model_use_checks_the_installed_models_and_saves_the_choice_for_its_start(
    manager: Manager, standin: StandinEnv
) -> None:
    standin.spawn_serve()
    standin.wait_ready()
    standin.pull("mistral")
    used = manager.run("model", "use", "mistral")
    assert used.returncode == 0, used.stderr
    assert used.stdout.strip() == f"Using mistral:latest; saved in {config_file(manager)}, for the manager's next start"
    assert saved_active_model(manager) == "mistral:latest"
    missing = manager.run("model", "use", "tinyllama")
    assert (missing.returncode, missing.stderr) == (
        1,
        "ollama-manager: model tinyllama is not installed: run `ollama-manager model pull tinyllama`\n",
    )
    assert saved_active_model(manager) == "mistral:latest"

    manager.spawn_monitor()
    status_where(manager, "the monitor starting on mistral", lambda s: s["model_loaded"] == "mistral:latest")
