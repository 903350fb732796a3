"""The settings page's model: every key with its value, help and validation, and saving.

Validation is the config loader's own (:mod:`tray.settings.config`): each value goes
through the converter ``load_config`` uses, then the whole file with the
changes must load, so a section's cross-checks run too. Saving edits the
TOML document in place (the user's comments and layout stay) and replaces
the file atomically, all changed keys in one write.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shlex
import threading
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from tray.settings.config import (
    ENV_PREFIX,
    Config,
    ConfigError,
    convert_value,
    is_section,
    load_table,
    read_config_file,
    section_type,
    settable_fields,
)
from tray.settings.meta import number_text, text_problem
from tray.settings.store import set_config_values
from tray.system.paths import AppPaths

KINDS: dict[Any, str] = {bool: "bool", int: "int", float: "float", str: "str", tuple[str, ...]: "list"}

# Read by the monitor on every check or by the supervisor on every start/stop.
APPLIED_NOW = frozenset(
    {
        "health_check_interval",
        "health_check_timeout",
        "health_probe",
        "model_load_timeout",
        "stuck_runner_timeout",
        "startup_timeout",
        "stop_timeout",
        "notifications",
        "active_model",  # the monitor switches to it (and preloads it) at once
    }
)
# The supervisor builds the server's environment from these when it starts Ollama.
APPLIED_AT_OLLAMA_START_SECTION = "ollama_server"
# The monitor's resource sampler and model store are bound to the models folder at start-up.
NEEDS_APP_RESTART_IN_SECTION = frozenset({"ollama_server.models_dir"})


class Applies(StrEnum):
    """When a saved change takes effect."""

    NOW = "now"
    OLLAMA_START = "ollama_start"
    APP_RESTART = "app_restart"


@dataclass(frozen=True)
class SettingSpec:
    """One key of the settings file."""

    key: str  # "health_check_interval", or "alerts.cpu_percent" inside a section
    owner: type  # the dataclass that declares the field
    kind: str  # "bool", "int", "float", "str" or "list" (of strings; as text, comma-separated)
    help: str
    default: Any
    minimum: float | None
    choices: tuple[str, ...]
    maximum: float | None = None
    command_example: str | None = None  # set: a command-only key (see tray.settings.meta.setting), with an example

    @property
    def command_only(self) -> bool:
        """Changed only by ``ollama-manager config set``: read-only on the settings page, refused by the web API."""
        return self.command_example is not None

    @property
    def name(self) -> str:
        return self.key.rpartition(".")[2]

    @property
    def section(self) -> str:
        return self.key.rpartition(".")[0]

    @property
    def env_name(self) -> str:
        """The environment variable that overrides the file for this key."""
        return ENV_PREFIX + self.key.replace(".", "_").upper()

    @property
    def applies(self) -> Applies:
        return applies_when(self.key)


@dataclass(frozen=True)
class SectionSpec:
    name: str  # "" for the top-level keys
    help: str


def applies_when(key: str) -> Applies:
    """When a change of ``key`` takes effect in the running app.

    >>> applies_when("health_check_interval"), applies_when("ollama_server.keep_alive"), applies_when("status_port")
    (<Applies.NOW: 'now'>, <Applies.OLLAMA_START: 'ollama_start'>, <Applies.APP_RESTART: 'app_restart'>)
    """
    if key in APPLIED_NOW:
        return Applies.NOW
    if key.startswith(APPLIED_AT_OLLAMA_START_SECTION + ".") and key not in NEEDS_APP_RESTART_IN_SECTION:
        return Applies.OLLAMA_START
    return Applies.APP_RESTART


def _default_of(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def setting_specs(cls: type = Config, prefix: str = "") -> list[SettingSpec]:
    """Every settable key of ``cls``, sections' keys after the top-level ones."""
    hints = typing.get_type_hints(cls)
    plain: list[SettingSpec] = []
    nested: list[SettingSpec] = []
    for f in settable_fields(cls):
        key = prefix + f.name
        section_cls = section_type(f)
        if section_cls is not None:
            nested.extend(setting_specs(section_cls, prefix=key + "."))
            continue
        meta = f.metadata
        plain.append(
            SettingSpec(
                key=key,
                owner=cls,
                kind=KINDS[hints[f.name]],
                help=meta.get("help", ""),
                default=_default_of(f),
                minimum=meta.get("minimum"),
                choices=tuple(meta.get("choices") or ()),
                maximum=meta.get("maximum"),
                command_example=meta.get("command_only"),
            )
        )
    return plain + nested


