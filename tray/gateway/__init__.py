"""The cloud-fallback gateway: apps point at it instead of Ollama.

- :mod:`tray.gateway.settings`: the ``[cloud]`` and ``[gateway]`` config sections.
- :mod:`tray.gateway.breaker`: the routing policy (pure): circuit breaker, first-byte budgets, fallback share,
  and :class:`~tray.gateway.breaker.LocalActivity` (what the monitor reads).
- :mod:`tray.gateway.translate`: Ollama <-> OpenAI translation (pure), NDJSON <-> SSE.
- :mod:`tray.gateway.cloud`: the provider's API key and the call made for a request.
- :mod:`tray.gateway.app`: the ASGI gateway and :class:`GatewayServer`.
- :mod:`tray.gateway.client`: ``chat(messages, ...)`` with the same routing, in-process.
- :mod:`tray.gateway.commands`: ``ollama-manager gateway`` and ``ollama-manager cloud set-key``.
"""

from tray.gateway.settings import CloudSettings, GatewaySettings

__all__ = ["CloudSettings", "GatewaySettings"]
