"""The tray: icon and tooltip (:mod:`.icon`), menu model (:mod:`.menu`), the adapter (:mod:`.app`) and its backends.

Backends: pystray, and on Linux the StatusNotifierItem of :mod:`.sni` with its
menu as dbusmenu (:mod:`.dbusmenu`); :mod:`.backend` chooses. Importing this
package imports neither pystray, which needs a display, nor jeepney.
"""

from tray.ui.app import Controller, TrayApp
from tray.ui.backend import no_tray_message, tray_available
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