def command_only_keys(cls: type = Config) -> list[str]:
    """The keys the settings page shows read-only and the web API refuses, in the file's order."""
    return [spec.key for spec in setting_specs(cls) if spec.command_only]


def command_value(spec: SettingSpec, raw: Any) -> str:
    """``raw`` as the VALUE argument of ``config set``, shell-quoted; the key's example when it cannot be one.

    >>> spec = SettingSpec("ollama_binary", Config, "str", "", "", None, (), command_example="/path/to/ollama")
    >>> command_value(spec, "/opt/my ollama"), command_value(spec, ["x"]), command_value(spec, "a\\nb")
    ("'/opt/my ollama'", '/path/to/ollama', '/path/to/ollama')
    """
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float) and math.isfinite(raw):
        return number_text(raw)
    if isinstance(raw, str) and raw.strip() and text_problem(raw) is None:
        return shlex.quote(raw.strip())
    return shlex.quote(spec.command_example or "VALUE")


def config_set_command(key: str, value: str, path: Path) -> str:
    """The command that sets ``key`` in the settings file at ``path`` (``--config`` only when it is not the default).

    >>> default = AppPaths.default().config_file
    >>> config_set_command("ollama_binary", "/path/to/ollama", default)
    'ollama-manager config set ollama_binary /path/to/ollama'
    >>> config_set_command("cloud.base_url", "https://x/v1", Path("/srv/my settings.toml"))
    "ollama-manager --config '/srv/my settings.toml' config set cloud.base_url https://x/v1"
    """
    default = AppPaths.default().config_file
    chosen = f" --config {shlex.quote(str(path))}" if path != default else ""
    return f"ollama-manager{chosen} config set {key} {value}"


def command_only_refusal(key: str, command: str) -> str:
    """The one line that refuses a command-only key from the web.

    >>> command_only_refusal("ollama_binary", "ollama-manager config set ollama_binary /x")
    'ollama_binary is changed only from a terminal on this machine: ollama-manager config set ollama_binary /x'
    """
    return f"{key} is changed only from a terminal on this machine: {command}"


def section_specs(cls: type = Config) -> list[SectionSpec]:
    """The top level, then each ``[section]`` of ``cls``, with its help line."""
    sections = [SectionSpec("", "")]
    sections += [SectionSpec(f.name, f.metadata.get("help", "")) for f in settable_fields(cls) if is_section(f)]
    return sections


def flatten(instance: Any, specs: list[SettingSpec]) -> dict[str, Any]:
    """The value of each spec's key in a config instance."""
    values = {}
    for spec in specs:
        owner = instance
        for part in spec.key.split(".")[:-1]:
            owner = getattr(owner, part)
        values[spec.key] = getattr(owner, spec.name)
    return values


def effective_values(
    cls: type, table: Mapping[str, Any], env: Mapping[str, str], path: Path, specs: list[SettingSpec]
) -> dict[str, Any]:
    """What ``load_config`` would take from this file table and environment; ConfigError when it fails."""
    loaded = load_table(cls, table, env, path)
    try:
        instance = cls(**loaded)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return flatten(instance, specs)


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class Validation:
    """A checked set of changes: typed values, or why they were refused."""

    values: dict[str, Any]  # key -> converted value, for the keys that passed
    errors: dict[str, str]  # key -> the line saying why, naming the key, for the keys that did not
    error: str | None = None  # a problem of the whole file (a section's cross-check)

    @property
    def ok(self) -> bool:
        return not self.errors and self.error is None


def convert_change(spec: SettingSpec, raw: Any) -> Any:
    """``raw`` (a JSON value, or the text of a form field) as the key's type; ValueError with the problem."""
    text_for_typed_key = isinstance(raw, str) and spec.kind != "str"
    return convert_value(spec.owner, spec.name, raw.strip() if text_for_typed_key else raw, from_env=text_for_typed_key)


def toml_value(spec: SettingSpec, value: Any) -> Any:
    """How a value is written: a whole float as an integer, the way people type it.

    >>> spec = SettingSpec("health_check_interval", Config, "float", "", 30.0, 0.1, ())
    >>> toml_value(spec, 12.0), toml_value(spec, 2.5)
    (12, 2.5)
    """
    if spec.kind == "float" and float(value).is_integer():
        return int(value)
    return value


