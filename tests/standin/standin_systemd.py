"""A stand-in for systemd's service manager, ``systemctl`` and ``journalctl`` (standard library only).

The test suite runs the stand-in ``ollama serve`` the way Ollama's Linux
installer does: as the main process of ``ollama.service``, under a system
account, its output in the journal. Real systemd cannot run in a test, so:

- ``daemon`` (run as root by the test) plays PID 1: it starts each unit's
  ``ExecStart=`` as the unit's ``User=``/``Group=`` (setgid, initgroups,
  setuid, ``HOME``/``USER``/``LOGNAME`` from the account, ``Environment=``),
  records its ``MainPID``, restarts it per ``Restart=``/``RestartSec=``, kills
  the unit's whole process tree on stop (``KillMode=control-group``: the serve
  and its runners), and appends every output line to the journal. It answers
  start/stop/restart over a Unix socket and learns the caller from
  ``SO_PEERCRED``, as systemd does over D-Bus, refusing what polkit would.
- ``systemctl`` (on PATH in the tests' environment) reads the units and their
  state for ``show``, ``is-active``, ``cat``; asks the daemon for ``start``,
  ``stop``, ``restart``, ``daemon-reload``. Texts and exit statuses are
  systemd 252's (Debian 12).
- ``journalctl`` reads the journal, which only root and the groups
  ``systemd-journal``/``adm`` may open (0640 root:systemd-journal), as on a
  real system; others get journalctl's own refusal, or, when they have user
  units, its hint and their own units' messages (``--user-unit``).

Layout of the directory named by ``OLLAMA_STANDIN_SYSTEMD`` (no variable: a
machine with no units installed)::

    system/<unit>            unit files (INI); user/<uid>/<unit> for ``--user``
    state.json               per unit: ActiveState, SubState, MainPID, NRestarts, ...
    policy.json              who may do what (the knobs below)
    control.sock             the daemon's socket
    journal.jsonl            one JSON object per line: ts, unit, pid, message (user: uid, of a user unit)
    user/<uid>/journal.jsonl that user's units' messages, readable by that user (journald's SplitMode=uid)

Knobs (``policy.json``, re-read on every request):
  manage          list of uids that may start/stop/restart system units without asking
                  (as a polkit rule granting ``org.freedesktop.systemd1.manage-units``)
  polkit_agent    {uid: "allow"|"deny"}: what a polkit agent answers when the call may ask
                  (no ``--no-ask-password``); no entry: no agent, "Access denied"
  own_journal     list of uids that have a journal of their own (persistent journaling): they
                  get journalctl's hint and "-- No entries --" instead of the refusal
"""

from __future__ import annotations

import datetime as _dt
import grp
import json
import os
import pwd
import shlex
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

ENV_ROOT = "OLLAMA_STANDIN_SYSTEMD"
DEFAULT_RESTART_SEC = 0.1
DEFAULT_STOP_TIMEOUT = 90.0
JOURNAL_HINT = (
    "Hint: You are currently not seeing messages from other users and the system.\n"
    "      Users in groups 'adm', 'systemd-journal' can see all messages.\n"
    "      Pass -q to turn off this notice."
)
JOURNAL_REFUSED = "No journal files were opened due to insufficient permissions."


# --- shared: paths, units, state ----------------------------------------------------------------


def root_dir() -> str:
    return os.environ.get(ENV_ROOT, "")


def unit_name(text: str) -> str:
    """``ollama`` -> ``ollama.service`` (systemctl's mangling of a bare name)."""
    return text if "." in text else text + ".service"


def unit_dir(root: str, user_uid: Optional[int]) -> str:
    return os.path.join(root, "system") if user_uid is None else os.path.join(root, "user", str(user_uid))


