"""Notifications on Windows: a toast under the app's own identity, then plyer's tray balloon."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence

from tray.core.text import error_line
from tray.system.notify import APP_NAME, Channel, NotificationError, plyer_notify, run_command
from tray.system.registry import RegistryValues, WinregKey

# The AppUserModelID toasts are shown under: Windows drops toasts of an app id it does not know, so
# it is registered under HKCU (Software\Classes\AppUserModelId\<id>) with the name and icon to show.
WINDOWS_APP_ID = "io.github.ollama-manager"
APP_ID_KEY = rf"Software\Classes\AppUserModelId\{WINDOWS_APP_ID}"
CREATE_NO_WINDOW = 0x08000000  # powershell.exe runs without a console window


_POWERSHELL_SINGLE_QUOTES = ("'", "\u2018", "\u2019", "\u201a", "\u201b")


def powershell_quote(text: str) -> str:
    """A PowerShell single-quoted literal; PowerShell also treats the typographic single quotes as quotes.

    >>> print(powershell_quote("it's"))
    'it''s'
    """
    for quote in _POWERSHELL_SINGLE_QUOTES:
        text = text.replace(quote, quote * 2)
    return f"'{text}'"


def powershell_toast_script(title: str, message: str, app_id: str = WINDOWS_APP_ID) -> str:
    """PowerShell that shows a toast under ``app_id``; any failure ends it with a non-zero status."""
    t, m, i = (powershell_quote(v) for v in (title, message, app_id))
    return "\n".join(
        [
            "$ErrorActionPreference = 'Stop'",
            "[Windows.UI.Notifications.ToastNotificationManager, Windows.UI.Notifications,"
            " ContentType = WindowsRuntime] | Out-Null",
            "$xml = [Windows.UI.Notifications.ToastNotificationManager]::GetTemplateContent("
            "[Windows.UI.Notifications.ToastTemplateType]::ToastText02)",
            "$lines = $xml.GetElementsByTagName('text')",
            f"$lines.Item(0).AppendChild($xml.CreateTextNode({t})) | Out-Null",
            f"$lines.Item(1).AppendChild($xml.CreateTextNode({m})) | Out-Null",
            "$toast = [Windows.UI.Notifications.ToastNotification]::new($xml)",
            f"[Windows.UI.Notifications.ToastNotificationManager]::CreateToastNotifier({i}).Show($toast)",
        ]
    )


def app_id_values(app_name: str = APP_NAME, icon: str = "") -> dict[str, str]:
    """The values that register the toasts' app id (Windows' "AppUserModelId" registry key).

    >>> app_id_values("Ollama Manager", "C:/om/icon.png")
    {'DisplayName': 'Ollama Manager', 'IconUri': 'C:/om/icon.png'}
    """
    values = {"DisplayName": app_name}
    if icon:
        values["IconUri"] = icon
    return values


def register_app_id(registry: RegistryValues, app_name: str = APP_NAME, icon: str = "") -> None:
    """Write the app id's values where they differ (HKCU, no privileges needed)."""
    for name, data in app_id_values(app_name, icon).items():
        if registry.get(name) != data:
            registry.set(name, data)


def powershell_command(title: str, message: str, app_id: str = WINDOWS_APP_ID) -> list[str]:
    """The ``powershell.exe`` argv; the script goes base64 (UTF-16LE) so no quoting survives the command line."""
    script = powershell_toast_script(title, message, app_id)
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    return [
        "powershell.exe",
        "-NoProfile",
        "-NonInteractive",
        "-ExecutionPolicy",
        "Bypass",
        "-WindowStyle",
        "Hidden",
        "-EncodedCommand",
        encoded,
    ]


def run_hidden(argv: Sequence[str]) -> None:
    """Run a console program (``powershell.exe``) without showing its window."""
    run_command(argv, creationflags=CREATE_NO_WINDOW)


class WindowsToast:
    """A toast under the app's own AppUserModelID, registered (once) before the first one."""

    def __init__(
        self,
        app_name: str = APP_NAME,
        icon: str = "",
        registry: Callable[[], RegistryValues] = lambda: WinregKey(APP_ID_KEY),
        run: Callable[[Sequence[str]], None] = run_hidden,
    ) -> None:
        self.app_name = app_name
        self.icon = icon
        self._registry = registry
        self._run = run
        self._registered = False

    def __call__(self, title: str, message: str) -> None:
        if not self._registered:
            try:
                register_app_id(self._registry(), self.app_name, self.icon)
            except OSError as exc:
                raise NotificationError(f"cannot register the notifications' app id: {error_line(exc)}") from None
            self._registered = True
        self._run(powershell_command(title, message))


class WindowsNotify:
    """The toast, then plyer's balloon, whose delivery cannot be confirmed (it runs on a thread of its own)."""

    plyer_platform = "win"

    def channels(self, app_name: str, icon: str) -> list[Channel]:
        def balloon_send(t: str, m: str) -> None:
            plyer_notify(t, m, app_name, icon, confirmed_only=False)

        return [Channel("toast", WindowsToast(app_name, icon)), Channel("plyer", balloon_send, confirms=False)]

    def fallbacks(self, which: Callable[[str], str | None], jeepney_present: bool) -> list[str]:
        return [f"powershell.exe ({where})"] if (where := which("powershell.exe")) else []
