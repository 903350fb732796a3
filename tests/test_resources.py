"""Resource sampling against real process trees this test starts, and a fake NVML."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from tray.system.resources import (
    GpuStats,
    NvmlGateway,
    ResourceSampler,
    gpu_share_from_ps,
    nearest_existing_dir,
    read_gpus,
    with_ps_gpu_share,
)

MIB = 1024 * 1024

# One node of a test process tree: ``node.py ALLOC_MIB [CHILD ...]``, where CHILD is
# ``A[:B[:C]]`` (a chain: a child allocating A MiB whose own child allocates B ...).
# Each node allocates and touches its memory, starts its children, prints the pids of its
# whole subtree on one line, and on SIGTERM stops and reaps its children before exiting.
NODE_SCRIPT = r"""
import os, signal, subprocess, sys, time

alloc_mib = int(sys.argv[1])
ballast = bytearray(b"\x01") * (alloc_mib << 20)  # written, so resident
children = [
    subprocess.Popen([sys.executable, __file__, *spec.split(":")], stdout=subprocess.PIPE, text=True)
    for spec in sys.argv[2:]
]
pids = [os.getpid()]
for child in children:
    pids.extend(int(p) for p in child.stdout.readline().split())

def stop(*_):
    for child in children:
        child.terminate()
    for child in children:
        child.wait()
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
busy = os.environ.get("NODE_BUSY") == "1"
print(" ".join(map(str, pids)), flush=True)
while True:
    if busy:
        sum(range(10000))
    else:
        time.sleep(3600)
