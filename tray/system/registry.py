"""String values of a Windows registry key under HKEY_CURRENT_USER, behind an interface tests can fake.

Used for start at login (the ``Run`` key) and for the notifications' app identity
(``Software\\Classes\\AppUserModelId``).
"""

from __future__ import annotations

from typing import Protocol


class RegistryValues(Protocol):
    """String values of one registry key under HKEY_CURRENT_USER."""

    def get(self, name: str) -> str | None:
        """The value's data, or None when the value does not exist."""
        ...

    def set(self, name: str, data: str) -> None:
        """Create or replace a REG_SZ value."""
        ...

    def delete(self, name: str) -> None:
        """Remove a value; no error when it does not exist."""
        ...


class WinregKey:
    """:class:`RegistryValues` on one key under ``HKEY_CURRENT_USER`` (Windows only), created when first written."""

    def __init__(self, key_path: str) -> None:
        import winreg  # type: ignore[import-not-found,unused-ignore]

        self._winreg = winreg
        self._key_path = key_path

    def get(self, name: str) -> str | None:
        """The value's data, or None."""
        winreg = self._winreg
        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, self._key_path) as key:
                data, _kind = winreg.QueryValueEx(key, name)
        except FileNotFoundError:
            return None
        return str(data)

    def set(self, name: str, data: str) -> None:
        """Write a REG_SZ value."""
        winreg = self._winreg
        with winreg.CreateKeyEx(winreg.HKEY_CURRENT_USER, self._key_path, 0, winreg.KEY_SET_VALUE) as key:
            winreg.SetValueEx(key, name, 0, winreg.REG_SZ, data)

    def delete(self, name: str) -> None:
        """Delete the value if present."""
        winreg = self._winreg
        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, self._key_path, 0, winreg.KEY_SET_VALUE) as key:
                winreg.DeleteValue(key, name)
        except FileNotFoundError:
            pass
