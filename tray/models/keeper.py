"""Keeps the user's model built, current and intact, in its own thread.

Builds and pulls take minutes; they run here so the monitor's health checks
go on meanwhile. The monitor calls :meth:`ModelKeeper.on_tick` after each
check; the keeper decides (ensure once the server answers, verify every
``model_verify_interval``, repair a deleted or damaged model) and records
each outcome as an event.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from tray.core.status import ActivityKind, ModelStatus
from tray.history import EventKind, History
from tray.models.errors import MODEL_FAILURES, StoreUnreadable
from tray.models.progress import ProgressEvent
from tray.settings.config import Config

if TYPE_CHECKING:  # the builder and the store code behind it load for the first job
    from tray.models import builder

log = logging.getLogger(__name__)

JOBS = ("ensure", "rebuild", "verify")
ActivitySink = Callable[[ActivityKind | None, str, float | None], None]


def activity_text(event: ProgressEvent) -> tuple[ActivityKind, str, float | None]:
    """The tray's activity (kind, text, fraction) for a build progress event.

    >>> activity_text(ProgressEvent("pulling", "sha256:ab", 45, 100))
    (<ActivityKind.PULL: 'pull'>, 'Pulling base model 45 %', 0.45)
    >>> activity_text(ProgressEvent("creating", "writing manifest"))
    (<ActivityKind.BUILD: 'build'>, 'Building model', None)
    """
    kind, label = {
        "pulling": (ActivityKind.PULL, "Pulling base model"),
        "hashing": (ActivityKind.VERIFY, "Verifying model"),
        "verifying": (ActivityKind.VERIFY, "Verifying model"),
        "uploading": (ActivityKind.BUILD, "Uploading model files"),
    }.get(event.phase, (ActivityKind.BUILD, "Building model"))
    fraction = event.fraction
    return kind, label if fraction is None else f"{label} {int(fraction * 100)} %", fraction


class _BuildArgs(TypedDict):
    """Keyword arguments shared by every build the keeper starts."""

    models_dir: Path
    state_dir: Path
    quantize: str | None
    progress: Callable[[ProgressEvent], None]
    overrides: dict[str, int]


class ModelKeeper:
    def __init__(
        self,
        config: Config,
        base_url: str,
        models_dir: Path,
        state_dir: Path,
        history: History,
        set_activity: ActivitySink,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.base_url = base_url
        self.models_dir = models_dir
        self.state_dir = state_dir
        self.history = history
        self.set_activity = set_activity
        self.clock = clock
        self.status: ModelStatus | None = None  # what the alert rules read; None: not looked yet
        self.report: builder.ModelReport | None = None
        self.last_verified: float | None = None  # wall time of the last integrity check
        # PARAMETERs the out-of-memory ladder adds to the Modelfile's; every build uses them, so a check
        # never "repairs" them away. Replaced whole (never mutated), as the keeper thread reads it.
        self.parameter_overrides: dict[str, int] = {}
        self._ensured = False
        self._unreadable_told = False
        self._was_present = False
        self._next_verify: float | None = None
        self._jobs: queue.Queue[tuple[str, concurrent.futures.Future[str]] | None] = queue.Queue()
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(5)

    @property
    def busy(self) -> bool:
        return self._busy.is_set()

    def set_parameter_overrides(self, overrides: dict[str, int]) -> concurrent.futures.Future[str]:
        """Build the model with these PARAMETERs added to the Modelfile's (empty: as the Modelfile says).

        The Future's result is the build's one-line summary, once the model is rebuilt.
        """
        self.parameter_overrides = dict(overrides)
        return self.request("ensure")

    def request(self, job: str) -> concurrent.futures.Future[str]:
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        if job not in JOBS:
            future.set_exception(ValueError(f"unknown model job {job!r}"))
        else:
            self._jobs.put((job, future))
        return future

    # ------------------------------------------------------------------ decisions (monitor thread)

    def on_tick(self, now: float, server_ok: bool, model_present: bool) -> None:
        """After a health check: decide what the model needs, if anything."""
        if not server_ok or self.busy or not self._jobs.empty():
            return
        if self._was_present and not model_present:
            self.status = ModelStatus.MISSING
            missing = f"model {self.config.ollama_model} was deleted or is no longer listed"
            self.history.record(EventKind.MODEL_MISSING, missing)
        self._was_present = model_present
        if not self.config.auto_build_model:
            return
        if not self._ensured or (self.status is ModelStatus.MISSING and not model_present):
            self._ensured = True
            self.request("ensure")
        elif self._next_verify is None or now >= self._next_verify:
            self._next_verify = now + self.config.model_verify_interval
            self.request("verify")

    # ------------------------------------------------------------------ work (keeper thread)

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, future = item
            if not future.set_running_or_notify_cancel():
                continue
            self._busy.set()
            try:
                future.set_result(getattr(self, f"_{job}")())
            except MODEL_FAILURES as exc:
                self.history.record(EventKind.MODEL_ERROR, f"{job} of {self.config.ollama_model} failed: {exc}")
                future.set_exception(exc)
            except Exception as exc:  # reported to the caller; the keeper goes on
                log.exception("model %s failed", job)
                future.set_exception(exc)
            finally:
                self._busy.clear()
                self.set_activity(None, "", None)

    def _progress(self, event: ProgressEvent) -> None:
        self.set_activity(*activity_text(event))

    def _build_args(self) -> _BuildArgs:
        return {
            "models_dir": self.models_dir,
            "state_dir": self.state_dir,
            "quantize": self.config.model_quantize or None,
            "progress": self._progress,
            "overrides": dict(self.parameter_overrides),
        }

    def _ensure(self) -> str:
        from tray.models import builder

        self.set_activity(ActivityKind.BUILD, "Checking model", None)
        report = builder.ensure_model_loaded(
            self.base_url,
            self.config.ollama_model,
            self.config.modelfile_path,
            **self._build_args(),
        )
        return self._built(report)

    def _rebuild(self) -> str:
        from tray.models import builder

        self.set_activity(ActivityKind.BUILD, "Rebuilding model", None)
        report = builder.rebuild(
            self.base_url,
            self.config.ollama_model,
            self.config.modelfile_path,
            full=True,
            **self._build_args(),
        )
        return self._built(report)

    def _built(self, report: builder.ModelReport) -> str:
        self.report = report
        self.status = ModelStatus.OK if report.ok else self.status
        self._was_present = True
        if report.action != "none":
            kind = EventKind.MODEL_REPAIRED if report.repaired else EventKind.MODEL_BUILT
            self.history.record(kind, report.summary(), {"reason": report.reason})
        return report.summary()

    def _verify(self) -> str:
        from tray.models import builder

        self.set_activity(ActivityKind.VERIFY, "Verifying model", None)
        try:
            result = builder.verify(
                self.config.ollama_model, models_dir=self.models_dir, state_dir=self.state_dir, progress=self._progress
            )
        except StoreUnreadable as exc:  # another account's store: say so once, never call the model missing
            if not self._unreadable_told:
                self._unreadable_told = True
                self.history.record(EventKind.MODEL_UNVERIFIED, str(exc))
            return str(exc)
        self._unreadable_told = False
        self.last_verified = time.time()
        if result.ok:
            self.status = ModelStatus.OK
            return result.summary()
        self.status = ModelStatus.CORRUPT if result.corrupt else ModelStatus.MISSING
        self.history.record(EventKind.MODEL_CORRUPT, result.summary())
        if self.config.auto_build_model:
            return self._rebuild()
        return result.summary()
