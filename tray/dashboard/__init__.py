"""The local web dashboard, the settings page and Prometheus metrics, served by the status API.

- :mod:`tray.dashboard.ondemand`: :class:`~tray.dashboard.ondemand.DashboardOnDemand`, the routes the status API
  serves; they build the dashboard on its first request.
- :mod:`tray.dashboard.routes`: :class:`~tray.dashboard.routes.Dashboard` and its Starlette routes; ``mount_dashboard``.
- :mod:`tray.dashboard.urls`: the dashboard's addresses.
- :mod:`tray.dashboard.views`: what the pages show, from the monitor's status and the history (pure).
- :mod:`tray.dashboard.settings_form`: every setting, its validation and the atomic save.
- :mod:`tray.dashboard.stream`: server-sent events from the monitor's thread to the browser.
- :mod:`tray.dashboard.metrics`: the ``/metrics`` registry.
- :mod:`tray.dashboard.launch`: ``ollama-manager dashboard`` and the tray's "Open dashboard".
- ``static/``: the pages, their script and style; no framework, nothing fetched from the internet.

Importing this package imports none of them.
"""
