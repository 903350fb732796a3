"""Loopback HTTP of the app itself: the status API and how other processes find and call it.

Modules:

- :mod:`tray.web.loopback`: the loopback-client and Host-header guard shared by every loopback server
- :mod:`tray.web.link`: finding and calling a running monitor's status API from another process
- :mod:`tray.web.status_api`: ``/api/status``, ``/api/events`` and the token-protected actions of a running monitor
"""
