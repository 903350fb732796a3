"""Helpers the tests share: the manager and tray drivers, private desktops and buses, stand-in servers."""
