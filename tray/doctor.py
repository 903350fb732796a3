"""``ollama-manager doctor``: what this copy of the app loaded and where it keeps its files.

Meant for bug reports and for checking a frozen bundle: the version, whether
it runs from a PyInstaller bundle, the tray backend and the notification
methods it can use, NVML, jeepney, its folders and the ollama executable.

:func:`gather_facts` looks at the running process and the machine;
:func:`format_report` turns those facts into ``(label, value)`` lines and does
nothing else, so each line can be tested on any OS.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import platform as platform_module
import shlex
import shutil
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import TextIO

from tray import __version__
from tray.core.text import error_line, one_line
from tray.system.host import platform_name
from tray.system.notify import notify_os_for
from tray.system.paths import AppPaths
from tray.ui.backend import TrayBackend, TrayChoice, choose_tray, xembed_backend

Line = tuple[str, str]

DEFAULT_MODELFILE_NAME = "uncensored.Modelfile"
BUNDLED_ICON = "icons/ollama-manager.png"

# pystray's backends; a failed import leaves no module behind, the chosen one owns pystray.Icon.
PYSTRAY_BACKENDS = ("appindicator", "gtk", "xorg", "darwin", "win32", "dummy")


@dataclass(frozen=True)
class Probe:
    """What loading one optional piece gave: a description when it worked, else the reason it did not."""

    loaded: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class NvmlFacts:
    """NVML as the resource monitor would see it."""

    library: str | None  # nvidia-ml-py version; None when the package is missing
    gpu_count: int | None = None  # None when NVML did not initialise
    driver: str | None = None
    error: str | None = None  # why NVML did not initialise


@dataclass(frozen=True)
class Facts:
    """Everything the report shows, as observed."""

    version: str
    python: str
    platform: str
    frozen: bool
    executable: str
    bundle_dir: str | None  # sys._MEIPASS in a PyInstaller bundle
    launch_command: Sequence[str]
    tray_backend: Probe
    tray_host: tuple[bool, str]
    plyer: Probe
    fallbacks: Sequence[str]
    jeepney: str | None  # version, None when missing
    nvml: NvmlFacts
    keyring: Probe
    paths: AppPaths
    config_file: Path
    config_error: str | None
    modelfile: Path | None
    bundled_modelfile: Path | None
    bundled_icon: Path | None
    ollama: Probe


# --- formatting (pure) ------------------------------------------------------------


def _exists(path: Path | None, present: Callable[[Path], bool]) -> str:
    if path is None:
        return "not bundled"
    return f"{path}" + ("" if present(path) else " (missing)")


def describe_frozen(facts: Facts) -> str:
    """``yes (PyInstaller bundle in …)`` or ``no (Python at …)``."""
    if facts.frozen:
        return f"yes (PyInstaller bundle in {facts.bundle_dir or Path(facts.executable).parent})"
    return f"no (Python at {facts.executable})"


def describe_probe(probe: Probe, missing: str = "none") -> str:
    """The loaded description, else ``<missing>: <reason>``."""
    if probe.loaded is not None:
        return probe.loaded
    return f"{missing}: {probe.error}" if probe.error else missing


def describe_nvml(nvml: NvmlFacts) -> str:
    """NVML library, driver and GPU count in one line."""
    if nvml.library is None:
        return "not available (nvidia-ml-py is not installed)"
    if nvml.gpu_count is None:
        return f"nvidia-ml-py {nvml.library} present, no NVIDIA driver ({nvml.error or 'unknown error'})"
    gpus = f"{nvml.gpu_count} GPU" + ("" if nvml.gpu_count == 1 else "s")
    return f"nvidia-ml-py {nvml.library}, driver {nvml.driver or 'unknown'}, {gpus}"


def format_report(facts: Facts, present: Callable[[Path], bool] = Path.exists) -> list[Line]:
    """The report's lines, in the order shown."""
    host_ok, host_reason = facts.tray_host
    config_file = _exists(facts.config_file, present)
    if facts.config_error:
        config_file += f" (invalid: {facts.config_error})"
    lines: list[Line] = [
        ("version", f"ollama-manager {facts.version}"),
        ("python", f"{facts.python} on {facts.platform}"),
        ("frozen", describe_frozen(facts)),
        ("start at login runs", shlex.join(facts.launch_command)),
        ("tray backend", describe_probe(facts.tray_backend)),
        ("tray host", ("yes: " if host_ok else "no: ") + host_reason),
        ("notifier", describe_probe(facts.plyer, missing="plyer unavailable")),
        ("notifier fallbacks", ", ".join(facts.fallbacks) or "none"),
        ("jeepney", f"present ({facts.jeepney})" if facts.jeepney else "missing"),
        ("nvml", describe_nvml(facts.nvml)),
        ("keyring", describe_probe(facts.keyring, missing="unavailable")),
        ("config file", config_file),
        ("config dir", str(facts.paths.config_dir)),
        ("log dir", str(facts.paths.log_dir)),
        ("data dir", str(facts.paths.data_dir)),
        ("state dir", str(facts.paths.state_dir)),
        ("modelfile", _exists(facts.modelfile, present) if facts.modelfile else "unknown (see config file)"),
        ("default modelfile", _exists(facts.bundled_modelfile, present)),
        ("icon", _exists(facts.bundled_icon, present)),
        ("ollama", describe_probe(facts.ollama, missing="not found")),
    ]
    return lines


