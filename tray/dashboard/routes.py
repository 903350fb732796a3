"""The dashboard's routes, mounted in the status API's Starlette app.

==========================  =====================================================
``GET /``                   the dashboard page
``GET /settings``           the settings page
``GET /static/...``         the pages' CSS and JavaScript, from the package
``GET /api/stream``         server-sent events: ``status`` and ``event`` messages
``GET /api/history``        chart points and timeline, ``?range=1h`` or ``1d``
``GET /api/settings``       every setting with its value, help and limits (the user only: the token,
                            or a connection the OS shows to be the user's)
``POST /api/settings``      save changes (``Authorization: Bearer <token>``); 403 with the
                            ``config set`` command for a command-only key (the program, addresses,
                            data folders, where the cloud key goes)
``GET /metrics``            Prometheus exposition
==========================  =====================================================

The status API's middleware already refuses non-loopback clients and
foreign ``Host`` headers. The token never appears in a page: a tab signs in
with a one-time code (:mod:`tray.web.signin`) and keeps it in its session
storage. A changing request must carry it in the ``Authorization`` header,
which another web page can neither read nor make a browser send
cross-origin; reading the settings needs it too, unless the OS shows the
connection to be the user's own (Linux).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from tray.core.status import Status
from tray.dashboard import urls
from tray.dashboard.metrics import ManagerMetrics
from tray.dashboard.settings_form import APPLIED_NOW, ApplyPlan, SettingsService, patched_config
from tray.dashboard.stream import Message, StreamHub, sse_frames
from tray.dashboard.views import TIMELINE_LIMIT, history_view, parse_range, status_view
from tray.history import Event, History
from tray.settings.config import Config
from tray.system.peers import OwnUserCheck
from tray.web.loopback import BodyRefused, read_body
from tray.web.status_api import NOT_THE_USER, from_the_user, token_matches

STATIC_DIR = Path(__file__).with_name("static")
PAGE_HEADERS = {
    # Scripts and styles from this origin only; no framing by other pages (clickjacking).
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
MAX_SETTINGS_BODY = 64 * 1024
APPLY_WAIT_SECONDS = 5.0  # a save waits this long for the monitor to take the new settings

log = logging.getLogger(__name__)


class MonitorLike(Protocol):
    """What the dashboard needs from :class:`tray.service.monitor.Monitor`."""

    @property
    def config(self) -> Config: ...

    def snapshot(self) -> Status: ...

    def subscribe(self, callback: Callable[[Status], None]) -> Callable[[], None]: ...

    def apply_settings(self, config: Config) -> concurrent.futures.Future[str]: ...


def unauthorised() -> JSONResponse:
    return JSONResponse({"ok": False, "error": "missing or wrong token"}, 401)


def page(name: str) -> Callable[[Request], Awaitable[Response]]:
    """A handler serving the static page ``name`` with the pages' security headers."""

    async def serve(request: Request) -> Response:
        return FileResponse(STATIC_DIR / name, headers=PAGE_HEADERS, media_type="text/html")

    return serve


