"""The status in words: the lines the tray's menu and tooltip and the dashboard show for the same status.

Pure: a :class:`~tray.core.status.Status` (or one of its parts) goes in, a line of text comes out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from tray.core.health import Health
from tray.core.status import Activity, ActivityKind, BusyStatus, LoadedModelStatus, ModelLoading, MonitorState, Status
from tray.core.units import format_duration, format_latency, human_bytes

ACTIVITY_DEFAULT_TEXT = {
    ActivityKind.START: "Starting Ollama",
    ActivityKind.STOP: "Stopping Ollama",
    ActivityKind.RESTART: "Restarting Ollama",
    ActivityKind.BUILD: "Building model",
    ActivityKind.PULL: "Pulling model",
    ActivityKind.VERIFY: "Verifying model",
    ActivityKind.UNLOAD: "Unloading models",
}

PENDING_ACTION_TEXT = {
    "start": "Starting Ollama…",
    "stop": "Stopping Ollama…",
    "restart": "Restarting Ollama…",
    "rebuild": "Rebuilding model…",
    "unload": "Unloading models…",
}


def format_percent(fraction: float) -> str:
    """A 0–1 progress fraction as whole percent, never rounded up to 100 early.

    >>> format_percent(0.45), format_percent(0.999), format_percent(1.2)
    ('45 %', '99 %', '100 %')
    """
    clamped = min(1.0, max(0.0, fraction))
    return f"{math.floor(clamped * 100 + 1e-9)} %"


def activity_text(activity: Activity) -> str:
    """``Building model 45 %``: the activity's text plus its progress, if known.

    >>> activity_text(Activity(ActivityKind.BUILD, "Building model", 0.45)), activity_text(Activity(ActivityKind.PULL))
    ('Building model 45 %', 'Pulling model')
    """
    text = activity.text or ACTIVITY_DEFAULT_TEXT.get(activity.kind, "Working")
    progress = activity.progress
    return f"{text} {format_percent(progress)}" if progress is not None else text


def restart_text(status: Status) -> str:
    """``Restarting (attempt 2 of 3)``, plus when the next try starts if known."""
    attempt = status.restart_attempt
    attempts_max = status.restart_attempts_max
    text = f"Restarting (attempt {attempt} of {attempts_max})" if attempt and attempts_max else "Restarting"
    retry_in = status.next_retry_in
    return f"{text} — next try in {format_duration(retry_in)}" if retry_in is not None else text


def busy_text(busy: BusyStatus) -> str:
    """What Ollama is working on, from the status' ``busy`` value.

    >>> from tray.core.health import BusySource
    >>> busy_text(BusyStatus("llama3", 1, 0, 80.0, None, BusySource.GATEWAY, stuck=False))
    'busy: generating on llama3 for 1 min'
    >>> busy_text(BusyStatus(None, 3, 1, 12.0, None, BusySource.GATEWAY, stuck=False))
    'busy: generating for 12 s (3 requests)'
    >>> busy_text(BusyStatus("llama3", None, None, 960.0, 905.0, BusySource.PROBE, stuck=True))
    'stuck: no progress on llama3 for 15 min'
    """
    on = f" on {busy.model}" if busy.model else ""
    if busy.stuck:
        quiet = busy.progress_seconds_ago if busy.progress_seconds_ago is not None else busy.since_seconds
        return f"stuck: no progress{on} for {format_duration(quiet)}"
    requests = busy.requests
    count = f" ({requests} requests)" if requests is not None and requests > 1 else ""
    return f"busy: generating{on} for {format_duration(busy.since_seconds)}{count}"


def loading_text(loading: ModelLoading) -> str:
    """A preload under way, with the time so far (Ollama reports no percentage).

    >>> loading_text(ModelLoading("mistral:latest", 12.0))
    'Loading mistral:latest… 12 s'
    """
    return f"Loading {loading.model}… {format_duration(loading.seconds)}"


def health_text(status: Status) -> str:
    """The line for a server that is up (or supposed to be): health, latency and what it is busy with."""
    health = status.health
    if health is Health.DOWN:
        retry_in = status.next_retry_in
        return f"Down — retrying in {format_duration(retry_in)}" if retry_in is not None else "Ollama: down"
    if health not in (Health.HEALTHY, Health.UNHEALTHY):
        return "Ollama: checking…"
    latency = status.latency_ms
    busy = status.busy
    return (
        f"Ollama: {health}"
        + (f" · {format_latency(latency)}" if latency is not None else "")
        + (f" · {busy_text(busy)}" if busy is not None else "")
    )


def lifecycle_text(status: Status) -> str | None:
    state = status.state
    if state is MonitorState.RESTARTING:
        return restart_text(status)
    if state is MonitorState.STARTING:
        return "Starting Ollama…"
    if state is MonitorState.STOPPED:
        return "Stopped"
    if state is MonitorState.FAILED:
        attempts = status.restart_attempts_max
        return f"Down — gave up after {attempts} restart attempts" if attempts else "Down — gave up"
    return None


NOT_SUPERVISING_TEXT = "Not supervising Ollama — restart Ollama Manager"


def work_in_progress(status: Status, pending_actions: Iterable[str]) -> str | None:
    """The line for a monitor that stopped, an activity, a lifecycle state or a pending action, if any."""
    if not status.supervising:
        return NOT_SUPERVISING_TEXT
    activity = status.activity
    if activity is not None:
        return activity_text(activity)
    lifecycle = lifecycle_text(status)
    if lifecycle is not None:
        return lifecycle
    if status.model_loading is not None:
        return loading_text(status.model_loading)
    for action in sorted(pending_actions):
        if action in PENDING_ACTION_TEXT:
            return PENDING_ACTION_TEXT[action]
    return None


def status_summary(status: Status, pending_actions: Iterable[str] = ()) -> str:
    """One line saying what Ollama is doing, without the model name.

    ``pending_actions`` are actions the user asked for that the monitor has not
    reported yet; they are shown only when nothing more specific is known.
    """
    return work_in_progress(status, pending_actions) or health_text(status)


def processor_split(size: int, size_vram: int) -> str:
    """Where a loaded model sits, as the PROCESSOR column of ``ollama ps``.

    >>> processor_split(100, 0), processor_split(100, 100), processor_split(100, 52)
    ('100% CPU', '100% GPU', '48%/52% CPU/GPU')
    """
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size <= 0:
        return "Unknown"
    cpu_percent = math.floor((size - size_vram) / size * 100 + 0.5)  # Go's math.Round
    return f"{cpu_percent}%/{100 - cpu_percent}% CPU/GPU"


def loaded_model_label(model: LoadedModelStatus) -> str:
    """``llama3:latest 4.7 GB · 100% CPU``.

    >>> loaded_model_label(LoadedModelStatus("llama3:latest", 4_661_224_676, 0))
    'llama3:latest 4.7 GB · 100% CPU'
    """
    return f"{model.name} {human_bytes(model.size)} · {processor_split(model.size, model.size_vram)}"