def render_text(lines: Sequence[Line]) -> str:
    """``label: value`` lines with the values aligned."""
    width = max((len(label) for label, _ in lines), default=0) + 1
    return "\n".join(f"{label + ':':<{width}} {value}" for label, value in lines)


def render_json(lines: Sequence[Line]) -> str:
    """The lines as one JSON object (labels as keys, in order)."""
    return json.dumps(dict(lines), indent=2)


# --- looking (side effects) -----------------------------------------------------------


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def importable_version(module_name: str, distribution: str) -> str | None:
    """The version of an importable module (distribution metadata, else ``__version__``); None if it does not import."""
    try:
        module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - broken counts as missing
        return None
    return _distribution_version(distribution) or str(getattr(module, "__version__", "unknown version"))


def probe_tray_backend() -> Probe:
    """Import pystray the way the tray does; it picks its backend on import.

    pystray tries ``PYSTRAY_BACKEND`` or the platform's backends in order
    (Linux: appindicator, gtk, xorg). The xorg backend connects to the X
    display on import, so without one the import fails with an X error.
    """
    try:
        import pystray
    except Exception as exc:  # noqa: BLE001 - any failure here is the answer
        return Probe(error=error_line(exc, named=True))
    for name in PYSTRAY_BACKENDS:
        module = sys.modules.get(f"pystray._{name}")
        if module is not None and getattr(module, "Icon", None) is pystray.Icon:
            return Probe(loaded=f"{name} ({module.__name__})")
    return Probe(loaded=f"unknown ({pystray.Icon.__module__})")


def probe_chosen_backend(choice: TrayChoice) -> Probe:
    """Load the backend :func:`tray.ui.backend.choose_tray` picked, as the tray would."""
    if choice.backend is TrayBackend.STATUS_NOTIFIER:
        try:
            importlib.import_module("tray.ui.sni")
        except Exception as exc:  # noqa: BLE001
            return Probe(error=error_line(exc, named=True))
        return Probe(loaded=f"sni (StatusNotifierItem over jeepney {importable_version('jeepney', 'jeepney')})")
    if choice.backend is TrayBackend.XEMBED:
        try:
            icon_class = xembed_backend().Icon
        except Exception as exc:  # noqa: BLE001 - the xorg backend raises X errors on import
            return Probe(error=error_line(exc, named=True))
        return Probe(loaded=f"xorg ({icon_class.__module__})")
    return probe_tray_backend()


def probe_plyer(platform: str | None = None) -> Probe:
    """Load plyer's notification backend module for ``platform`` as plyer does."""
    plyer_platform = notify_os_for(platform).plyer_platform
    module_name = f"plyer.platforms.{plyer_platform}.notification"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "The Python dbus package is not installed": it uses notify-send
            module = importlib.import_module(module_name)
            backend = module.instance()
    except Exception as exc:  # noqa: BLE001
        return Probe(error=f"{module_name}: {error_line(exc, named=True)}")
    return Probe(loaded=f"plyer {importable_version('plyer', 'plyer')} ({type(backend).__name__} from {module_name})")


def available_fallbacks(
    platform: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
    jeepney_present: bool = False,
) -> list[str]:
    """The notification fallbacks of :mod:`tray.system.notify` that could run here."""
    return notify_os_for(platform).fallbacks(which, jeepney_present)


