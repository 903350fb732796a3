"""The dashboard, built with everything behind it (Prometheus, the settings form) on its first request.

An app whose dashboard nobody opens and nobody scrapes never imports it:
the status API serves :meth:`DashboardOnDemand.routes`, which answer the
dashboard's addresses (:mod:`tray.dashboard.urls`) by building the
:class:`~tray.dashboard.routes.Dashboard` the first time one is asked for,
off the event loop, and handing every request to it from then on. The
metrics it then serves count from when the app started, as if it had been
built then.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from tray.dashboard import urls
from tray.history import History
from tray.web.loopback import AsgiEndpoint

if TYPE_CHECKING:
    from tray.dashboard.routes import Dashboard, MonitorLike


class DashboardOnDemand:
    """The dashboard's routes for the status API; the dashboard itself is built on the first request to one."""

    def __init__(
        self,
        monitor: MonitorLike,
        history: History,
        token: str,
        *,
        notifier: Any = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._monitor = monitor
        self._history = history
        self._token = token
        self._notifier = notifier
        self._wall_clock = wall_clock
        self.since = wall_clock()
        self._lock = threading.Lock()
        self._dashboard: Dashboard | None = None
        self._app: Any = None
        self._closed = False

    @property
    def dashboard(self) -> Dashboard | None:
        """The dashboard once a request built it; None until then."""
        return self._dashboard

    def routes(self) -> list[BaseRoute]:
        """Routes for every address of the dashboard, to add to the status API's app."""
        paths = [*urls.ROUTES, urls.STATIC + "/{file:path}"]
        return [Route(path, AsgiEndpoint(self.serve)) for path in paths]

    def close(self) -> None:
        """End the dashboard's open streams, if it was built; one built later starts closed."""
        with self._lock:
            self._closed = True
            if self._dashboard is not None:
                self._dashboard.close()

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app if self._app is not None else await asyncio.to_thread(self._build)
        await app(scope, receive, send)

    def _build(self) -> Any:
        with self._lock:
            if self._app is None:
                from tray.dashboard.routes import Dashboard

                dashboard = Dashboard(
                    self._monitor,
                    self._history,
                    self._token,
                    notifier=self._notifier,
                    wall_clock=self._wall_clock,
                    since=self.since,
                )
                if self._closed:
                    dashboard.close()
                self._dashboard = dashboard
                self._app = Starlette(routes=dashboard.routes())
            return self._app
