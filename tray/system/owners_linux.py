"""Linux's service manager: systemd, which may run Ollama (install.sh's ``ollama.service``) and respawn it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from tray.system.owners import (
    INSTALLED_UNITS,
    CommandRunner,
    UnitState,
    _read_cgroup,
    _run_quietly,
    installed_ollama_unit,
    systemd_unit_from_cgroup,
    unit_state,
)


class SystemdManager:
    """systemd: the unit of a process comes from its cgroup, else from the installed units' MainPID."""

    def unit_running(
        self, pid: int, run: CommandRunner = _run_quietly, read_cgroup: Callable[[int], str] = _read_cgroup
    ) -> UnitState | None:
        """The systemd unit whose service ``pid`` is: its cgroup's unit (any name) when that unit runs
        ``ollama serve`` or has it as MainPID, else an installed unit whose MainPID it is."""
        from_cgroup = None
        with contextlib.suppress(OSError):
            from_cgroup = systemd_unit_from_cgroup(read_cgroup(pid))
        if from_cgroup is not None:
            state = unit_state(from_cgroup, run)
            if state.installed and (state.main_pid == pid or state.runs_ollama_serve):
                return state
        for service in INSTALLED_UNITS:
            if service != from_cgroup:
                state = unit_state(service, run)
                if state.installed and state.main_pid == pid:
                    return state
        return None

    def installed_unit(self) -> UnitState | None:
        """The installed unit that runs ``ollama serve``."""
        return installed_ollama_unit()
