"""The ``ollama-manager`` command line.

Every failure the user can cause or meet prints one line and exits non-zero;
an unexpected error prints one line too, with the traceback in the log file.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

from tray.core.health import BusySource
from tray.core.names import same_model
from tray.core.status import BusyStatus, Status
from tray.core.units import MIB, format_age, format_duration, format_latency, human_memory
from tray.errors import CliError
from tray.history import EventKind, History
from tray.models.defaults import install_default_modelfile
from tray.service.monitor import Monitor
from tray.service.notices import notify_events
from tray.service.supervisor import Supervisor, SupervisorError, stop_message
from tray.settings.config import Config, ConfigError, config_warnings, load_config
from tray.settings.meta import shown
from tray.system.instance import AlreadyRunning, SingleInstance
from tray.system.logs import setup_logging
from tray.system.memory import share_one_malloc_arena
from tray.system.notify import Notifier
from tray.system.paths import AppPaths
from tray.system.stopping import sleep_until, stop_on_signals
from tray.web.link import MonitorLink

if TYPE_CHECKING:
    from tray.gateway.app import Gateway, GatewayServer
    from tray.system.autostart import Autostart
    from tray.ui.app import TrayApp
    from tray.ui.backend import TrayChoice

log = logging.getLogger("tray.cli")

PROG = "ollama-manager"


# --------------------------------------------------------------------------- commands


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.paths = AppPaths.default()
        self.paths.make_private()
        self.config: Config = load_config(args.config, paths=self.paths)

    def history(self, *, repair: bool = False) -> History:
        """The history database; ``repair``: move a damaged one aside and start afresh (the monitor, its writer)."""
        return History(self.paths.history_db, repair=repair)

    def readable_history(self) -> History:
        """The history for ``events`` and ``metrics``; CliError when it is unavailable, rather than nothing."""
        history = self.history()
        if history.problem is not None:
            raise CliError(f"the history is unavailable: {history.problem}")
        return history

    def supervisor(self, history: History | None = None) -> Supervisor:
        return Supervisor(self.config, self.paths, history or self.history())


def monitor_link(ctx: Context) -> MonitorLink:
    """The link to a running monitor; a stale monitor.json is one line on stderr, then the command acts itself."""
    return MonitorLink(ctx.paths, report=lambda line: print(f"{PROG}: {line}", file=sys.stderr))


def cmd_start(ctx: Context) -> int:
    message = monitor_link(ctx).action("start")
    if message is None:
        sup = ctx.supervisor()
        sup.user_stop.clear()
        message = sup.start(reason="user", interactive=sys.stdin.isatty()).describe(sup.host.url)
    print(message)
    return 0


def cmd_stop(ctx: Context) -> int:
    message = monitor_link(ctx).action("stop")
    if message is None:
        sup = ctx.supervisor()
        if sup.answers() is None:
            sup.user_stop.set()
            print("Ollama is not running")
            return 0
        stopped = sup.stop(reason="user", interactive=sys.stdin.isatty())
        sup.user_stop.set()
        sup.history.record(EventKind.USER_STOP, "Ollama stopped by the user; it stays stopped until started again")
        message = stop_message(stopped, sup.reaped_names)
    print(message)
    return 0


def cmd_restart(ctx: Context) -> int:
    message = monitor_link(ctx).action("restart")
    if message is None:
        sup = ctx.supervisor()
        sup.user_stop.clear()
        message = sup.restart(reason="user", interactive=sys.stdin.isatty()).describe(sup.host.url)
    print(message)
    return 0


def cmd_status(ctx: Context) -> int:
    status = monitor_link(ctx).status()
    monitor_running = status is not None
    if status is None:
        history = History(None)
        monitor = Monitor(ctx.supervisor(history), ctx.config, history)
        status = monitor.check_once()
    if ctx.args.json:
        print(json.dumps({**status.to_json(), "monitor_running": monitor_running}, indent=2))
    else:
        print(format_status(status, monitor_running))
    return 0 if status.ollama_running and status.supervising else 3


MANAGED_BY = {
    "manager": ", started by this manager",
    "external": ", started outside the manager",
    "systemd": ", managed by systemd",
    "ollama-app": ", run by the Ollama app",
    "none": "",
}


def format_status(status: Status, monitor_running: bool) -> str:
    latency = f" ({format_latency(status.latency_ms)})" if status.latency_ms is not None else ""
    pid = f", pid {status.pid}" if status.pid else ""
    owner = MANAGED_BY.get(status.managed_by, status.managed_by)
    if status.unit:
        owner += f" ({status.unit})"
    if status.owner and status.managed_by != "manager":
        owner += f", run by {status.owner}"
    lines = [
        f"Ollama: {status.health}{latency}, {status.state}{pid}{owner}",
        f"Address: {status.ollama_host}",
        f"Model: {status.model} ({'present' if status.model_loaded else 'not available'})"
        + (
            f"; Modelfile model: {status.modelfile_model}"
            if not same_model(status.modelfile_model, status.model)
            else ""
        ),
    ]
    if status.ollama_running:
        lines.append(
            f"Uptime: {format_duration(status.uptime_seconds)}, memory {human_memory(status.memory_usage_mb * MIB)}, "
            f"CPU {status.cpu_usage_percent} %, GPU {'yes' if status.gpu_available else 'none'}"
        )
        lines.append(busy_line(status.busy))
    if status.restart_attempt:
        lines.append(f"Restart attempts: {status.restart_attempt} of {status.restart_attempts_max}")
    if status.last_error:
        lines.append(f"Last error: {status.last_error}")
    if status.server_settings_note:
        lines.append(f"Settings: {status.server_settings_note}")
    if not monitor_running:
        lines.append("Monitor: not running")
    elif status.supervising:
        lines.append("Monitor: running")
    else:
        lines.append("Monitor: running but NOT supervising Ollama; restart Ollama Manager")
    return "\n".join(lines)


BUSY_SEEN_BY = {
    BusySource.GATEWAY: "the gateway's requests",
    BusySource.RUNNER: "the runner's CPU use",
    BusySource.PROBE: "the health probe waiting its turn",
}


def busy_line(busy: BusyStatus | None) -> str:
    """The status' ``Busy:`` line.

    >>> busy_line(None)
    'Busy: no'
    >>> print(busy_line(BusyStatus("llama3", 2, 1, 80.4, 0.5, BusySource.GATEWAY, stuck=False)))
    Busy: generating on llama3 for 1 min; 2 requests through the gateway (1 waiting); last progress just now; \
