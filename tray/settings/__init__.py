"""Settings: the TOML file, its validation, the environment overrides and the comment-keeping writer.

Modules:

- :mod:`tray.settings.config`: the schema (:class:`~tray.settings.config.Config`), loading and one-line errors
- :mod:`tray.settings.meta`: per-setting metadata (help, limits, choices) shared by every section
- :mod:`tray.settings.hosts`: ``OLLAMA_HOST`` parsed exactly as Ollama parses it
- :mod:`tray.settings.alerts`: the ``[alerts]`` section: help and limits of core's alert thresholds
- :mod:`tray.settings.gateway`: the ``[cloud]`` and ``[gateway]`` sections of the gateway and its cloud fallback
- :mod:`tray.settings.server`: the ``[ollama_server]`` section, turned into a started server's environment
- :mod:`tray.settings.store`: writing values back into the TOML file, comments kept
"""
