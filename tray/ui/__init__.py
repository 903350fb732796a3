"""The tray: icon and tooltip (:mod:`.icon`), menu model (:mod:`.menu`), the adapter (:mod:`.app`) and its backends.

Backends: pystray, and on Linux the StatusNotifierItem of :mod:`.sni` with its
menu as dbusmenu (:mod:`.dbusmenu`); :mod:`.backend` chooses. :mod:`.pystray_fixes`
holds the workarounds for pystray's xorg backend, applied to the release they patch. Importing this
package imports none of them (so neither pystray, which needs a display, nor jeepney).
"""