seen by the gateway's requests
    >>> busy_line(BusyStatus("llama3", None, None, 950, None, BusySource.PROBE, stuck=True))
    'Busy: STUCK, no progress on llama3 for 16 min; no progress seen; seen by the health probe waiting its turn'
    """
    if busy is None:
        return "Busy: no"
    on = f" on {busy.model}" if busy.model else ""
    since = busy.since_seconds
    progress = busy.progress_seconds_ago
    if busy.stuck:
        head = f"STUCK, no progress{on} for {format_duration(progress if progress is not None else since)}"
    else:
        head = f"generating{on} for {format_duration(since)}"
    parts = [head]
    if busy.requests is not None:
        count, waiting = busy.requests, busy.waiting or 0
        parts.append(f"{count} request{'s' if count != 1 else ''} through the gateway ({waiting} waiting)")
    parts.append(f"last progress {format_age(progress)}" if progress is not None else "no progress seen")
    parts.append("seen by " + BUSY_SEEN_BY.get(busy.source, str(busy.source)))
    return "Busy: " + "; ".join(parts)


def cmd_model(ctx: Context) -> int:
    from tray.models import commands

    args, config, paths = ctx.args, ctx.config, ctx.paths
    if args.model_command == "use":
        print(use_model(ctx, args.name))
        return 0
    install_default_modelfile(config, paths)
    sup = ctx.supervisor()
    if sup.client.answers_as_ollama():
        sup.adopt()  # the store of the server that runs (a systemd server keeps its own)
    models_dir, state_dir = sup.models_dir, paths.state_dir
    quantize = getattr(args, "quantize", None) or config.model_quantize or None
    wants_server = args.model_command in ("ensure", "rebuild", "pull") or (
        args.model_command == "cleanup" and args.delete
    )
    if wants_server and not sup.client.answers_as_ollama():
        print(sup.start(reason="model").describe(sup.host.url), file=sys.stderr)
    url, model, modelfile = sup.host.url, config.ollama_model, config.modelfile_path
    if args.model_command == "ensure":
        return commands.run_ensure(url, model, modelfile, quantize=quantize, models_dir=models_dir, state_dir=state_dir)
    if args.model_command == "rebuild":
        return commands.run_rebuild(
            url, model, modelfile, quantize=quantize, full=True, models_dir=models_dir, state_dir=state_dir
        )
    if args.model_command == "verify":
        return commands.run_verify(model, full=args.full, models_dir=models_dir, state_dir=state_dir)
    if args.model_command == "list":
        return commands.run_list(config.model_in_use, modelfile_model=model, models_dir=models_dir, state_dir=state_dir)
    if args.model_command == "pull":
        return commands.run_pull(url, args.name, models_dir=models_dir)
    return commands.run_cleanup(url, model, delete=args.delete, models_dir=models_dir, state_dir=state_dir)


def use_model(ctx: Context, name: str) -> str:
    """``model use NAME``: through the running monitor (it switches and preloads at once), else saved for its start."""
    from tray.models.store import list_models
    from tray.service.monitor import not_installed_line
    from tray.settings.store import set_config_value

    name = name.strip()
    if not name:
        raise CliError("name the model to use, e.g. `ollama-manager model use llama3`")
    link = monitor_link(ctx)
    message = link.use_model(name)
    if message is not None:
        return message
    config = ctx.config
    chosen = ""
    if not same_model(name, config.ollama_model):
        sup = ctx.supervisor(History(None))
        installed = sup.client.installed_models() if sup.client.answers_as_ollama() else None
        if installed is not None:
            names = [model.name for model in installed]
        else:
            names = [entry.name.display for entry in list_models(sup.models_dir)]
        chosen = next((listed for listed in names if same_model(listed, name)), "")
        if not chosen:
            raise CliError(not_installed_line(name))
    set_config_value(Path(config.source), "active_model", chosen)
    shown = chosen or f"{config.ollama_model} (the Modelfile model)"
    return f"Using {shown}; saved in {config.source}, for the manager's next start"


def cmd_metrics(ctx: Context) -> int:
    import time

    since = time.time() - parse_since(ctx.args.since)
    history = ctx.readable_history()
    samples = history.samples(since=since)
    if history.problem is not None:
        raise CliError(f"the history is unavailable: {history.problem}")
    if ctx.args.json:
        print(json.dumps(samples, indent=2))
        return 0
    print(f"{'time':<25} {'health':<9} {'latency':>9} {'memory':>10} {'cpu':>6} {'gpu mem':>9}")
    for row in samples:
        from datetime import datetime

        when = datetime.fromtimestamp(row["time"], UTC).isoformat(timespec="seconds")
        print(
            f"{when:<25} {row['health'] or '-':<9} {_num(row['latency_ms'], 'ms'):>9} "
            f"{_num(row['memory_mb'], 'MB'):>10} {_num(row['cpu_percent'], '%'):>6} "
            f"{_num(row['gpu_memory_mb'], 'MB'):>9}"
        )
    return 0


def _num(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.0f} {unit}"


def parse_since(text: str) -> float:
    """'90s', '15m', '1h', '7d' -> seconds.

    >>> parse_since("1h"), parse_since("15m"), parse_since("2d")
    (3600.0, 900.0, 172800.0)
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise CliError(f"--since must look like 90s, 15m, 1h or 7d, got {text!r}") from None


