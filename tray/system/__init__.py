"""OS adapters: everything that touches processes, files, the session bus or the OS's own services.

One interface per concern; where the OSes differ, the implementation is chosen per platform.

Modules:

- :mod:`tray.system.processes`: finding, starting and stopping ``ollama serve`` and its runners
- :mod:`tray.system.owners`: other supervisors that own the server (systemd, the Ollama app)
- :mod:`tray.system.autostart`: start at login (LaunchAgent, HKCU Run, XDG autostart)
- :mod:`tray.system.notify`: native notifications with fallbacks
- :mod:`tray.system.resources`: CPU, memory, disk and GPU sampling
- :mod:`tray.system.paths`: the app's config, log, data and state folders
- :mod:`tray.system.instance`: the single-instance lock
- :mod:`tray.system.stopping`: a foreground command's main thread, asleep until a signal stops it
- :mod:`tray.system.logs`: the app's log file
"""
