"""The ``[ollama_server]`` settings: how the ``ollama serve`` this app starts is set up.

Ollama reads its settings only from its environment, so each setting here
becomes an environment variable of the server process (:func:`server_env`).
An empty string, zero or false means "leave it to Ollama": the variable is
inherited from the app's own environment unchanged.

These settings reach only a server the app starts itself. An Ollama run by
its desktop app or by systemd keeps the environment its owner gives it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from tray.core.ollama_env import CONTEXT_VARIABLE, GPU_OFF_ENV, GPU_VARIABLES, NO_GPU_ID
from tray.settings.hosts import parse_ollama_host
from tray.settings.meta import check_fields, setting

CPU_ONLY = "cpu"
ALL_INTERFACES = "0.0.0.0"

_GPU_ID = re.compile(r"\d+|(GPU|MIG)-[0-9A-Za-z-]+")
# What Ollama's envconfig accepts: whole seconds, or a Go duration such as "1h30m".
_KEEP_ALIVE = re.compile(r"[-+]?\d+|[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+")


@dataclass(frozen=True)
class OllamaServerSettings:
    """Field names are the keys of the ``[ollama_server]`` config section."""

    models_dir: str = field(
        default="",
        metadata=setting(
            "Folder Ollama keeps its models in (OLLAMA_MODELS); empty: Ollama's default, ~/.ollama/models",
            command_only="/path/to/models",
        ),
    )
    gpu_devices: str = field(
        default="",
        metadata=setting(
            "GPUs Ollama may use, as comma-separated indices or UUIDs (CUDA/HIP/ROCR_VISIBLE_DEVICES); "
            "'cpu' for none; empty: all"
        ),
    )
    keep_alive: str = field(
        default="",
        metadata=setting(
            "How long an idle model stays in memory (OLLAMA_KEEP_ALIVE), e.g. '5m', '1h', '300', '-1' for ever; "
            "empty: Ollama's default (5m)"
        ),
    )
    max_loaded_models: int = field(
        default=0,
        metadata=setting(
            "Models kept in memory at once (OLLAMA_MAX_LOADED_MODELS); 0: Ollama decides", minimum=0, maximum=1000
        ),
    )
    num_parallel: int = field(
        default=0,
        metadata=setting(
            "Requests each model serves at once (OLLAMA_NUM_PARALLEL); 0: Ollama's default", minimum=0, maximum=1000
        ),
    )
    context_length: int = field(
        default=0,
        metadata=setting(
            "Default context window in tokens (OLLAMA_CONTEXT_LENGTH); 0: Ollama picks one from the GPU memory",
            minimum=0,
            maximum=1 << 24,
        ),
    )
    expose: bool = field(
        default=False,
        metadata=setting(
            "Listen on every network interface (OLLAMA_HOST=0.0.0.0:port): anyone on the network can then use Ollama",
            command_only="true",
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self, "ollama_server.")
        if self.gpu_devices and gpu_device_list(self.gpu_devices) is None:
            raise ValueError(
                "ollama_server.gpu_devices must be 'cpu' or comma-separated GPU indices or UUIDs "
                f"(e.g. '0,1'), got {self.gpu_devices!r}"
            )
        if self.keep_alive and not _KEEP_ALIVE.fullmatch(self.keep_alive.strip()):
            raise ValueError(
                "ollama_server.keep_alive must be seconds or a duration such as '5m', '1h30m' or '-1', "
                f"got {self.keep_alive!r}"
            )


def gpu_device_list(text: str) -> str | None:
    """The value for the ``*_VISIBLE_DEVICES`` variables, or None when ``text`` is not a device list.

    >>> gpu_device_list(" 0, 1 "), gpu_device_list("CPU"), gpu_device_list("GPU-5f3a-9b"), gpu_device_list("first")
    ('0,1', '-1', 'GPU-5f3a-9b', None)
    """
    if text.strip().lower() == CPU_ONLY:
        return NO_GPU_ID
    devices = [device.strip() for device in text.split(",")]
    if not all(_GPU_ID.fullmatch(device) for device in devices):
        return None
    return ",".join(devices)


def expand_home(path: str, env: Mapping[str, str]) -> str:
    """``path`` with a leading ``~`` replaced by the home directory named in ``env``.

    >>> expand_home("~/models", {"HOME": "/home/ada"}), expand_home("/srv/models", {})
    ('/home/ada/models', '/srv/models')
    """
    if path != "~" and not path.startswith(("~/", "~\\")):
        return path
    home = env.get("HOME") or env.get("USERPROFILE")
    if not home:
        return path
    return str(Path(home) / path[2:]) if len(path) > 1 else home


def exposed_host(ollama_host: str | None) -> str:
    """The ``OLLAMA_HOST`` that listens on every interface, on the port ``ollama_host`` names.

    >>> exposed_host("127.0.0.1:11500"), exposed_host(None)
    ('0.0.0.0:11500', '0.0.0.0:11434')
    """
    return f"{ALL_INTERFACES}:{parse_ollama_host(ollama_host).port}"


def server_env(settings: OllamaServerSettings, base_env: Mapping[str, str]) -> dict[str, str]:
    """The environment of an ``ollama serve`` started with ``settings``, on top of ``base_env``.

    ``base_env`` is the environment the server would get otherwise, with its
    ``OLLAMA_HOST`` already set; settings left at "Ollama decides" keep what it holds.
    """
    env = dict(base_env)
    if settings.models_dir:
        env["OLLAMA_MODELS"] = expand_home(settings.models_dir.strip(), base_env)
    devices = gpu_device_list(settings.gpu_devices) if settings.gpu_devices else None
    if devices == NO_GPU_ID:
        env.update(GPU_OFF_ENV)
    elif devices is not None:
        env.update(dict.fromkeys(GPU_VARIABLES, devices))
    if settings.keep_alive:
        env["OLLAMA_KEEP_ALIVE"] = settings.keep_alive.strip()
    if settings.max_loaded_models:
        env["OLLAMA_MAX_LOADED_MODELS"] = str(settings.max_loaded_models)
    if settings.num_parallel:
        env["OLLAMA_NUM_PARALLEL"] = str(settings.num_parallel)
    if settings.context_length:
        env[CONTEXT_VARIABLE] = str(settings.context_length)
    if settings.expose:
        env["OLLAMA_HOST"] = exposed_host(base_env.get("OLLAMA_HOST"))
    return env


MANAGER_PREFIX = "OLLAMA_MANAGER_"


def without_secrets(env: Mapping[str, str], key_variables: Iterable[str]) -> dict[str, str]:
    """``env`` without the cloud key's variables and the manager's own ``OLLAMA_MANAGER_*`` settings.

    Ollama reads neither, and every runner it spawns inherits its environment,
    so a key left there would be readable wherever the server's environment is.

    >>> env = {"PATH": "/bin", "OPENAI_API_KEY": "sk-1", "OLLAMA_MANAGER_CLOUD_MODEL": "m"}
    >>> without_secrets(env, ["OPENAI_API_KEY"])
    {'PATH': '/bin'}
    """
    dropped = set(key_variables)
    return {name: value for name, value in env.items() if name not in dropped and not name.startswith(MANAGER_PREFIX)}


def customizes_server(settings: OllamaServerSettings) -> bool:
    """Does any setting differ from "leave it to Ollama"?

    The official Ollama app starts its server with its own environment, so
    when this is true the app must start ``ollama serve`` itself instead.
    """
    defaults = OllamaServerSettings()
    return any(getattr(settings, f.name) != getattr(defaults, f.name) for f in fields(settings))


def settings_variables(settings: OllamaServerSettings, home: str = "~") -> dict[str, str]:
    """The variables the ``[ollama_server]`` settings set (those left to Ollama are not listed).

    >>> settings_variables(OllamaServerSettings(keep_alive="1h", num_parallel=2))
    {'OLLAMA_KEEP_ALIVE': '1h', 'OLLAMA_NUM_PARALLEL': '2'}
    """
    base = {"OLLAMA_HOST": "127.0.0.1", "HOME": home}
    env = server_env(settings, base)
    return {key: value for key, value in env.items() if base.get(key) != value}


def systemd_dropin(settings: OllamaServerSettings, unit: str = "ollama.service", home: str = "~") -> str | None:
    """How to give a systemd-run Ollama the ``[ollama_server]`` settings (they cannot reach it otherwise).

    None when no setting differs from Ollama's defaults.

    >>> print(systemd_dropin(OllamaServerSettings(keep_alive="1h")))
    [ollama_server] does not reach Ollama run by ollama.service; to apply it, run `sudo systemctl edit ollama`, add
    [Service]
    Environment="OLLAMA_KEEP_ALIVE=1h"
    then run `sudo systemctl restart ollama`
    """
    variables = settings_variables(settings, home)
    if not variables:
        return None
    short = unit.removesuffix(".service")
    lines = [
        f"[ollama_server] does not reach Ollama run by {unit}; to apply it, run `sudo systemctl edit {short}`, add",
        "[Service]",
        *(f'Environment="{key}={value}"' for key, value in sorted(variables.items())),
        f"then run `sudo systemctl restart {short}`",
    ]
    return "\n".join(lines)
