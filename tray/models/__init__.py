"""Model management: parse the Modelfile, build the model through Ollama, verify and repair its blobs.

Modules:

- :mod:`tray.models.modelfile`: Modelfile parser and ``/api/create`` request (pure)
- :mod:`tray.models.store`: reading Ollama's on-disk store (manifests, blobs, leftovers)
- :mod:`tray.models.integrity`: sha256 verification of blobs with a stat-keyed cache
- :mod:`tray.models.builder`: ensure / rebuild / verify / cleanup through the Ollama client (:mod:`tray.ollama`)
- :mod:`tray.models.commands`: the ``model`` CLI subcommands
- :mod:`tray.models.keeper`: the monitor's thread that keeps the model built, verified and repaired
- :mod:`tray.models.progress`: progress of pulls and builds, for the CLI and the tray
- :mod:`tray.models.errors`: the error tree

Importing this package imports none of them: the monitor loads the builder for its first model job.
"""
