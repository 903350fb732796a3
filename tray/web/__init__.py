"""Loopback HTTP of the app itself: the status API and how other processes find and call it.

Modules:

- :mod:`tray.web.status_api`: ``/api/status``, ``/api/events`` and the token-protected actions of a running monitor
"""