def merged_table(table: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """The file table with ``changes`` (dotted keys) applied."""
    merged = copy.deepcopy(dict(table))
    for key, value in changes.items():
        *sections, name = key.split(".")
        target = merged
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = value
    return merged


def validate_changes(
    specs: list[SettingSpec],
    table: Mapping[str, Any],
    changes: Mapping[str, Any],
    path: Path,
    cls: type = Config,
) -> Validation:
    """Check ``changes`` one by one, then the whole file as it would be written."""
    by_key = {spec.key: spec for spec in specs}
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key, raw in changes.items():
        spec = by_key.get(key)
        if spec is None:
            errors[key] = f"{key} is not a setting"
            continue
        try:
            values[key] = toml_value(spec, convert_change(spec, raw))
        except ValueError as exc:
            errors[key] = f"{key} {exc}"
    if errors:
        return Validation(values, errors)
    try:
        effective_values(cls, merged_table(table, values), {}, path, specs)
    except ConfigError as exc:
        problem = str(exc).removeprefix(f"{path}: ")
        named = key_named_in(problem, list(values))
        if named is not None:
            return Validation(values, {named: problem})
        return Validation(values, {}, problem)
    return Validation(values, {})


def key_named_in(message: str, keys: list[str]) -> str | None:
    """The changed key a loader message is about, so the page shows it beside that field.

    >>> key_named_in("cloud.model must be set when cloud.enabled is true", ["cloud.enabled"])
    'cloud.enabled'
    >>> key_named_in("key 'alerts.clear_ratio' must be in (0, 1], got 2", ["alerts.clear_ratio", "alerts.cpu_percent"])
    'alerts.clear_ratio'
    """
    return next((key for key in sorted(keys, key=len, reverse=True) if key in message), None)


# --------------------------------------------------------------------------- saving


@dataclass(frozen=True)
class ApplyPlan:
    """Which changed keys take effect when."""

    now: tuple[str, ...] = ()
    ollama_start: tuple[str, ...] = ()
    app_restart: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[str]]:
        return {"now": list(self.now), "ollama_start": list(self.ollama_start), "app_restart": list(self.app_restart)}


def plan_application(
    running: Mapping[str, Any], wanted: Mapping[str, Any], live_keys: frozenset[str] | None = None
) -> ApplyPlan:
    """Sort the keys whose wanted value differs from the one in effect by when they can apply.

    ``live_keys`` limits the "now" group to what the app can actually change
    (e.g. notifications only when it was given the notifier).
    """
    groups: dict[Applies, list[str]] = {when: [] for when in Applies}
    for key, value in wanted.items():
        if key in running and running[key] == value:
            continue
        when = applies_when(key)
        if when is Applies.NOW and live_keys is not None and key not in live_keys:
            when = Applies.APP_RESTART
        groups[when].append(key)
    return ApplyPlan(
        tuple(groups[Applies.NOW]), tuple(groups[Applies.OLLAMA_START]), tuple(groups[Applies.APP_RESTART])
    )


