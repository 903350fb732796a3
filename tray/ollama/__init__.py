"""Talking to Ollama over HTTP: the one client, used by the monitor, the model builder and the gateway's own calls.

Modules:

- :mod:`tray.ollama.client`: every request the manager makes to Ollama (probes, model lists, pull/create/blobs,
  the test prompt), each with its own timeout
- :mod:`tray.ollama.errors`: what a request can fail with (refused, timed out, Ollama's error, not Ollama's answer)

The gateway's relay of the user's own requests is not here: it passes bytes through (tray/gateway/upstream.py).
"""
