"""The actions a user can ask of the Ollama server, from the tray's menu or the dashboard's buttons.

Their ids (the monitor's command names), their labels, and which of them may run now.
"""

from __future__ import annotations

from collections.abc import Iterable

from tray.core.status import ActivityKind, MonitorState, Status

START, STOP, RESTART, REBUILD, UNLOAD = "start", "stop", "restart", "rebuild", "unload"
SERVER_ACTIONS = (START, STOP, RESTART, REBUILD, UNLOAD)

# Each server action touches the one Ollama server or its models, so none may
# start while another is under way.
CONFLICTS: dict[str, frozenset[str]] = {action: frozenset(SERVER_ACTIONS) for action in SERVER_ACTIONS}

# The monitor's own activities block the same menu actions as the user's.
ACTIVITY_BLOCKS: dict[ActivityKind, str] = {
    ActivityKind.START: START,
    ActivityKind.STOP: STOP,
    ActivityKind.RESTART: RESTART,
    ActivityKind.BUILD: REBUILD,
    ActivityKind.PULL: REBUILD,
    ActivityKind.VERIFY: REBUILD,
    ActivityKind.UNLOAD: UNLOAD,
}

SERVER_ACTION_LABELS: dict[str, str] = {
    START: "Start Ollama",
    STOP: "Stop Ollama",
    RESTART: "Restart Ollama",
    REBUILD: "Rebuild model",
    UNLOAD: "Unload models",
}

SERVER_UP_STATES = frozenset({MonitorState.STARTING, MonitorState.RUNNING, MonitorState.RESTARTING})


def blocked_actions(status: Status, running_actions: Iterable[str]) -> frozenset[str]:
    """Actions that must wait: those conflicting with a running action or activity."""
    busy = set(running_actions)
    if status.activity is not None and status.activity.kind in ACTIVITY_BLOCKS:
        busy.add(ACTIVITY_BLOCKS[status.activity.kind])
    return frozenset(action for action in SERVER_ACTIONS if busy & CONFLICTS[action])


def server_is_up(status: Status) -> bool:
    """Whether Ollama runs or is meant to run, so Stop (not Start) applies."""
    return status.ollama_running or status.state in SERVER_UP_STATES


def action_enabled(action: str, status: Status, blocked: frozenset[str]) -> bool:
    """Whether a server action can run now, given the status and blocked actions.

    A stop under way blocks Stop, Restart and Rebuild through its activity (:func:`blocked_actions`).
    """
    if action in blocked:
        return False
    if action == RESTART:
        return status.state is not MonitorState.STOPPED
    if action == REBUILD:
        return status.ollama_running
    if action == UNLOAD:
        return bool(status.loaded_models)
    return True
