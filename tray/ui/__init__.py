"""The tray: icon and tooltip (:mod:`.icon`), menu model (:mod:`.menu`) and the pystray adapter (:mod:`.app`).

Importing this package does not import pystray, which needs a display.
"""

from tray.ui.app import Controller, TrayApp, no_tray_message, tray_available
from tray.ui.icon import IconState, draw_icon, icon_state, tooltip
from tray.ui.menu import MenuEntry, build_menu

__all__ = [
    "Controller",
    "IconState",
    "MenuEntry",
    "TrayApp",
    "build_menu",
    "draw_icon",
    "icon_state",
    "no_tray_message",
    "tooltip",
    "tray_available",
]
