"""Cost of one resource-sampling tick against a small process tree.

Starts a parent with two children (the shape of ``ollama serve`` with runners),
samples it repeatedly, and prints the wall and CPU time per tick and the
share of one core that implies at the monitor's 30 s interval.

    python bench/bench_sampling.py [--ticks 200] [--interval 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tray.system.resources import ResourceSampler

CHILD = "import time; time.sleep(3600)"
PARENT = f"""
import signal, subprocess, sys, time
children = [subprocess.Popen([sys.executable, "-c", {CHILD!r}]) for _ in range(2)]

def stop(*_):
    for c in children:
        c.kill()
        c.wait()
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
print(" ".join(str(c.pid) for c in children), flush=True)
time.sleep(3600)
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run(ticks: int, interval: float) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        children = parent.stdout.readline().split()
        with tempfile.TemporaryDirectory() as models_dir:
            sampler = ResourceSampler(Path(models_dir) / "models")
            first = sampler.sample(parent.pid)  # warm-up: imports, NVML init, psutil caches
            wall_ms, cpu_ms = [], []
            for _ in range(ticks):
                wall0, cpu0 = time.perf_counter(), time.process_time()
                sample = sampler.sample(parent.pid)
                cpu_ms.append((time.process_time() - cpu0) * 1000)
                wall_ms.append((time.perf_counter() - wall0) * 1000)
            sampler.close()
    finally:
        parent.terminate()  # the parent kills and reaps its children on SIGTERM
        parent.wait(timeout=10)

    mean_wall, mean_cpu = statistics.fmean(wall_ms), statistics.fmean(cpu_ms)
    print(f"process tree: {len(sample.tree_pids)} processes (parent {parent.pid}, children {' '.join(children)})")
    print(f"gpu_available: {first.gpu_available}")
    print(f"ticks: {ticks}")
    print(f"wall per tick: mean {mean_wall:.3f} ms, p95 {percentile(wall_ms, 0.95):.3f} ms, max {max(wall_ms):.3f} ms")
    print(f"CPU per tick:  mean {mean_cpu:.3f} ms, p95 {percentile(cpu_ms, 0.95):.3f} ms")
    print(f"at one tick every {interval:g} s: {mean_cpu / (interval * 1000) * 100:.5f} % of one core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--interval", type=float, default=30.0)
    args = parser.parse_args()
    run(args.ticks, args.interval)


if __name__ == "__main__":
    main()
