"""Where the dashboard's pages and feeds are, on the status API's server (importing this loads nothing else)."""

from __future__ import annotations

PAGE = "/"
SETTINGS_PAGE = "/settings"
STATIC = "/static"  # the pages' CSS and JavaScript, under it
STREAM = "/api/stream"
HISTORY = "/api/history"
SETTINGS = "/api/settings"
METRICS = "/metrics"

ROUTES = (PAGE, SETTINGS_PAGE, STREAM, HISTORY, SETTINGS, METRICS)  # each a path of its own; STATIC a prefix
