"""What the monitor needs from the parts around it, as Protocols.

- :class:`SupervisorPort`: the supervisor of the one Ollama server
  (:class:`~tray.service.supervisor.Supervisor`, or a test's fake)
- :class:`OllamaProbe`: the HTTP calls the monitor makes to Ollama
  (:class:`~tray.ollama.client.OllamaClient`)
- :class:`StopMark`: the user's stop, remembered (:class:`~tray.service.supervisor.UserStop`)
- :class:`GatewayFeed`: the loopback gateway running beside the monitor
  (:class:`~tray.gateway.app.Gateway`), read for busy detection, the
  fallback alert and the status

The monitor reads the supervisor's state through read-only properties and
changes it only through its methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Set
from pathlib import Path
from typing import Protocol

import psutil

from tray.core.health import ProbeResult
from tray.core.status import GatewayStatus
from tray.ollama.client import InstalledModel, LoadedModel
from tray.service.supervisor import StartOutcome
from tray.settings.config import Config
from tray.settings.hosts import OllamaHost
from tray.system.owners import ExternalSupervisor, SystemdService
from tray.system.paths import AppPaths
from tray.system.processes import ProcessRef, StopOutcome


class OllamaProbe(Protocol):
    """The calls the monitor makes to Ollama's HTTP API; none raises."""

    def probe_api(self, timeout: float) -> tuple[ProbeResult, set[str] | None]:
        """The HTTP layer's answer, and the installed model names when it answered."""
        ...

    def loaded_models(self, timeout: float) -> list[LoadedModel] | None: ...

    def installed_models(self, timeout: float) -> list[InstalledModel] | None:
        """The installed models with their details (``/api/tags``)."""
        ...

    def preload(self, model: str, keep_alive: int | str | None, timeout: float) -> str | None:
        """Load ``model`` without generating; the error, or None once it is loaded."""
        ...

    def probe_inference(self, model: str, timeout: float) -> ProbeResult: ...

    def ping(self, timeout: float) -> ProbeResult: ...

    def answers_as_ollama(self, timeout: float = 2.0) -> bool | None:
        """True: Ollama answers; False: something else does; None: nothing does."""
        ...

    def unload(self, model: str) -> str | None:
        """Unload ``model`` from memory; the error, or None when it went."""
        ...


class StopMark(Protocol):
    """The user's stop, remembered until they start Ollama again."""

    def set(self) -> None: ...

    def clear(self) -> None: ...

    def is_set(self) -> bool: ...


class SupervisorPort(Protocol):
    """What the monitor and its upkeep need from the supervisor of the one Ollama server."""

    @property
    def client(self) -> OllamaProbe: ...

    @property
    def user_stop(self) -> StopMark: ...

    @property
    def host(self) -> OllamaHost: ...

    @property
    def models_dir(self) -> Path: ...

    @property
    def paths(self) -> AppPaths: ...

    @property
    def server_log(self) -> Path:
        """The log the running server writes (the Ollama app's own when the app runs it)."""
        ...

    @property
    def platform(self) -> str: ...

    @property
    def server(self) -> ProcessRef | None:
        """The server process answering, when known."""
        ...

    @property
    def external(self) -> ExternalSupervisor | None:
        """Who else runs the server (systemd, the Ollama app), if anyone."""
        ...

    @property
    def runners(self) -> Set[ProcessRef]: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def managed_by(self) -> str:
        """``manager``, ``external``, ``none``, or the external supervisor's name."""
        ...

    @property
    def owner(self) -> str | None:
        """The name of the account that runs the server, when known."""
        ...

    @property
    def unit(self) -> str | None:
        """The server's systemd unit, when systemd runs it."""
        ...

    @property
    def refused(self) -> str | None:
        """Why what answers on the port is not used (another user runs it), or None when it is used."""
        ...

    @property
    def store_source(self) -> str:
        """How :attr:`models_dir` was learned (the manager's settings, the unit's ``Environment=``, …)."""
        ...

    @property
    def reaped_names(self) -> Mapping[int, str]:
        """The runners the last reap killed: pid -> process name."""
        ...

    @property
    def overlay_pending(self) -> bool:
        """The server this app started runs with another environment overlay than the next start would give it."""
        ...

    def answers(self) -> bool | None: ...

    def adopt(self) -> None:
        """Take note of the Ollama answering on the port and who supervises it."""
        ...

    def track_runners(self, descendants: Sequence[psutil.Process] | None = None) -> None:
        """Remember the server's runners; ``descendants``: the server's, when already looked up."""
        ...

    def take_exit(self) -> int | None:
        """The exit status of a server this app started that died unasked; reported once."""
        ...

    def reap_runners(self) -> list[int]: ...

    def systemd_owner(self) -> SystemdService | None:
        """The systemd unit that runs Ollama, or is installed to: start, stop and restart then go through it."""
        ...

    def start(self, reason: str = "start", interactive: bool = False) -> StartOutcome:
        """``interactive``: a user's own action, for which polkit may ask for a password."""
        ...

    def stop(self, reason: str = "stop", interactive: bool = False) -> StopOutcome: ...

    def restart(self, reason: str, interactive: bool = False) -> StartOutcome: ...

    def subscribe_exit(self, callback: Callable[[int], None]) -> None:
        """Call ``callback`` (from a watcher thread) with the status of a server this app started that exits unasked."""
        ...

    def forget_server(self) -> None:
        """The server was stopped through its owner: nothing is there to watch until one is adopted again."""
        ...

    def set_env_overlay(self, env: Mapping[str, str]) -> None:
        """Variables to set on top of the ``[ollama_server]`` settings at the next start."""
        ...

    @property
    def env_overlay(self) -> Mapping[str, str]:
        """The variables :meth:`set_env_overlay` set, for the next start."""
        ...

    def reconfigure(self, config: Config) -> None:
        """Use new settings from the next start, stop or wait on."""
        ...


class ActivityReading(Protocol):
    """The gateway's inference requests to Ollama (see :class:`~tray.gateway.breaker.LocalActivity`)."""

    @property
    def in_flight(self) -> Mapping[str, int]: ...

    @property
    def waiting(self) -> int: ...

    @property
    def last_progress(self) -> float | None: ...


class UsageReading(Protocol):
    """The gateway's calls in its window and the cloud's share (see :class:`~tray.gateway.breaker.FallbackUsage`)."""

    @property
    def calls(self) -> int: ...

    @property
    def ratio(self) -> float | None: ...


class GatewayFeed(Protocol):
    """What the monitor reads from the gateway running beside it (any thread)."""

    def local_activity(self) -> ActivityReading: ...

    def fallback_usage(self) -> UsageReading: ...

    def snapshot(self) -> GatewayStatus: ...
