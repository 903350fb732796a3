"""The xorg workarounds apply to the pystray release they patch, and to no other."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tray.ui import pystray_fixes


def xorg_icon() -> Any:
    """An object that passes for pystray's xorg Icon (its class lives in ``pystray._xorg``)."""
    return type("Icon", (), {"__module__": "pystray._xorg"})()


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    for name in ("accept_xorg_clicks", "send_xorg_requests_on_own_connection", "log_xorg_tray_loss_in_one_line"):
        monkeypatch.setattr(pystray_fixes, name, lambda icon, name=name: calls.append(name))
    monkeypatch.setattr(pystray_fixes, "_warned_versions", set())
    return calls


def test_the_patched_release_gets_every_workaround(applied: list[str]) -> None:
    assert pystray_fixes.fix_xorg_icon(xorg_icon(), version=pystray_fixes.PATCHED_PYSTRAY) is True
    assert applied == ["accept_xorg_clicks", "send_xorg_requests_on_own_connection", "log_xorg_tray_loss_in_one_line"]


def test_another_release_is_left_alone_with_one_warning(applied: list[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tray.ui.pystray_fixes")
    assert pystray_fixes.fix_xorg_icon(xorg_icon(), version="0.20.0") is False
    assert pystray_fixes.fix_xorg_icon(xorg_icon(), version="0.20.0") is False
    assert applied == []
    assert [record.getMessage() for record in caplog.records] == [
        "pystray 0.20.0 is not 0.19.5, which the tray's xorg workarounds were written for: they are skipped "
        "(clicks on the icon and updates from other threads work as pystray itself makes them)"
    ]


def test_other_backends_are_never_patched(applied: list[str]) -> None:
    assert pystray_fixes.fix_xorg_icon(object(), version=pystray_fixes.PATCHED_PYSTRAY) is False
    assert applied == []


def test_the_installed_pystray_is_the_patched_release() -> None:
    """pyproject.toml asks for it; a newer one needs the workarounds checked again (the X tests show which)."""
    assert pystray_fixes.pystray_version() == pystray_fixes.PATCHED_PYSTRAY
