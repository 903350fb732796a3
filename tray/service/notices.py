"""Which events of the history become desktop notifications, for the tray and the headless monitor alike."""

from __future__ import annotations

from tray.history import Event, EventKind, History
from tray.system.notify import Notifier

# Events worth a desktop notification, with their title.
NOTIFY_EVENTS: dict[str, str] = {
    EventKind.CRASH: "Ollama crashed",
    EventKind.UNEXPECTED_RESTART: "Ollama restarted unexpectedly",
    EventKind.GAVE_UP: "Ollama is down",
    EventKind.EXTERNAL: "Ollama is managed elsewhere",
    EventKind.NOT_PERMITTED: "Ollama needs you",
    EventKind.LOG_ACCESS: "Ollama's log",
    EventKind.ERROR: "Ollama Manager",
    EventKind.ALERT: "Ollama alert",
    EventKind.OOM: "Ollama memory",
    EventKind.MODEL_MISSING: "Model missing",
    EventKind.MODEL_CORRUPT: "Model damaged",
    EventKind.MODEL_REPAIRED: "Model repaired",
    EventKind.MODEL_ERROR: "Model problem",
}


def notify_events(history: History, notifier: Notifier) -> None:
    """Turn the events worth it into desktop notifications (rate-limited per kind by the notifier)."""

    def on_event(event: Event) -> None:
        title = NOTIFY_EVENTS.get(event.kind)
        if title is not None:
            key = event.kind + ":" + str((event.data or {}).get("kind", ""))
            notifier.notify(title, event.message, key=key)

    history.subscribe(on_event)
