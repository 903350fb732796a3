"""Resource sampling: Ollama's process tree, the machine, the GPUs and the models disk.

One :meth:`ResourceSampler.sample` per monitor tick. Model memory lives in
the runner children of ``ollama serve`` (``ollama runner``,
``ollama_llama_server``, ``llama-server``), so the tree is serve plus all
its descendants.

Missing metrics are values, not exceptions: a vanished or inaccessible
process is skipped, a machine without an NVIDIA driver reports
``gpu_available=False``, and every NVML call goes through
:class:`NvmlGateway`, which turns any NVML error into "not available" and
logs each kind of error once.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from tray.core.text import error_line
from tray.system.host import host_for

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class GpuStats:
    """One GPU; ``None`` where NVML could not tell."""

    index: int
    name: str
    utilization_percent: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_celsius: float | None

    @property
    def memory_percent(self) -> float | None:
        if self.memory_used_bytes is None or not self.memory_total_bytes:
            return None
        return self.memory_used_bytes / self.memory_total_bytes * 100


@dataclass(frozen=True)
class ResourceSample:
    """One tick's measurements. Tree figures are zero when the server is not running."""

    taken_at: float  # monotonic
    server_pid: int | None
    tree_pids: tuple[int, ...]  # serve first, then its descendants
    tree_rss_bytes: int
    tree_cpu_percent: float  # share of the whole machine (all cores busy = 100)
    tree_gpu_memory_bytes: int | None  # None when per-process GPU memory is unknown
    ram_total_bytes: int
    ram_used_bytes: int  # total minus available
    cpu_percent: float  # whole machine
    gpu_available: bool
    gpus: tuple[GpuStats, ...]
    disk_free_bytes: int | None  # models volume
    disk_total_bytes: int | None

    @property
    def server_running(self) -> bool:
        return bool(self.tree_pids)

    @property
    def fullest_gpu(self) -> GpuStats | None:
        """The GPU with the highest memory use in percent (what the GPU-memory alert watches)."""
        known = [gpu for gpu in self.gpus if gpu.memory_percent is not None]
        return max(known, key=lambda gpu: gpu.memory_percent or 0.0, default=None)


def gpu_share_from_ps(ps_json: object) -> int:
    """Bytes of loaded models held in GPU memory, from Ollama's ``GET /api/ps`` body.

    The way to see GPU use where NVML does not exist (Apple Silicon, AMD).

    >>> gpu_share_from_ps({"models": [{"size_vram": 5}, {"size_vram": 7}, {"size": 9}]})
    12
    >>> gpu_share_from_ps({"error": "nope"})
    0
    """
    models = ps_json.get("models") if isinstance(ps_json, Mapping) else None
    if not isinstance(models, list):
        return 0
    total = 0
    for model in models:
        vram = model.get("size_vram") if isinstance(model, Mapping) else None
        if isinstance(vram, int) and not isinstance(vram, bool) and vram > 0:
            total += vram
    return total


def with_ps_gpu_share(sample: ResourceSample, ps_json: object) -> ResourceSample:
    """Fill ``tree_gpu_memory_bytes`` from ``/api/ps`` when NVML could not."""
    if sample.tree_gpu_memory_bytes is not None:
        return sample
    return replace(sample, tree_gpu_memory_bytes=gpu_share_from_ps(ps_json))


def nearest_existing_dir(path: Path) -> Path:
    """``path`` or its closest existing ancestor (the models dir may not exist yet).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as home:
    ...     nearest_existing_dir(Path(home, "models", "blobs")) == Path(home)
    True
    """
    path = Path(path).expanduser().absolute()
    for candidate in (path, *path.parents):
        try:
            if candidate.is_dir():
                return candidate
        except OSError:  # not ours to look into (another account's store): its parent tells the volume
            continue
    return Path(path.anchor or "/")


class _LogOnce:
    """Log each distinct problem once; repeats go to debug."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def warning(self, key: str, message: str, *args: object) -> None:
        if key in self._seen:
            log.debug(message, *args)
            return
        self._seen.add(key)
        log.warning(message, *args)


class NvmlMissing(Exception):
    """The NVIDIA driver's NVML library is not on this machine; ``str()`` says so in one line."""


def nvml_library_present(
    platform: str | None = None,
    environ: Mapping[str, str] = os.environ,
    exists: Callable[[str], bool] = os.path.exists,
    load: Callable[[str], object] = ctypes.CDLL,
) -> bool:
    """Could NVML's bindings find the driver's library here (where nvidia-ml-py looks for it)?

    Asked before importing the bindings, so a machine without an NVIDIA
    driver never loads them.

    >>> nvml_library_present("darwin")
    False
    >>> nvml_library_present("win32", {"WINDIR": "C:/Windows"}, exists=lambda path: path.endswith("System32/nvml.dll"))
    True
    """
    return host_for(platform).nvml_library_present(environ, exists, load)


