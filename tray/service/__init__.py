"""The threads that run the app: the monitor loop, the supervisor it acts through, and the upkeep after each check.

Modules:

- :mod:`tray.service.monitor`: the health-check loop; the only thread that acts on processes
- :mod:`tray.service.supervisor`: find, adopt, start, stop and restart one Ollama server
- :mod:`tray.service.ports`: what the monitor needs from the supervisor and the gateway (Protocols)
- :mod:`tray.service.notices`: which events become desktop notifications
- :mod:`tray.service.upkeep`: after each check: samples, alerts, the out-of-memory ladder
"""