"""


@dataclass
class Tree:
    process: subprocess.Popen[str]
    pids: list[int]


@pytest.fixture
def spawn_tree(tmp_path: Path) -> Iterator:
    script = tmp_path / "node.py"
    script.write_text(NODE_SCRIPT)
    started: list[Tree] = []

    def spawn(*args: str, busy: bool = False) -> Tree:
        env = {"PATH": "/usr/bin:/bin", "NODE_BUSY": "1" if busy else "0"}
        process = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True, env=env)
        assert process.stdout is not None
        line = process.stdout.readline()
        tree = Tree(process, [int(p) for p in line.split()])
        started.append(tree)
        return tree

    yield spawn

    for tree in started:
        tree.process.terminate()
        try:
            tree.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            for pid in reversed(tree.pids):
                with contextlib.suppress(psutil.NoSuchProcess):
                    psutil.Process(pid).kill()
            tree.process.wait(timeout=10)
        for pid in tree.pids:  # the nodes reap their children; nothing may be left
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


class NoNvml:
    """An NVML library whose init fails as it does without a driver."""

    class NVMLError_LibraryNotFound(Exception):
        pass

    def __init__(self) -> None:
        self.init_calls = 0

    def nvmlInit(self) -> None:
        self.init_calls += 1
        raise self.NVMLError_LibraryNotFound("NVML Shared Library Not Found")


def sampler_without_gpu(models_dir: Path | None = None) -> ResourceSampler:
    return ResourceSampler(models_dir, nvml=NvmlGateway(library=NoNvml()))


# --- The process tree ------------------------------------------------------------------------------


@pytest.mark.process
def test_tree_memory_includes_children_and_grandchildren(spawn_tree) -> None:
    # serve-like parent with a runner child (80 MiB) and a child whose own child holds 80 MiB.
    loaded = spawn_tree("0", "80", "0:80")
    empty = spawn_tree("0", "0", "0:0")
    sampler = sampler_without_gpu()

    loaded_sample = sampler.sample(loaded.process.pid)
    empty_sample = sampler.sample(empty.process.pid)

    assert len(loaded.pids) == 4
    assert sorted(loaded_sample.tree_pids) == sorted(loaded.pids)
    assert loaded_sample.tree_pids[0] == loaded.process.pid
    assert loaded_sample.server_running is True
    expected = 2 * 80 * MIB
    difference = loaded_sample.tree_rss_bytes - empty_sample.tree_rss_bytes
    assert abs(difference - expected) <= 0.1 * expected, (difference / MIB, expected / MIB)


@pytest.mark.process
def test_cpu_percent_keeps_process_objects_between_ticks(spawn_tree) -> None:
    tree = spawn_tree("0", busy=True)
    sampler = sampler_without_gpu()
    first = sampler.sample(tree.process.pid)
    assert first.tree_cpu_percent == 0.0  # psutil's first reading for a process object
    time.sleep(0.5)
    second = sampler.sample(tree.process.pid)
    # One busy core out of psutil.cpu_count(): expect about 100 / count; allow for a loaded machine.
    share_of_one_core = 100 / (psutil.cpu_count() or 1)
    assert 0.25 * share_of_one_core <= second.tree_cpu_percent <= 1.05 * share_of_one_core


@pytest.mark.process
def test_a_dead_pid_gives_an_empty_tree(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=10)
    sample = sampler_without_gpu(tmp_path).sample(process.pid)
    assert (sample.server_pid, sample.tree_pids, sample.tree_rss_bytes, sample.tree_cpu_percent) == (
        process.pid,
        (),
        0,
        0.0,
    )
    assert sample.server_running is False
    assert sample.ram_total_bytes == psutil.virtual_memory().total


@pytest.mark.process
def test_a_zombie_is_not_counted() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(process.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sample = sampler_without_gpu().sample(process.pid)
        assert (sample.tree_pids, sample.tree_rss_bytes) == ((), 0)
    finally:
        process.wait(timeout=10)


def test_no_server_pid_gives_an_empty_tree() -> None:
    sample = sampler_without_gpu().sample(None)
    assert (sample.server_pid, sample.tree_pids, sample.tree_rss_bytes) == (None, (), 0)


@pytest.mark.process
def test_access_denied_is_not_an_error(spawn_tree, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    tree = spawn_tree("0", "0")

    def denied(self):
        raise psutil.AccessDenied(self.pid)

    # The platform layer, below psutil's oneshot() cache: as when reading another user's process.
    monkeypatch.setattr(psutil._psplatform.Process, "memory_info", denied)
    caplog.set_level(logging.WARNING, logger="tray.system.resources")
    sampler = sampler_without_gpu()
    first = sampler.sample(tree.process.pid)
    sampler.sample(tree.process.pid)
    assert sorted(first.tree_pids) == sorted(tree.pids)
    assert first.tree_rss_bytes == 0
    denied_lines = [r.getMessage() for r in caplog.records if "access denied" in r.getMessage()]
    assert denied_lines == [f"Cannot read memory/CPU of pid {pid}: access denied" for pid in first.tree_pids]


def test_sample_time_comes_from_the_injected_clock() -> None:
    ticks = iter([100.0, 130.0])
    sampler = ResourceSampler(None, clock=lambda: next(ticks), nvml=NvmlGateway(library=NoNvml()))
    assert [sampler.sample(None).taken_at for _ in range(2)] == [100.0, 130.0]


# --- Machine and disk ------------------------------------------------------------------------------


def test_machine_figures_and_models_volume(tmp_path: Path) -> None:
    models_dir = tmp_path / "not" / "created" / "models"
    sample = sampler_without_gpu(models_dir).sample(None)
    usage = psutil.disk_usage(str(tmp_path))
    assert sample.disk_total_bytes == usage.total
    assert sample.disk_free_bytes is not None and abs(sample.disk_free_bytes - usage.free) < 64 * MIB
    assert sample.ram_total_bytes == psutil.virtual_memory().total
    assert 0 < sample.ram_used_bytes < sample.ram_total_bytes
    assert 0.0 <= sample.cpu_percent <= 100.0


def test_without_a_models_dir_there_are_no_disk_figures() -> None:
    sample = sampler_without_gpu(None).sample(None)
    assert (sample.disk_free_bytes, sample.disk_total_bytes) == (None, None)


def test_nearest_existing_dir(tmp_path: Path) -> None:
    assert nearest_existing_dir(tmp_path / "a" / "b") == tmp_path
    assert nearest_existing_dir(tmp_path) == tmp_path
    (tmp_path / "file").write_text("x")
    assert nearest_existing_dir(tmp_path / "file" / "below") == tmp_path


# --- GPUs ------------------------------------------------------------------------------------------


def test_the_real_nvml_without_a_driver_means_no_gpu() -> None:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has a working NVIDIA driver")
    sample = ResourceSampler(None).sample(None)
    assert (sample.gpu_available, sample.gpus, sample.tree_gpu_memory_bytes) == (False, (), None)


def test_nvml_init_failure_is_logged_once_and_not_retried(caplog) -> None:
    library = NoNvml()
    caplog.set_level(logging.DEBUG, logger="tray.system.resources")
    sampler = ResourceSampler(None, nvml=NvmlGateway(library=library))
    samples = [sampler.sample(None) for _ in range(3)]
    assert [s.gpu_available for s in samples] == [False, False, False]
    assert library.init_calls == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["GPU monitoring unavailable (NVMLError_LibraryNotFound): NVML Shared Library Not Found"]


def test_missing_bindings_mean_no_gpu() -> None:
    gateway = NvmlGateway(loader=lambda: None)
    assert gateway.available() is False
    assert gateway.call("nvmlDeviceGetCount", default=0) == 0


class FakeNvml:
    """Two GPUs; the second cannot report temperature or its processes."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError_NotSupported(Exception):
        pass

    def __init__(self, processes: dict[int, list[SimpleNamespace]]) -> None:
        self.processes = processes
        self.shut_down = False

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"h{index}"

    def nvmlDeviceGetName(self, handle: str) -> bytes | str:
        return b"NVIDIA GeForce RTX 4090" if handle == "h0" else "Tesla T4"

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> SimpleNamespace:
        return SimpleNamespace(gpu=87 if handle == "h0" else 3, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> SimpleNamespace:
        if handle == "h0":
            return SimpleNamespace(used=20 * 1024 * MIB, total=24 * 1024 * MIB, free=4 * 1024 * MIB)
        return SimpleNamespace(used=1 * 1024 * MIB, total=16 * 1024 * MIB, free=15 * 1024 * MIB)

    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        if handle == "h1":
            raise self.NVMLError_NotSupported("Not Supported")
        return 71

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[SimpleNamespace]:
        if handle == "h1":
            raise self.NVMLError_NotSupported("Not Supported")
        return self.processes.get(0, [])

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: str) -> list[SimpleNamespace]:
        if handle == "h1":
            raise self.NVMLError_NotSupported("Not Supported")
        return self.processes.get(1, [])


