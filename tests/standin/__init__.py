"""The stand-in ``ollama`` for tests: the executable ``ollama``, its stdlib modules, and :mod:`.harness`.

The ``standin_*.py`` modules are loaded by the executable with its own directory on
``sys.path``; tests drive the executable (CLI and HTTP) through :mod:`.harness`
rather than importing them.
"""