def _load_pynvml() -> Any | None:
    """The ``pynvml`` module; None when the bindings are not installed, NvmlMissing when the driver is not."""
    if not nvml_library_present():
        raise NvmlMissing("no NVIDIA driver (its NVML library is not on this machine)")
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class NvmlGateway:
    """The only way this app talks to NVML; every failure becomes ``default``.

    ``library`` is the ``pynvml`` module (injectable for tests). NVML raises
    ``NVMLError`` subclasses (``NVMLError_LibraryNotFound`` without a
    driver, ``NVMLError_NotSupported``, ``NVMLError_GpuIsLost`` ...); a
    driver/bindings mismatch can also surface as other exceptions, so all are
    caught here and logged once per (function, error kind).
    """

    def __init__(self, library: Any | None = None, loader: Callable[[], Any | None] = _load_pynvml) -> None:
        self._library = library
        self._loader = loader
        self._ready: bool | None = None
        self._log = _LogOnce()

    def available(self) -> bool:
        """Initialise NVML on first use; False for good when that fails."""
        if self._ready is None:
            self._ready = self._initialise()
        return self._ready

    def _initialise(self) -> bool:
        if self._library is None:
            try:
                self._library = self._loader()
            except NvmlMissing as exc:
                self._log.warning("nvml:driver", "GPU monitoring unavailable: %s", exc)
                return False
        if self._library is None:
            self._log.warning("nvml:import", "GPU monitoring unavailable: the nvidia-ml-py package is not installed")
            return False
        try:
            self._library.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - see class docstring
            self._log.warning("nvml:init", "GPU monitoring unavailable (%s): %s", type(exc).__name__, error_line(exc))
            return False
        return True

    def constant(self, name: str, default: int) -> int:
        value = getattr(self._library, name, default)
        return value if isinstance(value, int) else default

    def call(self, function: str, *args: object, default: Any = None) -> Any:
        """``pynvml.<function>(*args)``, or ``default`` when NVML is missing or the call fails."""
        if not self.available():
            return default
        try:
            return getattr(self._library, function)(*args)
        except Exception as exc:  # noqa: BLE001 - see class docstring
            kind = type(exc).__name__
            self._log.warning(f"{function}:{kind}", "NVML %s failed (%s): %s", function, kind, error_line(exc))
            return default

    def shutdown(self) -> None:
        if self._ready:
            self.call("nvmlShutdown")
        self._ready = None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


@dataclass(frozen=True)
class _GpuReading:
    gpus: tuple[GpuStats, ...]
    memory_by_pid: Mapping[int, int] | None  # None when no device reported its processes


def read_gpus(nvml: NvmlGateway) -> _GpuReading:
    """Every GPU's stats and per-process memory through the gateway."""
    if not nvml.available():
        return _GpuReading((), None)
    gpus: list[GpuStats] = []
    memory_by_pid: dict[int, int] | None = None
    for index in range(nvml.call("nvmlDeviceGetCount", default=0) or 0):
        handle = nvml.call("nvmlDeviceGetHandleByIndex", index)
        if handle is None:
            continue
        gpus.append(_gpu_stats(nvml, index, handle))
        device_memory = _process_memory(nvml, handle)
        if device_memory is not None:
            memory_by_pid = memory_by_pid or {}
            for pid, used in device_memory.items():
                memory_by_pid[pid] = memory_by_pid.get(pid, 0) + used
    return _GpuReading(tuple(gpus), memory_by_pid)


def _gpu_stats(nvml: NvmlGateway, index: int, handle: object) -> GpuStats:
    utilization = nvml.call("nvmlDeviceGetUtilizationRates", handle)
    memory = nvml.call("nvmlDeviceGetMemoryInfo", handle)
    temperature = nvml.call("nvmlDeviceGetTemperature", handle, nvml.constant("NVML_TEMPERATURE_GPU", 0))
    return GpuStats(
        index=index,
        name=_text(nvml.call("nvmlDeviceGetName", handle, default=f"GPU {index}")),
        utilization_percent=None if utilization is None else float(utilization.gpu),
        memory_used_bytes=None if memory is None else int(memory.used),
        memory_total_bytes=None if memory is None else int(memory.total),
        temperature_celsius=None if temperature is None else float(temperature),
    )


def _process_memory(nvml: NvmlGateway, handle: object) -> dict[int, int] | None:
    """GPU memory per pid on one device; a process in both lists (CUDA + graphics) counts once."""
    lists = [
        nvml.call("nvmlDeviceGetComputeRunningProcesses", handle),
        nvml.call("nvmlDeviceGetGraphicsRunningProcesses", handle),
    ]
    if all(entries is None for entries in lists):
        return None
    memory: dict[int, int] = {}
    for entries in lists:
        for entry in entries or ():
            used = getattr(entry, "usedGpuMemory", None)  # None: NVML_VALUE_NOT_AVAILABLE
            if isinstance(used, int):
                memory[entry.pid] = max(memory.get(entry.pid, 0), used)
    return memory


