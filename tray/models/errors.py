"""Errors of model management. Each one's ``str()`` is the single line shown to the user.

::

    ModelError                  anything that keeps the model from being built, current or intact
     ├── ModelfileError         the Modelfile is missing or malformed ("<file>:<line>: <problem>")
     ├── StoreError             Ollama's model directory cannot be read as expected
     │    ├── ManifestNotFound  the model is not in the store
     │    └── StoreUnreadable   this user may not read the store (another account's): nothing is checked
     └── DiskSpaceError         not enough free space to download the base model

Ollama's own answers fail as :class:`~tray.ollama.errors.OllamaError`
(``OllamaAPIError``, ``OllamaUnreachable``, named here too): a caller of the
builder catches ``MODEL_FAILURES``, both roots.

A ``ModelError`` never means the server itself is unhealthy: restarting Ollama
does not fix a bad Modelfile or a corrupt blob.
"""

from __future__ import annotations

from tray.ollama.errors import OllamaAPIError, OllamaError, OllamaUnreachable

__all__ = [
    "MODEL_FAILURES",
    "DiskSpaceError",
    "ManifestNotFound",
    "ModelError",
    "ModelfileError",
    "OllamaAPIError",
    "OllamaUnreachable",
    "StoreError",
    "StoreUnreadable",
]


class ModelError(Exception):
    """Base class; ``str()`` is one line without a traceback."""


class ModelfileError(ModelError):
    """A Modelfile problem, located as ``<file>:<line>: <problem>``."""


class StoreError(ModelError):
    """Ollama's on-disk store (manifests, blobs) is unreadable or a name is invalid."""


class DiskSpaceError(ModelError):
    """Too little free disk space for a download."""


class ManifestNotFound(StoreError):
    """The model has no manifest in the store (it is not installed there)."""


class StoreUnreadable(StoreError):
    """The store belongs to another account and this user may not read it: verification is skipped, not failed."""


MODEL_FAILURES = (ModelError, OllamaError)  # what building, pulling or cleaning up a model can fail with
