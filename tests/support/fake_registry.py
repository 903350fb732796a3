"""A registry key under HKEY_CURRENT_USER as a dict: tray.system.registry.RegistryValues for tests on any OS."""

from __future__ import annotations


class FakeRegistry:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def set(self, name: str, data: str) -> None:
        self.values[name] = data

    def delete(self, name: str) -> None:
        self.values.pop(name, None)