class ResourceSampler:
    """Samples Ollama's process tree and the machine; keep one per monitor thread.

    ``psutil.Process`` objects are kept between ticks because
    ``cpu_percent()`` measures since the previous call on the same object
    (the first call for a process returns 0.0). Machine CPU uses
    ``psutil.cpu_percent(None)``, whose reference point is per thread.
    """

    def __init__(
        self,
        models_dir: Path | str | None,
        clock: Clock = time.monotonic,
        nvml: NvmlGateway | None = None,
    ) -> None:
        self._models_dir = Path(models_dir) if models_dir is not None else None
        self._clock = clock
        self._nvml = nvml if nvml is not None else NvmlGateway()
        self._processes: dict[int, psutil.Process] = {}
        self._cpu_count = psutil.cpu_count() or 1
        self._log = _LogOnce()

    @property
    def models_dir(self) -> Path | None:
        """The store whose disk's free space is sampled: the running server's (it follows the server that runs)."""
        return self._models_dir

    @models_dir.setter
    def models_dir(self, value: Path | str | None) -> None:
        self._models_dir = Path(value) if value is not None else None

    def sample(self, server_pid: int | None, descendants: Sequence[psutil.Process] | None = None) -> ResourceSample:
        """Measure now. A dead or missing ``server_pid`` gives an empty tree, not an error.

        ``descendants``: the server's processes when the caller has just
        listed them (one look at the process table per check); else listed here.
        """
        taken_at = self._clock()
        tree = self._tree(server_pid, descendants)
        pids, rss, cpu = self._measure(tree)
        gpu = read_gpus(self._nvml)
        ram = psutil.virtual_memory()
        disk_free, disk_total = self._disk()
        return ResourceSample(
            taken_at=taken_at,
            server_pid=server_pid,
            tree_pids=pids,
            tree_rss_bytes=rss,
            tree_cpu_percent=round(cpu / self._cpu_count, 1),
            tree_gpu_memory_bytes=_tree_gpu_memory(gpu.memory_by_pid, pids),
            ram_total_bytes=int(ram.total),
            ram_used_bytes=int(ram.total - ram.available),
            cpu_percent=float(psutil.cpu_percent(None)),
            gpu_available=bool(gpu.gpus),
            gpus=gpu.gpus,
            disk_free_bytes=disk_free,
            disk_total_bytes=disk_total,
        )

    def close(self) -> None:
        """Release NVML."""
        self._nvml.shutdown()

    def _tree(self, server_pid: int | None, descendants: Sequence[psutil.Process] | None) -> list[psutil.Process]:
        if server_pid is None:
            self._processes = {}
            return []
        try:
            root = self._known(psutil.Process(server_pid))
            if descendants is None:
                descendants = root.children(recursive=True)
        except psutil.NoSuchProcess:
            self._processes = {}
            return []
        except psutil.AccessDenied:
            self._log.warning(f"tree:{server_pid}", "Cannot list the processes of pid %s: access denied", server_pid)
            descendants = []
        tree = [root, *(self._known(child) for child in descendants)]
        self._processes = {process.pid: process for process in tree}
        return tree

    def _known(self, fresh: psutil.Process) -> psutil.Process:
        """The object kept from earlier ticks for this process (same pid and start time), else ``fresh``."""
        kept = self._processes.get(fresh.pid)
        return kept if kept is not None and kept == fresh else fresh

    def _measure(self, tree: Iterable[psutil.Process]) -> tuple[tuple[int, ...], int, float]:
        pids: list[int] = []
        rss_total, cpu_total = 0, 0.0
        for process in tree:
            reading = self._read(process)
            if reading is None:
                continue
            pids.append(process.pid)
            rss_total += reading[0]
            cpu_total += reading[1]
        return tuple(pids), rss_total, cpu_total

    def _read(self, process: psutil.Process) -> tuple[int, float] | None:
        """(rss, cpu %) of one process; None when it is gone (or a zombie)."""
        try:
            with process.oneshot():
                if process.status() == psutil.STATUS_ZOMBIE:
                    return None
                return process.memory_info().rss, process.cpu_percent(None)
        except psutil.NoSuchProcess:
            return None
        except psutil.AccessDenied:
            self._log.warning(f"read:{process.pid}", "Cannot read memory/CPU of pid %s: access denied", process.pid)
            return 0, 0.0

    def _disk(self) -> tuple[int | None, int | None]:
        if self._models_dir is None:
            return None, None
        volume = nearest_existing_dir(self._models_dir)
        try:
            usage = psutil.disk_usage(str(volume))
        except OSError as exc:
            self._log.warning(f"disk:{volume}", "Cannot read free space of %s: %s", volume, exc.strerror or exc)
            return None, None
        return int(usage.free), int(usage.total)


def _tree_gpu_memory(memory_by_pid: Mapping[int, int] | None, pids: Iterable[int]) -> int | None:
    if memory_by_pid is None:
        return None
    return sum(memory_by_pid.get(pid, 0) for pid in pids)