def probe_nvml(loader: Callable[[], ModuleType] = lambda: importlib.import_module("pynvml")) -> NvmlFacts:
    """Initialise NVML once, read the GPU count and driver, and shut it down again."""
    try:
        nvml = loader()
    except ImportError:
        return NvmlFacts(library=None)
    library = _distribution_version("nvidia-ml-py") or "?"
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound and friends
        return NvmlFacts(library=library, error=type(exc).__name__)
    try:
        count = int(nvml.nvmlDeviceGetCount())
        driver = nvml.nvmlSystemGetDriverVersion()
        driver_text = driver.decode() if isinstance(driver, bytes) else str(driver)
    except Exception as exc:  # noqa: BLE001
        return NvmlFacts(library=library, gpu_count=0, error=type(exc).__name__)
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - nothing to do about a failed shutdown
            pass
    return NvmlFacts(library=library, gpu_count=count, driver=driver_text)


def probe_keyring() -> Probe:
    """The OS keyring backend the cloud fallback's key store would use."""
    try:
        import keyring

        backend = keyring.get_keyring()
    except Exception as exc:  # noqa: BLE001
        return Probe(error=error_line(exc, named=True))
    kind = type(backend)
    return Probe(loaded=f"{kind.__module__}.{kind.__name__}")


def bundled_file(relative: str) -> Path | None:
    """A file shipped in ``tray/data`` (package data, or the bundle's copy of it), or None."""
    try:
        candidate = resources.files("tray") / "data" / relative
    except (ModuleNotFoundError, TypeError):
        return None
    path = Path(str(candidate))
    return path if path.exists() else None


def probe_ollama(configured: str = "", env: Mapping[str, str] | None = None) -> Probe:
    """Find the ollama executable the way the supervisor does."""
    from tray.system.processes import OllamaNotInstalled, find_ollama_binary

    try:
        return Probe(loaded=str(find_ollama_binary(configured, env)))
    except OllamaNotInstalled as exc:
        return Probe(error=one_line(str(exc), fallback="not installed"))


def gather_facts(
    config_path: str | None = None, env: Mapping[str, str] | None = None, platform: str | None = None
) -> Facts:
    """Look at this process and machine; each failure becomes part of the answer.

    ``config_path`` is the ``--config`` option (default: the usual settings file).
    """
    from tray.settings.config import ConfigError, config_file_path, load_config
    from tray.system.autostart import launch_command

    env = os.environ if env is None else env
    platform = platform_name(platform)
    paths = AppPaths.default()
    config_error: str | None = None
    modelfile: Path | None = None
    ollama_binary = ""
    try:
        config = load_config(config_path, env=env, paths=paths)
        modelfile, ollama_binary = Path(config.modelfile), config.ollama_binary
    except ConfigError as exc:
        config_error = one_line(str(exc))
    jeepney = importable_version("jeepney", "jeepney")
    choice = choose_tray(env, platform)
    frozen = bool(getattr(sys, "frozen", False))
    return Facts(
        version=__version__,
        python=f"{platform_module.python_implementation()} {platform_module.python_version()}",
        platform=f"{platform} {platform_module.machine()}",
        frozen=frozen,
        executable=sys.executable,
        bundle_dir=getattr(sys, "_MEIPASS", None) if frozen else None,
        launch_command=launch_command(platform=platform),
        tray_backend=probe_chosen_backend(choice),
        tray_host=(choice.backend is not None and not choice.waiting, choice.reason),
        plyer=probe_plyer(platform),
        fallbacks=available_fallbacks(platform, jeepney_present=jeepney is not None),
        jeepney=jeepney,
        nvml=probe_nvml(),
        keyring=probe_keyring(),
        paths=paths,
        config_file=config_file_path(config_path, env, paths),
        config_error=config_error,
        modelfile=modelfile,
        bundled_modelfile=bundled_file(DEFAULT_MODELFILE_NAME),
        bundled_icon=bundled_file(BUNDLED_ICON),
        ollama=probe_ollama(ollama_binary, env),
    )


def doctor_report(config_path: str | None = None) -> list[tuple[str, str]]:
    """The doctor's ``(label, value)`` lines for this process and machine."""
    return format_report(gather_facts(config_path))


def doctor_command(as_json: bool = False, config_path: str | None = None, out: TextIO | None = None) -> int:
    """Print the report (text or JSON) to ``out`` (stdout); always exit status 0.

    A problem found (no tray, no GPU, a bad settings file) is part of the
    report, not a failure of the command.
    """
    lines = doctor_report(config_path)
    text = render_json(lines) if as_json else render_text(lines)
    print(text, file=out if out is not None else sys.stdout)
    return 0
