"""The root of the supervision errors (the tree is drawn in :mod:`tray.service.supervisor`)."""


class SupervisorError(Exception):
    """A failure to start, stop or restart Ollama; ``str()`` is one line for the user."""

    retryable = False
