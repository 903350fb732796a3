"""Other supervisors that already respawn Ollama: restart through them, never fight them.

- Linux: the installer's systemd ``ollama.service`` (``Restart=always``).
- macOS / Windows: the official Ollama desktop app, which restarts ``serve``
  one second after it exits (:mod:`tray.system.ollama_app`).

Killing a server one of these owns only makes it respawn (a kill/respawn
ping-pong), so the manager asks the owner instead. The command lines are
built by pure methods and checked exactly in tests.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Union

from tray.atomic import write_atomically
from tray.system.host import platform_name
from tray.system.processes import ProcessRef, is_server_cmdline

if TYPE_CHECKING:
    from tray.system.ollama_app import OllamaApp


@dataclass(frozen=True)
class CommandResult:
    ok: bool
    message: str  # what to tell the user when not ok


def run_command(argv: list[str], timeout: float = 30.0, interactive: bool = False) -> CommandResult:
    """Run an owner's command; ``interactive`` lets it ask the user (polkit through the desktop's agent or the tty)."""
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if interactive else subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return CommandResult(False, f"{' '.join(argv)} did not finish within {timeout:g} s")
    except OSError as exc:
        return CommandResult(False, f"{argv[0]}: {exc.strerror or exc}")
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip().splitlines()
        return CommandResult(False, output[-1] if output else f"{argv[0]} exited with status {done.returncode}")
    return CommandResult(True, "")


@dataclass(frozen=True)
class SystemdService:
    """Ollama run by systemd; ``user`` for a ``systemctl --user`` unit."""

    unit: str = "ollama.service"
    user: bool = False
    name: str = "systemd"

    def _systemctl(self, verb: str, interactive: bool = False) -> list[str]:
        """``systemctl [--user] [--no-ask-password] VERB UNIT``: only a user's own action may let polkit ask."""
        argv = ["systemctl"]
        if self.user:
            argv.append("--user")
        if not interactive:
            argv.append("--no-ask-password")
        return [*argv, verb, self.unit]

    def restart_command(self, interactive: bool = False) -> list[str]:
        return self._systemctl("restart", interactive)

    def stop_command(self, interactive: bool = False) -> list[str]:
        return self._systemctl("stop", interactive)

    def start_command(self, interactive: bool = False) -> list[str]:
        return self._systemctl("start", interactive)

    def short_name(self) -> str:
        return self.unit.removesuffix(".service")

    def manual_command(self, verb: str) -> str:
        """The one command the user can run when we are not permitted to."""
        short = self.unit.removesuffix(".service")
        return f"systemctl --user {verb} {short}" if self.user else f"sudo systemctl {verb} {short}"

    def describe(self) -> str:
        return f"the systemd service {self.unit}"


# Who else respawns a server: systemd here, the desktop app in tray.system.ollama_app (which imports this module).
ExternalSupervisor = Union[SystemdService, "OllamaApp"]


def systemd_unit_from_cgroup(cgroup_text: str) -> SystemdService | None:
    """Parse /proc/<pid>/cgroup: the service unit this process runs in, whatever its name.

    Whether that unit runs Ollama is for :func:`unit_runs` to tell (a terminal's
    own service holds the shells started from it too).

    >>> systemd_unit_from_cgroup("0::/system.slice/ollama.service\\n")
    SystemdService(unit='ollama.service', user=False, name='systemd')
    >>> systemd_unit_from_cgroup("0::/system.slice/llm-server.service\\n").unit
    'llm-server.service'
    >>> systemd_unit_from_cgroup("0::/user.slice/user-1000.slice/user@1000.service/app.slice/ollama.service\\n").user
    True
    >>> systemd_unit_from_cgroup("0::/user.slice/user-1000.slice/session-2.scope\\n") is None
    True
    """
    for line in cgroup_text.splitlines():
        path = line.rsplit(":", 1)[-1]
        parts = [p for p in path.split("/") if p]
        if not parts:
            continue
        leaf = parts[-1]
        if leaf.endswith(".service") and not leaf.startswith("user@"):
            user = any(p.startswith("user@") and p.endswith(".service") for p in parts[:-1])
            return SystemdService(unit=leaf, user=user)
    return None


# --------------------------------------------------------------------------- systemd units, read as any user

UNIT_PROPERTIES = ("Id", "LoadState", "ActiveState", "MainPID", "User", "Environment", "ExecStart", "FragmentPath")
INSTALLED_UNITS = (SystemdService("ollama.service"), SystemdService("ollama.service", user=True))


