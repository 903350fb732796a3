"""The design notes' functions, importable from one module.

    from tray.api import (
        is_ollama_running, start_ollama, ensure_model_loaded, health_check, auto_restart, get_status,
    )

Each reads the user's settings (or takes a ``Config``), acts once and
returns what the design notes show. They are for scripts and direct callers;
the tray and ``ollama-manager monitor`` run the continuous loop instead.
"""

from __future__ import annotations

from typing import Any

from tray.core.health import classify
from tray.history import EventKind, History
from tray.service.monitor import Monitor
from tray.service.supervisor import Supervisor, SupervisorError
from tray.settings.config import Config, load_config
from tray.system.paths import AppPaths


def _supervisor(config: Config | None) -> Supervisor:
    paths = AppPaths.default()
    return Supervisor(config or load_config(paths=paths), paths, History(paths.history_db))


def is_ollama_running(config: Config | None = None) -> bool:
    """True if Ollama answers GET /api/tags."""
    sup = _supervisor(config)
    try:
        result, _ = sup.client.probe_api(timeout=sup.config.health_check_timeout)
        return result.ok
    finally:
        sup.close()


def start_ollama(config: Config | None = None) -> bool:
    """Start Ollama (or adopt the running one) and wait up to ``startup_timeout`` for it to answer."""
    sup = _supervisor(config)
    try:
        sup.user_stop.clear()
        sup.start(reason="api")
        return True
    except SupervisorError as exc:
        sup.history.record(EventKind.ERROR, f"start_ollama failed: {exc}")
        return False
    finally:
        sup.close()


def ensure_model_loaded(model_name: str | None = None, config: Config | None = None) -> bool:
    """True when the model is available for inference: built from the current Modelfile if needed.

    Starts Ollama first when it is not running; pulls the base model when it
    is not local; confirms the model is listed and answers a test inference.
    """
    from tray.models.builder import ensure_model_loaded as ensure
    from tray.models.defaults import install_default_modelfile
    from tray.models.errors import MODEL_FAILURES

    sup = _supervisor(config)
    try:
        install_default_modelfile(sup.config, sup.paths)
        if not sup.client.answers_as_ollama():
            sup.start(reason="model")
        report = ensure(
            sup.host.url,
            model_name or sup.config.ollama_model,
            sup.config.modelfile_path,
            models_dir=sup.models_dir,
            state_dir=sup.paths.state_dir,
            quantize=sup.config.model_quantize or None,
        )
        return report.ok
    except (*MODEL_FAILURES, SupervisorError) as exc:
        sup.history.record(EventKind.MODEL_ERROR, f"ensure_model_loaded failed: {exc}")
        return False
    finally:
        sup.close()


def health_check(config: Config | None = None) -> dict[str, Any]:
    """``{"status": "healthy|unhealthy|down", "latency": seconds}`` from one probe.

    The probe is the one-token test inference when the model exists (and
    ``health_probe`` is ``inference``), else the API check.
    """
    sup = _supervisor(config)
    try:
        monitor = Monitor(sup, sup.config, History(None))
        result = monitor.probe()
        status = classify(result, sup.config.health_check_timeout)
        return {"status": str(status), "latency": round(result.latency, 3)}
    finally:
        sup.close()


def auto_restart(config: Config | None = None, reason: str = "api") -> bool:
    """Stop (SIGTERM, 5 s, SIGKILL; runners reaped) and start Ollama again, then health-check it."""
    sup = _supervisor(config)
    try:
        sup.restart(reason=reason)
    except SupervisorError as exc:
        sup.history.record(EventKind.RESTART, f"auto_restart failed: {exc}", {"reason": reason, "ok": False})
        return False
    finally:
        sup.close()
    return health_check(config)["status"] != "down"


def get_status(config: Config | None = None) -> dict[str, Any]:
    """The design notes' status fields (and a few more), from the running monitor or one probe."""
    from tray.web.link import MonitorLink

    paths = AppPaths.default()
    status = MonitorLink(paths).status()
    if status is not None:
        return status.to_json()
    sup = _supervisor(config)
    try:
        return Monitor(sup, sup.config, History(None)).check_once().to_json()
    finally:
        sup.close()
