"""Every step of the CI smoke job, on the OS it runs on: ``python packaging/ci_smoke.py``.

The workflow's smoke job (``.github/workflows/smoke.yml``) runs this one script on
macOS, Windows and Linux; ``tests/test_bundle.py`` runs it here, so each step is
proven on Linux exactly as CI runs it:

1. install the project with its test and bundle extras (``--skip-install`` when
   the Python running this already has it);
2. Windows: freeze the stand-in ``ollama`` into real ``ollama.exe`` and
   ``llama-server.exe`` executables (``tests/standin/freeze.py``): Windows finds
   programs by extension only;
3. run the unit tests that apply on every OS (:data:`UNIT_TESTS`);
4. build the bundle (``packaging/build.py``);
5. smoke-test the frozen app against the stand-in (``packaging/smoke_test.py``).

Each step prints its command; the first failure ends the run with one line and exit 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Tests of the per-OS code paths and of pure logic, which run on macOS and Windows too
# (their Linux-only cases skip themselves there). The full suite runs on Linux in .ci/run.
UNIT_TESTS = (
    "tests/test_ollama_app.py",
    "tests/test_app_supervision.py",
    "tests/test_log_tail.py",
    "tests/test_platform_commands.py",
    "tests/test_autostart.py",
    "tests/test_notify.py",
    "tests/test_hosts.py",
    "tests/test_health.py",
    "tests/test_restart_policy.py",
    "tests/test_breaker.py",
    "tests/test_alerts.py",
    "tests/test_oom.py",
)


class StepFailed(Exception):
    """A step failed; ``str()`` is one line."""


def run_step(name: str, command: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """Run one step's command from the repository root, its output shown; StepFailed when it fails."""
    print(f"== {name}: {' '.join(command)}", flush=True)
    started = time.monotonic()
    try:
        done = subprocess.run(list(command), cwd=REPO, env=dict(env) if env is not None else None, check=False)
    except OSError as exc:
        raise StepFailed(f"{name}: {command[0]} could not run: {exc}") from None
    if done.returncode != 0:
        raise StepFailed(f"{name}: exited with status {done.returncode}")
    print(f"== {name}: passed in {time.monotonic() - started:.0f} s", flush=True)


def steps(args: argparse.Namespace, platform: str = sys.platform) -> None:
    python = sys.executable
    env = dict(os.environ)
    if not args.skip_install:
        run_step("install", [python, "-m", "pip", "install", "-e", ".[test,bundle]"])
    if platform == "win32" and not env.get("OLLAMA_STANDIN_EXECUTABLE"):
        sys.path.insert(0, str(REPO / "tests" / "standin"))
        import freeze

        print("== freeze the stand-in: tests/standin/freeze.py", flush=True)
        try:
            env["OLLAMA_STANDIN_EXECUTABLE"] = str(freeze.freeze(args.work / "standin"))
        except RuntimeError as exc:
            raise StepFailed(f"freeze the stand-in: {exc}") from None
    run_step("unit tests", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *UNIT_TESTS], env)
    build = [python, "packaging/build.py", "--dist", str(args.dist), "--work", str(args.work / "bundle")]
    run_step("build the bundle", build + ([] if args.archive else ["--no-archive"]), env)
    run_step("smoke-test the frozen app", [python, "packaging/smoke_test.py", "--dist", str(args.dist)], env)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every step of the CI smoke job on this OS.")
    parser.add_argument("--dist", type=Path, default=REPO / "dist", help="where the bundle goes (default dist/)")
    parser.add_argument("--work", type=Path, default=REPO / "build", help="scratch folder (default build/)")
    parser.add_argument("--skip-install", action="store_true", help="the project is installed already")
    parser.add_argument("--archive", action="store_true", help="also pack the bundle into its archive")
    args = parser.parse_args(argv)
    args.dist, args.work = args.dist.absolute(), args.work.absolute()
    try:
        steps(args)
    except StepFailed as exc:
        print(f"FAIL {exc}", file=sys.stderr)
        return 1
    print("ci smoke passed: every step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
