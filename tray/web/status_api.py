"""The status API: a loopback-only HTTP endpoint served by a running monitor.

``GET /api/status`` returns the monitor's status (:meth:`~tray.core.status.Status.to_json`),
``GET /api/events`` the event history, ``POST /api/actions/<action>`` queues one of the monitor's
``ACTIONS`` (start, stop, restart, unload, the model jobs, and ``check``:
probe Ollama now, as a standalone gateway asks when a request went wrong),
``POST /api/model`` ``{"model": NAME}`` makes an installed model the active one
(an empty name: the Modelfile model).
``POST /api/signin-code`` and ``POST /signin`` sign a browser tab in with a one-time code
(:mod:`tray.web.signin`).
Only loopback clients with a loopback/localhost ``Host`` header are served
(DNS rebinding), there is no CORS, and actions need the per-user token kept
in a file only the user can read. What is the user's own to read (the events
here, the dashboard's settings) answers the token, or a connection the OS
shows to be the user's (:func:`from_the_user`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tray.atomic import write_atomically
from tray.history import History
from tray.service.monitor import ACTIONS, ModelChoiceError, Monitor
from tray.system.monitor_record import write_record
from tray.system.peers import OwnUserCheck
from tray.web.loopback import BodyRefused, LoopbackOnly, read_body
from tray.web.server import LoopbackServer
from tray.web.signin import SignInCodes, signin_routes

log = logging.getLogger(__name__)


def load_or_create_token(path: Path) -> str:
    """The per-user secret that authorises actions; created 0600 on first use."""
    try:
        token = path.read_text().strip()
        if token:
            return token
    except OSError:
        pass
    return rotate_token(path)


def rotate_token(path: Path) -> str:
    """A new per-user secret, written 0600 to ``path``: each start of the manager makes the last one worthless."""
    token = secrets.token_urlsafe(32)
    write_atomically(path, token.encode("ascii"), mode=0o600)
    return token


MAX_MODEL_BODY = 64 * 1024  # POST /api/model: a model name in a small JSON object
MAX_EVENTS = 1_000_000  # ?limit= of /api/events: above this SQLite's integer overflows long before it means anything


def token_matches(request: Request, token: str) -> bool:
    """Does the request carry ``Authorization: Bearer <token>``? Any header text is compared, never an error."""
    supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    return secrets.compare_digest(supplied.encode("utf-8", "surrogateescape"), token.encode("utf-8"))


async def from_the_user(request: Request, token: str, owners: OwnUserCheck) -> bool:
    """Is this request the user's: the token, or (where the OS shows it, Linux) a program of the user's?"""
    if token_matches(request, token):
        return True
    client, server = request.scope.get("client"), request.scope.get("server")
    if not owners.lookup or not client or not server:
        return False
    return await asyncio.to_thread(owners.is_own, (client[0], client[1]), (server[0], server[1]))


NOT_THE_USER = "answered only to the user who runs Ollama Manager: send Authorization: Bearer <token>"


def build_app(
    monitor: Monitor,
    history: History,
    token: str,
    extra_routes: Sequence[BaseRoute] = (),
    codes: SignInCodes | None = None,
    owners: OwnUserCheck | None = None,
) -> Any:
    owners = owners if owners is not None else OwnUserCheck()

    async def status(request: Request) -> Response:
        return JSONResponse(monitor.snapshot().to_json())

    async def events(request: Request) -> Response:
        if not await from_the_user(request, token, owners):
            return JSONResponse({"error": NOT_THE_USER}, 401)
        try:
            limit = int(request.query_params.get("limit", "200"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_EVENTS:
            return JSONResponse({"error": f"limit must be a whole number from 1 to {MAX_EVENTS}"}, 400)
        return JSONResponse([e.to_json() for e in history.events(limit=limit)])

    async def action(request: Request) -> Response:
        name = request.path_params["name"]
        if not token_matches(request, token):
            return JSONResponse({"error": "missing or wrong token"}, 401)
        if name not in ACTIONS:
            return JSONResponse({"error": f"unknown action '{name}'"}, 404)
        future = monitor.request(name)
        try:
            message = await asyncio.wrap_future(future)
        except Exception as exc:  # noqa: BLE001 - reported to the caller as one line
            return JSONResponse({"ok": False, "error": str(exc)}, 500)
        return JSONResponse({"ok": True, "message": message})

    async def use_model(request: Request) -> Response:
        supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(supplied, token):
            return JSONResponse({"error": "missing or wrong token"}, 401)
        try:
            name = json.loads(await read_body(request, MAX_MODEL_BODY)).get("model")
        except BodyRefused as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, exc.status, exc.headers)
        except (ValueError, AttributeError):
            name = None
        if not isinstance(name, str):
            return JSONResponse({"ok": False, "error": 'expected a JSON object {"model": "name"}'}, 400)
        try:
            message = await asyncio.wrap_future(monitor.use_model(name))
        except ModelChoiceError as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, 400)
        except Exception as exc:  # noqa: BLE001 - reported to the caller as one line
            return JSONResponse({"ok": False, "error": str(exc)}, 500)
        return JSONResponse({"ok": True, "message": message})

    app = Starlette(
        routes=[
            Route("/api/status", status),
            Route("/api/events", events),
            Route("/api/actions/{name}", action, methods=["POST"]),
            Route("/api/model", use_model, methods=["POST"]),
            *signin_routes(token, codes or SignInCodes(), token_matches),
            *extra_routes,
        ]
    )
    return LoopbackOnly(app)


class StatusServer(LoopbackServer):
    """Serves the status API (and the routes added to it) on ``127.0.0.1:port`` in a background thread."""

    def __init__(
        self, monitor: Monitor, history: History, token: str, port: int, extra_routes: Sequence[BaseRoute] = ()
    ) -> None:
        app = build_app(monitor, history, token, extra_routes)
        super().__init__(app, port, what="the status API", thread_name="status-api")


def write_monitor_file(path: Path, pid: int, port: int) -> None:
    """Record where the status API listens, with the pid's start time (so a reused pid is never trusted)."""
    write_record(path, pid, port)
