"""Run the CI smoke job's one script here, then check what it built.

``packaging/ci_smoke.py`` is what the workflow's smoke job runs on macOS, Windows
and Linux: the unit tests that apply, the bundle build and the smoke test of the
frozen app (``packaging/smoke_test.py``). Building takes a while, so it runs only
with ``OLLAMA_MANAGER_BUILD_BUNDLE=1`` (``.ci/run`` sets it).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD_ENABLED = os.environ.get("OLLAMA_MANAGER_BUILD_BUNDLE") == "1"
BUILD_TIMEOUT_S = 900
SIZE_BUDGET_MB = 100

pytestmark = [
    pytest.mark.process,
    pytest.mark.slow,
    pytest.mark.skipif(not BUILD_ENABLED, reason="builds the bundle (minutes); set OLLAMA_MANAGER_BUILD_BUNDLE=1"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux bundle; other OSes build in CI"),
    pytest.mark.timeout(BUILD_TIMEOUT_S + 120),
]


def _load_info() -> ModuleType:
    sys.path.append(str(REPO / "packaging"))
    from load_packaging import load_packaging

    return load_packaging("info")


@pytest.fixture(scope="session")
def ci_smoke(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """``packaging/ci_smoke.py`` run once per test session, every step but the install, archives included."""
    if importlib.util.find_spec("PyInstaller") is None:
        pytest.fail("OLLAMA_MANAGER_BUILD_BUNDLE=1 but PyInstaller is missing: pip install -e '.[bundle]'")
    root = tmp_path_factory.mktemp("bundle")
    command = [sys.executable, str(REPO / "packaging" / "ci_smoke.py"), "--skip-install", "--archive"]
    return subprocess.run(
        [*command, "--dist", str(root / "dist"), "--work", str(root / "work")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture(scope="session")
def dist(ci_smoke: subprocess.CompletedProcess[str]) -> Path:
    """The bundle the CI smoke script built."""
    assert ci_smoke.returncode == 0, f"ci_smoke.py failed:\n{ci_smoke.stdout[-4000:]}\n{ci_smoke.stderr[-3000:]}"
    dist_arg = ci_smoke.args[ci_smoke.args.index("--dist") + 1]
    return Path(dist_arg)


@pytest.fixture(scope="session")
def version() -> str:
    from importlib.metadata import version as distribution_version

    return distribution_version("ollama-manager")


def test_the_ci_smoke_job_passes_every_step_here(ci_smoke, dist):
    output = ci_smoke.stdout
    for step in ("unit tests", "build the bundle", "smoke-test the frozen app"):
        assert f"== {step}: passed in " in output, step
    assert output.strip().splitlines()[-1] == "ci smoke passed: every step"
    # --version, doctor, status; start, status, stop; monitor x3; autostart; notify;
    # doctor on the desktop, tray, tray log; under xfce4-panel: doctor, the StatusNotifierItem, its tray log
    assert "smoke test passed: 17 checks" in output.splitlines()
    checks = ("start: ", "stop: ", "kill of serve ", "autostart enable|status|disable: ", "notify: ")
    for check in checks:
        assert f"ok   {check}" in output, check


def test_archive_holds_the_bundle_launcher_icons_and_data(dist, version):
    info = _load_info()
    archive = dist / info.archive_name(version, "linux", os.uname().machine)
    with tarfile.open(archive) as tar:
        members = {member.name: member for member in tar.getmembers()}
    executable = members["ollama-manager/ollama-manager"]
    assert executable.isfile() and executable.mode & 0o111 == 0o111
    assert members["ollama-manager/install.sh"].mode == 0o755
    for name in (
        "ollama-manager/share/applications/ollama-manager.desktop",
        "ollama-manager/share/icons/hicolor/256x256/apps/ollama-manager.png",
        "ollama-manager/_internal/tray/data/uncensored.Modelfile",
        "ollama-manager/_internal/tray/data/icons/ollama-manager.png",
    ):
        assert name in members, name
    # The version comes from the distribution's metadata (a .dist-info or, from an editable install, .egg-info).
    metadata = [name for name in members if name.startswith("ollama-manager/_internal/ollama_manager")]
    assert [name for name in metadata if name.endswith(("/METADATA", "/PKG-INFO"))], metadata
    assert not [name for name in members if name.startswith("ollama-manager/_internal/tkinter")]


def test_bundle_stays_within_its_size_budget(dist):
    bundle = dist / "ollama-manager"
    size = sum(path.stat().st_size for path in bundle.rglob("*") if path.is_file() and not path.is_symlink())
    assert size < SIZE_BUDGET_MB * 1e6, f"{size / 1e6:.1f} MB"


def test_unpacked_archive_runs_anywhere_and_install_sh_links_it(dist, version, tmp_path):
    info = _load_info()
    with tarfile.open(dist / info.archive_name(version, "linux", os.uname().machine)) as tar:
        tar.extractall(tmp_path / "Apps", filter="tar")
    unpacked = tmp_path / "Apps" / "ollama-manager"
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_DATA_HOME": str(tmp_path / "data"), "PATH": os.defpath}
    done = subprocess.run(
        ["sh", str(unpacked / "install.sh")], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    launcher = (tmp_path / "data" / "applications" / "ollama-manager.desktop").read_text()
    assert f'Exec="{unpacked}/ollama-manager"' in launcher.splitlines()
    # Through the symlink on PATH, the bootloader still finds the bundle's _internal folder.
    link = home / ".local" / "bin" / "ollama-manager"
    done = subprocess.run([str(link), "--version"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, f"ollama-manager {version}")
