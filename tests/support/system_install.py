"""Ollama installed the way Linux users have it: ``ollama.service`` under a system account.

:class:`SystemdStandin` runs the stand-in service manager (tests/standin/standin_systemd.py) as
root; :class:`OllamaService` lays out what Ollama's ``install.sh`` makes, under a temporary root
instead of ``/``: the system account with its home ``<root>/usr/share/ollama`` (models in
``.ollama/models`` there), ``<root>/usr/local/bin/ollama`` (the stand-in), and the unit
``ollama.service`` (``User=``, ``Group=``, ``Restart=always``, ``Environment="PATH=…"``), whose
main process is the stand-in ``ollama serve``, its output in the journal.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.standin.harness import StandinEnv
from tests.support.manager import Manager
from tests.support.users import SHARED_MODE, Account, Accounts, UserRuntime, run_as


class SystemdStandin:
    """The stand-in systemd: units, state, journal and the daemon that runs them (as root)."""

    def __init__(self, root: Path, runtime: UserRuntime) -> None:
        self.root = root
        self.runtime = runtime
        (root / "system").mkdir(parents=True, exist_ok=True)
        root.chmod(SHARED_MODE)
        (root / "system").chmod(SHARED_MODE)
        self.policy: dict[str, Any] = {"manage": [], "polkit_agent": {}, "own_journal": []}
        self._write_policy()
        self.daemon: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to use this systemd's systemctl/journalctl."""
        return {"OLLAMA_STANDIN_SYSTEMD": str(self.root)}

    def start(self) -> None:
        log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 - handed to the daemon
        self.daemon = subprocess.Popen(
            [
                str(self.runtime.python),
                str(self.runtime.standin / "standin_systemd.py"),
                "daemon",
                "--root",
                str(self.root),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 15
        while not (self.root / "control.sock").exists():
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the stand-in systemd did not start:\n{(self.root / 'daemon.log').read_text()}")
            time.sleep(0.02)

    def write_unit(self, name: str, text: str, user: Account | None = None) -> Path:
        """A system unit, or with ``user`` that user's own (``~/.config/systemd/user``, ``systemctl --user``)."""
        folder = self.root / "system" if user is None else self.root / "user" / str(user.uid)
        folder.mkdir(parents=True, exist_ok=True)
        for directory in (folder, folder.parent):
            directory.chmod(SHARED_MODE)
        path = folder / name
        path.write_text(text)
        path.chmod(0o644)
        return path

    # knobs

    def allow_manage(self, account: Account) -> None:
        """Let ``account`` start/stop/restart system units without asking (a polkit rule)."""
        self.policy["manage"].append(account.uid)
        self._write_policy()

    def polkit_agent(self, account: Account, answer: str) -> None:
        """What ``account``'s polkit agent answers ("allow"/"deny") when systemctl may ask."""
        self.policy["polkit_agent"][str(account.uid)] = answer
        self._write_policy()

    def own_journal(self, account: Account) -> None:
        """``account`` has journal files of its own (journalctl hints instead of refusing)."""
        self.policy["own_journal"].append(account.uid)
        self._write_policy()

    def _write_policy(self) -> None:
        path = self.root / "policy.json"
        path.write_text(json.dumps(self.policy))
        path.chmod(0o644)

    # reading

    def systemctl(
        self, *args: str, account: Account | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.runtime.sbin / "systemctl"), *args]
        full_env = {"PATH": self.runtime.path(), **self.env, **(env or {})}
        if account is not None:
            return run_as(account, argv, env=account.env(full_env))
        return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=60, check=False)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", unit).stdout.strip()

    def journal(self, unit: str, user: Account | None = None) -> list[str]:
        """The messages of a system unit, or with ``user`` of that user's unit."""
        entries = []
        for line in (self.root / "journal.jsonl").read_text().splitlines():
            entry = json.loads(line)
            if entry["unit"] == unit and entry.get("user") == (user.uid if user else None):
                entries.append(entry["message"])
        return entries

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(5)


UNIT_TEMPLATE = """[Unit]
Description=Ollama Service
After=network-online.target

[Service]
ExecStart={exec_start}
{identity}Restart=always
RestartSec={restart_sec}
TimeoutStopSec=5
Environment="PATH={path}"
{environment}
[Install]
WantedBy=default.target
"""


