"""Test helpers around the stand-in ``ollama`` executable.

:class:`StandinEnv` builds an isolated environment under a temporary directory
(home, XDG dirs, models dir, a free loopback port, a ``bin/ollama`` symlink first
on PATH), starts ``ollama serve`` in it, sets faults, reads the stand-in's event
log and, in :meth:`StandinEnv.cleanup`, kills every process the stand-in reported
(checking create times, so a reused PID is never hit) and reaps what it can.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import psutil

STANDIN_DIR = Path(__file__).resolve().parent
STANDIN_BIN = STANDIN_DIR / "ollama"
STANDIN_APP = STANDIN_DIR / "ollama-app"
CREATE_TIME_TOLERANCE_S = 2.0
# A frozen stand-in (tests/standin/freeze.py) to run instead of the script; Windows runs only executables.
FROZEN_ENV = "OLLAMA_STANDIN_EXECUTABLE"
OLLAMA_FILE_NAMES = ("ollama", "ollama.exe")
NEW_PROCESS_GROUP = 0x00000200 if sys.platform == "win32" else 0  # CREATE_NEW_PROCESS_GROUP, as a group leader


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _search_path(original: str) -> list[str]:
    """PATH entries without any directory that holds an ``ollama``, this interpreter's directory first."""
    entries = [str(Path(sys.executable).parent), *original.split(os.pathsep)]
    kept: list[str] = []
    for entry in entries:
        if entry and entry not in kept and not any((Path(entry) / name).exists() for name in OLLAMA_FILE_NAMES):
            kept.append(entry)
    return kept


def frozen_standin() -> Path | None:
    """The frozen stand-in named by ``$OLLAMA_STANDIN_EXECUTABLE``, if any."""
    configured = os.environ.get(FROZEN_ENV, "")
    return Path(configured) if configured else None


def weights_blob(models_dir: Path, model: str = "llama3") -> tuple[str, Path]:
    """The digest (``sha256:<hex>``) and file of a library model's weights layer in a store."""
    manifest = Path(models_dir) / "manifests" / "registry.ollama.ai" / "library" / model / "latest"
    layers = json.loads(manifest.read_text())["layers"]
    digest = next(layer["digest"] for layer in layers if layer["mediaType"].endswith(".model"))
    return digest, Path(models_dir) / "blobs" / digest.replace(":", "-")


def flip_middle_byte(path: Path) -> None:
    """Damage a blob the way a bad disk does: same size, one byte changed (and a new mtime)."""
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))


