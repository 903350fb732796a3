"""Ollama Manager: keeps a local Ollama server alive, healthy and its model built."""

from __future__ import annotations

APP_NAME = "ollama-manager"


def __getattr__(name: str) -> str:
    """``__version__``, read from the installed distribution's metadata on first use (the lookup scans sys.path)."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("ollama-manager")
    except PackageNotFoundError:  # running from a source tree that is not installed
        found = "0.0.0"
    globals()["__version__"] = found
    return found
