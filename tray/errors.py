"""Errors shown to the user as one line: the CLI's own, and the root of the supervision errors.

The supervision tree is drawn in :mod:`tray.service.supervisor`.
"""


class CliError(Exception):
    """A failure to show as one line."""


class SupervisorError(Exception):
    """A failure to start, stop or restart Ollama; ``str()`` is one line for the user."""

    retryable = False
