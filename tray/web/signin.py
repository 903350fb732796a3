"""Signing a browser in to the dashboard without the token ever on a command line.

``ollama-manager dashboard`` and the tray's "Open dashboard" ask the running
manager for a one-time code (``POST /api/signin-code`` with the token), write a
small page holding it to a file only the user can read, and open that page's
``file://`` address: the browser's command line and history hold no secret.
The page posts the code to ``POST /signin``, whose answer hands the token to the
dashboard's script (kept in ``sessionStorage`` for that tab, as every request
that changes something sends it as ``Authorization: Bearer``) and moves on to
the dashboard's plain address. A code is redeemable once, within
:data:`CODE_LIFETIME` seconds.
"""

from __future__ import annotations

import html
import secrets
import threading
import time
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

CODE_LIFETIME = 60.0
MAX_CODES = 32  # unredeemed codes kept at once; minting more drops the oldest
MAX_SIGNIN_BODY = 1024
MINT = "/api/signin-code"
REDEEM = "/signin"

SIGNIN_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class SignInCodes:
    """One-time codes, each redeemable once before it expires (clock injected).

    >>> now = [100.0]
    >>> codes = SignInCodes(clock=lambda: now[0])
    >>> code = codes.mint()
    >>> codes.redeem(code), codes.redeem(code)
    (True, False)
    >>> late = codes.mint(); now[0] += CODE_LIFETIME + 1
    >>> codes.redeem(late)
    False
    """

    def __init__(self, lifetime: float = CODE_LIFETIME, clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self._clock = clock
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def mint(self) -> str:
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._drop_expired()
            while len(self._expiry) >= MAX_CODES:
                del self._expiry[next(iter(self._expiry))]
            self._expiry[code] = self._clock() + self.lifetime
        return code

    def redeem(self, code: str) -> bool:
        with self._lock:
            self._drop_expired()
            for known in list(self._expiry):
                if secrets.compare_digest(known.encode(), code.encode("utf-8", "surrogateescape")):
                    del self._expiry[known]
                    return True
        return False

    def _drop_expired(self) -> None:
        now = self._clock()
        for code, expiry in list(self._expiry.items()):
            if expiry <= now:
                del self._expiry[code]


def signed_in_page(token: str) -> str:
    """The answer to a redeemed code: the dashboard's script stores the token and opens the dashboard."""
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>Ollama Manager</title>"
        f'<meta name="ollama-manager-session" content="{html.escape(token)}">'
        '<script type="module" src="/static/signin.js"></script></head>'
        "<body><p>Opening the dashboard…</p></body></html>"
    )


REFUSED_PAGE = (
    "<!doctype html><html><head><meta charset=utf-8><title>Ollama Manager</title></head><body>"
    "<p>This link to the dashboard was already used or has expired (it works once, for a minute).</p>"
    "<p>Open the dashboard again from the tray menu or with <code>ollama-manager dashboard</code>.</p>"
    "</body></html>"
)


def signin_routes(token: str, codes: SignInCodes, token_matches: Callable[[Request, str], bool]) -> list[BaseRoute]:
    """``POST /api/signin-code`` (token: a new code) and ``POST /signin`` (a form's ``code``: the session)."""

    async def mint(request: Request) -> Response:
        if not token_matches(request, token):
            return JSONResponse({"ok": False, "error": "missing or wrong token"}, 401)
        return JSONResponse({"ok": True, "code": codes.mint(), "expires_in": codes.lifetime})

    async def redeem(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_SIGNIN_BODY:
                return HTMLResponse(REFUSED_PAGE, 413, headers=SIGNIN_HEADERS)
        supplied = parse_qs(body.decode("ascii", "replace")).get("code", [""])[0]
        if not supplied or not codes.redeem(supplied):
            return HTMLResponse(REFUSED_PAGE, 403, headers=SIGNIN_HEADERS)
        return HTMLResponse(signed_in_page(token), headers=SIGNIN_HEADERS)

    return [Route(MINT, mint, methods=["POST"]), Route(REDEEM, redeem, methods=["POST"])]