@pytest.mark.process
def test_gpu_stats_and_per_process_memory_of_the_tree(spawn_tree, caplog) -> None:
    tree = spawn_tree("0", "0")
    server, runner = tree.pids
    library = FakeNvml(
        {
            0: [
                SimpleNamespace(pid=runner, usedGpuMemory=6000 * MIB),
                SimpleNamespace(pid=999_999, usedGpuMemory=500 * MIB),  # not Ollama
                SimpleNamespace(pid=server, usedGpuMemory=None),  # NVML_VALUE_NOT_AVAILABLE
            ],
            1: [SimpleNamespace(pid=runner, usedGpuMemory=6000 * MIB)],  # the same context, listed twice
        }
    )
    caplog.set_level(logging.DEBUG, logger="tray.system.resources")
    sampler = ResourceSampler(None, nvml=NvmlGateway(library=library))
    sample = sampler.sample(tree.process.pid)
    sampler.sample(tree.process.pid)

    assert sample.gpu_available is True
    assert sample.gpus == (
        GpuStats(0, "NVIDIA GeForce RTX 4090", 87.0, 20 * 1024 * MIB, 24 * 1024 * MIB, 71.0),
        GpuStats(1, "Tesla T4", 3.0, 1024 * MIB, 16 * 1024 * MIB, None),
    )
    assert sample.tree_gpu_memory_bytes == 6000 * MIB
    assert sample.fullest_gpu == sample.gpus[0]
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert warnings == [
        "NVML nvmlDeviceGetComputeRunningProcesses failed (NVMLError_NotSupported): Not Supported",
        "NVML nvmlDeviceGetGraphicsRunningProcesses failed (NVMLError_NotSupported): Not Supported",
        "NVML nvmlDeviceGetTemperature failed (NVMLError_NotSupported): Not Supported",
    ]
    sampler.close()
    assert library.shut_down is True


def test_a_gpu_lost_mid_run_reads_as_not_available() -> None:
    class LostGpu(FakeNvml):
        class NVMLError_GpuIsLost(Exception):
            pass

        def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
            raise self.NVMLError_GpuIsLost("GPU is lost")

    reading = read_gpus(NvmlGateway(library=LostGpu({})))
    assert (reading.gpus, reading.memory_by_pid) == ((), None)


def test_gpu_share_from_ollama_ps() -> None:
    ps = {
        "models": [
            {"name": "uncensored-llama3:latest", "size": 6_000_000_000, "size_vram": 5_500_000_000},
            {"name": "tiny:latest", "size": 1_000_000_000, "size_vram": 0},
            {"name": "odd", "size_vram": "12"},
            {"name": "bool", "size_vram": True},
        ]
    }
    assert gpu_share_from_ps(ps) == 5_500_000_000
    assert gpu_share_from_ps({"models": []}) == 0
    assert gpu_share_from_ps({"models": None}) == 0
    assert gpu_share_from_ps([1, 2]) == 0
    assert gpu_share_from_ps(None) == 0


def test_ps_fills_gpu_memory_only_when_nvml_could_not() -> None:
    sample = sampler_without_gpu().sample(None)
    filled = with_ps_gpu_share(sample, {"models": [{"size_vram": 42}]})
    assert (sample.tree_gpu_memory_bytes, filled.tree_gpu_memory_bytes) == (None, 42)
    assert with_ps_gpu_share(filled, {"models": [{"size_vram": 7}]}).tree_gpu_memory_bytes == 42
