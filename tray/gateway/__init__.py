"""The cloud-fallback gateway: apps point at it instead of Ollama.

- :mod:`tray.gateway.breaker`: the routing policy (pure): circuit breaker, first-byte budgets, fallback share,
  and :class:`~tray.gateway.breaker.LocalActivity` (what the monitor reads).
- :mod:`tray.gateway.translate`: Ollama <-> OpenAI translation (pure), NDJSON <-> SSE.
- :mod:`tray.gateway.cloud`: the provider's API key and the call made for a request.
- :mod:`tray.gateway.app`: the ASGI gateway and :class:`GatewayServer`.
- :mod:`tray.gateway.client`: ``chat(messages, ...)`` with the same routing, in-process.
- :mod:`tray.gateway.commands`: ``ollama-manager gateway`` and ``ollama-manager cloud set-key``.

Its ``[cloud]`` and ``[gateway]`` config sections are settings like the others, in :mod:`tray.settings.gateway`.
"""