def parse_show(text: str) -> dict[str, str]:
    """``systemctl show`` output (``Key=value`` lines) as a dict.

    >>> parse_show("MainPID=812\\nUser=ollama\\nEnvironment=PATH=/usr/bin OLLAMA_MODELS=/srv/m\\n")["Environment"]
    'PATH=/usr/bin OLLAMA_MODELS=/srv/m'
    """
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    return values


def parse_environment(value: str) -> dict[str, str]:
    """The ``Environment=`` property: space-separated ``KEY=value``, quoted where a value has spaces.

    >>> parse_environment('PATH=/usr/bin "OLLAMA_MODELS=/srv/my models"')
    {'PATH': '/usr/bin', 'OLLAMA_MODELS': '/srv/my models'}
    """
    try:
        items = shlex.split(value)
    except ValueError:
        items = value.split()
    return dict(item.split("=", 1) for item in items if "=" in item)


def parse_exec_start(value: str) -> list[str]:
    """The command line of ``ExecStart=`` as ``systemctl show`` prints it.

    >>> parse_exec_start("{ path=/usr/local/bin/ollama ; argv[]=/usr/local/bin/ollama serve ; ignore_errors=no }")
    ['/usr/local/bin/ollama', 'serve']
    """
    marker = "argv[]="
    if marker not in value:
        return []
    argv = value.split(marker, 1)[1].split(" ;", 1)[0]
    try:
        return shlex.split(argv)
    except ValueError:
        return argv.split()


@dataclass(frozen=True)
class UnitState:
    """What systemd tells any user about a unit (``systemctl show``)."""

    service: SystemdService
    load_state: str = "not-found"
    active_state: str = "unknown"
    main_pid: int = 0
    run_as: str = ""  # User=; empty: root
    environment: Mapping[str, str] = field(default_factory=dict)
    exec_start: tuple[str, ...] = ()

    @property
    def installed(self) -> bool:
        return self.load_state == "loaded"

    @property
    def runs_ollama_serve(self) -> bool:
        return is_server_cmdline(list(self.exec_start))

    @property
    def account(self) -> str:
        return self.run_as or "root"

    def account_uid(self) -> int | None:
        try:
            import pwd  # POSIX only: Windows has no passwd database (and no systemd)

            return pwd.getpwnam(self.account).pw_uid
        except (ImportError, KeyError):
            return None

    @property
    def models_dir(self) -> str | None:
        """The unit's ``OLLAMA_MODELS``, trimmed as Ollama reads it; None when the unit does not set it."""
        value = self.environment.get("OLLAMA_MODELS", "").strip().strip("\"'")
        return value or None


CommandRunner = Callable[[list[str]], "subprocess.CompletedProcess[str] | None"]


