"""The import contract in pyproject.toml: the layers of tray/ and the purity of core/, checked by lint-imports.

Each check runs on a copy of the tree, so a test can add one import and see the gate refuse it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomlkit

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports on ``tree`` (a copy of pyproject.toml and tray/), its copy of tray first on the path."""
    return subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS, "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "tray", tmp_path / "tray", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def add_import(tree: Path, module: str, statement: str) -> None:
    path = tree / module
    path.write_text(path.read_text() + f"\n{statement}  # added by the test\n")


def test_the_tree_as_it_is_keeps_both_contracts(tree: Path) -> None:
    done = lint_imports(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def test_the_layers_have_no_exceptions() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    layers = next(c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "layers")
    assert layers.get("ignore_imports", []) == []


@pytest.mark.parametrize(
    ("module", "statement", "broken"),
    [
        ("tray/core/health.py", "import tray.cli", "tray.core.health -> tray.cli"),  # policy reaching for the top
        ("tray/system/paths.py", "import tray.service.monitor", "tray.system.paths -> tray.service.monitor"),
        ("tray/gateway/breaker.py", "import tray.ui.menu", "tray.gateway.breaker -> tray.ui.menu"),  # siblings
        ("tray/history.py", "import tray.settings.config", "tray.history -> tray.settings.config"),  # a leaf
        ("tray/atomic.py", "import tray.history", "tray.atomic -> tray.history"),  # the bottom leaf
    ],
)
def test_an_upward_or_sideways_import_breaks_the_layers(tree: Path, module: str, statement: str, broken: str) -> None:
    add_import(tree, module, statement)
    done = lint_imports(tree)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "tray/ imports go downwards only BROKEN" in done.stdout
    assert broken in done.stdout


def test_core_may_not_read_the_clock_itself(tree: Path) -> None:
    add_import(tree, "tray/core/restart.py", "import time")
    done = lint_imports(tree)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "core/ is pure policy: no I/O, threads or clock of its own BROKEN" in done.stdout
    assert "tray.core.restart -> time" in done.stdout


def test_an_exception_whose_import_is_gone_must_leave_the_list(tree: Path) -> None:
    pyproject = tree / "pyproject.toml"
    config = tomlkit.parse(pyproject.read_text())
    layers = next(c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "layers")
    layers["ignore_imports"] = ["tray.dashboard.views -> tray.ui.icon"]  # an exception the code no longer needs
    pyproject.write_text(tomlkit.dumps(config))
    done = lint_imports(tree)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "tray.dashboard.views -> tray.ui.icon" in done.stdout + done.stderr
