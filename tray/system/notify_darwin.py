"""Notifications on macOS: plyer when its backend can report, then ``osascript``'s ``display notification``."""

from __future__ import annotations

from collections.abc import Callable

from tray.system.notify import APP_NAME, Channel, plyer_notify, run_command


def applescript_quote(text: str) -> str:
    r"""An AppleScript string literal.

    >>> print(applescript_quote('say "hi" \\ bye'))
    "say \"hi\" \\ bye"
    """
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")
    return f'"{escaped}"'


def osascript_command(title: str, message: str, app_name: str = APP_NAME) -> list[str]:
    """The ``osascript`` argv: the app name as title, the alert title as subtitle."""
    script = (
        f"display notification {applescript_quote(message)} "
        f"with title {applescript_quote(app_name)} subtitle {applescript_quote(title)}"
    )
    return ["osascript", "-e", script]


class DarwinNotify:
    """plyer, then ``osascript``."""

    plyer_platform = "macosx"

    def channels(self, app_name: str, icon: str) -> list[Channel]:
        return [
            Channel("plyer", lambda t, m: plyer_notify(t, m, app_name, icon)),
            Channel("osascript", lambda t, m: run_command(osascript_command(t, m, app_name))),
        ]

    def fallbacks(self, which: Callable[[str], str | None], jeepney_present: bool) -> list[str]:
        return [f"osascript ({where})"] if (where := which("osascript")) else []
