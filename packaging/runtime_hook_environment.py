"""PyInstaller runtime hook: programs the frozen app starts get the user's environment.

The Linux bootloader points ``LD_LIBRARY_PATH`` at the bundle's libraries
(keeping the user's value in ``LD_LIBRARY_PATH_ORIG``) and sets ``_PYI_*``
variables. Inherited by ``ollama serve``, the bundle's older ``libstdc++``
would shadow the system's and break Ollama's runners; ``xdg-open`` and
``notify-send`` can break the same way. The app's own libraries are already
loaded (the dynamic loader reads ``LD_LIBRARY_PATH`` once, at start), so
restoring the variables here changes only what children see.
"""

import os
import sys


def _restore_user_environment() -> None:
    original = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is not None:
        os.environ["LD_LIBRARY_PATH"] = original
    elif sys.platform.startswith("linux"):
        os.environ.pop("LD_LIBRARY_PATH", None)
    for name in [name for name in os.environ if name.startswith("_PYI_")]:
        del os.environ[name]


_restore_user_environment()
