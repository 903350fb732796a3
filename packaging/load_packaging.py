"""The one way code loads ``packaging/<name>.py``: by path, as ``ollama_manager_packaging_<name>``, once.

The folder is not a package: its name would shadow the ``packaging`` library
that pip, setuptools and PyInstaller import. A script run from here finds this
module as its sibling (``from load_packaging import load_packaging``); the
tests, the benchmarks and the PyInstaller spec append this folder to
``sys.path`` first.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent


def load_packaging(name: str) -> ModuleType:
    """``packaging/<name>.py``, loaded on first use and shared by every caller after."""
    module_name = f"ollama_manager_packaging_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
