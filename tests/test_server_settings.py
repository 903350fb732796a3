"""The [ollama_server] settings and the environment of the ``ollama serve`` the app starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tray.settings.config import ConfigError, load_table
from tray.settings.server import (
    OllamaServerSettings,
    customizes_server,
    expand_home,
    exposed_host,
    gpu_device_list,
    server_env,
)

BASE = {"PATH": "/usr/bin", "HOME": "/home/ada", "OLLAMA_HOST": "127.0.0.1:11434"}


def test_defaults_leave_the_environment_as_it_is() -> None:
    assert server_env(OllamaServerSettings(), BASE) == BASE


def test_every_setting_becomes_its_variable() -> None:
    settings = OllamaServerSettings(
        models_dir="/srv/ollama/models",
        gpu_devices="0,1",
        keep_alive="30m",
        max_loaded_models=2,
        num_parallel=4,
        context_length=8192,
        expose=True,
    )
    assert server_env(settings, BASE) == {
        "PATH": "/usr/bin",
        "HOME": "/home/ada",
        "OLLAMA_HOST": "0.0.0.0:11434",
        "OLLAMA_MODELS": "/srv/ollama/models",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "HIP_VISIBLE_DEVICES": "0,1",
        "ROCR_VISIBLE_DEVICES": "0,1",
        "OLLAMA_KEEP_ALIVE": "30m",
        "OLLAMA_MAX_LOADED_MODELS": "2",
        "OLLAMA_NUM_PARALLEL": "4",
        "OLLAMA_CONTEXT_LENGTH": "8192",
    }


def test_the_base_environment_is_not_changed() -> None:
    base = dict(BASE)
    server_env(OllamaServerSettings(keep_alive="-1", expose=True), base)
    assert base == BASE


def test_settings_left_to_ollama_keep_what_the_user_exported() -> None:
    base = {**BASE, "OLLAMA_NUM_PARALLEL": "3", "CUDA_VISIBLE_DEVICES": "1", "OLLAMA_MODELS": "/data/models"}
    assert server_env(OllamaServerSettings(context_length=4096), base) == {**base, "OLLAMA_CONTEXT_LENGTH": "4096"}


def test_cpu_only_hides_every_gpu_with_an_id_no_gpu_has() -> None:
    env = server_env(OllamaServerSettings(gpu_devices="CPU"), BASE)
    assert [env[name] for name in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")] == ["-1"] * 3
    # ROCm's fallback variable, and Vulkan, which Ollama turns on by default.
    assert (env["GPU_DEVICE_ORDINAL"], env["GGML_VK_VISIBLE_DEVICES"], env["OLLAMA_VULKAN"]) == ("-1", "-1", "0")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", "0"),
        (" 1 , 0 ", "1,0"),
        ("GPU-8f2c1a9e-3b4d-4e5f", "GPU-8f2c1a9e-3b4d-4e5f"),
        ("MIG-0c1d2e3f,2", "MIG-0c1d2e3f,2"),
        ("cpu", "-1"),
        ("0;1", None),
        ("first", None),
        ("0,", None),
        ("", None),
    ],
)
def test_gpu_device_lists(text: str, expected: str | None) -> None:
    assert gpu_device_list(text) == expected


def test_a_models_dir_under_home_is_expanded_with_the_servers_home() -> None:
    env = server_env(OllamaServerSettings(models_dir="~/big-disk/models"), BASE)
    assert env["OLLAMA_MODELS"] == "/home/ada/big-disk/models"


@pytest.mark.parametrize(
    ("path", "env", "expected"),
    [
        ("~", {"HOME": "/home/ada"}, "/home/ada"),
        ("~/m", {"USERPROFILE": "/users/ada"}, "/users/ada/m"),
        ("~/m", {}, "~/m"),
        ("~bob/m", {"HOME": "/home/ada"}, "~bob/m"),
        ("/abs/m", {"HOME": "/home/ada"}, "/abs/m"),
    ],
)
def test_expand_home(path: str, env: dict[str, str], expected: str) -> None:
    assert expand_home(path, env) == expected


@pytest.mark.parametrize(
    ("ollama_host", "expected"),
    [
        ("127.0.0.1:11500", "0.0.0.0:11500"),
        ("http://localhost:8080", "0.0.0.0:8080"),
        ("[::1]:11434", "0.0.0.0:11434"),
        (None, "0.0.0.0:11434"),
    ],
)
def test_expose_listens_on_every_interface_on_the_same_port(ollama_host: str | None, expected: str) -> None:
    assert exposed_host(ollama_host) == expected


@pytest.mark.parametrize("keep_alive", ["5m", "1h30m", "300", "-1", "+10s", "0.5h", "1.5h", "250ms", "-1m"])
def test_keep_alive_accepts_seconds_and_go_durations(keep_alive: str) -> None:
    env = server_env(OllamaServerSettings(keep_alive=keep_alive), BASE)
    assert env["OLLAMA_KEEP_ALIVE"] == keep_alive


@pytest.mark.parametrize("keep_alive", ["five minutes", "5 m", "m", "5d", "1h-", "--1"])
def test_keep_alive_refuses_what_ollama_cannot_parse(keep_alive: str) -> None:
    with pytest.raises(ValueError) as refused:
        OllamaServerSettings(keep_alive=keep_alive)
    assert str(refused.value) == (
        f"ollama_server.keep_alive must be seconds or a duration such as '5m', '1h30m' or '-1', got {keep_alive!r}"
    )


def test_a_bad_gpu_list_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError) as refused:
        OllamaServerSettings(gpu_devices="nvidia")
    assert str(refused.value) == (
        "ollama_server.gpu_devices must be 'cpu' or comma-separated GPU indices or UUIDs (e.g. '0,1'), got 'nvidia'"
    )


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError) as refused:
        OllamaServerSettings(num_parallel=-2)
    assert str(refused.value) == "ollama_server.num_parallel must be at least 0, got -2"


def test_customizes_server_is_false_only_for_the_defaults() -> None:
    assert customizes_server(OllamaServerSettings()) is False
    assert customizes_server(OllamaServerSettings(expose=True)) is True
    assert customizes_server(OllamaServerSettings(context_length=2048)) is True


def test_every_setting_has_a_one_line_help() -> None:
    for name, spec in OllamaServerSettings.__dataclass_fields__.items():
        assert spec.metadata["help"], name
        assert "\n" not in spec.metadata["help"], name


# The section loads through the config loader like [alerts] does.


@dataclass(frozen=True)
class WithServerSection:
    ollama_server: OllamaServerSettings = field(default_factory=OllamaServerSettings, metadata={"help": "server"})


def load_section(table: dict, env: dict[str, str] | None = None) -> OllamaServerSettings:
    values = load_table(WithServerSection, table, env or {}, Path("/c.toml"))
    return WithServerSection(**values).ollama_server


def test_the_section_loads_from_toml_and_the_environment() -> None:
    settings = load_section(
        {"ollama_server": {"keep_alive": "1h", "num_parallel": 2, "expose": True}},
        {"OLLAMA_MANAGER_OLLAMA_SERVER_NUM_PARALLEL": "6"},
    )
    assert settings == OllamaServerSettings(keep_alive="1h", num_parallel=6, expose=True)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"num_parallel": -1}, "/c.toml: key 'ollama_server.num_parallel' must be at least 0, got -1"),
        ({"expose": "yes"}, "/c.toml: key 'ollama_server.expose' must be true or false, got 'yes'"),
        ({"gpu": "0"}, "/c.toml: unknown key 'gpu' in [ollama_server]"),
        (
            {"keep_alive": "soon"},
            "/c.toml: ollama_server.keep_alive must be seconds or a duration such as '5m', '1h30m' or '-1', got 'soon'",
        ),
    ],
)
def test_bad_values_in_the_file_are_one_line_config_errors(table: dict, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_section({"ollama_server": table})
    assert str(refused.value) == message