class OllamaService:
    """install.sh's result under ``root``: a system account, the binary, the unit; plus the stand-in's knobs.

    With ``user_unit_of`` the unit is instead that user's own (``systemctl --user``), run as that user.
    """

    unit = "ollama.service"

    def __init__(
        self,
        root: Path,
        accounts: Accounts,
        runtime: UserRuntime,
        systemd: SystemdStandin,
        *,
        environment: dict[str, str] | None = None,
        restart_sec: float = 1.0,
        user_unit_of: Account | None = None,
    ) -> None:
        self.root = root
        self.systemd = systemd
        self.runtime = runtime
        self.user_unit = user_unit_of is not None
        self.account = user_unit_of or accounts.system("llm", root / "usr" / "share" / "ollama")
        self.models_dir = self.account.home / ".ollama" / "models"
        self.install = root / "usr" / "local"
        # The stand-in's knobs and events (a place the service account may write).
        self.standin = StandinEnv(root / "standin", standin_bin=runtime.standin / "ollama")
        (root / "usr" / "share").mkdir(parents=True, exist_ok=True)
        for path in (root, root / "usr", root / "usr" / "share", self.standin.root):
            path.chmod(SHARED_MODE)
        self.standin.events_file.touch()
        self.standin.events_file.chmod(0o666)
        bin_dir = self.install / "bin"
        lib_dir = self.install / "lib" / "ollama"
        bin_dir.mkdir(parents=True, exist_ok=True)
        lib_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.install, bin_dir, self.install / "lib"):
            path.chmod(SHARED_MODE)
        self.account.own(lib_dir)  # the stand-in links its llama-server there
        self.binary = bin_dir / "ollama"
        self.binary.symlink_to(runtime.standin / "ollama")
        self.host = self.standin.host
        self.port = self.standin.port
        self.base_url = self.standin.base_url
        env = {
            "OLLAMA_HOST": self.host,
            "OLLAMA_STANDIN_EVENTS": str(self.standin.events_file),
            "OLLAMA_STANDIN_CONTROL": str(self.standin.control_file),
            **(environment or {}),
        }
        self.environment = env
        lines = "".join(f'Environment="{key}={value}"\n' for key, value in env.items())
        identity = "" if self.user_unit else f"User={self.account.name}\nGroup={self.account.name}\n"
        self.unit_path = systemd.write_unit(
            self.unit,
            UNIT_TEMPLATE.format(
                exec_start=f"{self.binary} serve",
                identity=identity,
                restart_sec=restart_sec,
                path=runtime.path(bin_dir),
                environment=lines,
            ),
            user=user_unit_of,
        )

    def systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """systemctl as root for the system unit; as its user with ``--user`` for a user unit."""
        if self.user_unit:
            return self.systemd.systemctl("--user", *args, account=self.account)
        return self.systemd.systemctl(*args)

    def start(self, timeout: float = 20) -> int:
        done = self.systemctl("start", self.unit)
        assert done.returncode == 0, done.stderr
        self.standin.wait_ready(timeout)
        return self.main_pid()

    def show(self, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", self.unit).stdout.strip()

    def main_pid(self) -> int:
        return int(self.show("MainPID") or 0)

    def serve_starts(self) -> list[dict[str, Any]]:
        return self.standin.events_of("serve_start")

    def wait_new_serve(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.serve_starts()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no serve start #{count} after {timeout} s")
            time.sleep(0.05)
        self.standin.wait_ready(timeout)

    def cleanup(self) -> None:
        self.systemctl("stop", self.unit)
        self.standin.cleanup()


def session_manager(account: Account, runtime: UserRuntime, systemd: SystemdStandin, service: OllamaService) -> Manager:
    """``ollama-manager`` run by ``account`` from the runtime, in ``~/work``, in its desktop session's environment."""
    workdir = account.home / "work"
    workdir.mkdir()
    account.own(workdir)
    return Manager(desktop_env(account, runtime, systemd, service), workdir, account=account, python=runtime.python)


def desktop_env(
    account: Account, runtime: UserRuntime, systemd: SystemdStandin, service: OllamaService
) -> dict[str, str]:
    """The environment of a desktop session of ``account``: its own HOME and XDG dirs, Ollama on PATH."""
    home = account.home
    dirs = {
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_STATE_HOME": home / ".local" / "state",
        "XDG_CACHE_HOME": home / ".cache",
    }
    return account.env(
        {
            "PATH": runtime.path(service.install / "bin"),
            "PYTHONPATH": str(runtime.source),
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
            "OLLAMA_HOST": service.host,
            **systemd.env,
            **{key: str(path) for key, path in dirs.items()},
        }
    )
