"""Finding and calling the status API of a monitor (or tray) that is already running."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx

from tray.core.status import Status
from tray.errors import CliError
from tray.system.monitor_record import verified_record
from tray.system.paths import AppPaths

log = logging.getLogger(__name__)


class MonitorLink:
    """Talks to the status API of a monitor (or tray) that is already running.

    ``monitor.json`` is trusted only once it is proven to name the monitor running now
    (:func:`tray.system.monitor_record.verified_record`); a stale one gets one line through
    ``report`` (the log by default) and the link behaves as when no monitor runs.
    """

    def __init__(self, paths: AppPaths, report: Callable[[str], None] | None = None) -> None:
        self.paths = paths
        self.report = report or log.warning
        self.stale: str | None = None  # why monitor.json was not trusted, once address() found it stale

    def address(self) -> str | None:
        """The running monitor's status API base URL; None when no monitor is proven to run."""
        record, stale = verified_record(self.paths.monitor_file)
        if stale is not None and stale != self.stale:
            self.stale = stale
            self.report(f"no monitor is running ({stale})")
        if record is None:
            return None
        return f"http://127.0.0.1:{record.port}"

    def status(self) -> Status | None:
        """The running monitor's status; None when none answers (or it answers something else)."""
        base = self.address()
        if base is None:
            return None
        try:
            response = httpx.get(f"{base}/api/status", timeout=5, trust_env=False)
            response.raise_for_status()
            return Status.from_json(response.json())
        except (httpx.HTTPError, ValueError):
            return None

    def action(self, name: str) -> str | None:
        """Run an action in the monitor; None when no monitor answers."""
        return self._post(f"/api/actions/{name}")

    def use_model(self, name: str) -> str | None:
        """Make ``name`` the running monitor's active model ("" : the Modelfile model); None when none answers."""
        return self._post("/api/model", {"model": name})

    def signin_code(self) -> str | None:
        """A one-time code that signs a browser tab in to the dashboard; None when no monitor answers."""
        answer = self._post_json("/api/signin-code")
        return None if answer is None else str(answer["code"])

    def _post(self, path: str, body: dict[str, str] | None = None) -> str | None:
        answer = self._post_json(path, body)
        return None if answer is None else str(answer["message"])

    def _post_json(self, path: str, body: dict[str, str] | None = None) -> dict[str, Any] | None:
        base = self.address()
        if base is None:
            return None
        try:
            token = self.paths.api_token.read_text().strip()
        except OSError:
            raise CliError(f"cannot read the manager's token at {self.paths.api_token}") from None
        try:
            response = httpx.post(
                f"{base}{path}",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=180,
                trust_env=False,
            )
        except httpx.ConnectError:
            return None
        except httpx.HTTPError as exc:
            raise CliError(f"the running manager did not answer: {exc}") from None
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict) or not answer.get("ok"):
            error = answer.get("error") if isinstance(answer, dict) else None
            raise CliError(error or f"the running manager answered {response.status_code}")
        return answer
