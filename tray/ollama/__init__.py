"""Talking to Ollama over HTTP.

Modules:

- :mod:`tray.ollama.client`: the calls the supervisor and the monitor make (liveness, model lists, the test prompt)
"""
