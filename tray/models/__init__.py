"""Model management: parse the Modelfile, build the model through Ollama, verify and repair its blobs.

Modules:

- :mod:`tray.models.modelfile`: Modelfile parser and ``/api/create`` request (pure)
- :mod:`tray.models.store`: reading Ollama's on-disk store (manifests, blobs, leftovers)
- :mod:`tray.models.integrity`: sha256 verification of blobs with a stat-keyed cache
- :mod:`tray.models.builder`: ensure / rebuild / verify / cleanup through the HTTP API
- :mod:`tray.models.commands`: the ``model`` CLI subcommands
- :mod:`tray.models.keeper`: the monitor's thread that keeps the model built, verified and repaired
- :mod:`tray.models.progress`: progress of pulls and builds, for the CLI and the tray
- :mod:`tray.models.errors`: the error tree
"""

from tray.models.builder import (
    CleanupReport,
    CleanupResult,
    ModelReport,
    cleanup,
    cleanup_report,
    ensure_model_loaded,
    rebuild,
    verify,
)
from tray.models.errors import (
    DiskSpaceError,
    ManifestNotFound,
    ModelError,
    ModelfileError,
    OllamaAPIError,
    OllamaUnreachable,
    StoreError,
)
from tray.models.integrity import IntegrityReport, verify_model
from tray.models.modelfile import (
    Modelfile,
    fingerprint,
    load_modelfile,
    parse_modelfile,
)
from tray.models.store import ModelName, default_models_dir, parse_model_name

__all__ = [
    "CleanupReport",
    "CleanupResult",
    "DiskSpaceError",
    "IntegrityReport",
    "ManifestNotFound",
    "ModelError",
    "ModelName",
    "ModelReport",
    "Modelfile",
    "ModelfileError",
    "OllamaAPIError",
    "OllamaUnreachable",
    "StoreError",
    "cleanup",
    "cleanup_report",
    "default_models_dir",
    "ensure_model_loaded",
    "fingerprint",
    "load_modelfile",
    "parse_model_name",
    "parse_modelfile",
    "rebuild",
    "verify",
    "verify_model",
]