def parse_unit(text: str) -> Dict[str, Dict[str, List[str]]]:
    """INI sections -> key -> values (a key may repeat, as Environment= does)."""
    sections: Dict[str, Dict[str, List[str]]] = {}
    current: Dict[str, List[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if "=" in line:
            key, value = line.split("=", 1)
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


class Unit:
    """What the stand-in understands of a service unit file."""

    def __init__(self, name: str, path: str, text: str) -> None:
        self.name = name
        self.path = path
        self.text = text
        service = parse_unit(text).get("Service", {})
        self.exec_start = (service.get("ExecStart") or [""])[-1]
        self.user = (service.get("User") or [""])[-1]
        self.group = (service.get("Group") or [""])[-1]
        self.restart = (service.get("Restart") or ["no"])[-1]
        self.restart_sec = _seconds((service.get("RestartSec") or [""])[-1], DEFAULT_RESTART_SEC)
        self.stop_timeout = _seconds((service.get("TimeoutStopSec") or [""])[-1], DEFAULT_STOP_TIMEOUT)
        self.working_directory = (service.get("WorkingDirectory") or [""])[-1]
        self.environment: Dict[str, str] = {}
        for value in service.get("Environment", []):
            for item in shlex.split(value):
                if "=" in item:
                    key, _, val = item.partition("=")
                    self.environment[key] = val

    @property
    def argv(self) -> List[str]:
        return shlex.split(self.exec_start.lstrip("-@+!"))


def _seconds(text: str, default: float) -> float:
    text = text.strip()
    if not text:
        return default
    for suffix, factor in (("ms", 0.001), ("min", 60.0), ("s", 1.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def load_unit(root: str, name: str, user_uid: Optional[int] = None) -> Optional[Unit]:
    path = os.path.join(unit_dir(root, user_uid), name) if root else ""
    try:
        with open(path, encoding="utf-8") as handle:
            return Unit(name, path, handle.read())
    except OSError:
        return None


def read_json(path: str, default: Any) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return default


def write_json(path: str, data: Any, mode: int = 0o644) -> None:
    temporary = "%s.%d.tmp" % (path, os.getpid())
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def user_journal_path(root: str, user_uid: int) -> str:
    """The journal file of a user's own units, which that user may read."""
    return os.path.join(unit_dir(root, user_uid), "journal.jsonl")


def state_key(name: str, user_uid: Optional[int]) -> str:
    return name if user_uid is None else "%d/%s" % (user_uid, name)


# --- the daemon ---------------------------------------------------------------------------------


class Service:
    """One unit's main process and the processes it spawned (its "control group")."""

    def __init__(self, manager: "Manager", unit: Unit, user_uid: Optional[int]) -> None:
        self.manager = manager
        self.unit = unit
        self.user_uid = user_uid
        self.key = state_key(unit.name, user_uid)
        self.active_state = "inactive"
        self.sub_state = "dead"
        self.main: Optional[subprocess.Popen] = None
        self.cgroup: Dict[int, float] = {}  # pid -> create time, of every process seen in the unit
        self.restarts = 0
        self.restart_at: Optional[float] = None
        self.stopping = False
        self.started_at = 0.0
        self.exit_status: Optional[int] = None

    # lifecycle

    def start(self) -> None:
        if self.main is not None and self.main.poll() is None:
            return
        unit = self.unit
        account = pwd.getpwnam(unit.user) if unit.user else pwd.getpwuid(self.user_uid or 0)
        gid = grp.getgrnam(unit.group).gr_gid if unit.group else account.pw_gid
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": account.pw_dir,
            "USER": account.pw_name,
            "LOGNAME": account.pw_name,
            "SHELL": account.pw_shell,
            "INVOCATION_ID": os.urandom(16).hex(),
        }
        env.update(unit.environment)
        self.active_state, self.sub_state = "activating", "start"
        try:
            self.main = subprocess.Popen(
                unit.argv,
                env=env,
                cwd=unit.working_directory or "/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                user=account.pw_uid,
                group=gid,
                extra_groups=os.getgrouplist(account.pw_name, gid),
                start_new_session=True,
            )
        except OSError as error:
            self._journal(1, "%s: Failed to execute %s: %s" % (unit.name, unit.exec_start, error))
            self.active_state, self.sub_state, self.main = "failed", "failed", None
            self.manager.save_state()
            return
        self.cgroup = {self.main.pid: _create_time(self.main.pid)}
        self.started_at = time.time()
        self.active_state, self.sub_state = "active", "running"
        self.stopping = False
        self.restart_at = None
        threading.Thread(target=self._pump, args=(self.main,), daemon=True).start()
        self._journal(1, "Started %s." % self.unit.name)
        self.manager.save_state()

    def _journal(self, pid: int, message: str) -> None:
        self.manager.journal(self.unit.name, pid, message, self.user_uid)

    def _pump(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            self._journal(process.pid, raw.decode("utf-8", "replace").rstrip("\n"))

    def stop(self) -> None:
        self.stopping = True
        self.restart_at = None
        if self.active_state in ("active", "activating", "deactivating"):
            self.active_state, self.sub_state = "deactivating", "stop-sigterm"
            self.manager.save_state()
            self._kill_group(self.unit.stop_timeout)
        self.main = None
        self.active_state, self.sub_state = "inactive", "dead"
        self._journal(1, "Stopped %s." % self.unit.name)
        self.manager.save_state()

    def _kill_group(self, timeout: float) -> None:
        """SIGTERM every live process of the unit, then SIGKILL what is left after ``timeout``."""
        self.track()
        live = [pid for pid, started in self.cgroup.items() if _alive(pid, started)]
        for pid in live:
            _signal(pid, signal.SIGTERM)
            _signal(pid, signal.SIGCONT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap_main()
            if not [pid for pid in live if _alive(pid, self.cgroup[pid])]:
                break
            time.sleep(0.02)
        for pid in live:
            if _alive(pid, self.cgroup[pid]):
                _signal(pid, signal.SIGKILL)
        self._reap_main(wait=True)
        self.cgroup = {}

    def _reap_main(self, wait: bool = False) -> None:
        if self.main is not None:
            try:
                self.main.wait(5 if wait else 0)
            except subprocess.TimeoutExpired:
                pass

    def track(self) -> None:
        """Add the descendants of the unit's processes (a cgroup keeps them; the tree would lose orphans)."""
        for pid in list(self.cgroup):
            for child in _children(pid):
                self.cgroup.setdefault(child, _create_time(child))

    def poll(self, now: float) -> None:
        """The main loop's look at this unit: exits, restarts, the process tree."""
        if self.main is not None:
            self.track()
            code = self.main.poll()
            if code is not None and not self.stopping:
                self.exit_status = code
                self.manager.journal(
                    self.unit.name, 1, "%s: Main process exited, code=exited, status=%d" % (self.unit.name, code)
                )
                self._kill_group(5.0)  # the rest of the control group goes with the main process
                self.main = None
                if self.unit.restart in ("always", "on-failure") and (code != 0 or self.unit.restart == "always"):
                    self.active_state, self.sub_state = "activating", "auto-restart"
                    self.restart_at = now + self.unit.restart_sec
                else:
                    self.active_state, self.sub_state = ("failed", "failed") if code else ("inactive", "dead")
                self.manager.save_state()
        if self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            self.restarts += 1
            self.start()

    def state(self) -> Dict[str, Any]:
        return {
            "ActiveState": self.active_state,
            "SubState": self.sub_state,
            "MainPID": self.main.pid if self.main is not None and self.main.poll() is None else 0,
            "NRestarts": self.restarts,
            "ExecMainStartTimestamp": self.started_at,
            "ExecMainStatus": self.exit_status or 0,
        }


class Manager:
    def __init__(self, root: str) -> None:
        self.root = root
        self.lock = threading.RLock()
        self.services: Dict[str, Service] = {}
        self.cursor = 0
        journal = os.path.join(root, "journal.jsonl")
        fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        os.close(fd)
        try:
            os.chown(journal, 0, grp.getgrnam("systemd-journal").gr_gid)
        except (KeyError, PermissionError):
            pass
        os.chmod(journal, 0o640)
        self.journal_path = journal

    def service(self, name: str, user_uid: Optional[int]) -> Optional[Service]:
        key = state_key(name, user_uid)
        unit = load_unit(self.root, name, user_uid)
        if unit is None:
            return None
        existing = self.services.get(key)
        if existing is None:
            existing = self.services[key] = Service(self, unit, user_uid)
        return existing

    def reload(self) -> None:
        with self.lock:
            for service in self.services.values():
                fresh = load_unit(self.root, service.unit.name, service.user_uid)
                if fresh is not None:
                    service.unit = fresh

    def journal(self, unit: str, pid: int, message: str, user_uid: Optional[int] = None) -> None:
        """Append to the journal; a user unit's messages go to that user's own journal file too (SplitMode=uid)."""
        with self.lock:
            self.cursor += 1
            entry = {"cursor": self.cursor, "ts": time.time(), "unit": unit, "pid": pid, "message": message}
            if user_uid is not None:
                entry["user"] = user_uid
            line = json.dumps(entry) + "\n"
            with open(self.journal_path, "a", encoding="utf-8") as handle:
                handle.write(line)
            if user_uid is not None:
                path = user_journal_path(self.root, user_uid)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    os.fchown(fd, user_uid, pwd.getpwuid(user_uid).pw_gid)
                    os.write(fd, line.encode("utf-8"))
                finally:
                    os.close(fd)

    def save_state(self) -> None:
        with self.lock:
            units = {key: service.state() for key, service in self.services.items()}
            write_json(os.path.join(self.root, "state.json"), {"units": units, "daemon_pid": os.getpid()})

    def loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self.lock:
                for service in list(self.services.values()):
                    service.poll(time.monotonic())
            stop.wait(0.05)

    def shutdown(self) -> None:
        with self.lock:
            for service in self.services.values():
                if service.main is not None:
                    service.stop()


def authorize(root: str, uid: int, request: Dict[str, Any]) -> Optional[str]:
    """None when the caller may act on the unit, else polkit's refusal as systemctl prints it."""
    if uid == 0:
        return None
    user_uid = request.get("user_uid")
    if user_uid is not None:
        return None if user_uid == uid else "Access denied"
    policy = read_json(os.path.join(root, "policy.json"), {})
    if uid in policy.get("manage", []):
        return None
    if not request.get("interactive"):
        return "Interactive authentication required."
    answer = policy.get("polkit_agent", {}).get(str(uid))
    return None if answer == "allow" else "Access denied"


def _peer_uid(connection: socket.socket) -> int:
    data = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", data)
    return uid


def serve_daemon(root: str) -> int:
    os.makedirs(os.path.join(root, "system"), exist_ok=True)
    manager = Manager(root)
    manager.save_state()
    path = os.path.join(root, "control.sock")
    if os.path.exists(path):
        os.unlink(path)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            request = json.loads(self.rfile.readline() or b"{}")
            uid = _peer_uid(self.request)
            self.wfile.write((json.dumps(respond(manager, uid, request)) + "\n").encode())

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    server = Server(path, Handler)
    os.chmod(path, 0o666)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    manager.loop(stop)
    server.shutdown()
    manager.shutdown()
    return 0


def respond(manager: Manager, uid: int, request: Dict[str, Any]) -> Dict[str, Any]:
    verb = str(request.get("verb", ""))
    if verb == "daemon-reload":
        if uid != 0:
            return {"code": 1, "error": "Failed to reload daemon: Access denied"}
        manager.reload()
        return {"code": 0}
    name = str(request.get("unit", ""))
    user_uid = request.get("user_uid")
    refusal = authorize(manager.root, uid, request)
    if refusal is not None:
        return {"code": 1, "error": "Failed to %s %s: %s" % (verb, name, refusal)}
    with manager.lock:
        service = manager.service(name, user_uid)
        if service is None:
            return {"code": 5, "error": "Failed to %s %s: Unit %s not found." % (verb, name, name)}
        if verb == "start":
            service.start()
        elif verb == "stop":
            service.stop()
        elif verb == "restart":
            service.stop()
            service.start()
        else:
            return {"code": 1, "error": "Unknown command verb %s." % verb}
    return {"code": 0}


# --- systemctl ----------------------------------------------------------------------------------


def _exec_start_property(unit: Unit, main_pid: int) -> str:
    argv = unit.argv
    return (
        "{ path=%s ; argv[]=%s ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=%d ; "
        "code=(null) ; status=0/0 }"
        % (
            argv[0] if argv else "",
            " ".join(argv),
            main_pid,
        )
    )


def unit_properties(root: str, name: str, user_uid: Optional[int]) -> Dict[str, str]:
    unit = load_unit(root, name, user_uid)
    states = read_json(os.path.join(root, "state.json"), {}).get("units", {}) if root else {}
    state = states.get(state_key(name, user_uid), {})
    main_pid = int(state.get("MainPID", 0) or 0)
    if main_pid and not _alive(main_pid, None):
        main_pid = 0
    active = str(state.get("ActiveState", "inactive"))
    if unit is None:
        return {
            "Id": name,
            "Names": name,
            "LoadState": "not-found",
            "ActiveState": "inactive",
            "SubState": "dead",
            "MainPID": "0",
            "User": "",
            "Group": "",
            "Environment": "",
            "FragmentPath": "",
            "ExecStart": "",
            "UnitFileState": "",
            "NRestarts": "0",
            "LoadError": 'org.freedesktop.systemd1.NoSuchUnit "Unit %s not found."' % name,
        }
    return {
        "Id": name,
        "Names": name,
        "LoadState": "loaded",
        "ActiveState": active,
        "SubState": str(state.get("SubState", "dead")),
        "MainPID": str(main_pid),
        "User": unit.user,
        "Group": unit.group,
        "Environment": " ".join("%s=%s" % (k, v) for k, v in unit.environment.items()),
        "FragmentPath": unit.path,
        "ExecStart": _exec_start_property(unit, main_pid),
        "UnitFileState": "enabled",
        "NRestarts": str(state.get("NRestarts", 0)),
        "ExecMainStatus": str(state.get("ExecMainStatus", 0)),
    }


def systemctl_main(argv: List[str]) -> int:
    root = root_dir()
    user_mode = False
    no_ask = False
    value_only = False
    properties: List[str] = []
    words: List[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--user":
            user_mode = True
        elif arg == "--system":
            user_mode = False
        elif arg == "--no-ask-password":
            no_ask = True
        elif arg == "--value":
            value_only = True
        elif arg in ("-p", "--property"):
            properties.extend(args.pop(0).split(",") if args else [])
        elif arg.startswith("--property="):
            properties.extend(arg.split("=", 1)[1].split(","))
        elif arg.startswith("-p") and len(arg) > 2:
            properties.extend(arg[2:].split(","))
        elif arg in ("--no-pager", "--quiet", "-q", "--full", "-l", "--no-legend", "--plain"):
            continue
        elif arg.startswith("-"):
            sys.stderr.write("systemctl: unrecognized option '%s'\n" % arg)
            return 1
        else:
            words.append(arg)
    if not words:
        words = ["list-units"]
    verb, names = words[0], [unit_name(word) for word in words[1:]]
    user_uid = os.getuid() if user_mode else None
    if verb == "show":
        for index, name in enumerate(names):
            if index:
                sys.stdout.write("\n")
            props = unit_properties(root, name, user_uid)
            keys = properties or list(props)
            for key in keys:
                value = props.get(key, "")
                sys.stdout.write(("%s\n" % value) if value_only else ("%s=%s\n" % (key, value)))
        return 0
    if verb == "is-active":
        code = 0
        for name in names:
            state = unit_properties(root, name, user_uid)["ActiveState"]
            sys.stdout.write(state + "\n")
            code = code or (0 if state == "active" else 3)
        return code
    if verb == "cat":
        found = False
        for name in names:
            unit = load_unit(root, name, user_uid)
            if unit is None:
                continue
            found = True
            sys.stdout.write("# %s\n%s" % (unit.path, unit.text if unit.text.endswith("\n") else unit.text + "\n"))
        if not found:
            sys.stderr.write("No files found for %s.\n" % (names[0] if names else ""))
            return 1
        return 0
    if verb in ("start", "stop", "restart", "daemon-reload"):
        requests = (
            [{"verb": verb}]
            if verb == "daemon-reload"
            else [{"verb": verb, "unit": name, "user_uid": user_uid, "interactive": not no_ask} for name in names]
        )
        for request in requests:
            answer = _ask_daemon(root, request)
            if answer.get("code"):
                sys.stderr.write(answer["error"] + "\n")
                return int(answer["code"])
        return 0
    sys.stderr.write("Unknown command verb %s.\n" % verb)
    return 1


def _ask_daemon(root: str, request: Dict[str, Any]) -> Dict[str, Any]:
    unit = request.get("unit", "")
    path = os.path.join(root, "control.sock") if root else ""
    if not path or not os.path.exists(path):
        if request["verb"] == "daemon-reload":
            return {"code": 0}
        return {"code": 5, "error": "Failed to %s %s: Unit %s not found." % (request["verb"], unit, unit)}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(path)
        client.sendall((json.dumps(request) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = client.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data or b'{"code": 1, "error": "Failed to connect to bus: Connection refused"}')


# --- journalctl ---------------------------------------------------------------------------------


def _parse_since(text: str) -> float:
    if text.startswith("@"):
        return float(text[1:])
    if text in ("today", "now"):
        moment = _dt.datetime.now()
        return (moment.replace(hour=0, minute=0, second=0, microsecond=0) if text == "today" else moment).timestamp()
    for layout in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return _dt.datetime.strptime(text, layout).timestamp()
        except ValueError:
            continue
    raise ValueError(text)


def _format(entry: Dict[str, Any], output: str) -> str:
    if output == "cat":
        return str(entry["message"])
    stamp = time.strftime("%b %d %H:%M:%S", time.localtime(entry["ts"]))
    if output == "short-iso":
        stamp = _dt.datetime.fromtimestamp(entry["ts"]).astimezone().isoformat(timespec="seconds")
    who = "systemd" if entry["pid"] == 1 else entry["unit"].rsplit(".", 1)[0].split("@")[0]
    return "%s %s %s[%d]: %s" % (stamp, socket.gethostname(), who, entry["pid"], entry["message"])


def _option_value(inline: Optional[str], args: List[str]) -> str:
    """An option's value: after its ``=``, else the next argument (taken from ``args``)."""
    return inline if inline is not None else (args.pop(0) if args else "")


def _open_own_journal(root: str) -> Any:
    """The caller's own journal file (its user units' messages), None when it has none."""
    try:
        return open(user_journal_path(root, os.getuid()), encoding="utf-8")
    except OSError:
        return None


def _no_journal_files(root: str, follow: bool) -> int:
    """journalctl for a user who may open no journal file (the hint is printed already)."""
    policy = read_json(os.path.join(root, "policy.json"), {})
    if os.getuid() not in policy.get("own_journal", []):
        sys.stderr.write(JOURNAL_REFUSED + "\n")
        return 1
    sys.stdout.write("-- No entries --\n")
    sys.stdout.flush()
    if follow:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(3600)
    return 0


def journalctl_main(argv: List[str]) -> int:
    root = root_dir()
    units: List[str] = []
    user_units: List[str] = []
    follow = False
    lines: Optional[int] = None
    since: Optional[float] = None
    output = "short"
    quiet = False
    args = list(argv)
    while args:
        arg = args.pop(0)
        key, _, inline = arg.partition("=")
        value = inline if inline else None

        if key in ("-u", "--unit"):
            units.append(unit_name(_option_value(value, args)))
        elif key == "--user-unit":
            user_units.append(unit_name(_option_value(value, args)))
        elif arg.startswith("-u") and len(arg) > 2:
            units.append(unit_name(arg[2:]))
        elif key in ("-f", "--follow"):
            follow = True
        elif key in ("-n", "--lines"):
            lines = int(_option_value(value, args))
        elif arg.startswith("-n") and len(arg) > 2:
            lines = int(arg[2:])
        elif key in ("-o", "--output"):
            output = _option_value(value, args)
        elif key in ("-S", "--since"):
            try:
                since = _parse_since(_option_value(value, args))
            except ValueError as error:
                sys.stderr.write("Failed to parse timestamp: %s\n" % error)
                return 1
        elif key in ("-e", "--pager-end"):
            lines = 1000 if lines is None else lines
        elif key in ("-q", "--quiet"):
            quiet = True
        elif key in ("--no-pager", "-b", "--boot", "--user", "--system", "--no-hostname", "-a", "--all"):
            continue
        else:
            sys.stderr.write("journalctl: unrecognized option '%s'\n" % arg)
            return 1
    path = os.path.join(root, "journal.jsonl") if root else ""
    handle = None
    if path:
        try:
            handle = open(path, encoding="utf-8")  # noqa: SIM115 - read until journalctl exits
        except PermissionError:
            if not quiet:
                sys.stderr.write(JOURNAL_HINT + "\n")
            handle = _open_own_journal(root)
            if handle is None:
                return _no_journal_files(root, follow)
    if handle is None:
        sys.stdout.write("-- No entries --\n")
        return 0

    def wanted(entry: Dict[str, Any]) -> bool:
        # -u matches system units; --user-unit the caller's own user units (as _SYSTEMD_USER_UNIT plus _UID)
        if units or user_units:
            user = entry.get("user")
            ours = user == os.getuid() and entry.get("unit") in user_units
            if not (ours or (user is None and entry.get("unit") in units)):
                return False
        return since is None or entry["ts"] >= since

    entries = [entry for entry in _read_entries(handle) if wanted(entry)]
    if lines is None and follow:
        lines = 10
    if lines is not None:
        entries = entries[-lines:] if lines > 0 else []
    for entry in entries:
        sys.stdout.write(_format(entry, output) + "\n")
    sys.stdout.flush()
    if not follow:
        if not entries and output != "cat":
            sys.stdout.write("-- No entries --\n")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            fresh = [entry for entry in _read_entries(handle) if wanted(entry)]
            for entry in fresh:
                sys.stdout.write(_format(entry, output) + "\n")
            if fresh:
                sys.stdout.flush()
            time.sleep(0.05)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0


def _read_entries(handle: Any) -> List[Dict[str, Any]]:
    entries = []
    while True:
        position = handle.tell()
        line = handle.readline()
        if not line:
            break
        if not line.endswith("\n"):
            handle.seek(position)  # a line still being written
            break
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


# --- process helpers ----------------------------------------------------------------------------


def _create_time(pid: int) -> float:
    """Start time in clock ticks since boot (field 22 of /proc/<pid>/stat); 0 when gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return float(fields[19])
    except (OSError, IndexError, ValueError):
        return 0.0


def _alive(pid: int, started: Optional[float]) -> bool:
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return False
    if fields[0] == b"Z":
        return False
    return started is None or float(fields[19]) == started


def _children(pid: int) -> List[int]:
    """Children of every thread of ``pid`` (a thread's children are listed under that thread)."""
    found: List[int] = []
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return found
    for task in tasks:
        try:
            with open("/proc/%d/task/%s/children" % (pid, task)) as handle:
                found.extend(int(part) for part in handle.read().split())
        except (OSError, ValueError):
            continue
    return found


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: List[str]) -> int:
    """``standin_systemd.py daemon --root DIR``."""
    if len(argv) >= 3 and argv[0] == "daemon" and argv[1] == "--root":
        return serve_daemon(argv[2])
    sys.stderr.write("usage: standin_systemd.py daemon --root DIR\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
