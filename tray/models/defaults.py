"""The Modelfile the app ships, installed where the user edits it."""

from __future__ import annotations

import logging

from tray.atomic import write_atomically
from tray.settings.config import Config
from tray.system.paths import AppPaths

log = logging.getLogger(__name__)


def install_default_modelfile(config: Config, paths: AppPaths) -> None:
    """First run: copy the shipped uncensored.Modelfile to the config dir, where the user edits it."""
    from importlib.resources import files

    target = config.modelfile_path
    if target.exists() or target != paths.config_dir / "uncensored.Modelfile":
        return
    try:
        write_atomically(target, files("tray").joinpath("data/uncensored.Modelfile").read_bytes())
    except OSError as exc:
        log.warning("could not install the default Modelfile at %s: %s", target, exc)
