"""The tray menu as plain data, built from the monitor's status and the settings.

:func:`build_menu` decides which entries exist, their labels, which are
enabled or checked and which one a plain click runs; the pystray adapter in
:mod:`tray.ui.app` only renders the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tray.core.actions import (
    REBUILD,
    RESTART,
    SERVER_ACTION_LABELS,
    START,
    STOP,
    UNLOAD,
    action_enabled,
    blocked_actions,
    server_is_up,
)
from tray.core.health import Health
from tray.core.names import same_model
from tray.core.status import MonitorState, Status
from tray.core.status_text import loaded_model_label, status_summary
from tray.core.text import first_line, truncate_text

# Menu action ids besides the server actions (tray.core.actions), which go to Controller.request().
OPEN_DASHBOARD, OPEN_LOGS, TOGGLE_AUTOSTART, TOGGLE_NOTIFICATIONS, QUIT = (
    "open_dashboard",
    "open_logs",
    "toggle_autostart",
    "toggle_notifications",
    "quit",
)
# Model choices: USE_MODEL_PREFIX + an installed model's name, or the Modelfile model.
USE_MODEL_PREFIX, USE_MODELFILE_MODEL = "use_model:", "use_modelfile_model"

ACTION_LABELS: dict[str, str] = {
    **SERVER_ACTION_LABELS,
    USE_MODELFILE_MODEL: "Use the Modelfile model",
    OPEN_DASHBOARD: "Open dashboard",
    OPEN_LOGS: "Open logs",
    TOGGLE_AUTOSTART: "Start at login",
    TOGGLE_NOTIFICATIONS: "Notifications",
    QUIT: "Quit",
}

ERROR_LINE_MAX_CHARS = 80


@dataclass(frozen=True)
class MenuEntry:
    """One menu line.

    ``action`` is the id the adapter dispatches on (None for information
    lines); ``checked`` is None for a plain item and a bool for a checkbox;
    ``key`` identifies the entry across rebuilds (defaults to the action).
    """

    label: str = ""
    action: str | None = None
    enabled: bool = True
    checked: bool | None = None
    default: bool = False
    separator: bool = False
    submenu: tuple[MenuEntry, ...] = ()
    key: str = field(default="")
    radio: bool = False  # a checked entry that is one of a group of choices

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.action or self.label)


SEPARATOR = MenuEntry(separator=True, enabled=False, key="-")


def _loaded_model_entries(status: Status) -> list[MenuEntry]:
    models = status.loaded_models
    if not models:
        return [MenuEntry("No models in memory", enabled=False, key="loaded:none")]
    return [
        MenuEntry(loaded_model_label(model), enabled=False, key=f"loaded:{index}") for index, model in enumerate(models)
    ]


def use_model_action(name: str) -> str:
    """The action id of choosing ``name`` as the active model.

    >>> use_model_action("llama3:latest"), model_of_action("use_model:llama3:latest")
    ('use_model:llama3:latest', 'llama3:latest')
    """
    return USE_MODEL_PREFIX + name


def model_of_action(action: str) -> str | None:
    """The model an action chooses: its name, "" for the Modelfile model, None for another action."""
    if action == USE_MODELFILE_MODEL:
        return ""
    return action.removeprefix(USE_MODEL_PREFIX) if action.startswith(USE_MODEL_PREFIX) else None


def is_model_choice(action: str) -> bool:
    return model_of_action(action) is not None


def model_label(name: str, modelfile_model: str) -> str:
    """An installed model's line in the Model submenu; the Modelfile-built one is marked.

    >>> model_label("uncensored-llama3:latest", "uncensored-llama3"), model_label("llama3:latest", "x")
    ('uncensored-llama3:latest (Modelfile)', 'llama3:latest')
    """
    return f"{name} (Modelfile)" if modelfile_model and same_model(name, modelfile_model) else name


def model_menu(status: Status, running_actions: Iterable[str]) -> MenuEntry:
    """The Model submenu: the installed models as radio items (the active one checked), then the Modelfile model."""
    switching = any(is_model_choice(action) for action in running_actions)
    modelfile = status.modelfile_model or status.model
    choices = [
        MenuEntry(
            model_label(model.name, modelfile),
            use_model_action(model.name),
            enabled=not switching,
            checked=same_model(model.name, status.model),
            radio=True,
        )
        for model in status.installed_models
    ]
    if not choices:
        choices = [MenuEntry("No models installed", enabled=False, key="model:none")]
    back = MenuEntry(
        ACTION_LABELS[USE_MODELFILE_MODEL],
        USE_MODELFILE_MODEL,
        enabled=not switching and bool(status.model) and not same_model(status.model, modelfile),
    )
    return MenuEntry(f"Model: {status.model or 'none'}", submenu=(*choices, SEPARATOR, back), key="model")


def _error_entries(status: Status) -> list[MenuEntry]:
    """The last error, while it still explains the current trouble."""
    error = status.last_error
    troubled = status.health in (Health.DOWN, Health.UNHEALTHY) or status.state is MonitorState.FAILED
    if not error or not troubled:
        return []
    return [
        MenuEntry(truncate_text(f"Last error: {first_line(error)}", ERROR_LINE_MAX_CHARS), enabled=False, key="error")
    ]


def _action_entry(action: str, status: Status, blocked: frozenset[str], default: bool = False) -> MenuEntry:
    enabled = action_enabled(action, status, blocked)
    return MenuEntry(ACTION_LABELS[action], action, enabled=enabled, default=default and enabled)


def build_menu(status: Status, settings: Mapping[str, Any], running_actions: Iterable[str]) -> list[MenuEntry]:
    """The tray menu for the current status, settings and actions under way.

    ``running_actions`` are the action ids the user started that have not
    finished yet. A plain click restarts Ollama while its health is ``down``.
    """
    blocked = blocked_actions(status, running_actions)
    restart_on_click = status.health is Health.DOWN
    start_or_stop = STOP if server_is_up(status) else START
    return [
        MenuEntry(status_summary(status, running_actions), enabled=False, key="status"),
        *_error_entries(status),
        model_menu(status, running_actions),
        *_loaded_model_entries(status),
        _action_entry(UNLOAD, status, blocked),
        SEPARATOR,
        _action_entry(start_or_stop, status, blocked),
        _action_entry(RESTART, status, blocked, default=restart_on_click),
        _action_entry(REBUILD, status, blocked),
        MenuEntry(ACTION_LABELS[OPEN_DASHBOARD], OPEN_DASHBOARD),
        MenuEntry(ACTION_LABELS[OPEN_LOGS], OPEN_LOGS),
        SEPARATOR,
        MenuEntry(ACTION_LABELS[TOGGLE_AUTOSTART], TOGGLE_AUTOSTART, checked=bool(settings.get("autostart"))),
        MenuEntry(
            ACTION_LABELS[TOGGLE_NOTIFICATIONS], TOGGLE_NOTIFICATIONS, checked=bool(settings.get("notifications"))
        ),
        SEPARATOR,
        MenuEntry(ACTION_LABELS[QUIT], QUIT),
    ]


def default_action(entries: Iterable[MenuEntry]) -> str | None:
    """The action a plain click on the icon runs, if any."""
    return next((entry.action for entry in entries if entry.default), None)


def click_action(entries: Iterable[MenuEntry]) -> str:
    """What a plain click on the icon runs where the menu opens otherwise (or not at all).

    The default entry's action (Restart while Ollama is down), else Open
    dashboard, which has every action.
    """
    return default_action(entries) or OPEN_DASHBOARD


def find_entry(entries: Iterable[MenuEntry], key: str) -> MenuEntry | None:
    """The entry with ``key``, searching submenus too."""
    for entry in entries:
        if entry.key == key:
            return entry
        found = find_entry(entry.submenu, key)
        if found is not None:
            return found
    return None
