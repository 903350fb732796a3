"""Settings: a TOML file with flat keys named after the design notes' constants.

Precedence: ``OLLAMA_MANAGER_<KEY>`` environment variables > the file > defaults.
The file is ``--config PATH``, else ``$OLLAMA_MANAGER_CONFIG``, else
``<platform config dir>/config.toml``. A missing file means defaults; a bad
one raises :class:`ConfigError` whose text is one line naming the file, the
key and the problem.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tray.core.health import stuck_runner_bound
from tray.core.names import parse_name
from tray.settings.alerts import AlertSettings
from tray.settings.gateway import CloudSettings, GatewaySettings
from tray.settings.hosts import DEFAULT_HOST, OllamaHost, check_ollama_host, exposure_warning, parse_ollama_host
from tray.settings.meta import DAY, MAX_PORT, check_fields, check_value, setting, shown
from tray.settings.server import OllamaServerSettings
from tray.settings.textfile import FileRefused, read_regular_file

ENV_PREFIX = "OLLAMA_MANAGER_"
CONFIG_ENV = "OLLAMA_MANAGER_CONFIG"
MAX_CONFIG_BYTES = 1 << 20  # a settings file is a few kB; anything near this is not one


class ConfigError(Exception):
    """A bad setting; ``str()`` is the one line shown to the user."""


class ConfigPlace(Protocol):
    """Where the settings live on this machine: the OS adapter that knows (``tray.system.paths.AppPaths``) hands
    it in, so the settings need no OS knowledge of their own."""

    @property
    def config_dir(self) -> Path: ...

    @property
    def config_file(self) -> Path: ...


def check_model_name(value: str) -> None:
    """Raise ValueError unless Ollama accepts ``value`` as a model name (types/model's rules).

    >>> check_model_name("my model")
    Traceback (most recent call last):
    ValueError: must be a model name such as 'llama3' or 'namespace/model:tag', got 'my model'
    """
    try:
        parse_name(value)
    except ValueError:
        raise ValueError(
            f"must be a model name such as 'llama3' or 'namespace/model:tag', got {shown(value)}"
        ) from None


def check_optional_model_name(value: str) -> None:
    """Like :func:`check_model_name`, where empty means "the default model".

    >>> check_optional_model_name("")
    >>> check_optional_model_name("a/b/c/d")
    Traceback (most recent call last):
    ValueError: must be a model name such as 'llama3' or 'namespace/model:tag', got 'a/b/c/d'
    """
    if value:
        check_model_name(value)


@dataclass(frozen=True)
class Config:
    ollama_host: str = field(
        default="",
        metadata=setting(
            "Ollama's address; default: $OLLAMA_HOST, else http://127.0.0.1:11434",
            check=check_ollama_host,
            command_only="127.0.0.1:11434",
        ),
    )
    ollama_binary: str = field(
        default="",
        metadata=setting(
            "Path of the ollama executable; default: found on PATH or the OS install location",
            command_only="/path/to/ollama",
        ),
    )
    ollama_model: str = field(
        default="uncensored-llama3",
        metadata=setting(
            "The Modelfile model: the one the manager builds from the Modelfile, verifies and repairs",
            check=check_model_name,
        ),
    )
    active_model: str = field(
        default="",
        metadata=setting(
            "The model in use: the health probe's, the one the tray and the gateway name; "
            "any installed model (empty: the Modelfile model)",
            check=check_optional_model_name,
        ),
    )
    modelfile: str = field(
        default="",
        metadata=setting(
            "Modelfile the model is built from; default: uncensored.Modelfile in the config dir",
            command_only="/path/to/uncensored.Modelfile",
        ),
    )
    health_check_interval: float = field(
        default=30.0, metadata=setting("Seconds between health checks", minimum=0.1, maximum=DAY)
    )
    health_check_timeout: float = field(
        default=5.0,
        metadata=setting(
            "Latency (s) above which Ollama is unhealthy; a probe gives up (down) at 3x this",
            minimum=0.1,
            maximum=DAY,
        ),
    )
    auto_restart_attempts: int = field(
        default=3,
        metadata=setting(
            "Restart attempts before giving up and relying on the cloud fallback", minimum=0, maximum=1000
        ),
    )
    health_probe: str = field(
        default="inference",
        metadata=setting(
            "'inference' runs a one-token test prompt when the model exists; "
            "'api' only checks the API so the model can unload",
            choices=("inference", "api"),
        ),
    )
    startup_timeout: float = field(
        default=30.0, metadata=setting("Seconds to wait for a started Ollama to answer", minimum=1, maximum=DAY)
    )
    model_load_timeout: float = field(
        default=300.0,
        metadata=setting(
            "Seconds a model may take to load from disk (Ollama's own default); part of the stuck-runner bound",
            minimum=1,
            maximum=DAY,
        ),
    )
    stuck_runner_timeout: float = field(
        default=0.0,
        metadata=setting(
            "Seconds Ollama may stay busy with no progress before its runner counts as stuck (an alert); "
            "0: model_load_timeout + 600",
            minimum=0,
            maximum=DAY,
        ),
    )
    stop_timeout: float = field(
        default=5.0,
        metadata=setting("Seconds between SIGTERM and SIGKILL when stopping Ollama", minimum=0.1, maximum=DAY),
    )
    status_port: int = field(
        default=11436,
        metadata=setting("Loopback port of the status API (0 = any free port)", minimum=0, maximum=MAX_PORT),
    )
    model_quantize: str = field(
        default="", metadata=setting("Quantization for builds from an F16/F32 base, e.g. 'q4_K_M' (empty: as the base)")
    )
    auto_build_model: bool = field(
        default=True,
        metadata=setting("Build or repair the model automatically when it is missing, outdated or damaged"),
    )
    model_verify_interval: float = field(
        default=3600.0,
        metadata=setting("Seconds between model integrity checks", minimum=1, maximum=30 * DAY),
    )
    stop_ollama_on_quit: bool = field(default=False, metadata=setting("Stop Ollama when the tray app quits"))
    tray_host_wait: float = field(
        default=30.0,
        metadata=setting(
            "Seconds the tray, started before the desktop's panel, waits for a tray to show its icon in",
            minimum=0,
            maximum=DAY,
        ),
    )
    notifications: bool = field(default=True, metadata=setting("Show desktop notifications"))

    alerts: AlertSettings = field(default_factory=AlertSettings, metadata=setting("Alert thresholds"))
    cloud: CloudSettings = field(
        default_factory=CloudSettings,
        metadata=setting("The cloud LLM answering while Ollama is down (off until enabled)"),
    )
    gateway: GatewaySettings = field(
        default_factory=GatewaySettings, metadata=setting("The local gateway apps point at instead of Ollama")
    )
    ollama_server: OllamaServerSettings = field(
        default_factory=OllamaServerSettings,
        metadata=setting("How the app starts `ollama serve`: models folder, GPUs, memory and network"),
    )

    source: str = field(default="", compare=False, metadata={"internal": True})

    def __post_init__(self) -> None:
        check_fields(self, "")

    @property
    def host(self) -> OllamaHost:
        return parse_ollama_host(self.ollama_host)

    @property
    def stuck_runner_seconds(self) -> float:
        """The stuck-runner bound in effect (``stuck_runner_timeout``, else the load budget plus 10 min)."""
        return stuck_runner_bound(self.stuck_runner_timeout, self.model_load_timeout)

    @property
    def model_in_use(self) -> str:
        """The active model: ``active_model``, else the Modelfile model (``ollama_model``).

        >>> Config().model_in_use, Config(active_model="llama3:8b").model_in_use
        ('uncensored-llama3', 'llama3:8b')
        """
        return self.active_model or self.ollama_model

    @property
    def modelfile_path(self) -> Path:
        return Path(self.modelfile).expanduser()


def settable_fields(cls: type = Config) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def section_type(f: dataclasses.Field[Any]) -> type | None:
    """The settings dataclass of a ``[section]`` field (one whose default is that dataclass), else None."""
    factory = f.default_factory
    return factory if isinstance(factory, type) and dataclasses.is_dataclass(factory) else None


def is_section(f: dataclasses.Field[Any]) -> bool:
    """A ``[section]`` of the file: a field whose default is a settings dataclass."""
    return section_type(f) is not None


def convert_value(cls: type, key: str, raw: Any, from_env: bool) -> Any:
    """Check and convert one value of dataclass ``cls``; raise ValueError with the problem.

    ``from_env``: ``raw`` is text (an environment variable, a form field, a
    command-line argument) to read as the key's type; a list's text is its
    entries separated by commas.
    """
    kind = typing.get_type_hints(cls)[key]
    meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == key)
    value: Any
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if from_env and isinstance(raw, str) and raw.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[raw.strip().lower()]
        raise ValueError(f"must be true or false, got {shown(raw)}")
    if kind in (int, float):
        if isinstance(raw, bool):
            raise ValueError(f"must be a number, got {shown(raw)}")
        if from_env and isinstance(raw, str):
            try:
                raw = int(raw) if kind is int else float(raw)
            except ValueError:
                wanted = "a whole number" if kind is int else "a number"
                raise ValueError(f"must be {wanted}, got {shown(raw)}") from None
        if kind is int and not isinstance(raw, int):
            raise ValueError(f"must be a whole number, got {shown(raw)}")
        if kind is float and not isinstance(raw, (int, float)):
            raise ValueError(f"must be a number, got {shown(raw)}")
        try:
            value = kind(raw)
        except OverflowError:
            raise ValueError(f"must be a finite number, got {len(str(raw))} digits") from None
    elif kind is str:
        if not isinstance(raw, str):
            raise ValueError(f"must be a string, got {shown(raw)}")
        value = raw
    elif kind == tuple[str, ...]:
        if from_env and isinstance(raw, str):  # text: comma-separated, as Ollama reads OLLAMA_ORIGINS
            raw = [item.strip() for item in raw.split(",") if item.strip()]
        if not isinstance(raw, list | tuple) or not all(isinstance(item, str) for item in raw):
            raise ValueError(f"must be an array of strings, got {shown(raw)}")
        value = tuple(raw)
    else:  # pragma: no cover
        raise AssertionError(f"unsupported setting type {kind!r}")
    check_value(meta, value)
    return value


def setting_argument(cls: type, key: str) -> Callable[[str], Any]:
    """An argparse ``type=`` for a command-line flag that stands for setting ``key`` of ``cls``.

    The flag passes the same check as the setting; argparse prints the problem
    as ``argument --port: must be at most 65535, got 70000`` and exits with 2.

    >>> from tray.settings.gateway import GatewaySettings
    >>> setting_argument(GatewaySettings, "port")("70000")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be at most 65535, got 70000
    """

    def convert(text: str) -> Any:
        try:
            return convert_value(cls, key, text, from_env=True)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = key  # argparse names the type in some messages
    return convert


def load_table(
    cls: type, table: Mapping[str, Any], env: Mapping[str, str], path: Path, prefix: str = ""
) -> dict[str, Any]:
    """Converted values of ``cls``'s fields from a TOML table and the environment."""
    fields = {f.name: f for f in settable_fields(cls)}
    for key, value in table.items():
        if key not in fields:
            where = f" in [{prefix.rstrip('.')}]" if prefix else ""
            what = "section" if isinstance(value, dict) else "key"
            raise ConfigError(f"{path}: unknown {what} {shown(key)}{where}")
    values: dict[str, Any] = {}
    for key, f in fields.items():
        section_cls = section_type(f)
        if section_cls is not None:
            section = table.get(key, {})
            if not isinstance(section, dict):
                raise ConfigError(f"{path}: '{key}' must be a [{key}] section")
            sub_values = load_table(section_cls, section, env, path, prefix=f"{prefix}{key}.")
            try:
                values[key] = section_cls(**sub_values)
            except ValueError as exc:
                raise ConfigError(f"{path}: {exc}") from None
            continue
        if key in table:
            try:
                values[key] = convert_value(cls, key, table[key], from_env=False)
            except ValueError as exc:
                raise ConfigError(f"{path}: key '{prefix}{key}' {exc}") from None
        env_name = ENV_PREFIX + (prefix + key).replace(".", "_").upper()
        if env_name in env:
            try:
                values[key] = convert_value(cls, key, env[env_name], from_env=True)
            except ValueError as exc:
                raise ConfigError(f"environment variable {env_name} {exc}") from None
    return values


_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def config_file_path(explicit: str | Path | None, env: Mapping[str, str], paths: ConfigPlace) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    return paths.config_file


def read_config_text(path: Path, shown: Path | None = None) -> str | None:
    """The text of the config file at ``path``, None when it does not exist: a regular file of at most 1 MiB,
    UTF-8 with a BOM allowed; anything else is a ConfigError naming ``shown`` (default ``path``)."""
    shown = path if shown is None else shown
    try:
        data = read_regular_file(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError(f"{shown}: is a directory, not a config file") from None
    except FileRefused as exc:
        raise ConfigError(f"{shown}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{shown}: not UTF-8 text") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's table, or {} when it does not exist (see :func:`read_config_text`)."""
    text = read_config_text(path)
    return {} if text is None else parse_toml(text, path)


def parse_toml(text: str, path: Path) -> dict[str, Any]:
    """The table of a settings file's text; ConfigError (one line) when it is not valid TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None
    except ValueError:  # a number with more digits than Python converts
        raise ConfigError(f"{path}: invalid TOML: a number with too many digits") from None


def load_config(
    explicit: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    paths: ConfigPlace,
) -> Config:
    """Load the settings; raise ConfigError on a bad file or variable.

    ``paths`` says where the settings file and the default Modelfile are when neither ``explicit`` nor
    ``$OLLAMA_MANAGER_CONFIG`` names the file.
    """
    env = os.environ if env is None else env
    path = config_file_path(explicit, env, paths)
    if explicit and not path.exists():
        raise ConfigError(f"{path}: config file not found")
    values = load_table(Config, read_config_file(path), env, path)
    if not values.get("ollama_host"):
        try:
            values["ollama_host"] = convert_value(Config, "ollama_host", env.get("OLLAMA_HOST") or DEFAULT_HOST, True)
        except ValueError as exc:
            raise ConfigError(f"environment variable OLLAMA_HOST {exc} (or set ollama_host)") from None
    if not values.get("modelfile"):
        values["modelfile"] = str(paths.config_dir / "uncensored.Modelfile")
    try:
        return Config(**values, source=str(path))
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_warnings(config: Config) -> list[str]:
    """What a valid configuration still deserves a word about, one line each (said at start and by `config set`)."""
    warning = exposure_warning(config.ollama_host)
    return [warning] if warning else []
