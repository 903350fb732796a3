"""Which events of the history become desktop notifications, for the tray and the headless monitor alike."""

from __future__ import annotations

from tray.history import Event, History
from tray.system.notify import Notifier

# Events worth a desktop notification, with their title.
NOTIFY_EVENTS = {
    "crash": "Ollama crashed",
    "unexpected_restart": "Ollama restarted unexpectedly",
    "gave_up": "Ollama is down",
    "external": "Ollama is managed elsewhere",
    "not_permitted": "Ollama needs you",
    "log_access": "Ollama's log",
    "error": "Ollama Manager",
    "alert": "Ollama alert",
    "oom": "Ollama memory",
    "model_missing": "Model missing",
    "model_corrupt": "Model damaged",
    "model_repaired": "Model repaired",
    "model_error": "Model problem",
}


def notify_events(history: History, notifier: Notifier) -> None:
    """Turn the events worth it into desktop notifications (rate-limited per kind by the notifier)."""

    def on_event(event: Event) -> None:
        title = NOTIFY_EVENTS.get(event.kind)
        if title is not None:
            key = event.kind + ":" + str((event.data or {}).get("kind", ""))
            notifier.notify(title, event.message, key=key)

    history.subscribe(on_event)
