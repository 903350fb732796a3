"""Ollama Manager: keeps a local Ollama server alive, healthy and its model built."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ollama-manager")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

APP_NAME = "ollama-manager"