def same_process(pid: int, create_time: float | None) -> psutil.Process | None:
    """The live (non-zombie) process with this PID, if it started at ``create_time``."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        if create_time is not None and abs(process.create_time() - create_time) > CREATE_TIME_TOLERANCE_S:
            return None
        return process
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class StandinEnv:
    """An isolated home for the stand-in: environment, directories, port, processes."""

    def __init__(
        self,
        root: Path,
        *,
        blob_mb: float | None = None,
        runner_mb: int | None = None,
        extra_env: Mapping[str, str] | None = None,
        executable: Path | None = None,
        standin_bin: Path = STANDIN_BIN,
    ) -> None:
        """``executable``: a frozen stand-in for PATH (default ``$OLLAMA_STANDIN_EXECUTABLE``, else the script);
        ``standin_bin``: the script the PATH's ``ollama`` links to (a copy another account can run)."""
        self.root = Path(root)
        self.standin_bin = standin_bin
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.base_url = f"http://{self.host}"
        self.models_dir = self.root / "models"
        self.bin_dir = self.root / "bin"
        self.control_file = self.root / "standin-control.json"
        self.events_file = self.root / "standin-events.jsonl"
        self.log_path = self.root / "serve.log"
        self._faults: dict[str, Any] = {}
        self._popens: list[subprocess.Popen[bytes]] = []
        frozen = executable or frozen_standin()
        if frozen is not None:
            self.bin_dir = frozen.parent
            self.executable = frozen
        else:
            self.executable = self.bin_dir / "ollama"
        self.env = self._build_env(blob_mb, runner_mb, extra_env or {})

    def _build_env(self, blob_mb: float | None, runner_mb: int | None, extra: Mapping[str, str]) -> dict[str, str]:
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        if self.executable == self.bin_dir / "ollama" and not self.executable.exists():
            if sys.platform == "win32":
                raise RuntimeError(f"Windows runs the stand-in frozen: set {FROZEN_ENV} (tests/standin/freeze.py)")
            self.executable.symlink_to(self.standin_bin)
        dirs = {
            "HOME": self.root / "home",
            "XDG_CONFIG_HOME": self.root / "xdg" / "config",
            "XDG_DATA_HOME": self.root / "xdg" / "data",
            "XDG_STATE_HOME": self.root / "xdg" / "state",
            "XDG_CACHE_HOME": self.root / "xdg" / "cache",
            "XDG_RUNTIME_DIR": self.root / "xdg" / "runtime",
        }
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        dirs["XDG_RUNTIME_DIR"].chmod(0o700)
        env = {key: value for key, value in os.environ.items() if not key.startswith("OLLAMA_")}
        env.update({key: str(path) for key, path in dirs.items()})
        env["USERPROFILE"] = env["HOME"]  # the home of Python's expanduser and Go's os.UserHomeDir on Windows
        env.update(
            OLLAMA_HOST=self.host,
            OLLAMA_MODELS=str(self.models_dir),
            OLLAMA_STANDIN_CONTROL=str(self.control_file),
            OLLAMA_STANDIN_EVENTS=str(self.events_file),
            # The stand-in systemctl/journalctl: without OLLAMA_STANDIN_SYSTEMD a machine with no units, so a
            # real systemd (and a real ollama.service) on the test machine is never seen.
            PATH=os.pathsep.join(
                [str(self.bin_dir), str(self.standin_bin.parent / "sbin"), *_search_path(os.environ.get("PATH", ""))]
            ),
        )
        if blob_mb is not None:
            env["OLLAMA_STANDIN_BLOB_MB"] = str(blob_mb)
        if runner_mb is not None:
            env["OLLAMA_STANDIN_RUNNER_MB"] = str(runner_mb)
        env.update(extra)
        return env

    # faults

    def set_faults(self, **faults: Any) -> None:
        """Merge run-time faults into the control file (a value of None removes that fault)."""
        for key, value in faults.items():
            if value is None:
                self._faults.pop(key, None)
            else:
                self._faults[key] = value
        temp = self.control_file.with_suffix(".tmp")
        temp.write_text(json.dumps(self._faults))
        temp.replace(self.control_file)

    def clear_faults(self) -> None:
        """Remove every run-time fault."""
        self._faults = {}
        self.control_file.unlink(missing_ok=True)

    # processes

    def spawn_serve(self, extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``ollama serve`` as a new process-group leader, stdout+stderr appended to :attr:`log_path`."""
        env = dict(self.env, **(extra_env or {}))
        with open(self.log_path, "ab") as log:
            process = subprocess.Popen(
                [str(self.executable), "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=os.name == "posix",
                creationflags=NEW_PROCESS_GROUP,
            )
        self._popens.append(process)
        return process

    def install_app(self) -> Path:
        """Put the stand-in Ollama app beside ``bin/ollama``, as the real app ships its ``ollama``."""
        link = self.bin_dir / "ollama-app"
        if not link.exists():
            link.symlink_to(STANDIN_APP)
        return link

    def spawn_app(self, *args: str, extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start the stand-in Ollama app (``bin/ollama-app``, POSIX), which runs and respawns ``bin/ollama serve``."""
        link = self.install_app()
        env = dict(self.env, **(extra_env or {}))
        with open(self.root / "app-output.log", "ab") as output:
            process = subprocess.Popen(
                [str(link), *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._popens.append(process)
        return process

    @property
    def app_server_log(self) -> Path:
        """The stand-in app's ``~/.ollama/logs/server.log``."""
        return Path(self.env["HOME"]) / ".ollama" / "logs" / "server.log"

    def app_serve_pids(self) -> list[int]:
        """PIDs of every serve the stand-in app started, oldest first."""
        return [event["pid"] for event in self.events_of("app_serve_start")]

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until ``GET /`` answers ``Ollama is running``; fail early if the last serve exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._popens and self._popens[-1].poll() is not None:
                raise RuntimeError(f"ollama serve exited with {self._popens[-1].returncode}:\n{self.log_text()}")
            try:
                response = httpx.get(self.base_url + "/", timeout=1.0, trust_env=False)
                if response.status_code == 200 and response.text == "Ollama is running":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"ollama serve not ready after {timeout} s:\n{self.log_text()}")

    def ollama(
        self,
        *args: str,
        timeout: float = 60.0,
        input: str | None = None,  # noqa: A002 - subprocess.run's name
        extra_env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the CLI with this environment; output is captured as text."""
        return subprocess.run(
            [str(self.executable), *args],
            check=False,
            env=dict(self.env, **(extra_env or {})),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd or self.root,
        )

    def log_text(self) -> str:
        """Everything the serve processes wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # API shortcuts

    def client(self, timeout: float = 30.0) -> httpx.Client:
        """An httpx client for the stand-in's base URL."""
        return httpx.Client(base_url=self.base_url, timeout=timeout, trust_env=False)

    def pull(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """Pull through the HTTP API (``stream: false``); raises RuntimeError on an error answer."""
        with self.client(timeout) as client:
            response = client.post("/api/pull", json={"model": name, "stream": False})
        body = response.json()
        if response.status_code != 200 or "error" in body:
            raise RuntimeError(f"pull {name} failed: {response.status_code} {body}")
        return body

    def generate(self, model: str, prompt: str, timeout: float = 120.0) -> dict[str, Any]:
        """One ``/api/generate`` answer (``stream: false``); AssertionError on an error answer."""
        with self.client(timeout) as client:
            response = client.post("/api/generate", json={"model": model, "prompt": prompt, "stream": False})
        assert response.status_code == 200, response.text
        return dict(response.json())

    # events

    def events(self) -> list[dict[str, Any]]:
        """The stand-in's event log, one dict per complete line."""
        if not self.events_file.exists():
            return []
        parsed = []
        for line in self.events_file.read_text().splitlines():
            try:
                parsed.append(json.loads(line))
            except ValueError:
                continue
        return parsed

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        """The events of one kind (``runner_start``, ``runner_reload``, ``request_cancelled``, ...), oldest first."""
        return [event for event in self.events() if event["event"] == kind]

    def probes_answered(self, model: str) -> int:
        """The manager's health probes (the test prompt over ``/api/chat``) answered in full for ``model``."""
        return sum(
            1
            for event in self.events_of("request_done")
            if event["path"] == "/api/chat" and event["model"] == model and event.get("prompt") == "test"
        )

    def runner_pid(self, model: str | None = None) -> int | None:
        """The live runner most recently started (for ``model``, e.g. ``llama3:latest``), None when there is none."""
        for event in reversed(self.events_of("runner_start")):
            wanted = model is None or event["model"] == model
            if wanted and same_process(event["pid"], event.get("create_time")) is not None:
                return int(event["pid"])
        return None

    def serve_pids(self) -> list[int]:
        """PIDs of every serve that started listening."""
        return [event["pid"] for event in self.events() if event["event"] == "serve_start"]

    def runner_pids(self) -> list[int]:
        """PIDs of every runner ever spawned."""
        return [event["pid"] for event in self.events() if event["event"] == "runner_start"]

    def alive_runner_pids(self) -> list[int]:
        """Runners that still exist (not zombies, same create time as reported)."""
        return [
            event["pid"]
            for event in self.events()
            if event["event"] == "runner_start" and same_process(event["pid"], event.get("create_time"))
        ]

    # teardown

    def cleanup(self) -> None:
        """SIGKILL every live process the events name (and their children) plus our Popens; reap them.

        Apps go first, so none respawns a serve killed after it.
        """
        targets: dict[int, psutil.Process] = {}
        apps = [same_process(e["pid"], e.get("create_time")) for e in self.events_of("app_start")]
        for app in apps:
            if app is not None:
                with contextlib.suppress(psutil.Error):
                    app.kill()
        _wait_gone([app for app in apps if app is not None], timeout=10)
        for event in self.events():
            if event["event"] in ("serve_start", "runner_start", "app_serve_start"):
                process = same_process(event["pid"], event.get("create_time"))
                if process is not None:
                    targets[process.pid] = process
        for popen in self._popens:
            if popen.poll() is None:
                process = same_process(popen.pid, None)
                if process is not None:
                    targets[process.pid] = process
        for process in self._unregistered_processes():
            targets.setdefault(process.pid, process)
        for process in list(targets.values()):
            try:
                for child in process.children(recursive=True):
                    targets.setdefault(child.pid, child)
            except psutil.Error:
                pass
        for process in targets.values():
            try:
                if hasattr(signal, "SIGCONT"):
                    process.send_signal(signal.SIGCONT)
                process.kill()
            except psutil.Error:
                pass
        for popen in self._popens:
            try:
                popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        _wait_gone(list(targets.values()), timeout=10)

    def _unregistered_processes(self) -> list[psutil.Process]:
        """Stand-in programs of this environment that have not written their start event yet.

        A serve a manager started just before it was stopped may still be starting when the
        events are read. It is known by its environment, which names this events file, and its
        program, which lies in this environment (``bin/ollama``, ``lib/ollama/llama-server``) or
        is the frozen stand-in.
        """
        marker = str(self.events_file)
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if process.pid == os.getpid() or process.environ().get("OLLAMA_STANDIN_EVENTS") != marker:
                    continue
                # The program comes first, after its interpreter (and /usr/bin/env, while a shebang is followed).
                if any(self._is_standin_program(arg) for arg in process.cmdline()[:3]):
                    found.append(process)
        return found

    def _is_standin_program(self, arg: str) -> bool:
        path = Path(arg)
        return path == self.executable or path.is_relative_to(self.root) or path.is_relative_to(self.bin_dir)


def _wait_gone(processes: list[psutil.Process], timeout: float) -> None:
    """Wait until each process is gone or a zombie (orphans are reaped by init, not by us)."""
    deadline = time.monotonic() + timeout
    remaining = [p for p in processes if _running(p)]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.02)
        remaining = [p for p in remaining if _running(p)]


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie; ``is_running`` also rejects a PID reused by another process."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
