"""OS adapters: everything that touches processes, files, the session bus or the OS's own services.

One interface per concern; where the OSes differ, one module per OS (``<concern>_linux``,
``_darwin``, ``_windows``; ``_posix`` for what Linux and macOS share) implements it, and one
factory picks the implementation by a ``sys.platform`` value, read in one place
(:func:`tray.system.host.platform_name`).

Modules:

- :mod:`tray.system.processes`: finding, starting and stopping ``ollama serve`` and its runners
  (``ProcessOS``, :func:`~tray.system.processes.process_os_for`)
- :mod:`tray.system.ollama_app`: Ollama's desktop app on macOS and Windows (``AppOS``, ``app_os_for``)
- :mod:`tray.system.owners`: other supervisors that own the server (``ServiceManager``: systemd on Linux)
- :mod:`tray.system.autostart`: start at login (LaunchAgent, HKCU Run, XDG autostart)
- :mod:`tray.system.notify`: native notifications with fallbacks (``NotifyOS``, ``notify_os_for``)
- :mod:`tray.system.host`: the app's own process on this OS: opening files, the runtime folder, signal
  waits, the NVIDIA library (``HostOS``, ``host_for``)
- :mod:`tray.system.resources`: CPU, memory, disk and GPU sampling
- :mod:`tray.system.paths`: the app's config, log, data and state folders
- :mod:`tray.system.instance`: the single-instance lock
- :mod:`tray.system.stopping`: a foreground command's main thread, asleep until a signal stops it
- :mod:`tray.system.logs`: the app's log file
- :mod:`tray.system.memory`: one malloc arena for a long-running process's threads (glibc)
"""