class Dashboard:
    """The dashboard of one running app: its live feed, metrics, settings and routes.

    The gateway's local/cloud split comes from the status' ``gateway``
    (None: "gateway off"). Given the ``notifier`` (anything with an
    ``enabled`` attribute), a saved ``notifications`` applies at once.
    Built after the app started, ``since`` (wall time) is when it did: the
    metrics count from then. Call :meth:`close` before stopping the HTTP
    server: it ends the open streams.
    """

    def __init__(
        self,
        monitor: MonitorLike,
        history: History,
        token: str,
        *,
        config_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        notifier: Any = None,
        wall_clock: Callable[[], float] = time.time,
        since: float | None = None,
        owners: OwnUserCheck | None = None,
    ) -> None:
        self.monitor = monitor
        self.history = history
        self.token = token
        self.owners = owners if owners is not None else OwnUserCheck()
        self.notifier = notifier
        self.wall_clock = wall_clock
        self.hub = StreamHub()
        self.metrics = ManagerMetrics(monitor, history, wall_clock, since)
        live_keys = APPLIED_NOW if notifier is not None else APPLIED_NOW - {"notifications"}
        self.settings = SettingsService(
            config_path or Path(monitor.config.source),
            os.environ if env is None else env,
            self.apply_live,
            live_keys,
        )
        self._last_status: Status | None = None
        self._config = monitor.config  # what the monitor was last given
        self._unsubscribe = monitor.subscribe(self._on_status)
        history.subscribe(self._on_event)

    # ------------------------------------------------------------------ feeds (any thread)

    def status_message(self, status: Status) -> dict[str, Any]:
        """The ``status`` message: the status API's JSON and what the page shows of it."""
        return {"status": status.to_json(), "view": status_view(status, self.wall_clock())}

    def _on_status(self, status: Status) -> None:
        if status == self._last_status:
            return
        self._last_status = status
        self.hub.publish("status", self.status_message(status))

    def _on_event(self, event: Event) -> None:
        self.hub.publish("event", {"t": event.time, **event.to_json()})

    def apply_live(self, plan: ApplyPlan, wanted: Mapping[str, Any]) -> None:
        """Give the running monitor the saved values it reads as it goes (it takes them on its own thread)."""
        keys = (*plan.now, *plan.ollama_start)
        if not keys:
            return
        base = self._config
        if "active_model" not in keys:  # the tray or the CLI may have switched models since: keep their choice
            base = dataclasses.replace(base, active_model=self.monitor.config.active_model)
        self._config = patched_config(base, wanted, keys)
        applied = self.monitor.apply_settings(self._config)
        try:
            applied.result(timeout=APPLY_WAIT_SECONDS)
        except concurrent.futures.TimeoutError:
            log.info("the monitor is busy; it takes the new settings (%s) when its current work ends", ", ".join(keys))
        except Exception as exc:  # noqa: BLE001 - the monitor is shutting down: the file has them for the next start
            log.warning("the monitor did not take the new settings: %s", exc)
        if self.notifier is not None and "notifications" in plan.now:
            self.notifier.enabled = bool(wanted["notifications"])

    def close(self) -> None:
        """End every open stream and stop following the monitor (again: nothing more happens)."""
        self._unsubscribe()
        self.hub.close()

    # ------------------------------------------------------------------ handlers

    async def stream(self, request: Request) -> Response:
        client = self.hub.connect(asyncio.get_running_loop())
        first = [Message("status", self.status_message(self.monitor.snapshot()))]
        frames = sse_frames(client, first, on_end=lambda: self.hub.disconnect(client))
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(frames, media_type="text/event-stream", headers=headers)

    def history_data(self, request: Request) -> Response:
        try:
            seconds = parse_range(request.query_params.get("range"))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        now = self.wall_clock()
        samples = self.history.samples(since=now - seconds)
        events = self.history.events(since=now - seconds, limit=TIMELINE_LIMIT)
        return JSONResponse(history_view(samples, events, seconds, now))

    async def settings_data(self, request: Request) -> Response:
        if not await from_the_user(request, self.token, self.owners):
            return JSONResponse({"ok": False, "error": NOT_THE_USER}, 401)
        return JSONResponse(await asyncio.to_thread(self.settings.page))

    async def save_settings(self, request: Request) -> Response:
        if not token_matches(request, self.token):
            return unauthorised()
        try:
            body = await read_body(request, MAX_SETTINGS_BODY)
        except BodyRefused as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, exc.status, exc.headers)
        try:
            changes = json.loads(body).get("values")
        except (ValueError, AttributeError):
            changes = None
        if not isinstance(changes, dict):
            return JSONResponse({"ok": False, "error": 'expected a JSON object {"values": {"key": value}}'}, 400)
        status, answer = await asyncio.to_thread(self.settings.save, changes)
        return JSONResponse(answer, status)

    def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    def routes(self) -> list[BaseRoute]:
        """The routes to add to the status API's app."""
        return [
            Route(urls.PAGE, page("dashboard.html")),
            Route(urls.SETTINGS_PAGE, page("settings.html")),
            Mount(urls.STATIC, StaticFiles(directory=STATIC_DIR), name="dashboard-static"),
            Route(urls.STREAM, self.stream),
            Route(urls.HISTORY, self.history_data),
            Route(urls.SETTINGS, self.settings_data, methods=["GET"]),
            Route(urls.SETTINGS, self.save_settings, methods=["POST"]),
            Route(urls.METRICS, self.metrics_text),
        ]


def mount_dashboard(app: Any, dashboard: Dashboard) -> Any:
    """Add the dashboard's routes to a Starlette app (or to the one a ``LoopbackOnly`` wraps); returns ``app``."""
    starlette_app = getattr(app, "app", app)
    starlette_app.router.routes.extend(dashboard.routes())
    return app