def patched_config(running: Any, wanted: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    """``running`` with the dotted ``keys`` set to their ``wanted`` values (frozen dataclasses rebuilt)."""
    changes_by_owner: dict[str, dict[str, Any]] = {}
    for key in keys:
        section, _, name = key.rpartition(".")
        changes_by_owner.setdefault(section, {})[name] = wanted[key]
    top = dict(changes_by_owner.pop("", {}))
    for section, section_changes in changes_by_owner.items():
        top[section] = dataclasses.replace(getattr(running, section), **section_changes)
    return dataclasses.replace(running, **top) if top else running


# --------------------------------------------------------------------------- the page's data


def setting_json(
    spec: SettingSpec, value: Any, in_effect: Any, env: Mapping[str, str], command: str | None = None
) -> dict[str, Any]:
    """One row of the settings page: ``value`` is the file's, ``in_effect`` what the running app uses.

    ``command`` is how a read-only (command-only) key is changed.
    """
    return {
        "key": spec.key,
        "section": spec.section,
        "name": spec.name,
        "kind": spec.kind,
        "help": spec.help,
        "value": value,
        "default": spec.default,
        "minimum": spec.minimum,
        "maximum": spec.maximum,
        "choices": list(spec.choices),
        "applies": str(spec.applies),
        "env_override": spec.env_name if spec.env_name in env else None,
        "pending_restart": in_effect != value,
        "read_only": spec.command_only,
        "command": command,
    }


def save_message(path: Path, saved: list[str], plan: ApplyPlan) -> str:
    """The one line shown after a save.

    >>> save_message(Path("/c.toml"), ["a", "b"], ApplyPlan(now=("a",), app_restart=("b",)))
    'Saved 2 settings to /c.toml. Applied now: a. After the app restarts: b.'
    """
    parts = [f"Saved {len(saved)} setting{'s' if len(saved) != 1 else ''} to {path}."]
    for label, keys in (
        ("Applied now", plan.now),
        ("When Ollama next starts", plan.ollama_start),
        ("After the app restarts", plan.app_restart),
    ):
        if keys:
            parts.append(f"{label}: {', '.join(keys)}.")
    return " ".join(parts)


ApplyLive = Callable[[ApplyPlan, Mapping[str, Any]], None]


class SettingsService:
    """Reads the settings file for the page and saves the page's changes.

    ``apply_live(plan, wanted)`` hands the running app what it can take
    without a restart; ``live_keys`` names those of :data:`APPLIED_NOW` it can.
    """

    def __init__(
        self,
        path: Path,
        env: Mapping[str, str],
        apply_live: ApplyLive,
        live_keys: frozenset[str] = APPLIED_NOW,
        cls: type = Config,
    ) -> None:
        self.path = path
        self.env = dict(env)
        self.apply_live = apply_live
        self.live_keys = live_keys
        self.cls = cls
        self.specs = setting_specs(cls)
        self.sections = section_specs(cls)
        self._lock = threading.Lock()
        # The app loaded this file at start-up; what it uses changes only through save().
        self._in_effect = self._file_values_or_defaults()

    def _file_values_or_defaults(self) -> dict[str, Any]:
        try:
            return effective_values(self.cls, read_config_file(self.path), self.env, self.path, self.specs)
        except ConfigError:
            return {spec.key: spec.default for spec in self.specs}

    def page(self) -> dict[str, Any]:
        """Every key with the file's value, or the values in effect and the error when the file does not load."""
        error = None
        try:
            values = effective_values(self.cls, read_config_file(self.path), self.env, self.path, self.specs)
        except ConfigError as exc:
            values, error = dict(self._in_effect), str(exc)
        return {
            "path": str(self.path),
            "error": error,
            "sections": [{"name": s.name, "help": s.help} for s in self.sections],
            "settings": [
                setting_json(spec, values[spec.key], self._in_effect[spec.key], self.env, self.change_command(spec))
                for spec in self.specs
            ],
        }

    def change_command(self, spec: SettingSpec, raw: Any = None) -> str | None:
        """How a command-only key is changed (with ``raw`` as its value when given), else None."""
        if not spec.command_only:
            return None
        value = command_value(spec, raw)
        return config_set_command(spec.key, value, self.path)

    def command_only_refusals(self, changes: Mapping[str, Any]) -> dict[str, str]:
        """key -> the line refusing it, for each command-only key among ``changes``."""
        by_key = {spec.key: spec for spec in self.specs}
        return {
            key: command_only_refusal(key, self.change_command(by_key[key], raw) or "")
            for key, raw in changes.items()
            if key in by_key and by_key[key].command_only
        }

    def save(self, changes: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """Validate, write and apply ``changes`` (dotted key -> value); an HTTP status and the answer.

        A command-only key refuses the whole save with 403 and the command that changes it.
        """
        refusals = self.command_only_refusals(changes)
        if refusals:
            return 403, {"ok": False, "errors": refusals, "error": next(iter(refusals.values()))}
        with self._lock:
            try:
                validation = validate_changes(self.specs, read_config_file(self.path), changes, self.path, self.cls)
            except ConfigError as exc:
                return 400, {"ok": False, "errors": {}, "error": str(exc)}
            if not validation.ok:
                return 400, {"ok": False, "errors": validation.errors, "error": refusal_line(validation)}
            try:
                set_config_values(self.path, validation.values)
                wanted = effective_values(self.cls, read_config_file(self.path), self.env, self.path, self.specs)
            except ConfigError as exc:
                return 500, {"ok": False, "errors": {}, "error": str(exc)}
            saved = sorted(validation.values)
            plan = plan_application(self._in_effect, {key: wanted[key] for key in saved}, self.live_keys)
            self.apply_live(plan, wanted)
            for key in (*plan.now, *plan.ollama_start):
                self._in_effect[key] = wanted[key]
            message = save_message(self.path, saved, plan)
            return 200, {"ok": True, "saved": saved, "applies": plan.to_json(), "message": message}


def refusal_line(validation: Validation) -> str:
    """The one line saying why a save was refused: the whole-file problem, else the first field's."""
    return validation.error or next(iter(validation.errors.values()))
