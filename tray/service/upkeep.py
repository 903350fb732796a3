"""The design notes' daemon duties, run after every health check.

Record a metrics sample, evaluate the alert rules, walk the out-of-memory
ladder (from probe errors and new server-log lines) and carry its moves out
(:class:`OomEffects`), and note restarts the manager did not ask for.
Everything lands in the history as events, which the tray turns into
notifications. What the monitor should do about it comes back from
:meth:`DaemonDuties.after_tick` as :class:`UpkeepWants`.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tray.atomic import write_atomically
from tray.core.alerts import AlertEngine, AlertState, Metrics
from tray.core.health import Busy, ProbeResult
from tray.core.names import same_model
from tray.core.oom import LadderMove, OomEvent, OomLadder, OomSituation, Place
from tray.history import EventKind, History
from tray.models.errors import ModelError
from tray.models.modelfile import load_modelfile
from tray.settings.config import Config
from tray.system.host import host_for
from tray.system.logs import ServerLogTail
from tray.system.ollama_app import app_os_for
from tray.system.owners import SystemdService, current_uid, journal_access_line, user_name
from tray.system.resources import ResourceSample

if TYPE_CHECKING:
    from tray.models.keeper import ModelKeeper
    from tray.service.ports import SupervisorPort, UsageReading

log = logging.getLogger(__name__)

COMPACT_EVERY_SECONDS = 3600.0
RESTART_MEMORY_SECONDS = 3600.0


@dataclass(frozen=True)
class UpkeepWants:
    """What the upkeep after a check asks of the monitor."""

    leak_restart: bool = False  # the memory-leak alert was raised and alerts.leak_restart is on
    reprobe: bool = False  # the machine woke and something looked wrong: check again at the short cadence
    oom_restart: str | None = None  # why the server must restart for the OOM ladder's settings to apply


class DaemonDuties:
    """``oom_effects`` carries the OOM ladder's moves out; without it they are only reported.

    ``server_log``: the log of the running server (it changes with the server's owner).
    """

    def __init__(
        self,
        config: Config,
        history: History,
        server_log: Path | Callable[[], Path | None],
        recheck_seconds: float,
        oom_effects: OomEffects | None = None,
        ladder_file: Path | None = None,
    ) -> None:
        self.config = config
        self.history = history
        self.recheck_seconds = recheck_seconds
        self.alerts = AlertEngine(config.alerts, interval_seconds=expected_gap(config, recheck_seconds))
        self.oom = OomLadder(num_ctx=config.ollama_server.context_length or OomLadder.num_ctx)
        self.oom_effects = oom_effects
        self.ladder_file = ladder_file
        self._restore_ladder()
        self.log_tail = ServerLogTail(server_log, self._journal_refused)
        self._refused_units: set[str] = set()
        self.restart_times: deque[float] = deque()
        self.last_compact: float | None = None

    def reconfigure(self, config: Config) -> None:
        """Use new settings from the next check on: the alert limits and the gap that means a sleep."""
        self.config = config
        self.alerts.thresholds = config.alerts
        self.alerts.interval_seconds = expected_gap(config, self.recheck_seconds)
        if self.oom_effects is not None:
            self.oom_effects.config = config

    def follow_log(self, unit: SystemdService | None) -> None:
        """Read the log of the server that runs: its unit's journal, else the file it writes."""
        self.log_tail.follow(unit)

    def _journal_refused(self, unit: SystemdService) -> None:
        """Called from the journal's reader thread: say once per unit how to get access."""
        if unit.unit not in self._refused_units:
            self._refused_units.add(unit.unit)
            line = journal_access_line(unit, user_name(current_uid()))
            self.history.record(EventKind.LOG_ACCESS, line, {"unit": unit.unit})

    def close(self) -> None:
        self.log_tail.close()

    def note_restart(self, now: float) -> None:
        self.restart_times.append(now)

    def after_tick(
        self,
        now: float,
        health: str,
        probe: ProbeResult,
        sample: ResourceSample | None,
        model_status: str | None,
        fallback: UsageReading | None = None,
        busy: Busy | None = None,
        busy_known: bool = False,
    ) -> UpkeepWants:
        """Record, alert and walk the OOM ladder after one check; what the monitor should do about it.

        ``busy_known``: the server answered this tick, so ``busy`` None means idle, not unknown.
        """
        self._record_sample(health, probe, sample)
        self._walk_oom_ladder(now, probe)
        while self.restart_times and now - self.restart_times[0] > RESTART_MEMORY_SECONDS:
            self.restart_times.popleft()
        gpu = sample.fullest_gpu if sample else None
        metrics = Metrics(
            tree_memory_bytes=sample.tree_rss_bytes if sample and sample.server_running else None,
            tree_cpu_percent=sample.tree_cpu_percent if sample and sample.server_running else None,
            health=health,
            restart_times=tuple(self.restart_times),
            fallback_ratio=fallback.ratio if fallback else None,
            fallback_calls=fallback.calls if fallback else None,
            model_status=model_status,
            model_name=self.config.ollama_model,
            disk_free_bytes=sample.disk_free_bytes if sample else None,
            gpu_memory_used_bytes=gpu.memory_used_bytes if gpu else None,
            gpu_memory_total_bytes=gpu.memory_total_bytes if gpu else None,
            runner_stuck=(busy is not None and busy.stuck) if busy_known else None,
            busy_model=busy.model if busy else None,
            busy_quiet_seconds=busy.quiet_seconds(now) if busy else None,
        )
        report = self.alerts.observe(now, metrics)
        leak_restart = False
        for alert in report.events:
            self.history.record(
                EventKind.ALERT,
                f"{alert.title}: {alert.message}",
                {"kind": str(alert.kind), "state": str(alert.state), "severity": str(alert.severity)},
            )
            if alert.requests_restart and alert.state is AlertState.RAISED and self.config.alerts.leak_restart:
                leak_restart = True
        if self.last_compact is None or now - self.last_compact >= COMPACT_EVERY_SECONDS:
            self.last_compact = now
            self.history.compact()
        return UpkeepWants(leak_restart, report.reprobe, self._oom_restart_reason())

    def _oom_restart_reason(self) -> str | None:
        """Why the server must restart to apply the OOM ladder's environment, or None when it need not."""
        return self.oom_effects.restart_reason() if self.oom_effects is not None else None

    def oom_restart_done(self) -> None:
        """The monitor restarted the server for :meth:`oom_restart_reason` (or tried to)."""
        if self.oom_effects is not None:
            self.oom_effects.poll()

    @property
    def oom_wants_cloud(self) -> bool:
        return self.oom.cloud_fallback

    def _record_sample(self, health: str, probe: ProbeResult, sample: ResourceSample | None) -> None:
        gpu = sample.fullest_gpu if sample else None
        self.history.record_sample(
            {
                "health": health,
                "latency_ms": probe.latency * 1000 if probe.ok else None,
                "memory_mb": sample.tree_rss_bytes / 2**20 if sample and sample.server_running else None,
                "cpu_percent": sample.tree_cpu_percent if sample and sample.server_running else None,
                "ram_used_mb": sample.ram_used_bytes / 2**20 if sample else None,
                "gpu_memory_mb": gpu.memory_used_bytes / 2**20 if gpu and gpu.memory_used_bytes is not None else None,
                "gpu_percent": gpu.utilization_percent if gpu else None,
            }
        )

    def _walk_oom_ladder(self, now: float, probe: ProbeResult) -> None:
        effects = self.oom_effects
        if effects is not None:
            effects.poll()
            self.oom.situation = effects.situation()
            self.oom.awaiting_effect = effects.pending
        moves: list[OomEvent | None] = []
        if not probe.ok and probe.detail:
            moves.append(self.oom.report_error(now, probe.detail))
        moves.extend(self.oom.report_log_lines(now, self.log_tail.new_lines()))
        if not any(moves):
            moves.append(self.oom.tick(now, memory_ok=probe.ok))
        for move in moves:
            if move is None:
                continue
            if effects is None or not move.acts:
                record_oom_event(self.history, move, move.message, str(move.move))
            else:
                effects.start(move, self.oom)
            self._save_ladder()

    def _save_ladder(self) -> None:
        """Keep the rungs and what they changed, so a restart of the app does not undo them (and rebuild)."""
        if self.ladder_file is None:
            return
        data = {"ladder": self.oom.saved(), **(self.oom_effects.in_effect() if self.oom_effects else {})}
        try:
            write_atomically(self.ladder_file, json.dumps(data).encode(), mode=0o600)
        except OSError as exc:
            log.warning("could not keep the out-of-memory ladder in %s: %s", self.ladder_file, exc)

    def _restore_ladder(self) -> None:
        if self.ladder_file is None:
            return
        try:
            data = json.loads(self.ladder_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("could not read the out-of-memory ladder in %s: %s", self.ladder_file, exc)
            return
        if not isinstance(data, dict) or not self.oom.restore(data.get("ladder") or {}):
            log.warning("ignoring %s: not a saved out-of-memory ladder", self.ladder_file)
            return
        if self.oom_effects is not None:
            self.oom_effects.resume(data)


def expected_gap(config: Config, recheck_seconds: float) -> float:
    """The longest normal gap between checks: the interval (or the re-check cadence while failing) plus a
    probe that runs into its timeout; the alert engine takes a gap well past it for a sleep.

    >>> expected_gap(Config(health_check_interval=300, health_check_timeout=5), 2.0)
    315.0
    """
    return float(max(config.health_check_interval, recheck_seconds) + 3 * config.health_check_timeout)


def record_oom_event(history: History, move: OomEvent, message: str, phase: str) -> None:
    """One event about a ladder move; ``phase`` ("down", "up", "applied", "failed") keys its notification."""
    history.record(
        EventKind.OOM,
        message,
        {
            "kind": phase,
            "move": str(move.move),
            "step": str(move.step),
            "level": move.level,
            "place": str(move.place),
            "change": move.change,
            "memory": str(move.kind),
            "cloud_fallback": move.cloud_fallback,
        },
    )


class OomEffects:
    """Carries the OOM ladder's moves out where they act, and says so once they did.

    - a server this app started: the supervisor's environment overlay for the
      next start; while it differs from the running server's, the monitor
      restarts the server as soon as nothing runs on it (:meth:`restart_reason`);
    - the model built from the Modelfile: the keeper rebuilds it with the
      ladder's PARAMETERs added;
    - anywhere else the move's message is a suggestion: nothing to carry out.

    A move's change is *pending* until it is in effect; the ladder counts the
    OOMs seen meanwhile as the same failure.
    """

    def __init__(self, config: Config, history: History, supervisor: SupervisorPort, keeper: ModelKeeper) -> None:
        self.config = config
        self.history = history
        self.supervisor = supervisor
        self.keeper = keeper
        self._server_move: OomEvent | None = None
        self._model_move: OomEvent | None = None
        self._model_build: concurrent.futures.Future[str] | None = None

    @property
    def pending(self) -> bool:
        return self._server_move is not None or self._model_move is not None

    def situation(self) -> OomSituation:
        sup = self.supervisor
        owner = sup.external
        # The rebuild rung changes the Modelfile model only: with another model active, it only suggests.
        active = self.config.model_in_use
        builds = self.config.auto_build_model and same_model(active, self.config.ollama_model)
        app = app_os_for(sup.platform)  # how the user sets the app's server variables; None where there is no app
        return OomSituation(
            server=sup.managed_by,
            systemd_unit=owner.unit if isinstance(owner, SystemdService) else OomSituation.systemd_unit,
            systemd_user=owner.user if isinstance(owner, SystemdService) else False,
            gpu_off_env=host_for(sup.platform).gpu_off_by_env(),
            app_env_setter=app.env_setter() if app is not None else (),
            model=active,
            builds_model=builds,
            modelfile_parameters=self._modelfile_parameters() if builds else frozenset(),
            cloud_enabled=self.config.cloud.enabled and self.config.gateway.enabled,
        )

    def _modelfile_parameters(self) -> frozenset[str]:
        try:
            return frozenset(load_modelfile(self.config.modelfile_path).parameters)
        except (ModelError, OSError):
            return frozenset()

    def start(self, move: OomEvent, ladder: OomLadder) -> None:
        """Put the ladder's targets after ``move`` in place, and tell what happens next."""
        targets = ladder.targets
        sup = self.supervisor
        if sup.managed_by == "manager":
            sup.set_env_overlay(targets.server_env)
        acting = False
        if move.place is Place.SERVER_ENV:
            self._server_move = move if sup.overlay_pending else None
            acting = self._server_move is not None
        if self.situation().builds_model and dict(targets.model_parameters) != self.keeper.parameter_overrides:
            self._model_build = self.keeper.set_parameter_overrides(dict(targets.model_parameters))
            self._model_move = move
            acting = acting or move.place is Place.MODEL_PARAMETER
        if acting:
            record_oom_event(self.history, move, move.message, str(move.move))
        elif move.move is LadderMove.UP:
            record_oom_event(self.history, move, f"Memory is fine again: {move.change} was not in effect yet", "up")
        else:
            text = f"Ollama ran out of memory: {move.change} is already in effect"
            record_oom_event(self.history, move, text, "down")

    def in_effect(self) -> dict[str, dict[str, object]]:
        """What the ladder's rungs changed: the next start's server environment, the model's PARAMETERs."""
        return {
            "server_env": dict(self.supervisor.env_overlay),
            "model_parameters": dict(self.keeper.parameter_overrides),
        }

    def resume(self, saved: dict[str, object]) -> None:
        """Put back what :meth:`in_effect` gave, at start: the server starts with it, the model keeps it."""
        env, parameters = saved.get("server_env"), saved.get("model_parameters")
        if isinstance(env, dict):
            self.supervisor.set_env_overlay({str(k): str(v) for k, v in env.items()})
        if isinstance(parameters, dict):
            self.keeper.parameter_overrides = {str(k): int(v) for k, v in parameters.items() if isinstance(v, int)}

    def restart_reason(self) -> str | None:
        move = self._server_move
        if move is None or not self.supervisor.overlay_pending:
            return None
        if move.move is LadderMove.DOWN:
            return f"out of memory: {move.step.label}"
        return f"memory is fine again: {move.step.label} undone"

    def poll(self) -> None:
        """Report the changes that took effect (or failed) since the last call."""
        move = self._server_move
        sup = self.supervisor
        if move is not None:
            if sup.managed_by == "manager" and not sup.overlay_pending:
                self._server_move = None
                record_oom_event(self.history, move, move.done_message, "applied")
            elif sup.managed_by not in ("manager", "none"):
                self._server_move = None
                record_oom_event(
                    self.history,
                    move,
                    f"{move.change} was not applied: Ollama is now run by {sup.managed_by}, not by the manager",
                    "failed",
                )
        build, move = self._model_build, self._model_move
        if build is None or move is None or not build.done():
            return
        self._model_build = self._model_move = None
        error = build.exception()
        if error is None:
            if move.place is Place.MODEL_PARAMETER:
                record_oom_event(self.history, move, move.done_message, "applied")
        else:
            text = f"{move.change} was not applied: rebuilding {self.config.ollama_model} failed: {error}"
            record_oom_event(self.history, move, text, "failed")