def cmd_events(ctx: Context) -> int:
    history = ctx.readable_history()
    events = history.events(limit=ctx.args.limit)
    if history.problem is not None:
        raise CliError(f"the history is unavailable: {history.problem}")
    if ctx.args.json:
        print(json.dumps([e.to_json() for e in events], indent=2))
    else:
        for event in events:
            item = event.to_json()
            print(f"{item['time']}  {item['kind']:<10} {item['message']}")
    return 0


def config_command(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``config get [KEY]`` and ``config set KEY VALUE``: the settings file, through the settings page's validator.

    Runs without loading the settings first, so a value that stops the app can
    be corrected here. A bad key or value is one line and exit status 2.
    """
    import tomlkit

    from tray.dashboard.settings_form import effective_values, refusal_line, setting_specs, validate_changes
    from tray.settings.config import config_file_path, config_warnings, read_config_file
    from tray.settings.store import set_config_values

    paths = AppPaths.default()
    paths.make_private()
    path = config_file_path(args.config, env, paths)
    specs = {spec.key: spec for spec in setting_specs()}
    key = args.key
    if key is not None and key not in specs:
        print(f"{PROG}: {shown(key)} is not a setting (ollama-manager config get lists them)", file=sys.stderr)
        return 2
    table = read_config_file(path)
    if args.config_command == "set":
        validation = validate_changes(list(specs.values()), table, {key: args.value}, path)
        if not validation.ok:
            print(f"{PROG}: {path}: {refusal_line(validation)}", file=sys.stderr)
            return 2
        set_config_values(path, validation.values)
        spec = specs[key]
        shown_value = tomlkit.item(validation.values[key]).as_string()
        overridden = f"; {spec.env_name} is set and overrides it" if spec.env_name in env else ""
        print(f"Saved {key} = {shown_value} to {path}{overridden}; Ollama Manager uses it from its next start")
        for warning in config_warnings(load_config(path, env=env, paths=paths)):
            print(f"{PROG}: warning: {warning}", file=sys.stderr)
        return 0
    values = effective_values(Config, table, env, path, list(specs.values()))
    if key is not None:
        value = values[key]
        print(value if isinstance(value, str) else tomlkit.item(value).as_string())
        return 0
    for name, value in values.items():
        line = f"{name} = {tomlkit.item(value).as_string()}"
        if specs[name].env_name in env:
            line += f"  # from {specs[name].env_name}"
        print(line)
    return 0


def cmd_monitor(ctx: Context) -> int:
    share_one_malloc_arena()
    stop = stop_on_signals()
    setup_logging(ctx.paths.app_log, stderr=True)
    with running_services(ctx) as services:
        log.info("monitoring %s (status API on port %s)", services.monitor.supervisor.host.url, services.status_port)
        sleep_until(stop)
    return 0


def cmd_tray(ctx: Context) -> int:
    """The tray app: the default when ``ollama-manager`` runs with no command."""
    from tray.dashboard.launch import open_dashboard
    from tray.system.autostart import autostart_for
    from tray.ui.app import TrayApp
    from tray.ui.backend import StatusNotifierError, backend_for, choose_tray, no_tray_message
    from tray.ui.controller import MonitorController

    share_one_malloc_arena()
    setup_logging(ctx.paths.app_log)
    notifier = Notifier(enabled=ctx.config.notifications)
    choice = choose_tray()
    if choice.backend is None:
        message = no_tray_message(choice.reason)
        notifier.notify("Ollama Manager", message)
        raise CliError(message)
    if choice.waiting:
        log.info("no tray yet (%s); waiting up to %g s for one", choice.reason, ctx.config.tray_host_wait)
    else:
        log.info("tray backend %s: %s", choice.backend, choice.reason)
    gave_up: list[str] = []
    try:
        with running_services(ctx, notifier) as services:
            controller = MonitorController(
                services.monitor,
                ctx.config,
                ctx.paths,
                services.history,
                notifier,
                autostart_for(),
                open_dashboard=functools.partial(open_dashboard, ctx.paths),
            )
            app = TrayApp(controller, backend=backend_for(choice.backend, choice.bus_address))
            with follow_tray_hosts(choice, app, gave_up, ctx.config.tray_host_wait):
                app.run()
    except AlreadyRunning as exc:
        notifier.notify("Ollama Manager", str(exc))
        raise
    except StatusNotifierError as exc:
        raise CliError(f"the tray icon is gone: {exc}") from None
    if gave_up:
        message = no_tray_message(gave_up[0])
        notifier.notify("Ollama Manager", message)
        raise CliError(message)
    return 0


@contextlib.contextmanager
def follow_tray_hosts(choice: TrayChoice, app: TrayApp, gave_up: list[str], wait_s: float) -> Iterator[None]:
    """While the block runs, move ``app``'s icon as the desktop's tray hosts come and go (Linux, with a bus)."""
    from tray.ui.backend import HostWatch, TrayBackend, backend_for

    if choice.bus_address is None or choice.backend not in (TrayBackend.STATUS_NOTIFIER, TrayBackend.XEMBED):
        yield
        return

    def give_up(reason: str) -> None:
        gave_up.append(reason)
        app.close()

    watch = HostWatch(
        choice,
        os.environ,
        on_switch=lambda backend: app.switch_backend(backend_for(backend, choice.bus_address)),
        on_give_up=give_up,
        wait_s=wait_s,
    )
    try:
        watch.start()
    except (OSError, TimeoutError, RuntimeError, ValueError) as exc:
        log.warning("cannot follow the tray hosts (%s); the icon stays with %s", exc, choice.backend)
        yield
        return
    try:
        yield
    finally:
        watch.stop()


def autostart_action(action: str, autostart: Autostart) -> str:
    """Run ``enable``, ``disable`` or ``status`` on ``autostart``; the line to print.

    The same :class:`~tray.system.autostart.Autostart` the tray's "Start at login"
    item uses. A file or registry error becomes a one-line CliError.
    """
    where = autostart.describe()
    try:
        if action == "enable":
            autostart.enable()
            return f"Start at login enabled: {where}"
        if action == "disable":
            was_enabled = autostart.is_enabled()
            autostart.disable()
            return f"Start at login disabled: removed {where}" if was_enabled else "Start at login was not enabled"
        state = "enabled" if autostart.is_enabled() else "disabled"
        return f"Start at login: {state} ({where})"
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CliError(f"cannot {action} start at login ({where}): {reason}") from None


def cmd_autostart(args: argparse.Namespace) -> int:
    from tray.system.autostart import autostart_for

    print(autostart_action(args.autostart_action, autostart_for()))
    return 0


def cmd_notify(args: argparse.Namespace) -> int:
    """Send one notification through the first method that works, and say which (or why none did)."""
    from tray.system.notify import NotificationError

    try:
        delivery = Notifier().deliver(args.title, args.message)
    except NotificationError as exc:
        raise CliError(f"no notification method worked: {exc}") from None
    if delivery.confirmed:
        print(f"Notification sent via {delivery.channel}")
    else:
        print(f"Notification handed to {delivery.channel}, which cannot tell whether it showed")
    return 0


class running_services:
    """Single-instance lock, monitor thread, status API and gateway, torn down in order."""

    def __init__(self, ctx: Context, notifier: Notifier | None = None) -> None:
        self.ctx = ctx
        self.notifier = notifier
        self.instance = SingleInstance(ctx.paths.instance_lock, ctx.paths.monitor_file)
        self.gateway: GatewayServer | None = None

    def __enter__(self) -> running_services:
        from tray.dashboard.ondemand import DashboardOnDemand
        from tray.web.status_api import StatusServer, rotate_token, write_monitor_file

        config, paths = self.ctx.config, self.ctx.paths
        self.instance.acquire()
        install_default_modelfile(config, paths)
        self.history = self.ctx.history(repair=True)
        notifier = self.notifier or Notifier(enabled=config.notifications)
        notify_events(self.history, notifier)
        for warning in config_warnings(config):
            log.warning("%s", warning)
            self.history.record(EventKind.ALERT, warning)
        gateway: Gateway | None = None
        if config.gateway.enabled:  # else nothing of the gateway is imported
            from tray.gateway.commands import gateway_for_monitor

            try:
                # It reports to the monitor built next, once it serves (after the monitor started).
                gateway = gateway_for_monitor(config, lambda: self.monitor.request("check"), self.history, notifier)
            except OSError as exc:
                self.history.close()
                self.instance.release()
                raise CliError(str(exc)) from None
        self.monitor = Monitor(self.ctx.supervisor(self.history), config, self.history, gateway=gateway)
        token = rotate_token(paths.api_token)  # a token read by anyone before this start is worthless now
        self.dashboard = DashboardOnDemand(self.monitor, self.history, token, notifier=notifier)
        wanted = config.status_port
        self.server = StatusServer(self.monitor, self.history, token, wanted, extra_routes=self.dashboard.routes())
        try:
            port = self.server.start()
        except OSError as exc:
            if wanted == 0:
                self.instance.release()
                raise CliError(f"{exc}: set status_port to a free port") from None
            # Another program holds the port: any free one will do, since the CLI finds it in monitor.json.
            self.server = StatusServer(self.monitor, self.history, token, 0, extra_routes=self.dashboard.routes())
            try:
                port = self.server.start()
            except OSError as again:
                self.instance.release()
                raise CliError(f"{again}: set status_port to a free port") from None
            moved = (
                f"the status port {wanted} is in use by another program; the status API listens on 127.0.0.1:{port} "
                f"instead (ollama-manager finds it through {paths.monitor_file})"
            )
            log.warning("%s", moved)
            self.history.record(EventKind.MONITOR, moved)
        self.status_port = port
        write_monitor_file(paths.monitor_file, os.getpid(), port)
        self.monitor.start()
        if gateway is not None:
            from tray.gateway.commands import serve_beside_monitor

            try:
                self.gateway = serve_beside_monitor(gateway, config.gateway.port, self.monitor)
            except OSError as exc:
                self.__exit__(None, None, None)
                raise CliError(str(exc)) from None
        return self

    def __exit__(self, *exc: object) -> None:
        gateway = getattr(self, "gateway", None)  # unset when __enter__ failed before starting it
        if gateway is not None:
            gateway.stop()
        self.monitor.stop()
        self.dashboard.close()  # ends the dashboards' open event streams, so the server can stop
        self.server.stop()
        try:
            self.ctx.paths.monitor_file.unlink()
        except OSError:
            pass
        self.history.close()
        self.instance.release()


# --------------------------------------------------------------------------- parsing


MAX_EVENT_LIMIT = 1_000_000


def event_limit(text: str) -> int:
    """``events --limit``: a whole number from 1 to a million.

    >>> event_limit("50")
    50
    >>> event_limit("0")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be a whole number from 1 to 1000000, got '0'
    """
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_EVENT_LIMIT:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_EVENT_LIMIT}, got {shown(text)}")
    return limit


class ShowVersion(argparse.Action):
    """``--version``: the version, read only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=str(kwargs.get("help")))

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from tray import __version__

        print(f"{PROG} {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Keeps a local Ollama server alive and healthy. With no command, shows the tray icon.",
    )
    parser.add_argument("--version", action=ShowVersion, help="show the version and exit")
    parser.add_argument("--config", metavar="PATH", help="settings file (default: the platform config dir)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("start", help="start Ollama (or adopt the one running)")
    sub.add_parser("stop", help="stop Ollama; it stays stopped until started again")
    sub.add_parser("restart", help="restart Ollama")
    status = sub.add_parser("status", help="show health, latency and resource use")
    status.add_argument("--json", action="store_true", help="print JSON")
    sub.add_parser("monitor", help="run the health monitor in the foreground, without a tray icon")
    events = sub.add_parser("events", help="show restarts, health changes and errors")
    events.add_argument("--json", action="store_true", help="print JSON")
    events.add_argument("--limit", type=event_limit, default=100, metavar="N", help="newest N events (default 100)")
    from tray.gateway.commands import add_cloud_parser, add_gateway_parser

    add_gateway_parser(sub)
    add_cloud_parser(sub)
    from tray.dashboard.launch import add_dashboard_parser

    add_dashboard_parser(sub)
    autostart = sub.add_parser("autostart", help="start the tray at login: enable, disable, or show the status")
    autostart.add_argument("autostart_action", choices=["enable", "disable", "status"], metavar="enable|disable|status")
    notify = sub.add_parser("notify", help="send a notification, to check that notifications show")
    notify.add_argument("title", nargs="?", default="Ollama Manager", help="its title (default: Ollama Manager)")
    notify.add_argument("message", nargs="?", default="Notifications work", help="its text")
    doctor = sub.add_parser("doctor", help="show what this copy of the app loaded and where its files are")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    metrics = sub.add_parser("metrics", help="show the recorded health and resource samples")
    metrics.add_argument("--since", default="1h", help="how far back: 90s, 15m, 1h, 7d (default 1h)")
    metrics.add_argument("--json", action="store_true", help="print JSON")
    config = sub.add_parser("config", help="show or change a setting in the settings file")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    get = config_sub.add_parser("get", help="show every setting in effect, or the value of one")
    get.add_argument("key", nargs="?", metavar="KEY", help="a setting, e.g. health_check_interval or gateway.port")
    set_ = config_sub.add_parser("set", help="check a value as the app would and save it to the settings file")
    set_.add_argument("key", metavar="KEY", help="a setting, e.g. health_check_interval or gateway.port")
    set_.add_argument("value", metavar="VALUE", help="its new value")
    model = sub.add_parser("model", help="build, verify and repair the model; list, pull and choose models")
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    model_sub.add_parser("ensure", help="build the model if it is missing or its Modelfile changed")
    rebuild = model_sub.add_parser("rebuild", help="rebuild the model, repairing damaged files")
    rebuild.add_argument("--quantize", metavar="Q", help="quantization, e.g. q4_K_M (for F16/F32 bases)")
    verify = model_sub.add_parser("verify", help="check every file of the model against its digest")
    verify.add_argument("--full", action="store_true", help="rehash everything, ignoring the cache")
    model_sub.add_parser("list", help="list the installed models; the active one and the Modelfile one are marked")
    use = model_sub.add_parser("use", help="make an installed model the active one (the Modelfile model's name: back)")
    use.add_argument("name", metavar="NAME")
    pull = model_sub.add_parser("pull", help="download a model from the registry, with progress")
    pull.add_argument("name", metavar="NAME")
    cleanup = model_sub.add_parser("cleanup", help="report stale copies, unused files and partial downloads")
    cleanup.add_argument("--delete", action="store_true", help="delete them")
    return parser


def cmd_gateway(ctx: Context) -> int:
    from tray.gateway.commands import gateway_command

    setup_logging(ctx.paths.app_log, stderr=True)
    return gateway_command(ctx.args, ctx.config, ctx.paths)


def cmd_dashboard(ctx: Context) -> int:
    from tray.dashboard.launch import dashboard_command

    return dashboard_command(ctx.args, ctx.paths)


def cmd_cloud(ctx: Context) -> int:
    from tray.gateway.commands import cloud_set_key_command

    if ctx.args.cloud_command != "set-key":
        raise CliError("usage: ollama-manager cloud set-key")
    return cloud_set_key_command(ctx.args, ctx.config, ctx.paths)


COMMANDS: dict[str, Callable[[Context], int]] = {
    "start": cmd_start,
    "stop": cmd_stop,
    "restart": cmd_restart,
    "status": cmd_status,
    "monitor": cmd_monitor,
    "events": cmd_events,
    "metrics": cmd_metrics,
    "model": cmd_model,
    "gateway": cmd_gateway,
    "cloud": cmd_cloud,
    "dashboard": cmd_dashboard,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "doctor":  # before the settings are read, so a broken config file does not stop it
        from tray.doctor import doctor_command

        return doctor_command(as_json=args.json, config_path=args.config)
    try:
        if args.command == "config":  # reads the file itself: it must be able to fix a value that stops the app
            return config_command(args, os.environ)
        if args.command == "autostart":  # needs no settings either
            return cmd_autostart(args)
        if args.command == "notify":
            setup_logging(AppPaths.default().app_log)  # each failed method goes to the log; the summary to stderr
            return cmd_notify(args)
        ctx = Context(args)
        if args.command is None:
            return cmd_tray(ctx)
        if args.command != "monitor":
            setup_logging(ctx.paths.app_log)
        return COMMANDS[args.command](ctx)
    except (ConfigError, CliError, SupervisorError, AlreadyRunning) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log.exception("unexpected error")
        print(f"{PROG}: unexpected error: {exc} (details in {AppPaths.default().app_log})", file=sys.stderr)
        return 1
