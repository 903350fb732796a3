"""The local web dashboard, the settings page and Prometheus metrics, served by the status API.

- :mod:`tray.dashboard.routes`: :class:`Dashboard` and its Starlette routes; :func:`mount_dashboard`.
- :mod:`tray.dashboard.views`: what the pages show, from the monitor's status and the history (pure).
- :mod:`tray.dashboard.settings_form`: every setting, its validation and the atomic save.
- :mod:`tray.dashboard.stream`: server-sent events from the monitor's thread to the browser.
- :mod:`tray.dashboard.metrics`: the ``/metrics`` registry.
- :mod:`tray.dashboard.launch`: ``ollama-manager dashboard`` and the tray's "Open dashboard".
- ``static/``: the pages, their script and style; no framework, nothing fetched from the internet.
"""

from tray.dashboard.launch import DashboardUnavailable, dashboard_command, dashboard_url, open_dashboard
from tray.dashboard.routes import Dashboard, mount_dashboard

__all__ = [
    "Dashboard",
    "DashboardUnavailable",
    "dashboard_command",
    "dashboard_url",
    "mount_dashboard",
    "open_dashboard",
]
