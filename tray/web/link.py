"""Finding and calling the status API of a monitor (or tray) that is already running."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tray.core.status import Status
from tray.errors import CliError
from tray.system.paths import AppPaths


class MonitorLink:
    """Talks to the status API of a monitor (or tray) that is already running."""

    def __init__(self, paths: AppPaths) -> None:
        self.paths = paths

    def address(self) -> str | None:
        try:
            info = json.loads(self.paths.monitor_file.read_text())
            pid, port = int(info["pid"]), int(info["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not _pid_alive(pid):
            return None
        return f"http://127.0.0.1:{port}"

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


def _pid_alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid)
