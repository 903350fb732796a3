"""Errors of model management. Each one's ``str()`` is the single line shown to the user.

::

    ModelError                  anything that keeps the model from being built, current or intact
     ├── ModelfileError         the Modelfile is missing or malformed ("<file>:<line>: <problem>")
     ├── StoreError             Ollama's model directory cannot be read as expected
     │    ├── ManifestNotFound  the model is not in the store
     │    └── StoreUnreadable   this user may not read the store (another account's): nothing is checked
     ├── OllamaAPIError         Ollama answered a request with an error (HTTP status or streamed)
     ├── OllamaUnreachable      no answer from Ollama at all
     └── DiskSpaceError         not enough free space to download the base model

A ``ModelError`` never means the server itself is unhealthy: restarting Ollama
does not fix a bad Modelfile or a corrupt blob.
"""

from __future__ import annotations


class ModelError(Exception):
    """Base class; ``str()`` is one line without a traceback."""


class ModelfileError(ModelError):
    """A Modelfile problem, located as ``<file>:<line>: <problem>``."""


class StoreError(ModelError):
    """Ollama's on-disk store (manifests, blobs) is unreadable or a name is invalid."""


class OllamaAPIError(ModelError):
    """Ollama answered with an error: ``status`` is the HTTP status (200 for a streamed error line)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class OllamaUnreachable(ModelError):
    """Connecting to Ollama failed or it stopped answering."""


class DiskSpaceError(ModelError):
    """Too little free disk space for a download."""


class ManifestNotFound(StoreError):
    """The model has no manifest in the store (it is not installed there)."""


class StoreUnreadable(StoreError):
    """The store belongs to another account and this user may not read it: verification is skipped, not failed."""
