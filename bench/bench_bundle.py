"""Size and cold-start time of the frozen app.

    python bench/bench_bundle.py [--dist dist] [--runs N] [--build]

Measures the bundle that ``packaging/build.py`` left in ``--dist`` (``--build``
builds it first, into that folder, with a temporary work folder):
- the onedir folder's size on disk and the archive's size;
- wall time of ``--version`` and of ``status --json`` (no Ollama running, so
  one failed probe), N runs each; every run is a new process (a cold start of
  the interpreter), but the OS page cache stays warm after the first;
- the same two commands run from source (``python -m tray``), for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT / "packaging"))
from load_packaging import load_packaging  # noqa: E402 - found through the folder appended above


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def timed(command: Sequence[str], env: dict[str, str], runs: int) -> list[float]:
    """Wall seconds of each of ``runs`` runs of ``command`` (its exit status is not judged)."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(list(command), env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=False)
        seconds.append(time.perf_counter() - started)
    return seconds


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    first, median, largest = values[0] * 1000, statistics.median(ordered) * 1000, ordered[-1] * 1000
    return f"first {first:.0f} ms, median {median:.0f} ms, max {largest:.0f} ms"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bundle size and cold-start time of the frozen app.")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--build", action="store_true", help="build the bundle first")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = parser.parse_args(argv)
    build = load_packaging("build")
    build_seconds = None
    if args.build:
        with tempfile.TemporaryDirectory(prefix="om-bench-build-") as work:
            build_seconds = build.build(args.dist.absolute(), Path(work)).seconds
    layout = build.info.bundle_layout(sys.platform)
    bundle_dir = args.dist / layout.bundle_dir
    cli = args.dist / layout.cli_executable
    if not cli.is_file():
        print(f"bench_bundle: no bundle at {cli}: run python packaging/build.py first", file=sys.stderr)
        return 1
    archives = sorted(args.dist.glob("ollama-manager-*.tar.gz")) + sorted(args.dist.glob("ollama-manager-*.zip"))
    with tempfile.TemporaryDirectory(prefix="om-bench-") as scratch:
        smoke = load_packaging("smoke_test")
        env = {**smoke.isolated_env(Path(scratch)), "OLLAMA_HOST": f"127.0.0.1:{free_port()}", "PATH": os.defpath}
        env.pop("DISPLAY", None)
        results = {
            "bundle_mb": round(build.folder_size(bundle_dir) / 1e6, 1),
            "archive_mb": round(archives[-1].stat().st_size / 1e6, 1) if archives else None,
            "build_seconds": round(build_seconds, 1) if build_seconds is not None else None,
            "frozen_version_s": timed([str(cli), "--version"], env, args.runs),
            "frozen_status_json_s": timed([str(cli), "status", "--json"], env, args.runs),
            "source_version_s": timed([sys.executable, "-m", "tray", "--version"], env, args.runs),
            "source_status_json_s": timed([sys.executable, "-m", "tray", "status", "--json"], env, args.runs),
        }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"bundle {bundle_dir}: {results['bundle_mb']} MB on disk, archive {results['archive_mb']} MB")
    if build_seconds is not None:
        print(f"build: {build_seconds:.0f} s")
    for key in ("frozen_version_s", "frozen_status_json_s", "source_version_s", "source_status_json_s"):
        print(f"{key[:-2].replace('_', ' '):<22} {summary(results[key])}  ({args.runs} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
