"""Running processes as other users, as on a real machine (CI runs as root, which hides permission bugs).

- :func:`shared_dir`: a temporary directory every user may enter (pytest's own are root-only).
- :class:`Account`: a user as the system knows it; :func:`popen_as` / :func:`run_as` start a
  process as that user (setgid, initgroups, setuid in the child; its own ``HOME``, ``USER``,
  ``LOGNAME``), the way a login or systemd's ``User=`` would.
- :class:`Accounts`: creates regular and system users for one test and removes them after.
- :class:`UserRuntime`: what an unprivileged user needs to run the manager and the stand-in: a
  world-readable virtual environment made from Debian's ``/usr/bin/python3`` with the project's
  runtime dependencies (read from pyproject.toml), and world-readable copies of ``tray/`` and
  the stand-in. Built once per test session.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import subprocess
import tempfile
import tomllib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

PROJECT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")
SHARED_MODE = 0o755


def shared_dir(prefix: str) -> Path:
    """A new directory under the system temp dir that every user may enter and read (0755)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(SHARED_MODE)
    return path


def can_switch_users() -> bool:
    """Tests that run processes as other users need root (CI is root) and Debian's python3."""
    return (
        hasattr(os, "geteuid") and os.geteuid() == 0 and SYSTEM_PYTHON.exists() and shutil.which("useradd") is not None
    )


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: Path

    @classmethod
    def lookup(cls, name: str) -> Account:
        entry = pwd.getpwnam(name)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))

    def groups(self) -> list[int]:
        """The supplementary groups a login would give (initgroups), read at each spawn."""
        return os.getgrouplist(self.name, self.gid)

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` with this user's identity variables, as a login sets them."""
        return {**base, "HOME": str(self.home), "USER": self.name, "LOGNAME": self.name}

    def own(self, *paths: Path) -> None:
        """Give files or directories (not recursively) to this user."""
        for path in paths:
            os.chown(path, self.uid, self.gid)


def _identity(account: Account, env: Mapping[str, str], kwargs: dict[str, Any]) -> dict[str, Any]:
    """subprocess arguments that make the child ``account``: setgid, initgroups, setuid before exec."""
    kwargs.setdefault("cwd", str(account.home))
    return {"env": dict(env), "user": account.uid, "group": account.gid, "extra_groups": account.groups(), **kwargs}


def popen_as(account: Account, argv: Sequence[str], *, env: Mapping[str, str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start ``argv`` as ``account`` (in its home unless ``cwd`` is given)."""
    return subprocess.Popen(list(argv), **_identity(account, env, kwargs))


def run_as(
    account: Account, argv: Sequence[str], *, env: Mapping[str, str], timeout: float = 60, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``account`` to the end; output captured as text."""
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
        **_identity(account, env, kwargs),
    )


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A :func:`shared_dir` for the duration of a ``with``, removed after."""
    root = shared_dir(prefix)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Accounts:
    """Users made for one test (names ``om`` + role + random), removed again by :meth:`cleanup`."""

    def __init__(self, home_root: Path) -> None:
        self.home_root = home_root
        self.created: list[str] = []

    def _name(self, role: str) -> str:
        return f"om{role}{uuid.uuid4().hex[:6]}"

    def regular(self, role: str = "desk", groups: Sequence[str] = ()) -> Account:
        """A desktop user (uid from the regular range) with a home of its own (0755, as Debian makes it)."""
        name = self._name(role)
        home = self.home_root / "home" / name
        home.parent.mkdir(parents=True, exist_ok=True)
        home.parent.chmod(SHARED_MODE)
        argv = ["useradd", "-m", "-d", str(home), "-s", "/bin/sh", "-K", "UMASK=022", name]
        if groups:
            argv[1:1] = ["-G", ",".join(groups)]
        self._useradd(argv, name)
        return Account.lookup(name)

    def system(self, role: str, home: Path) -> Account:
        """A system account as Ollama's install.sh makes one: ``useradd -r -s /bin/false -U -m -d HOME``."""
        name = self._name(role)
        home.parent.mkdir(parents=True, exist_ok=True)
        self._useradd(["useradd", "-r", "-s", "/bin/false", "-U", "-m", "-d", str(home), "-K", "UMASK=022", name], name)
        return Account.lookup(name)

    def add_to_group(self, account: Account, group: str) -> None:
        subprocess.run(["usermod", "-a", "-G", group, account.name], check=True, capture_output=True)

    def _useradd(self, argv: list[str], name: str) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        self.created.append(name)

    def kill_processes(self) -> None:
        """SIGKILL every process the created users still run (a server the manager started as one, say)."""
        uids = set()
        for name in self.created:
            try:
                uids.add(pwd.getpwnam(name).pw_uid)
            except KeyError:
                continue
        left = []
        for proc in psutil.process_iter(["uids"]):
            uids_info = proc.info.get("uids")
            if uids_info is not None and uids_info.real in uids:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
                    left.append(proc)
        psutil.wait_procs(left, timeout=10)

    def cleanup(self) -> None:
        self.kill_processes()
        for name in reversed(self.created):
            subprocess.run(["userdel", "-f", name], capture_output=True, check=False)
            try:
                grp.getgrnam(name)
            except KeyError:
                continue
            subprocess.run(["groupdel", name], capture_output=True, check=False)
        self.created = []


def runtime_dependencies(pyproject: Path = PROJECT / "pyproject.toml") -> list[str]:
    """The project's runtime requirements, as pyproject.toml lists them."""
    data = tomllib.loads(pyproject.read_text())
    return list(data["project"]["dependencies"])


@dataclass(frozen=True)
class UserRuntime:
    """A Python and the project's code that any user can run."""

    root: Path
    python: Path  # the venv's interpreter (Debian's python3)
    source: Path  # holds a copy of tray/ (for PYTHONPATH)
    standin: Path  # a copy of tests/standin/

    @property
    def bin_dir(self) -> Path:
        return self.python.parent

    @property
    def sbin(self) -> Path:
        """The stand-in systemctl/journalctl."""
        return self.standin / "sbin"

    def path(self, *first: Path) -> str:
        """A PATH for another user: ``first``, the venv, the stand-in systemctl, then the system's."""
        return os.pathsep.join(
            [*map(str, first), str(self.bin_dir), str(self.sbin), "/usr/local/bin", "/usr/bin", "/bin"]
        )


def build_user_runtime(root: Path) -> UserRuntime:
    """Make the venv (``python3 -m venv`` + pip from the project's own requirements) and copy the code."""
    venv = root / "venv"
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python3"
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *runtime_dependencies()],
        capture_output=True,
        text=True,
        check=False,
    )
    if pip.returncode != 0:
        raise RuntimeError(f"installing the runtime dependencies failed:\n{pip.stderr[-3000:]}")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    source = root / "src"
    shutil.copytree(PROJECT / "tray", source / "tray", ignore=ignore)
    standin = root / "standin"
    shutil.copytree(PROJECT / "tests" / "standin", standin, ignore=ignore, symlinks=True)
    for directory, _subdirs, files in os.walk(root):
        os.chmod(directory, SHARED_MODE)
        for name in files:
            path = Path(directory) / name
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o444)
    return UserRuntime(root, python, source, standin)