def _run_quietly(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def unit_state(service: SystemdService, run: CommandRunner = _run_quietly) -> UnitState:
    """Read a unit through ``systemctl show``; ``load_state`` "not-found" when there is no such unit or no systemd."""
    argv = (
        ["systemctl"] + (["--user"] if service.user else []) + ["show", "-p", ",".join(UNIT_PROPERTIES), service.unit]
    )
    done = run(argv)
    if done is None or done.returncode != 0:
        return UnitState(service)
    values = parse_show(done.stdout)
    try:
        main_pid = int(values.get("MainPID") or 0)
    except ValueError:
        main_pid = 0
    return UnitState(
        service,
        load_state=values.get("LoadState", "not-found"),
        active_state=values.get("ActiveState", "unknown"),
        main_pid=main_pid,
        run_as=values.get("User", ""),
        environment=parse_environment(values.get("Environment", "")),
        exec_start=tuple(parse_exec_start(values.get("ExecStart", ""))),
    )


def installed_ollama_unit(run: CommandRunner = _run_quietly) -> UnitState | None:
    """The installed unit that runs ``ollama serve`` (install.sh's ``ollama.service``, or a user unit)."""
    for service in INSTALLED_UNITS:
        state = unit_state(service, run)
        if state.installed and state.runs_ollama_serve:
            return state
    return None


def _read_cgroup(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text()


class ServiceManager(Protocol):
    """The OS's service manager, as far as it may run Ollama and respawn it."""

    def unit_running(
        self, pid: int, run: CommandRunner = ..., read_cgroup: Callable[[int], str] = ...
    ) -> UnitState | None:
        """The unit whose service ``pid`` is, if any."""
        ...

    def installed_unit(self) -> UnitState | None:
        """The installed unit that runs ``ollama serve``, if any."""
        ...


class NoServiceManager:
    """macOS and Windows: no system service runs Ollama; its desktop app does (:mod:`tray.system.ollama_app`)."""

    def unit_running(
        self, pid: int, run: CommandRunner = _run_quietly, read_cgroup: Callable[[int], str] = _read_cgroup
    ) -> UnitState | None:
        return None

    def installed_unit(self) -> UnitState | None:
        return None


def service_manager_for(platform: str | None = None) -> ServiceManager:
    """systemd on Linux; none elsewhere (``platform``: a ``sys.platform`` value; default: this OS)."""
    if platform_name(platform).startswith("linux"):
        from tray.system.owners_linux import SystemdManager

        return SystemdManager()
    return NoServiceManager()


def unit_running(
    pid: int,
    platform: str | None = None,
    run: CommandRunner = _run_quietly,
    read_cgroup: Callable[[int], str] = _read_cgroup,
) -> UnitState | None:
    """The systemd unit whose service ``pid`` is: its cgroup's unit (any name) when that unit runs
    ``ollama serve`` or has it as MainPID, else an installed unit whose MainPID it is."""
    return service_manager_for(platform).unit_running(pid, run, read_cgroup)


def journal_command(service: SystemdService, *, follow: bool = False, lines: int | None = None) -> list[str]:
    """``journalctl -u UNIT`` (``--user-unit`` for a user unit), message text only, no pager."""
    argv = ["journalctl", "--user-unit" if service.user else "-u", service.unit, "-o", "cat", "--no-pager"]
    if follow:
        argv.append("-f")
    if lines is not None:
        argv += ["-n", str(lines)]
    return argv


JOURNAL_NO_FILES = "No journal files were opened due to insufficient permissions"
JOURNAL_ONLY_OWN = "You are currently not seeing messages from other users and the system"


def journal_refused(stderr: str, user_unit: bool = False) -> bool:
    """Whether journalctl said this user may not read the unit's messages (it may still exit 0, with a hint).

    The hint that the user sees only its own messages refuses a system unit's, not those of the user's
    own units: journald keeps these in the user's journal.

    >>> hint = "Hint: You are currently not seeing messages from other users and the system."
    >>> journal_refused(hint), journal_refused(hint, user_unit=True)
    (True, False)
    """
    return JOURNAL_NO_FILES in stderr or (JOURNAL_ONLY_OWN in stderr and not user_unit)


def journal_access_line(service: SystemdService, user: str) -> str:
    """The one line saying how to read Ollama's log when the journal refuses this user."""
    return (
        f"Ollama's log is in the journal (journalctl -u {service.unit}), which {user} may not read: "
        f"run `sudo usermod -aG systemd-journal {user}` and log in again"
    )


def read_journal(service: SystemdService, lines: int = 2000, run: CommandRunner = _run_quietly) -> list[str] | None:
    """The unit's last messages; None when the journal refuses this user or cannot be read."""
    done = run(journal_command(service, lines=lines))
    if done is None or done.returncode != 0 or journal_refused(done.stderr or "", service.user):
        return None
    return done.stdout.splitlines()


def ollama_error_line(lines: Iterable[str]) -> str | None:
    """The last ``Error: …`` line in a server's log: how ``ollama serve`` says why it exits at start.

    >>> ollama_error_line([
    ...     "Error: listen tcp 127.0.0.1:11434: bind: address already in use",
    ...     "ollama.service: Main process exited, code=exited, status=1/FAILURE",
    ... ])
    'Error: listen tcp 127.0.0.1:11434: bind: address already in use'
    >>> ollama_error_line(["Started ollama.service."]) is None
    True
    """
    found = None
    for line in lines:
        if line.startswith("Error: "):
            found = line.strip()
    return found


def stuck_unit_line(service: SystemdService, stopping: bool, seconds: float, log: list[str] | None) -> str:
    """The one line for a unit that keeps restarting (or does not finish stopping) while Ollama does not answer.

    ``log``: the unit's last messages, None when the journal refuses this user (the command then needs sudo).

    >>> unit = SystemdService("ollama.service")
    >>> print(stuck_unit_line(unit, False, 30, ["Error: mkdir /m: permission denied"]))
    Ollama does not answer and the systemd service ollama.service has been restarting for 30 s: it keeps \
exiting as it starts (Error: mkdir /m: permission denied); see why with `journalctl -u ollama.service -n 50`
    >>> print(stuck_unit_line(unit, False, 30, None))
    Ollama does not answer and the systemd service ollama.service has been restarting for 30 s: it does not \
come up; see why with `sudo journalctl -u ollama.service -n 50`
    """
    error = ollama_error_line(log or [])
    if stopping:
        doing, what = "stopping", "it does not finish stopping"
    else:
        doing, what = "restarting", f"it keeps exiting as it starts ({error})" if error else "it does not come up"
    command = f"journalctl {'--user-unit' if service.user else '-u'} {service.unit} -n 50"
    if log is None and not service.user:
        command = f"sudo {command}"
    return (
        f"Ollama does not answer and {service.describe()} has been {doing} for {seconds:g} s: {what}; "
        f"see why with `{command}`"
    )


def write_journal_snapshot(service: SystemdService, path: Path, user: str, run: CommandRunner = _run_quietly) -> Path:
    """Write the unit's recent log to ``path`` (for "Open logs"); the access line when the journal refuses."""
    argv = journal_command(service, lines=2000)
    argv[argv.index("cat")] = "short-iso"
    done = run(argv)
    if done is None:
        text = "journalctl could not be run: Ollama's log is in the journal\n"
    elif done.returncode != 0 or journal_refused(done.stderr or "", service.user):
        text = journal_access_line(service, user) + "\n"
    else:
        text = done.stdout
    write_atomically(path, text.encode("utf-8"))
    return path


# --------------------------------------------------------------------------- trust


class Trust(StrEnum):
    """Whose server answers on Ollama's port, and whether the manager may use it."""

    SELF = "self"  # run by this user
    ROOT = "root"
    SERVICE = "service"  # run by the account of the systemd unit it is the service of
    OTHER_USER = "other-user"  # another person's: never used
    UNKNOWN_ACCOUNT = "unknown-account"  # a system account with no unit behind it: never used

    @property
    def trusted(self) -> bool:
        return self in (Trust.SELF, Trust.ROOT, Trust.SERVICE)


SYSTEM_UID_MAX = 999  # Debian/Fedora login.defs SYS_UID_MAX; 65534 is nobody
NOBODY_UID = 65534


def judge_owner(server_uid: int, my_uid: int, unit_account_uid: int | None) -> Trust:
    """Whether a server run by ``server_uid`` may be used by ``my_uid`` (pure).

    >>> judge_owner(1000, 1000, None), judge_owner(0, 1000, None), judge_owner(996, 1000, 996)
    (<Trust.SELF: 'self'>, <Trust.ROOT: 'root'>, <Trust.SERVICE: 'service'>)
    >>> judge_owner(1001, 1000, None), judge_owner(996, 1000, None), judge_owner(1001, 1000, 996)
    (<Trust.OTHER_USER: 'other-user'>, <Trust.UNKNOWN_ACCOUNT: 'unknown-account'>, <Trust.OTHER_USER: 'other-user'>)
    """
    if server_uid == my_uid:
        return Trust.SELF
    if server_uid == 0:
        return Trust.ROOT
    if unit_account_uid is not None and unit_account_uid == server_uid:
        return Trust.SERVICE
    if server_uid <= SYSTEM_UID_MAX or server_uid == NOBODY_UID:
        return Trust.UNKNOWN_ACCOUNT
    return Trust.OTHER_USER


def user_name(uid: int | None) -> str:
    if uid is None:
        return "an unknown user"
    try:
        import pwd  # POSIX only: Windows has no passwd database

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid {uid}"


def current_uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else -1


def detect_supervisor(server: ProcessRef, platform: str | None = None) -> SystemdService | None:
    """Who, besides us, would respawn this server (the Ollama app: :mod:`tray.system.ollama_app`)."""
    proc = server.get()
    if proc is None:
        return None
    unit = service_manager_for(platform).unit_running(proc.pid)
    return unit.service if unit is not None else None


def systemd_active_state(service: SystemdService) -> str:
    """'active', 'inactive' (stopped on purpose), 'failed', 'activating', ... or 'unknown'."""
    argv = ["systemctl"] + (["--user"] if service.user else []) + ["show", "-p", "ActiveState", "--value", service.unit]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"
